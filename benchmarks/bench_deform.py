"""Class-balancing deformation cost: elasticdeform (the baseline) against the torch warp.

One 1024² DMMN field with its label, the same control grid for both (seeded), one torch thread
(what a DataLoader worker has), then the torch warp batched 8 fields at a time.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from datamodules.sampling.balancing import control_grid, elastic_deform
from datamodules.sampling.elastic_torch import deform_batch, deform_field
from datamodules.slides.slide import Slide


def _seconds(fn, repeat: int) -> float:
    fn(0)
    start = time.perf_counter()
    for k in range(1, repeat + 1):
        fn(k)
    return (time.perf_counter() - start) / repeat


def run(slide_path, repeat: int = 5) -> tuple[list[tuple[str, str]], float]:
    """Rows, and the torch warp's seconds per field (for the share of a training step)."""
    image = Slide(slide_path).read((4096, 4096), (1024, 1024))
    label = (image[..., 1] // 64).astype(np.uint8)  # four regions with real boundaries
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = _seconds(lambda k: elastic_deform(image, label, k), repeat)
        ours = _seconds(lambda k: deform_field(image, label, k), repeat)
        imgs = torch.from_numpy(np.stack([image] * 8)).permute(0, 3, 1, 2)
        labs = torch.from_numpy(np.stack([label] * 8))
        grids = torch.from_numpy(np.stack([control_grid(k) for k in range(8)]))
        batched = _seconds(lambda k: deform_batch(imgs, labs, grids), max(1, repeat // 2)) / 8
    finally:
        torch.set_num_threads(threads)
    rows = [
        ("elasticdeform, 1024² field + label (baseline)", f"{ref:.3f} s = 1.00"),
        ("torch warp (elastic_torch), 1 field", f"{ours:.3f} s = {ours / ref:.3f}"),
        ("torch warp, batch of 8, per field", f"{batched:.3f} s = {batched / ref:.3f}"),
    ]
    return rows, ours


if __name__ == "__main__":  # python -m benchmarks.bench_deform [SLIDE] (default: make bench's)
    import sys

    path = sys.argv[1] if len(sys.argv) > 1 else "data/bench/slide_00.tiff"
    for name, value in run(path)[0]:
        print(f"| {name} | {value} |")
