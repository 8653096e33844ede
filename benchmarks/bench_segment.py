"""Whole-slide segmentation throughput: `wsiseg segment`'s own code path, in this process.

Two random-init methods at DMMN's geometry (256² targets at 20x, each read as the 1024²
three-magnification field): `PixelModel`, a 1x1 convolution on the 20x view (the I/O-bound
case: reads, batching, stitching, mask writing), and DMMN-M3 at width 0.25 (the reduced CPU
schedule's, experiments/schedule/cpu_budget.yaml; the compute-bound case). Each is saved as a
Lightning checkpoint with its class path and view, loaded by `load_method` and run by
`lightning_modules.cli.commands.segment.run` with the command's defaults (2 DataLoader workers,
batch 8). Baselines from the same process: raw JPEG tile decode (`bench_reads`) and reading the
same tiles through the view in one process without a model.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from datamodules.slides.slide import Slide
from datamodules.views.multimag import MultiMagView
from datamodules.wholeslide import TileDataset, TrackedSlide, plan_slide
from lightning_modules.base import SegmentationTask

from . import bench_reads

VIEW_PATH = "datamodules.views.multimag.MultiMagView"
VIEW_ARGS = {"size": 256, "magnification": 20.0, "scales": [1, 2, 4]}
VIEW = MultiMagView(**{**VIEW_ARGS, "scales": (1, 2, 4)})
DMMN_WIDTH = 0.25  # experiments/schedule/cpu_budget.yaml


class _TargetView(nn.Module):
    """A 1x1 convolution on view 0 (the target view) of a multi-view batch."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, 0] if x.ndim == 5 else x)


