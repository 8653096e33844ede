"""`Slide`: the one place every pixel of the suite is read from.

Level choice, anti-aliased resizing, padding outside the slide and (later) caching live here, so
views, label masks, tissue masks and whole-slide inference all see the same geometry:
level-0 pixel coordinates, `x` = column, `y` = row, sizes as `(w, h)`, arrays as `(h, w[, c])`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from datamodules.errors import InputError
from datamodules.slides.tiff_checks import check_complete, tifffile_log
from datamodules.slides.tilecache import TiledLevel, TileStats, process_cache

#: Level-0 resolutions outside this range are treated as metadata errors (e.g. a 96-DPI tag
#: gives 264 um/px); a 1.25x scan is about 8 um/px, a 80x scan about 0.12 um/px.
MPP_RANGE = (0.05, 20.0)
#: Magnification M corresponds to 10/M um/px (20x == 0.5 um/px), the convention of the papers.
MPP_AT_1X = 10.0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
#: A level whose downsample is close to, not exactly, the requested factor (a real pyramid's
#: 4.0023 for 4) is copied, not warped, when no output pixel moves more than this many pixels.
NEAR_INTEGER_SHIFT = 0.5


def mpp_of(magnification: float) -> float:
    """Micrometres per pixel of an objective magnification (20x -> 0.5)."""
    if magnification <= 0:
        raise ValueError(f"magnification must be positive, got {magnification}")
    return MPP_AT_1X / magnification


class Slide:
    """A whole-slide image (or a plain image as a one-level slide) with a known level-0 mpp.

    Picklable: the file handle is opened lazily in each process (a handle made before a
    DataLoader fork breaks with several workers), so datasets can hold `Slide`s.
    """

    def __init__(self, path: str | Path, mpp: float | None = None, pad_value: int = 255):
        self.path = Path(path)
        self.pad_value = int(pad_value)
        self._handle = None
        self._pid = None
        self._levels: dict[int, TiledLevel | None] = {}
        self.tile_stats = TileStats()
        if not self.path.exists():
            raise InputError(self.path, "file not found")
        if self.path.is_dir():
            raise InputError(self.path, "is a folder, not a slide file")
        if self.path.stat().st_size == 0:
            raise InputError(self.path, "file is empty (0 bytes)")
        self.is_plain_image = _is_plain_image(self.path)
        meta = _image_meta(self.path) if self.is_plain_image else _tiff_meta(self.path)
        self.level_dimensions: list[tuple[int, int]] = meta["level_dimensions"]
        self.level_downsamples: list[float] = meta["level_downsamples"]
        self.vendor: str = meta["vendor"]
        self.associated_images: list[str] = meta["associated_images"]
        self.properties: dict = meta["properties"]
        self.objective_power = meta["objective_power"]
        self.metadata_mpp: float | None = meta["mpp"]
        self.mpp = self._resolve_mpp(mpp)

    # ------------------------------------------------------------------ metadata
    def _resolve_mpp(self, override: float | None) -> float:
        lo, hi = MPP_RANGE
        if override is not None:
            override = float(override)
            if not lo <= override <= hi:
                raise InputError(self.path, f"--mpp {override} is outside {lo}-{hi} um/px")
            return override
        found = self.metadata_mpp
        if found is None:
            raise InputError(
                self.path, "no resolution (mpp) in the metadata; pass it explicitly, e.g. --mpp 0.5"
            )
        if not lo <= found <= hi:
            raise InputError(
                self.path,
                f"implausible resolution {found:.4g} um/px in the metadata (expected {lo}-{hi}; "
                "a 96-DPI tag looks like this); pass the true value, e.g. --mpp 0.5",
            )
        return found

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def footprint(self, size: Sequence[int], mpp: float) -> tuple[float, float]:
        """Level-0 extent (w, h) of an output of `size` pixels at `mpp`."""
        f = mpp / self.mpp
        return size[0] * f, size[1] * f

    def best_level(self, mpp: float) -> int:
        """The coarsest level that still has at least the requested resolution (fewest pixels)."""
        factor = mpp / self.mpp
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= factor * (1 + 1e-3) and ds >= self.level_downsamples[best]:
                best = level
        return best

    # ------------------------------------------------------------------ reading
    @property
    def handle(self):
        """The tiffslide handle or the decoded image, opened once per process."""
        if self._handle is None or self._pid != os.getpid():
            self._handle = _open_image(self.path) if self.is_plain_image else _open_tiff(self.path)
            self._pid = os.getpid()
            self._levels = {}
            self.tile_stats = TileStats()
        return self._handle

    def tiled_level(self, level: int) -> TiledLevel | None:
        """Tile-by-tile decoder of a TIFF level (None: plain image or an unusual layout)."""
        handle = self.handle
        if self.is_plain_image:
            return None
        if level not in self._levels:
            try:
                page = handle.ts_tifffile.series[0].levels[level].keyframe
                fh = handle.ts_tifffile.filehandle
                ok = TiledLevel.supports(page) and tuple(page.shape[:2])[::-1] == tuple(
                    self.level_dimensions[level]
                )
                self._levels[level] = TiledLevel(f"{self.path}:{level}", page, fh) if ok else None
            except (IndexError, AttributeError):
                self._levels[level] = None
        return self._levels[level]

    def read(
        self,
        location: Sequence[float] | None = None,
        size: Sequence[int] = (256, 256),
        *,
        center: Sequence[float] | None = None,
        mpp: float | None = None,
        magnification: float | None = None,
        pad_value: int | None = None,
        resample: str = "area",
        raw: bool = False,
    ) -> np.ndarray:
        """Read a region as an ``(h, w, 3)`` RGB uint8 array (``(h, w)`` first channel if `raw`).

        The region starts at level-0 `location` (or is centred on level-0 `center`) and is
        `size` = (w, h) pixels at `mpp` (or `magnification`; default: level-0 mpp). It is read from
        the coarsest sufficient pyramid level and resized with area averaging (anti-aliased) or,
        for label masks, ``resample="nearest"``. Pixels outside the slide get `pad_value`.
        """
        if mpp is None:
            mpp = self.mpp if magnification is None else mpp_of(magnification)
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if (location is None) == (center is None):
            raise ValueError("give exactly one of location and center")
        fw, fh = self.footprint((w, h), mpp)
        if location is None:
            location = (center[0] - fw / 2, center[1] - fh / 2)
        pad = self.pad_value if pad_value is None else int(pad_value)
        level = self.best_level(mpp)
        ds = self.level_downsamples[level]
        near = _near_integer_box(location, (fw / w, fh / h), ds, (w, h))
        if near is not None:
            return self._read_box(level, *near, w, h, pad, raw)
        # the region in this level's pixel coordinates
        lx, ly, lw, lh = location[0] / ds, location[1] / ds, fw / ds, fh / ds
        bx0, by0 = math.floor(lx + 1e-6), math.floor(ly + 1e-6)
        bx1, by1 = math.ceil(lx + lw - 1e-6), math.ceil(ly + lh - 1e-6)
        box = self._read_box(level, bx0, by0, bx1 - bx0, by1 - by0, pad, raw)
        return _resample(box, (lx - bx0, ly - by0), (lw / w, lh / h), (w, h), resample)

    def _read_box(self, level: int, x: int, y: int, w: int, h: int, pad: int, raw: bool):
        """Integer box at `level`, padded outside the level's extent."""
        W, H = self.level_dimensions[level]
        channels = () if raw else (3,)
        out = np.full((h, w, *channels), pad, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            data = self._read_level(level, x0, y0, x1 - x0, y1 - y0)
        except InputError:
            raise
        except Exception as err:  # decoder errors from truncated or corrupt files
            raise InputError(
                self.path, f"cannot decode level {level} at ({x0}, {y0}): {err}"
            ) from err
        out[y0 - y : y1 - y, x0 - x : x1 - x] = _as_raw(data) if raw else _as_rgb(data)
        return out

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of an in-bounds box of one level; the single choke point for a tile cache."""
        handle = self.handle
        if self.is_plain_image:
            return handle[y : y + h, x : x + w]
        tiled = self.tiled_level(level)
        if tiled is not None:
            return tiled.read(x, y, w, h, process_cache(), self.tile_stats)
        ds = self.level_downsamples[level]
        # tiffslide takes a level-0 location and floors loc / ds: ceil makes that exactly (x, y)
        loc = (math.ceil(x * ds - 1e-9), math.ceil(y * ds - 1e-9))
        return handle.read_region(loc, level, (w, h), as_array=True, padding=False)

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at a coarse `mpp` (RGB uint8)."""
        f = self.mpp / mpp
        size = (
            max(1, math.ceil(self.dimensions[0] * f)),
            max(1, math.ceil(self.dimensions[1] * f)),
        )
        return self.read((0, 0), size, mpp=mpp)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        state["_levels"] = {}
        state["tile_stats"] = TileStats()
        return state

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, {w}x{h}, levels={self.level_count}, mpp={self.mpp:.4g})"


