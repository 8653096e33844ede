"""Read benchmarks: `Slide` region reads vs raw JPEG decode, and DMMN's decode amplification.

Every figure is a ratio against a baseline measured in the same process on the same slide, so
results from different machines compare. Run through `make bench` (see docs/benchmarks.md).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from datamodules.slides import tilecache
from datamodules.slides.slide import Slide


def _fresh_cache(mb: int) -> None:
    os.environ["WSISEG_TILE_CACHE_MB"] = str(mb)
    tilecache._CACHE = None


def raw_jpeg_decode(path: Path, n_tiles: int = 400) -> float:
    """Megapixels per second of decoding level-0 JPEG tiles straight from the file bytes."""
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[0].keyframe
        fh = tf.filehandle
        blobs = []
        for i in range(min(n_tiles, len(page.dataoffsets))):
            fh.seek(page.dataoffsets[i])
            blobs.append(fh.read(page.databytecounts[i]))
        tables = page.jpegtables
        pixels = page.tilewidth * page.tilelength
    start = time.perf_counter()
    for blob in blobs:
        imagecodecs.jpeg_decode(blob, tables=tables, colorspace="YCBCR", outcolorspace="RGB")
    return len(blobs) * pixels / 1e6 / (time.perf_counter() - start)


def region_reads(path: Path, side: int, n: int, cache_mb: int) -> float:
    """Megapixels per second of `Slide.read` at level 0 for `n` random `side`² regions."""
    _fresh_cache(cache_mb)
    slide = Slide(path)
    w, h = slide.dimensions
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, w - side, n), rng.integers(0, h - side, n)
    start = time.perf_counter()
    for x, y in zip(xs, ys, strict=True):
        slide.read((int(x), int(y)), (side, side))
    return n * side * side / 1e6 / (time.perf_counter() - start)


def dmmn_amplification(path: Path, cache_mb: int, cells: int = 12) -> tuple[float, float]:
    """(decode amplification, seconds) of DMMN's 1024² field per 256² target over a block of
    `cells`² targets in raster order: tiles decoded / tiles covering the fields."""
    _fresh_cache(cache_mb)
    slide = Slide(path)
    level = slide.tiled_level(0)
    w, h = slide.dimensions
    x0, y0 = (w // 2 // 256 - cells // 2) * 256, (h // 2 // 256 - cells // 2) * 256
    covering: set[int] = set()
    start = time.perf_counter()
    for r in range(cells):
        for c in range(cells):
            x, y = x0 + c * 256 - 384, y0 + r * 256 - 384
            slide.read((x, y), (1024, 1024))
            covering |= level.tiles_covering(x, y, 1024, 1024)
    took = time.perf_counter() - start
    return slide.tile_stats.decoded / len(covering), took


def run(path: Path) -> list[tuple[str, str]]:
    rows = []
    raw = raw_jpeg_decode(path)
    rows.append(("raw JPEG tile decode (baseline)", f"{raw:.1f} MP/s = 1.00"))
    for side, n in ((1024, 40), (256, 400)):
        for mb, label in ((0, "no cache"), (512, "cache")):
            mps = region_reads(path, side, n, mb)
            rows.append(
                (
                    f"Slide.read {side}² level 0, random, {label}",
                    f"{mps:.1f} MP/s = {mps / raw:.2f}",
                )
            )
    amp0, t0 = dmmn_amplification(path, 0)
    amp1, t1 = dmmn_amplification(path, 512)
    rows.append(("DMMN 1024²-per-256² decode amplification, no cache", f"{amp0:.2f}"))
    rows.append(
        ("DMMN 1024²-per-256² decode amplification, cache", f"{amp1:.2f} ({t0 / t1:.1f}x faster)")
    )
    return rows


def near_integer_reads(path: Path, n: int = 100, side: int = 256) -> list[tuple[str, str]]:
    """`side`² reads at 4x of a pyramid whose 4x level has a near-integer downsample
    (CropBreastSlide.tiff: 4.0023), at random places on the 4x grid, against tiffslide reading
    the same level box; `Slide.read` with its near-integer copy and with the warp forced (the
    old path: ``NEAR_INTEGER_SHIFT = -1``). pyvips is compared when it is installed."""
    import tiffslide

    from datamodules.slides import slide as slide_mod

    slide = Slide(path, mpp=0.5)
    level = slide.best_level(2.0)
    w, h = slide.level_dimensions[level]
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, w - side, n), rng.integers(0, h - side, n)
    ds = slide.level_downsamples[level]
    ts = tiffslide.TiffSlide(path)

    def timed(read) -> float:
        read(int(xs[0]), int(ys[0]))
        start = time.perf_counter()
        for x, y in zip(xs, ys, strict=True):
            read(int(x), int(y))
        return (time.perf_counter() - start) / n * 1e3

    box = timed(lambda x, y: ts.read_region((math.ceil(x * ds), math.ceil(y * ds)), level,
                                            (side, side), as_array=True))  # fmt: skip
    rows = [(f"tiffslide level-{level} box, {side}² (baseline)", f"{box:.2f} ms = 1.00")]
    try:
        import pyvips

        def vips(x, y):
            img = pyvips.Image.new_from_file(str(path), page=level)
            return img.crop(x, y, side, side).numpy()

        t = timed(vips)
        rows.append((f"pyvips page {level} crop, {side}²", f"{t:.2f} ms = {t / box:.2f}"))
    except ImportError:
        rows.append(("pyvips", "not installed in this environment: not compared"))
    saved = slide_mod.NEAR_INTEGER_SHIFT
    for mb, label in ((0, "no cache"), (512, "cache")):
        _fresh_cache(mb)
        t = timed(lambda x, y: slide.read((4 * x, 4 * y), (side, side), mpp=2.0))
        rows.append(
            (f"Slide.read at 4x, near-integer copy, {label}", f"{t:.2f} ms = {t / box:.2f}")
        )
    try:
        slide_mod.NEAR_INTEGER_SHIFT = -1.0
        for mb, label in ((0, "no cache"), (512, "cache")):
            _fresh_cache(mb)
            t = timed(lambda x, y: slide.read((4 * x, 4 * y), (side, side), mpp=2.0))
            rows.append(
                (f"Slide.read at 4x, warped (the old path), {label}", f"{t:.2f} ms = {t / box:.2f}")
            )
    finally:
        slide_mod.NEAR_INTEGER_SHIFT = saved
    return rows
