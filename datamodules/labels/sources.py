"""Annotations to label rasters: polygon files (Aperio/BACH, ASAP/TIGER, QuPath GeoJSON) and
label-mask images, read in the same geometry as ``Slide.read`` so labels line up with pixels.

Polygons are rasterized with an exact pixel-centre scanline fill (nonzero winding), so a
polygon covers the same area in µm² at every mpp and holes and overlaps need no special case.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import shapely
import tifffile
from shapely.geometry import Polygon, box
from shapely.geometry.polygon import orient

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE, SKIP, UNMAPPED, ClassMap, load_class_map
from datamodules.labels.formats import Region, _polygons, read_annotations, region_stats
from datamodules.slides.slide import Slide

__all__ = [
    "LabelSource",
    "MaskLabels",
    "PolygonLabels",
    "Region",
    "open_labels",
    "read_annotations",
    "region_stats",
]

POLYGON_SUFFIXES = (".xml", ".geojson", ".json")


class LabelSource(Protocol):
    def read(self, location, size, mpp=None) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# Label sources


def _ignore_outside(labels: np.ndarray, location, f: float, extent) -> None:
    """Set pixels whose centre lies outside [0, extent) in level-0 coordinates to IGNORE."""
    for axis, (origin, limit) in enumerate(zip(location, extent, strict=True)):
        n = labels.shape[1 - axis]
        lo = min(max(math.ceil(-origin / f - 0.5), 0), n)
        hi = min(max(math.ceil((limit - origin) / f - 0.5), lo), n)
        index = [slice(None), slice(None)]
        for part in (slice(0, lo), slice(hi, n)):
            index[1 - axis] = part
            labels[tuple(index)] = IGNORE


def _ring_edges(polygon: Polygon) -> np.ndarray:
    """(n, 4) edges x0, y0, x1, y1 of all rings; exterior and holes wind opposite ways."""
    polygon = orient(polygon, 1.0)
    rings = [np.asarray(r.coords) for r in (polygon.exterior, *polygon.interiors)]
    return np.concatenate([np.hstack([r[:-1, :2], r[1:, :2]]) for r in rings])


def fill_edges(edges: np.ndarray, height: int, width: int):
    """Pixels of an (height, width) grid whose centre (j + .5, i + .5) is inside the edges.

    Nonzero winding, so overlapping polygons union and oppositely wound holes cut out.
    Returns (row0, col0, boolean block) or None when nothing is covered.
    """
    u0, v0, u1, v1 = edges.T
    first = np.clip(np.ceil(np.minimum(v0, v1) - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(v0, v1) - 0.5), 0, height).astype(np.int64)
    count = stop - first
    keep = count > 0
    if not keep.any():
        return None
    u0, v0, u1, v1, first, count = u0[keep], v0[keep], u1[keep], v1[keep], first[keep], count[keep]
    edge = np.repeat(np.arange(len(count)), count)
    rows = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count - first, count)
    x = u0[edge] + (rows + 0.5 - v0[edge]) * (u1 - u0)[edge] / (v1 - v0)[edge]
    cols = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max()
    if c1 <= c0:
        return None
    span = c1 - c0 + 1
    winding = np.bincount(
        (rows - r0) * span + (cols - c0),
        weights=np.where(v1 > v0, 1.0, -1.0)[edge],
        minlength=(r1 - r0) * span,
    ).reshape(r1 - r0, span)
    return r0, c0, np.cumsum(winding, axis=1)[:, :-1] != 0


class PolygonLabels:
    """Label rasters from polygons at any mpp; unknown labels fail here, before any training."""

    def __init__(
        self,
        regions: list[Region],
        class_map: ClassMap | str,
        slide_mpp: float,
        slide_dimensions: tuple[int, int] | None = None,
        precedence: list | str | None = None,
        source: str | Path | None = None,
    ):
        self.class_map = load_class_map(class_map)
        self.mpp = float(slide_mpp)
        self.dimensions = tuple(slide_dimensions) if slide_dimensions else None
        self.source = str(source) if source is not None else None
        self.file_order = (precedence or self.class_map.precedence) == "file"
        self._rank = self.class_map.rank(None if precedence == "file" else precedence)
        classes = self._validate(regions)
        bounds = box(0, 0, *self.dimensions) if self.dimensions else None
        self._shapes, self._classes, clipped, outside = [], [], 0, 0
        for region, cls in zip(regions, classes, strict=True):
            parts = [region.polygon]
            if cls == SKIP:
                continue
            if bounds is not None and not bounds.contains(region.polygon):
                parts = _polygons(region.polygon.intersection(bounds))
                clipped, outside = clipped + bool(parts), outside + (not parts)
            self._shapes.extend(parts)
            self._classes.extend([cls] * len(parts))
        where = self.source or "annotations"
        if outside and not self._shapes:
            raise InputError(
                self.source,
                f"all {outside} polygon(s) lie entirely outside the slide ({self.dimensions[0]}x"
                f"{self.dimensions[1]} px): annotations of another slide, or coordinates that are "
                "not level-0 pixels",
            )
        if clipped:
            warnings.warn(
                f"{where}: {clipped} polygon(s) extend beyond the slide "
                f"{self.dimensions}; clipped to it",
                stacklevel=2,
            )
        if outside:
            warnings.warn(
                f"{where}: {outside} polygon(s) lie entirely outside the slide "
                f"{self.dimensions}; dropped",
                stacklevel=2,
            )
        self._edges = [_ring_edges(p) for p in self._shapes]
        self._tree = None

    def _validate(self, regions) -> list[int]:
        known, unknown = {}, []
        for label in dict.fromkeys(r.label for r in regions):
            try:
                known[label] = self.class_map.index(label, self.source)
            except InputError:
                unknown.append(label)
        if unknown:
            raise InputError(
                self.source,
                f"label(s) {', '.join(map(repr, unknown))} not in class map "
                f"{self.class_map.name!r}; known labels: "
                + ", ".join(self.class_map.known_labels()),
            )
        return [known[r.label] for r in regions]

    def __getstate__(self):
        return {**self.__dict__, "_tree": None}  # STRtree is rebuilt in each worker

    def read(self, location, size, mpp: float | None = None) -> np.ndarray:
        """(h, w) uint8 labels; pixel (i, j) is the class at its centre, as in ``Slide.read``."""
        f = (self.mpp if mpp is None else float(mpp)) / self.mpp
        (x0, y0), (w, h) = location, size
        labels = np.full((h, w), self.class_map.unannotated, dtype=np.uint8)
        if self._shapes:
            if self._tree is None:
                self._tree = shapely.STRtree(self._shapes)
            hits = np.sort(self._tree.query(box(x0, y0, x0 + w * f, y0 + h * f)))
            if self.file_order:
                layers = [(self._classes[i], [i]) for i in hits]
            else:
                by_class = {}
                for i in hits:
                    by_class.setdefault(self._classes[i], []).append(i)
                layers = sorted(by_class.items(), key=lambda item: self._rank[item[0]])
            offset = np.array([x0, y0, x0, y0], dtype=np.float64)
            for cls, members in layers:
                edges = (np.concatenate([self._edges[i] for i in members]) - offset) / f
                block = fill_edges(edges, h, w)
                if block is not None:
                    r0, c0, inside = block
                    labels[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]][inside] = cls
        if self.dimensions:
            _ignore_outside(labels, (x0, y0), f, self.dimensions)
        return labels


class MaskLabels:
    """Label rasters from a label-mask image, possibly an exact integer downsample of the slide.

    ``mpp`` is the level-0 mpp of the slide the mask labels (for a k-fold downsampled mask its
    own is ``mpp * k``); None takes the mask file's own.  Locations are slide level-0 pixels.
    """

    def __init__(self, path, class_map, mpp: float | None = None, expected_dimensions=None):
        self.path = Path(path)
        self.class_map = load_class_map(class_map)
        self._lut = self.class_map.lut()
        self.slide = Slide(self.path, mpp=mpp)  # opens its file lazily, per process
        _check_mask_dtype(self.path)
        self.mask_dimensions = tuple(self.slide.dimensions)
        self.scale = self._scale(expected_dimensions)
        # Slide checks a plausible mpp range, so a coarse mask keeps the slide's mpp and reads
        # scale the requested mpp instead: output mpp m -> m * open_mpp / mask_mpp.
        self.mpp = self.slide.mpp if mpp is not None else self.slide.mpp / self.scale
        self.mask_mpp = self.mpp * self.scale

    def _scale(self, expected) -> int:
        (mw, mh) = self.mask_dimensions
        if expected is None or tuple(expected) == (mw, mh):
            return 1
        (W, H) = expected
        k = max(round(W / mw), 1)
        if k > 1 and mw in (W // k, -(-W // k)) and mh in (H // k, -(-H // k)):
            return k
        raise InputError(
            self.path,
            f"label mask is {mw}x{mh} but the slide is {W}x{H} "
            "(neither the same size nor an exact integer downsample)",
        )

    def _read_raw(self, location, size, mpp: float) -> np.ndarray:
        """Raw mask values; `location` in mask pixels, `mpp` the output's true resolution."""
        return self.slide.read(
            location=location,
            size=size,
            mpp=mpp * self.slide.mpp / self.mask_mpp,
            resample="nearest",
            raw=True,
        )

    def _map(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        labels = self._lut[raw]
        bad = (labels == UNMAPPED) & valid
        if bad.any():
            values = sorted({int(v) for v in np.unique(raw[bad])})
            raise InputError(
                self.path,
                f"mask value(s) {values} not in class map {self.class_map.name!r} "
                f"(known values: {sorted(self.class_map.mask_values)})",
            )
        labels[~valid] = IGNORE
        return labels

    def _valid(self, shape, location, f: float) -> np.ndarray:
        """Pixels whose centre lies on the mask (padding there must not count as a value)."""
        flags = np.zeros(shape, dtype=np.uint8)
        _ignore_outside(flags, location, f, self.mask_dimensions)
        return flags == 0

    def read(self, location, size, mpp: float | None = None) -> np.ndarray:
        """(h, w) uint8 labels; outside the mask is IGNORE."""
        mpp = self.mpp if mpp is None else float(mpp)
        k = self.scale
        at = (location[0] / k, location[1] / k)
        raw = self._read_raw(at, size, mpp)
        return self._map(raw, self._valid(raw.shape, at, mpp / self.mask_mpp))

    def check_values(self, max_side: int = 2048) -> dict[int, int]:
        """Scan a low-resolution copy for unmapped values; return pixel counts per label value."""
        mw, mh = self.mask_dimensions
        f = max(max(mw, mh) / max_side, 1.0)
        size = (max(math.ceil(mw / f), 1), max(math.ceil(mh / f), 1))
        raw = self._read_raw((0, 0), size, self.mask_mpp * f)
        valid = self._valid(raw.shape, (0, 0), f)
        values, counts = np.unique(self._map(raw, valid)[valid], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _check_mask_dtype(path: Path) -> None:
    """Reads give uint8, so a float or wider-integer mask would be silently cast: refuse it."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return
    try:
        with tifffile.TiffFile(path) as tif:
            dtype, shape = tif.series[0].dtype, tif.series[0].shape
    except Exception:  # unreadable: Slide has said so, or its reads will
        return
    if dtype.kind not in "biu" or dtype.itemsize > 1:
        raise InputError(
            path,
            f"label mask holds {dtype} values; label masks hold 8-bit integer class values "
            "(uint8, 0-255): convert it",
        )
    if len(shape) > 2 and shape[-1] not in (1, 3, 4):
        raise InputError(path, f"label mask has shape {shape}; expected one 2-D image")


def open_labels(path, class_map, slide) -> LabelSource:
    """Polygon file (.xml/.geojson/.json, or XML/JSON content) or label-mask image for ``slide``."""
    path = Path(path)
    is_polygons = path.suffix.lower() in POLYGON_SUFFIXES
    if not is_polygons and path.suffix.lower() not in (".tif", ".tiff", ".png", ".jpg", ".bmp"):
        try:
            with path.open("rb") as handle:
                head = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        except OSError as exc:
            raise InputError(path, f"cannot read labels: {exc.strerror or exc}") from None
        is_polygons = head[:1] in (b"<", b"{", b"[")
    if is_polygons:
        return PolygonLabels(
            read_annotations(path), class_map, slide.mpp, slide.dimensions, source=path
        )
    return MaskLabels(path, class_map, mpp=slide.mpp, expected_dimensions=slide.dimensions)
