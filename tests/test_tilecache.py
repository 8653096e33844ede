"""The decoded-tile cache in `Slide`: exact pixels; DMMN fields decode each tile once."""

import numpy as np
import pytest
import tifffile

from datamodules.slides import tilecache
from datamodules.slides.slide import Slide
from datamodules.views.multimag import MultiMagView


@pytest.fixture
def tiled_slide(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (2048, 2048, 3), np.uint8)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(
        path,
        img,
        photometric="rgb",
        tile=(256, 256),
        compression="zlib",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    return path, img


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(tilecache, "_CACHE", None)
    yield


def test_reads_are_exact(tiled_slide):
    path, img = tiled_slide
    s = Slide(path)
    assert s.tiled_level(0) is not None
    for x, y, w, h in [(0, 0, 256, 256), (100, 300, 700, 33), (1990, 2000, 58, 48)]:
        assert np.array_equal(s.read((x, y), (w, h)), img[y : y + h, x : x + w])


def test_overlapping_fields_decode_each_tile_once(tiled_slide):
    """DMMN reads a 1024² field per 256² target: with the cache, amplification is 1."""
    path, _ = tiled_slide
    s = Slide(path)
    level = s.tiled_level(0)
    covering = set()
    for ty in range(4, 8):
        for tx in range(4, 8):
            x, y = tx * 256 - 384, ty * 256 - 384  # the field around target (tx, ty)
            s.read((x, y), (1024, 1024))
            covering |= level.tiles_covering(x, y, 1024, 1024)
    assert s.tile_stats.decoded == len(covering)
    # without the cache every one of these reads would have decoded again (~8x here)
    assert s.tile_stats.hits + s.tile_stats.decoded > 5 * len(covering)


def test_cache_off_decodes_every_time(tiled_slide, monkeypatch):
    monkeypatch.setenv("WSISEG_TILE_CACHE_MB", "0")
    path, _ = tiled_slide
    s = Slide(path)
    s.read((0, 0), (512, 512))
    s.read((0, 0), (512, 512))
    assert s.tile_stats.decoded == 8 and s.tile_stats.hits == 0


def test_multimag_views_match_uncached(tiled_slide, monkeypatch):
    path, _ = tiled_slide
    view = MultiMagView()
    labels = type(
        "Zero", (), {"read": lambda self, loc, size, mpp: np.zeros(size[::-1], np.uint8)}
    )()
    cached, _ = view.read(Slide(path, mpp=0.5), labels, (768, 768))
    monkeypatch.setenv("WSISEG_TILE_CACHE_MB", "0")
    monkeypatch.setattr(tilecache, "_CACHE", None)
    plain, _ = view.read(Slide(path, mpp=0.5), labels, (768, 768))
    assert np.array_equal(cached, plain)


def test_lru_evicts_by_bytes():
    cache = tilecache.TileCache(max_bytes=3 * 100)
    for i in range(5):
        cache.put(i, np.zeros(100, np.uint8))
    assert cache.bytes == 300 and cache.get(0) is None and cache.get(4) is not None
