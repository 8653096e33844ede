"""Decoded-tile reads with one LRU cache per process, so overlapping fields decode each tile once.

DMMN reads a 1024² field for every 256² output: without a cache every pixel is decoded ~16 times.
Tiles (or strips) are decoded through tifffile's own codecs and kept, keyed by (file, level, tile
index), in a cache whose budget is shared by every slide of the process
(``WSISEG_TILE_CACHE_MB``, default 512; 0 turns it off). Counters say how many tiles were decoded
and how many reads the cache answered, for the decode-amplification figure.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


class TileCache:
    """Byte-bounded LRU of decoded tiles, safe to use from several threads."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            tile = self._items.get(key)
            if tile is not None:
                self._items.move_to_end(key)
            return tile

    def put(self, key, tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = tile
            self.bytes += tile.nbytes
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes

    def discard(self, key) -> None:
        """Nothing to undo: a failed decode never entered the cache."""

    def fits(self, nbytes: int) -> bool:
        return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


_CACHE: TileCache | None = None
_CACHE_PID: int | None = None
_SHARED = None  # a SharedTileCache this process reads through (DataLoader workers)


def use_shared_cache(cache) -> None:
    """Read through `cache` (a `shared_cache.SharedTileCache`; None: the process cache again)."""
    global _SHARED
    _SHARED = cache


def process_cache() -> TileCache:
    """The tile cache of this process (a forked worker starts with an empty one), or the
    shared one it was told to use."""
    return _SHARED if _SHARED is not None else _local_cache()


def _local_cache() -> TileCache:
    global _CACHE, _CACHE_PID
    if _CACHE is None or _CACHE_PID != os.getpid():
        mb = float(os.environ.get("WSISEG_TILE_CACHE_MB", "512"))
        _CACHE, _CACHE_PID = TileCache(int(mb * 2**20)), os.getpid()
    return _CACHE


@dataclass
class TileStats:
    """Per-slide counters in this process."""

    decoded: int = 0
    hits: int = 0


class TiledLevel:
    """One pyramid level of a TIFF whose tiles or strips tifffile can decode one by one."""

    def __init__(self, key: str, page, filehandle):
        self.key, self.page, self.fh = key, page, filehandle
        h, w = page.shape[:2]
        self.width, self.height = w, h
        if page.is_tiled:
            self.tile_w, self.tile_h = page.tilewidth, page.tilelength
        else:  # strips: full-width tiles
            self.tile_w, self.tile_h = w, page.rowsperstrip or h
        self.across = -(-w // self.tile_w)
        self.down = -(-h // self.tile_h)
        self.tile_bytes = self.tile_w * self.tile_h * int(getattr(page, "samplesperpixel", 3))

    @staticmethod
    def supports(page) -> bool:
        """Contiguous RGB(A)/grey 8-bit pages with one segment per tile: the common WSI case."""
        try:
            return (
                page.planarconfig == 1
                and page.dtype == np.uint8
                and page.imagedepth == 1
                and len(page.dataoffsets) > 0
            )
        except AttributeError:
            return False

    def tile(self, index: int, cache: TileCache, stats: TileStats) -> np.ndarray:
        if not cache.fits(self.tile_bytes):  # e.g. whole-image strips: not worth sharing
            cache = _local_cache()
        key = (self.key, index)
        tile = cache.get(key)
        if tile is not None:
            stats.hits += 1
            return tile
        try:
            offset, count = self.page.dataoffsets[index], self.page.databytecounts[index]
            with self.fh.lock:
                self.fh.seek(offset)
                data = self.fh.read(count)
            decoded, _, _ = self.page.decode(data, index, jpegtables=self.page.jpegtables)
            tile = np.ascontiguousarray(decoded.reshape(decoded.shape[-3:]))
        except BaseException:
            cache.discard(key)  # a shared cache's waiters decode it themselves
            raise
        stats.decoded += 1
        cache.put(key, tile)
        return tile

    def read(self, x: int, y: int, w: int, h: int, cache: TileCache, stats: TileStats):
        """An in-bounds (h, w, c) region assembled from the tiles it touches."""
        tx0, ty0 = x // self.tile_w, y // self.tile_h
        tx1, ty1 = (x + w - 1) // self.tile_w, (y + h - 1) // self.tile_h
        out = None
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                tile = self.tile(ty * self.across + tx, cache, stats)
                if out is None:
                    out = np.empty((h, w, tile.shape[2]), tile.dtype)
                # overlap of this tile with the region, in slide coordinates
                sx0, sy0 = max(x, tx * self.tile_w), max(y, ty * self.tile_h)
                sx1 = min(x + w, (tx + 1) * self.tile_w, tx * self.tile_w + tile.shape[1])
                sy1 = min(y + h, (ty + 1) * self.tile_h, ty * self.tile_h + tile.shape[0])
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[
                    sy0 - ty * self.tile_h : sy1 - ty * self.tile_h,
                    sx0 - tx * self.tile_w : sx1 - tx * self.tile_w,
                ]
        return out

    def tiles_covering(self, x: int, y: int, w: int, h: int) -> set[int]:
        """Indices of the tiles a region touches, clipped to the level (decode amplification)."""
        x0, y0 = max(x, 0), max(y, 0)
        w, h = min(x + w, self.width) - x0, min(y + h, self.height) - y0
        if w <= 0 or h <= 0:
            return set()
        x, y = x0, y0
        tx0, ty0 = x // self.tile_w, y // self.tile_h
        tx1, ty1 = (x + w - 1) // self.tile_w, (y + h - 1) // self.tile_h
        return {ty * self.across + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)}