# ---------------------------------------------------------------------- helpers
def _is_plain_image(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return False
    if head.startswith(b"\x89PNG") or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        return True
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(path, f"not a readable {path.suffix} image (bad header)")
    raise InputError(path, "not a slide: neither a TIFF/SVS nor a PNG/JPEG image")


def _open_tiff(path: Path):
    import tiffslide

    with tifffile_log(path):
        try:
            handle = tiffslide.TiffSlide(path)
            _ = handle.ts_tifffile.series  # parsed lazily: here, so a cut-off pyramid is refused
            return handle
        except Exception as err:
            raise InputError(path, f"cannot open as a slide: {err}") from err


def _tiff_meta(path: Path) -> dict:
    with tifffile_log(path):  # tiffslide reads the pyramid's pages lazily, here
        return _read_tiff_meta(path)


def _read_tiff_meta(path: Path) -> dict:
    handle = _open_tiff(path)
    try:
        check_complete(path, handle)
        props = dict(handle.properties)
        mpp = props.get("tiffslide.mpp-x") or props.get("tiffslide.mpp-y")
        power = props.get("tiffslide.objective-power")
        return {
            "level_dimensions": [tuple(map(int, d)) for d in handle.level_dimensions],
            "level_downsamples": [float(d) for d in handle.level_downsamples],
            "vendor": props.get("tiffslide.vendor") or "generic-tiff",
            "associated_images": sorted(handle.associated_images.keys()),
            "properties": props,
            "objective_power": None if power is None else float(power),
            "mpp": None if mpp is None else float(mpp),
        }
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"cannot read slide metadata: {err}") from err
    finally:
        handle.close()


