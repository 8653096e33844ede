"""Decoded tiles shared by a process and its forked DataLoader workers: each tile decoded once.

With one cache per worker, tiles that neighbouring targets in different workers' batches share
are decoded once per worker: decode amplification 1.25 with 2 workers on a pyramid slide, 1.94
on a one-level SVS whose 10x and 5x views come from level 0. Splitting the slide into bands per
worker cannot fix a small slide (12 rows of DMMN targets: any two-way split decodes >= 1.36x),
so the workers share one table in shared memory instead. It is set-associative (``WAYS`` slots
per set, least recently used out); a miss claims its slot before decoding, so a worker that
needs a tile another one is decoding waits for it rather than decoding it too. One lock guards
the table; tiles are copied in and out under it (a 256² RGB tile: ~20 us).
"""

from __future__ import annotations

import multiprocessing
import time
import zlib

import numpy as np
import torch

WAYS = 8
FREE, DECODING, READY = 0, 1, 2
#: A claim older than this is given up (its owner died or failed): decode privately.
WAIT_SECONDS = 10.0


def tile_key(level_key: str, index: int) -> int:
    """A 63-bit integer for (file:level, tile index)."""
    return ((zlib.crc32(level_key.encode()) & 0x7FFFFFFF) << 32) | (int(index) & 0xFFFFFFFF)


class SharedTileCache:
    """`max_bytes` of tiles of at most `slot_bytes` each, in shared memory (made before fork).

    Same interface as `TileCache` (``get``, ``put``, ``discard``) plus the claim: a ``get`` that
    misses makes this process the tile's decoder until it calls ``put`` or ``discard``.
    """

    def __init__(self, max_bytes: int, slot_bytes: int):
        self.slot_bytes = int(slot_bytes)
        sets = max(1, int(max_bytes) // (self.slot_bytes * WAYS))
        n = sets * WAYS
        self.sets = sets
        self.max_bytes = n * self.slot_bytes
        self._data = torch.empty((n, self.slot_bytes), dtype=torch.uint8).share_memory_()
        self._keys = torch.full((n,), -1, dtype=torch.int64).share_memory_()
        self._state = torch.zeros(n, dtype=torch.int64).share_memory_()  # FREE/DECODING/READY
        self._shape = torch.zeros((n, 3), dtype=torch.int64).share_memory_()
        self._stamp = torch.zeros(n + 1, dtype=torch.int64).share_memory_()  # LRU; [n]: clock
        self._lock = multiprocessing.get_context("fork").Lock()
        self._claims: dict = {}  # this process's claimed keys -> slot

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.slot_bytes

    def _arrays(self):
        return (self._data.numpy(), self._keys.numpy(), self._state.numpy(),
                self._shape.numpy(), self._stamp.numpy())  # fmt: skip

    @staticmethod
    def _touch(stamp: np.ndarray, slot: int) -> None:
        stamp[-1] += 1
        stamp[slot] = stamp[-1]

    def _ways(self, k: int) -> slice:
        s = (k * 0x9E3779B1 >> 7) % self.sets
        return slice(s * WAYS, (s + 1) * WAYS)

    def get(self, key) -> np.ndarray | None:
        k = tile_key(*key)
        data, keys, state, shape, stamp = self._arrays()
        ways = self._ways(k)
        waited = time.perf_counter()
        while True:
            with self._lock:
                hit = np.flatnonzero(keys[ways] == k)
                if hit.size:
                    slot = ways.start + int(hit[0])
                    if state[slot] == READY:
                        self._touch(stamp, slot)
                        h, w, c = shape[slot]
                        return data[slot, : h * w * c].reshape(h, w, c).copy()
                else:  # claim the least recently used slot that nobody is decoding into
                    free = np.flatnonzero(state[ways] != DECODING)
                    if not free.size:
                        return None
                    slot = ways.start + int(free[np.argmin(stamp[ways][free])])
                    keys[slot], state[slot] = k, DECODING
                    self._touch(stamp, slot)
                    self._claims[k] = slot
                    return None
            if time.perf_counter() - waited > WAIT_SECONDS:
                return None  # another worker is decoding it: wait, but not forever
            time.sleep(0.0002)

    def put(self, key, tile: np.ndarray) -> None:
        k = tile_key(*key)
        slot = self._claims.pop(k, None)
        if slot is None:
            return
        data, keys, state, shape, stamp = self._arrays()
        tile = np.ascontiguousarray(tile)
        with self._lock:
            if keys[slot] != k:  # given up and taken over meanwhile
                return
            if tile.ndim != 3 or not self.fits(tile.nbytes):
                keys[slot], state[slot] = -1, FREE
                return
            data[slot, : tile.nbytes] = tile.reshape(-1)
            shape[slot] = tile.shape
            state[slot] = READY

    def discard(self, key) -> None:
        """Give up a claim (the decode failed): waiting workers then decode it themselves."""
        k = tile_key(*key)
        slot = self._claims.pop(k, None)
        if slot is None:
            return
        _, keys, state, _, _ = self._arrays()
        with self._lock:
            if keys[slot] == k:
                keys[slot], state[slot] = -1, FREE