class PixelModel(SegmentationTask):
    """The trivial method: per-pixel colour -> class, no context (I/O-bound benchmark)."""

    def __init__(self, num_classes: int = 4, class_map: str | None = "bach"):
        super().__init__(num_classes=num_classes, class_map=class_map, num_overlays=0)

    def configure_models(self) -> None:
        self.net = _TargetView(self.num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Normalises only the view the net uses (the base task would convert all three)."""
        return self.net(self.normalize(image[:, :1] if image.ndim == 5 else image))


def save_checkpoint(model: SegmentationTask, path: Path) -> Path:
    """A checkpoint as `wsiseg fit` writes one: weights, class path, hparams, the view."""
    cls = type(model)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {
                **dict(model.hparams),
                "_class_path": f"{cls.__module__}.{cls.__qualname__}",
            },
            "datamodule_hyper_parameters": {
                "view": {"class_path": VIEW_PATH, "init_args": VIEW_ARGS}
            },
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


def checkpoints(folder: Path) -> dict[str, Path]:
    """Random-init (seed 0) checkpoints of both benchmark methods under `folder`."""
    from lightning_modules.dmmn import DMMN

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return {
        "trivial (1x1 conv)": save_checkpoint(PixelModel(), folder / "trivial.ckpt"),
        f"DMMN-M3 (width {DMMN_WIDTH})": save_checkpoint(
            DMMN(arch="m3", width=DMMN_WIDTH), folder / "dmmn_m3.ckpt"
        ),
    }


def view_reads(path: Path, n: int) -> tuple[float, int]:
    """(tiles/s, stored tiles decoded) of reading the first `n` tissue tiles through `VIEW` in
    this process, no model (`TileDataset`, as the segment workers do; fresh tile cache)."""
    bench_reads._fresh_cache(512)
    job = plan_slide(TrackedSlide(path), VIEW, "bench")
    data = TileDataset([job], VIEW)
    n = min(n, len(data))
    start = time.perf_counter()
    for i in range(n):
        data[i]
    return n / (time.perf_counter() - start), job.slide.tile_stats.decoded


class BatchClock(pl.Callback):
    """Steady-state tiles/s: tiles after the first batch / time from the first to the last
    batch (leaves out worker start-up and the final mask flush of a partial run)."""

    def __init__(self):
        self.times: list[float] = []
        self.sizes: list[int] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        self.times.append(time.perf_counter())
        self.sizes.append(len(batch["meta"]["row"]))

    @property
    def tiles_per_second(self) -> float:
        return sum(self.sizes[1:]) / (self.times[-1] - self.times[0])


def segment(ckpt: Path, slide: Path, out: Path, max_tiles: int | None, threads=None) -> dict:
    """`wsiseg segment --ckpt CKPT SLIDE --out OUT [--threads N]` in this process (otherwise
    the command's defaults), stopped after `max_tiles` tiles (raster order) if given: the
    slide's summary JSON plus ``steady_tiles_per_second`` (`BatchClock`)."""
    import torch

    from lightning_modules.cli.checkpoints import load_method
    from lightning_modules.cli.commands.segment import build_parser, run

    argv = [str(slide), "--ckpt", str(ckpt), "--out", str(out), "--overwrite", "--no-progress"]
    args = build_parser().parse_args(argv + (["--threads", str(threads)] if threads else []))
    own = torch.get_num_threads()
    bench_reads._fresh_cache(512)
    limit = {} if max_tiles is None else {"limit_predict_batches": -(-max_tiles // args.batch_size)}
    clock = BatchClock()
    try:
        run(args, [slide], load_method(ckpt), out, callbacks=[clock], **limit)
    finally:
        torch.set_num_threads(own)  # the next row measures with this process's own setting
    info = json.loads((out / f"{slide.stem}.json").read_text())
    return {**info, "steady_tiles_per_second": clock.tiles_per_second}


def run(
    slide: Path, work: Path, trivial_tiles: int | None = None, dmmn_tiles: int | None = 256
) -> list[tuple[str, str]]:
    """Benchmark rows; each method segments the first `*_tiles` tissue tiles (None: all)."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no GPU/TPU banners
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    level0 = Slide(slide).tiled_level(0)
    tile_px = level0.tile_w * level0.tile_h  # every level of the synthetic slides: 256²
    raw = bench_reads.raw_jpeg_decode(slide)
    n = 1000
    reads, decoded = view_reads(slide, n)
    rows = [
        ("raw JPEG tile decode (baseline)", f"{raw:.1f} MP/s = 1.00"),
        (
            f"view reads, first {n} tiles, 1 process, no model",
            f"{reads:.1f} tiles/s = {reads * decoded * tile_px / 1e6 / n / raw:.2f} of raw decode",
        ),
    ]
    (trivial, trivial_ckpt), (dmmn, dmmn_ckpt) = checkpoints(work / "checkpoints").items()
    plan = [  # a light model wants the cores left to the workers, a heavy one all of them
        (f"{trivial}, --threads 1", trivial_ckpt, trivial_tiles, 1),
        (f"{trivial}, default threads", trivial_ckpt, trivial_tiles, None),
        (dmmn, dmmn_ckpt, dmmn_tiles, None),
    ]
    for name, ckpt, limit, threads in plan:
        before = bench_reads.raw_jpeg_decode(slide)
        info = segment(ckpt, slide, work / "segment", limit, threads)
        after = bench_reads.raw_jpeg_decode(slide)
        base = (before * after) ** 0.5  # the baseline around this run: the load drifts
        tps, tiles = info["steady_tiles_per_second"], info["tiles"]
        amp = info["decode_amplification"]
        decoded_mp = info["tiles_decoded"] * tile_px / 1e6 / tiles  # per segmented tile
        rows.append(
            (
                f"segment, {name}, {tiles} tiles",
                f"{tps:.1f} tiles/s = {tps / reads:.3f} of the view reads above = "
                f"{tps * decoded_mp / base:.3f} of raw decode "
                f"({before:.0f} / {after:.0f} MP/s before / after; {decoded_mp:.3f} MP decoded "
                f"per tile); end to end {info['tiles_per_second']:.1f} tiles/s; "
                f"decode amplification {amp:.2f}",
            )
        )
    return rows
