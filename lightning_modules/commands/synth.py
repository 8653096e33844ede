"""`wsiseg synth`: the synthetic benchmark slides (the embedded default data)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsiseg synth",
        description="Generate pyramidal JPEG-tiled slides at 0.5 um/px with label-mask TIFFs, "
        "Aperio XML annotations and a manifest with train/val/test splits. The content makes the "
        "papers' hypotheses testable (see docs/synthetic.md). An existing set with the same "
        "parameters is reused; a different one is refused unless --overwrite.",
    )
    p.add_argument("--out", default="data/synthetic", help="output folder (default: %(default)s)")
    p.add_argument("--n-slides", type=int, default=6, help="number of slides (default: 6)")
    p.add_argument("--size", type=int, default=8192, help="slide side in pixels (default: 8192)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--splits",
        type=int,
        nargs=3,
        default=(4, 1, 1),
        metavar=("TRAIN", "VAL", "TEST"),
        help="slides per split (default: 4 1 1)",
    )
    p.add_argument(
        "--unlabeled-band",
        type=int,
        default=0,
        help="width in px of unlabeled bands along class boundaries in the masks (DMMN-style "
        "partial annotation; default: 0 = off)",
    )
    p.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="fraction of regions given a wrong label (default: 0)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a different existing set")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    from datamodules.synthetic import ensure_dataset

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()
    manifest = ensure_dataset(
        out,
        n_slides=args.n_slides,
        size=args.size,
        seed=args.seed,
        splits=tuple(args.splits),
        unlabeled_band=args.unlabeled_band,
        label_noise=args.label_noise,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    took = time.perf_counter() - start
    n = len(manifest["slides"])
    verb = "reused" if manifest.get("reused") else "generated"
    print(f"{verb} {n} synthetic slides in {out.resolve()} ({took:.1f} s)")
    return 0
