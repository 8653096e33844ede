"""`make bench`: generate (once) a 16k² synthetic slide and print the benchmark table."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from datamodules.synthetic import ensure_dataset

from . import bench_reads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="data/bench", help="folder for the benchmark slide")
    p.add_argument("--size", type=int, default=16384, help="slide side in pixels (>= 16384)")
    args = p.parse_args()
    start = time.perf_counter()
    manifest = ensure_dataset(args.data, n_slides=1, size=args.size, splits=(1, 0, 0))
    slide = Path(args.data) / manifest["slides"][0]["files"]["image"]
    print(f"benchmark slide {slide} ({args.size}², ready in {time.perf_counter() - start:.1f} s)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    rows = bench_reads.run(slide)
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'measure'.ljust(width)} | result (ratio to the first row) |")
    print(f"|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
