"""Whole-slide inference against the read rate: `wsiseg segment` with the trivial model over the
one-process view-read rate of the same slide, and its decode amplification, per worker count.

    python -m benchmarks.read_rate data/bench/slide_00.tiff ../shared/data/real/small_HE.svs

Per slide: the view-read rate (`bench_segment.view_reads`: the first 1000 tissue targets through
DMMN's view in this process, no model), then `segment` (this process, the command's own code)
with the trivial 1x1-conv checkpoint of `bench_segment` at each `--workers` count, whole slide;
the ratio is segment's steady tiles/s over the view-read rate measured just before it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

from . import bench_reads, bench_segment


def segment(ckpt: Path, slide: Path, out: Path, workers: int, max_tiles: int = 0) -> dict:
    """`wsiseg segment --num-workers W` in this process: summary JSON + steady tiles/s."""
    from lightning_modules.cli.checkpoints import load_method
    from lightning_modules.cli.commands.segment import build_parser, run

    args = build_parser().parse_args(
        [str(slide), "--ckpt", str(ckpt), "--out", str(out), "--overwrite", "--no-progress",
         "--num-workers", str(workers)]
    )  # fmt: skip
    bench_reads._fresh_cache(512)
    clock = bench_segment.BatchClock()
    limit = {"limit_predict_batches": -(-max_tiles // args.batch_size)} if max_tiles else {}
    run(args, [slide], load_method(ckpt), out, callbacks=[clock], **limit)
    info = json.loads((out / f"{slide.stem}.json").read_text())
    return {**info, "steady_tiles_per_second": clock.tiles_per_second}


def band_splits(slide: Path, workers: int = 2) -> list[tuple[str, float]]:
    """Decode amplification if `workers` workers with private caches (unbounded) split the
    slide's DMMN targets by bands of rows, halves or column halves: the stored tiles each
    worker's targets touch, summed over workers, over the distinct tiles."""
    from datamodules.wholeslide import TileDataset, TrackedSlide, plan_slide

    job = plan_slide(TrackedSlide(slide), bench_segment.VIEW, "split")
    data = TileDataset([job], bench_segment.VIEW)
    sets = [set(data[i]["meta"]["tiles"].tolist()) for i in range(len(data))]
    rows, cols, n = job.cells[:, 0], job.cells[:, 1], len(sets)
    splits = {f"bands of {h} rows": [(r // h) % workers for r in rows] for h in (1, 2, 4, 8)}
    splits["halves"] = [i * workers // n for i in range(n)]
    splits["column halves"] = [c * workers // job.grid[0] for c in cols]
    distinct = len(set().union(*sets))
    return [
        (name, sum(len(set().union(set(), *(t for t, a in zip(sets, who, strict=True) if a == w)))
                   for w in range(workers)) / distinct)
        for name, who in splits.items()
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("slides", nargs="+", type=Path)
    p.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader workers")
    p.add_argument("--work", type=Path, default=Path("data/bench/read_rate"), help="outputs")
    p.add_argument("--max-tiles", type=int, default=0, help="stop after this many (0: all)")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads of this process")
    p.add_argument("--band-splits", action="store_true", help="only the band-split figures")
    args = p.parse_args()
    if args.band_splits:
        for slide in args.slides:
            for name, amp in band_splits(slide, max(args.workers)):
                print(f"{slide.name}: {name}: decode amplification {amp:.2f}")
        return
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    ckpt = bench_segment.checkpoints(args.work / "checkpoints")["trivial (1x1 conv)"]
    print("| slide | workers | view reads, 1 process | segment (steady / end to end) | ratio "
          "| decode amplification | stages (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|")
    for slide in args.slides:
        for workers in args.workers:
            reads, _ = bench_segment.view_reads(slide, 1000)
            start = time.perf_counter()
            info = segment(ckpt, slide, args.work / "segment", workers, args.max_tiles)
            wall = time.perf_counter() - start
            tps, amp = info["steady_tiles_per_second"], info["decode_amplification"]
            stages = info.get("stage_seconds") or {}
            stage_text = ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) or "-"
            print(
                f"| {slide.name} | {workers} | {reads:.0f} tiles/s | {tps:.0f} / "
                f"{info['tiles_per_second']:.0f} tiles/s ({info['tiles']} tiles, {wall:.0f} s) | "
                f"{tps / reads:.3f} | {amp if amp is None else round(amp, 3)} | {stage_text} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
