"""A pyramidal, tiled label-mask TIFF written row by row in bounded memory.

Whole-slide predictions are far larger than the memory they may use (a 100k² slide is 10 GB of
uint8 labels), so the mask is never held whole: level-0 rows stream into tifffile's tile iterator
on a writer thread (which also compresses them while inference goes on); the 4x level is spooled
to an anonymous temporary file, and the coarser levels, the overlay and the polygons come from
one small copy at downsample `lowres_downsample` (<= 16: 1/256 of the area). Memory is bounded by
a few strips of `TILE` rows, i.e. grows with slide width, not area.

The file is tiffslide's generic pyramid (level 0 in the first page, reduced levels in its SubIFDs,
resolution in pixels per centimetre), the layout of the synthetic slides; it is written under a
temporary name and renamed when complete, so a final name always means a complete file.
"""

from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import torch

TILE = 512
SPOOL_DOWNSAMPLE = 4
LEVEL_FACTOR = 4
_DONE = object()


def lowres_downsample(dimensions, min_side: int = 1024, max_ds: int = 16) -> int:
    """Power-of-two downsample of the in-memory copy: 16, or less so small slides keep detail."""
    ds = max_ds
    while ds > 1 and max(dimensions) / ds < min_side:
        ds //= 2
    return ds


def sample_rows(rows: np.ndarray, y0: int, ds: int, out_w: int, out_h: int, height: int):
    """Nearest (centre) samples at downsample `ds` of level-0 `rows` starting at row `y0`.

    Output pixel ``(i, j)`` is level-0 pixel ``(i * ds + ds // 2, j * ds + ds // 2)``, clamped
    to the image (`height` rows, ``rows.shape[1]`` columns). Returns the index of the first
    output row that falls inside `rows`, and those output rows.
    """
    n, w = rows.shape
    src = np.minimum(np.arange(out_h) * ds + ds // 2, height - 1)
    pick = np.flatnonzero((src >= y0) & (src < y0 + n))
    if not len(pick):
        return 0, np.empty((0, out_w), rows.dtype)
    cols = np.minimum(np.arange(out_w) * ds + ds // 2, w - 1)
    return int(pick[0]), rows[src[pick] - y0][:, cols]


class _Spool:
    """Rows of one pyramid level in an unlinked temporary file (page cache, not process memory)."""

    def __init__(self, width: int, directory: Path):
        self.width = width
        self.rows = 0
        self.file = tempfile.TemporaryFile(dir=directory, prefix=".wsiseg-spool-")

    def append(self, rows: np.ndarray) -> None:
        if len(rows):
            self.file.write(np.ascontiguousarray(rows, np.uint8).tobytes())
            self.rows += len(rows)

    def strips(self, n: int) -> Iterator[np.ndarray]:
        self.file.seek(0)
        for _ in range(0, self.rows, n):
            buf = self.file.read(n * self.width)
            yield np.frombuffer(buf, np.uint8).reshape(-1, self.width)

    def close(self) -> None:
        self.file.close()


class MaskTiffWriter:
    """Write a uint8 label mask of level-0 `dimensions` (w, h) at `mpp` um/px to `path`.

    Call `write(rows)` with consecutive level-0 rows ``(n, w)`` (any `n`), then `close()`; on
    failure call `abort()`. After `close()`: `counts` (pixels per mask value, 256 entries),
    `lowres` (the mask at downsample `lowres_ds`, for overlays and polygons).
    """

    def __init__(
        self,
        path: str | Path,
        dimensions: tuple[int, int],
        mpp: float,
        description: str = "wsiseg label mask",
        tile: int = TILE,
        compression_level: int = 6,
    ):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".part")
        self.width, self.height = (int(d) for d in dimensions)
        if self.width < 1 or self.height < 1:
            raise ValueError(f"mask dimensions must be positive, got {dimensions}")
        self.mpp = float(mpp)
        self.tile = int(tile)
        self.description = description
        self.compression_level = compression_level
        self.lowres_ds = lowres_downsample((self.width, self.height))
        self.lowres = np.zeros(
            (math.ceil(self.height / self.lowres_ds), math.ceil(self.width / self.lowres_ds)),
            np.uint8,
        )
        self.counts = np.zeros(256, np.int64)
        self.levels = self._pyramid()
        self._spool = (
            _Spool(self.width // SPOOL_DOWNSAMPLE, self.path.parent) if self.levels else None
        )
        self.seconds = 0.0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._y = 0  # level-0 rows received
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mask-tiff-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ layout
    def _pyramid(self) -> list[int]:
        """Downsamples of the reduced levels: 4, 16, 64, ... until a level fits in one tile."""
        levels, ds = [], 1
        while max(self.width, self.height) // ds > self.tile:
            ds *= LEVEL_FACTOR
            if min(self.width // ds, self.height // ds) < 1:
                break
            levels.append(ds)
        return levels

    def _tiff_args(self, mpp: float) -> dict:
        px_per_cm = 1e4 / mpp
        return {
            "dtype": np.uint8,
            "tile": (self.tile, self.tile),
            "photometric": "minisblack",
            "compression": "zlib",
            "compressionargs": {"level": self.compression_level},
            "resolution": (px_per_cm, px_per_cm),
            "resolutionunit": "CENTIMETER",
            "metadata": None,
            "maxworkers": 1,
        }

    # ------------------------------------------------------------------ producer side
    def write(self, rows: np.ndarray) -> None:
        """Append level-0 rows (n, width) uint8 (`seconds` adds up the time spent here)."""
        start = time.perf_counter()
        try:
            self._write(rows)
        finally:
            self.seconds += time.perf_counter() - start

    def _write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected rows of width {self.width}, got shape {rows.shape}")
        if self._y + len(rows) > self.height:
            raise ValueError(f"more than {self.height} rows written")
        self._y += len(rows)
        self._pending.append(rows.astype(np.uint8, copy=False))
        self._pending_rows += len(rows)
        while self._pending_rows >= self.tile or (
            self._y == self.height and self._pending_rows > 0
        ):
            self._strip(min(self.tile, self._pending_rows))

    def _strip(self, n: int) -> None:
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        strip, rest = block[:n], block[n:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        y0 = self._y - self._pending_rows - n
        # torch's bincount counts uint8 as is; numpy's first widens to int64 (~7x slower)
        self.counts += torch.bincount(torch.from_numpy(strip.ravel()), minlength=256).numpy()
        lh, lw = self.lowres.shape
        start, low = sample_rows(strip, y0, self.lowres_ds, lw, lh, self.height)
        self.lowres[start : start + len(low)] = low
        if self._spool is not None:
            d = SPOOL_DOWNSAMPLE
            _, rows = sample_rows(strip, y0, d, self.width // d, self.height // d, self.height)
            try:
                self._spool.append(rows)
            except OSError as err:  # e.g. disk full: say which mask could not be written
                raise RuntimeError(f"writing {self.path} failed: {err}") from err
        self._put(np.ascontiguousarray(strip))

    def _put(self, item) -> None:
        while True:
            if self._error is not None or not self._thread.is_alive():
                self._raise()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        err = self._error or RuntimeError("the mask writer thread stopped")
        raise RuntimeError(f"writing {self.path} failed: {err}") from err

    def close(self) -> Path:
        """Finish the file (rows not written are 0) and move it to its final name."""
        if self._y < self.height:
            zeros = np.zeros((min(self.tile, self.height - self._y), self.width), np.uint8)
            while self._y < self.height:
                self.write(zeros[: self.height - self._y])
        self._put(_DONE)
        self._thread.join()
        if self._spool is not None:
            self._spool.close()
        if self._error is not None:
            self.tmp.unlink(missing_ok=True)
            self._raise()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop the writer thread and remove the partial file."""
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            while True:  # make room for the stop marker if the queue is full
                try:
                    self._queue.put_nowait(_DONE)
                    break
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass
            self._thread.join(timeout=30)
        if self._spool is not None:
            self._spool.close()
        self.tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        try:
            bigtiff = self.width * self.height > 2**31
            with tifffile.TiffWriter(self.tmp, bigtiff=bigtiff) as tw:
                tw.write(
                    self._level0_tiles(),
                    shape=(self.height, self.width),
                    subifds=len(self.levels),
                    description=self.description,
                    software="wsiseg",
                    **self._tiff_args(self.mpp),
                )
                for ds in self.levels:
                    w, h = self.width // ds, self.height // ds
                    tw.write(
                        self._tiles(self._level_strips(ds, w, h), w),
                        shape=(h, w),
                        subfiletype=1,
                        **self._tiff_args(self.mpp * ds),
                    )
        except BaseException as err:  # handed to the producer, which raises it
            if self._error is None:
                self._error = err

    def _level0_tiles(self) -> Iterator[np.ndarray]:
        def strips():
            while True:
                item = self._queue.get()
                if item is _DONE:
                    if self._error is not None:
                        raise RuntimeError("aborted")
                    return
                yield item

        yield from self._tiles(strips(), self.width)

    def _tiles(self, strips, width: int) -> Iterator[np.ndarray]:
        t = self.tile
        for strip in strips:
            for x in range(0, width, t):
                yield strip[:, x : x + t]

    def _level_strips(self, ds: int, w: int, h: int) -> Iterator[np.ndarray]:
        if ds == SPOOL_DOWNSAMPLE:
            yield from self._spool.strips(self.tile)
            return
        step = ds // self.lowres_ds  # both powers of two, lowres_ds <= 16 <= ds
        level = self.lowres[step // 2 :: step, step // 2 :: step][:h, :w]
        for y in range(0, h, self.tile):
            yield level[y : y + self.tile]


class GridStitcher:
    """Label tiles on a grid at the model's resolution -> level-0 rows for a `MaskTiffWriter`.

    The grid has `grid` = (cols, rows) cells of `cell` x `cell` pixels at the model's resolution,
    each `scale` level-0 pixels per model pixel (``model mpp / slide mpp``), cell (0, 0) at the
    slide's origin. Tiles arrive in row-major order, any cell may be missing (no tissue: 0).
    Level-0 pixel (Y, X) takes the label of model pixel (floor((Y + .5) / scale), floor((X + .5) /
    scale)): nearest resampling, exact when the slide is scanned at the model's mpp. Only the
    band of model rows still needed is kept.
    """

    def __init__(self, writer: MaskTiffWriter, grid: tuple[int, int], cell: int, scale: float):
        self.writer = writer
        self.cols, self.rows = (int(g) for g in grid)
        self.cell = int(cell)
        self.scale = float(scale)
        width = self.cols * self.cell
        self._identity = abs(self.scale - 1.0) < 1e-9
        x = (np.arange(writer.width) + 0.5) / self.scale
        self._tx = np.minimum(np.floor(x).astype(np.int64), width - 1)
        self._row = 0  # grid row being filled
        self._current = np.zeros((self.cell, width), np.uint8)
        self._band = np.zeros((0, width), np.uint8)
        self._band_start = 0  # model row of self._band[0]
        self._y = 0  # next level-0 row to emit

    @classmethod
    def for_geometry(cls, writer: MaskTiffWriter, grid, geometry, slide_mpp: float):
        """The stitcher of a `TileGeometry`'s grid: cells are its kept ``stride``² centres."""
        return cls(writer, grid, geometry.stride, geometry.scale(slide_mpp))

    def put(self, row: int, col: int, labels: np.ndarray) -> None:
        """Labels (cell, cell) of grid cell (row, col); cells come in row-major order."""
        if row < self._row:
            raise ValueError(f"grid row {row} arrived after row {self._row} (row-major order)")
        if labels.shape != (self.cell, self.cell):
            raise ValueError(f"expected a {self.cell}x{self.cell} tile, got {labels.shape}")
        self._advance(row)
        c = self.cell
        self._current[:, col * c : (col + 1) * c] = labels

    def finish(self) -> None:
        """Flush every remaining row (missing cells stay 0); the writer can then be closed."""
        self._advance(self.rows)
        self._emit(final=True)

    def _advance(self, row: int) -> None:
        while self._row < min(row, self.rows):
            self._band = np.concatenate([self._band, self._current])
            self._current = np.zeros_like(self._current)
            self._row += 1
            self._emit()

    def _emit(self, final: bool = False) -> None:
        height = self.writer.height
        band_end = self._band_start + len(self._band)
        # last level-0 row whose model row is available: floor((Y + .5) / s) < band_end
        stop = height if final else min(height, math.ceil(band_end * self.scale - 0.5))
        while self._y < stop:
            y1 = min(stop, self._y + self.writer.tile)
            ty = np.floor((np.arange(self._y, y1) + 0.5) / self.scale).astype(np.int64)
            ty = np.clip(ty, self._band_start, band_end - 1) - self._band_start
            if self._identity:
                rows = self._band[ty[0] : ty[-1] + 1, : self.writer.width]
            else:
                rows = self._band[ty][:, self._tx]
            self.writer.write(rows)
            self._y = y1
        # drop model rows no later level-0 row needs
        keep_from = int(np.floor((self._y + 0.5) / self.scale))
        drop = max(0, min(keep_from - self._band_start, len(self._band)))
        if drop:
            self._band = self._band[drop:]
            self._band_start += drop
