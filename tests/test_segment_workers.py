"""`wsiseg segment` with DataLoader workers: one shared decoded-tile cache, so a tile is decoded
once however many workers read it, and the mask is the same as without workers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from datamodules.slides.shared_cache import SharedTileCache
from datamodules.views.multimag import MultiMagView
from lightning_modules.base import SegmentationTask
from lightning_modules.cli.checkpoints import TrainedMethod
from lightning_modules.cli.commands.segment import build_parser, run


class RedQuartile(nn.Module):
    """Class = red value // 64 of view 0: exact (no floating-point ties between code paths,
    which a real net's arg-max can show between batches in shared and private memory), and
    any tile read wrongly through the shared cache changes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = torch.round((x[:, 0, 0] * 0.25 + 0.5) * 255)  # undo the base task's normalisation
        return nn.functional.one_hot((red // 64).long().clamp(0, 3), 4).permute(0, 3, 1, 2).float()


class RedMethod(SegmentationTask):
    def __init__(self):
        super().__init__(num_classes=4, num_overlays=0)

    def configure_models(self) -> None:
        self.net = RedQuartile()


def _segment(slide: Path, out: Path, workers: int, *more: str) -> tuple[np.ndarray, dict]:
    """DMMN's read pattern (MultiMagView: 256² targets in a 1024² field at 20x, 10x, 5x)."""
    args = build_parser().parse_args(
        [str(slide), "--ckpt", "none", "--out", str(out), "--no-progress", "--accelerator", "cpu",
         "--num-workers", str(workers), "--batch-size", "4", *more]
    )  # fmt: skip
    view = MultiMagView(256, 20.0, (1, 2, 4))
    method = TrainedMethod(RedMethod(), view, "tests.RedMethod", Path("none"), None)
    assert run(args, [slide], method, out) == 0
    info = json.loads((out / f"{slide.stem}.json").read_text())
    return tifffile.imread(out / f"{slide.stem}_mask.tiff"), info


@pytest.mark.parametrize("name", ["synthetic", "small_HE.svs"])
def test_two_workers_decode_each_tile_once(synthetic_root, real_data, tmp_path, name):
    """Before the shared cache: 1.25 (pyramid) and 1.94 (one-level SVS) with 2 workers."""
    slide = synthetic_root / "slide_02.tiff" if name == "synthetic" else real_data / name
    mask0, info0 = _segment(slide, tmp_path / "w0", 0)
    threads = torch.get_num_threads()
    mask2, info2 = _segment(slide, tmp_path / "w2", 2, "--threads", "1")
    torch.set_num_threads(threads)
    assert info2["num_workers"] == 2 and info2["tiles"] == info0["tiles"] > 8
    assert info2["threads"] == 1 and info0["threads"] is None
    assert info2["decode_amplification"] <= 1.05
    assert len(np.unique(mask2)) >= 3 and np.array_equal(mask0, mask2)
    assert set(info2["stage_seconds"]) == {"read", "wait", "transfer", "model", "stitch", "write"}
    assert info2["stage_seconds"]["read"] > 0 and info2["stage_seconds"]["model"] > 0


def _worker(cache, key, tile, barrier, out):
    barrier.wait()
    got = cache.get(key)
    if got is None:  # this process claimed it: "decode" slowly, then publish
        import time

        time.sleep(0.2)
        cache.put(key, tile)
        out.put("decoded")
    else:
        out.put("hit" if np.array_equal(got, tile) else "wrong")


def test_shared_cache_claims_a_miss():
    """Two processes miss the same tile at once: one decodes, the other waits for its copy; a
    discarded claim (failed decode) lets the next reader decode."""
    cache = SharedTileCache(2**20, 256 * 256 * 3)
    tile = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(cache, ("a:0", 7), tile, barrier, out))
             for _ in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(out.get(timeout=5) for _ in procs) == ["decoded", "hit"]
    assert np.array_equal(cache.get(("a:0", 7)), tile)  # and this process sees it too
    assert cache.get(("a:0", 8)) is None  # claimed ...
    cache.discard(("a:0", 8))
    assert cache.get(("a:0", 8)) is None  # ... given up, so claimed again rather than waited on
    assert not cache.fits(256 * 256 * 3 + 1)