def _open_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "CMYK", "YCbCr", "LA", "I;16", "I", "F"):
                im = im.convert("RGB" if im.mode in ("P", "CMYK", "YCbCr") else "L")
            return np.asarray(im)
    except Exception as err:
        raise InputError(path, f"cannot decode image: {err}") from err


def _image_meta(path: Path) -> dict:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format or "image"
    except Exception as err:
        raise InputError(path, f"cannot decode image: {err}") from err
    return {
        "level_dimensions": [(int(w), int(h))],
        "level_downsamples": [1.0],
        "vendor": fmt.lower(),
        "associated_images": [],
        "properties": {},
        "objective_power": None,
        # screen DPI in PNG/JPEG headers says nothing about the microscope
        "mpp": None,
    }


def _as_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2).astype(np.uint8, copy=False)
    return a[..., :3].astype(np.uint8, copy=False)


def _as_raw(a: np.ndarray) -> np.ndarray:
    return (a if a.ndim == 2 else a[..., 0]).astype(np.uint8, copy=False)


def _near_integer_box(location, factor, ds: float, size) -> tuple[int, int] | None:
    """Top-left level pixel of a plain copy, when the read would be one at an exact downsample.

    The read is a copy if the level's downsample were `factor` (level-0 px per output pixel):
    scale 1, whole-pixel offset. The true output pixel j centre then lies ``e_j`` level pixels
    from copied pixel x0 + j, ``e_j`` linear in j; the copy is taken when |e_j| <=
    NEAR_INTEGER_SHIFT at both ends, for x and y (worst-case shift: 0.5 output px).
    Exact downsamples give e = 0 and are handled as before.
    """
    corner = []
    for loc, f, n in zip(location, factor, size, strict=True):
        start = loc / f
        if abs(f / ds - 1) > 0.01 or abs(start - round(start)) > 1e-6:
            return None
        x0 = round(start)
        ends = [(loc + (j + 0.5) * f) / ds - 0.5 - (x0 + j) for j in (0, n - 1)]
        if max(map(abs, ends)) > NEAR_INTEGER_SHIFT:
            return None
        corner.append(x0)
    return corner[0], corner[1]


def _resample(box, offset, scale, size, resample: str) -> np.ndarray:
    """Resample `box` so output pixel (i, j) covers box x in [ox + j*sx, ox + (j+1)*sx)."""
    (ox, oy), (sx, sy), (w, h) = offset, scale, size
    nearest = resample == "nearest"
    if resample not in ("area", "nearest"):
        raise ValueError(f"resample must be 'area' or 'nearest', got {resample!r}")
    aligned = abs(ox - round(ox)) < 1e-6 and abs(oy - round(oy)) < 1e-6
    if aligned and abs(sx - 1) < 1e-6 and abs(sy - 1) < 1e-6:
        x, y = int(round(ox)), int(round(oy))
        return np.ascontiguousarray(box[y : y + h, x : x + w])
    if (
        aligned
        and abs(box.shape[1] - round(ox) - w * sx) < 1e-3
        and abs(box.shape[0] - round(oy) - h * sy) < 1e-3
    ):
        x, y = int(round(ox)), int(round(oy))
        crop = box[y:, x:]
        interp = (
            cv2.INTER_NEAREST_EXACT
            if nearest
            else (cv2.INTER_AREA if sx >= 1 and sy >= 1 else cv2.INTER_LINEAR)
        )
        return cv2.resize(crop, (w, h), interpolation=interp)
    # general case: low-pass for the downsampling factor, then sample at exact sub-pixel centres
    src = box
    if not nearest and (sx > 1 or sy > 1):
        sigma_x, sigma_y = (0.5 * math.sqrt(max(s * s - 1, 0.0)) for s in (sx, sy))
        src = cv2.GaussianBlur(box, (0, 0), sigmaX=max(sigma_x, 1e-3), sigmaY=max(sigma_y, 1e-3))
    matrix = np.array([[sx, 0, ox + 0.5 * sx - 0.5], [0, sy, oy + 0.5 * sy - 0.5]], np.float64)
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(src, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
