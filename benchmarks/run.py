"""`make bench`: generate (once) a 16k² synthetic slide and print the benchmark tables.

Reads (`bench_reads`, near-integer levels on the real CropBreastSlide.tiff), class-balancing
deformation (`bench_deform`), loader and training throughput per family (`bench_train`) and
whole-slide segmentation (`bench_segment`), each against a baseline measured in this process.
`--quick` segments fewer tiles (about 1 minute less); `--skip-*` leave sections out.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from datamodules.synthetic.generator import ensure_dataset

from . import bench_deform, bench_reads, bench_segment, bench_train

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n| {title.ljust(width)} | result (ratio to the baseline) |")
    print(f"|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/bench", help="folder for the benchmark slide")
    p.add_argument("--size", type=int, default=16384, help="slide side in pixels (>= 16384)")
    p.add_argument("--quick", action="store_true", help="trivial model: 512 tiles, DMMN-M3: 64")
    p.add_argument(
        "--dmmn-tiles", type=int, default=256, help="DMMN-M3 segments this many (0: whole slide)"
    )
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads of this process")
    p.add_argument("--skip-reads", action="store_true", help="no read tables")
    p.add_argument("--skip-train", action="store_true", help="no deformation / loader tables")
    p.add_argument(
        "--skip-fit", action="store_true", help="no paper-width training on this CPU (~4 min)"
    )
    p.add_argument("--skip-segment", action="store_true", help="no whole-slide segmentation")
    args = p.parse_args()
    start = time.perf_counter()
    manifest = ensure_dataset(args.data, n_slides=1, size=args.size, splits=(1, 0, 0))
    slide = Path(args.data) / manifest["slides"][0]["files"]["image"]
    print(f"benchmark slide {slide} ({args.size}², ready in {time.perf_counter() - start:.1f} s)")
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads"
    )
    if not args.skip_reads:
        table("reads", bench_reads.run(slide))
        crop = REAL / "CropBreastSlide.tiff"
        if crop.is_file():
            table(
                "near-integer level: CropBreastSlide.tiff at 4x (ms per read)",
                bench_reads.near_integer_reads(crop),
            )
    if not args.skip_train:
        deform_rows, deform_s = bench_deform.run(slide)
        roots = bench_train.training_sets(Path(args.data))
        rows, rates = bench_train.run(roots, train=not args.skip_fit)
        if "DMMN-M3" in rates:
            step = 1 / rates["DMMN-M3"]
            deform_rows.append(
                (
                    "share of a DMMN-M3 training step (paper width, this CPU), per sample",
                    f"{deform_s / step:.1%} of {step:.1f} s",
                )
            )
        table("class-balancing deformation (1 torch thread)", deform_rows)
        table("loader and training throughput per family (1 loader worker = 1 process)", rows)
    if args.skip_segment:
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
        return
    trivial_tiles = 512 if args.quick else None
    dmmn_tiles = 64 if args.quick else (args.dmmn_tiles or None)
    rows = bench_segment.run(slide, Path(args.data) / "work", trivial_tiles, dmmn_tiles)
    table("whole-slide segmentation (wsiseg segment, 2 workers, batch 8)", rows)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
