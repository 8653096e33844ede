"""`wsiseg synth`: the synthetic benchmark slides (the embedded default data)."""

from __future__ import annotations

import argparse
import json
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
    p.add_argument(
        "--layout",
        choices=("default", "tiger"),
        default="default",
        help="default: BACH-like slides (manifest, mask TIFFs, Aperio XML); tiger: the TIGER "
        "challenge's wsirois folders (slides + ASAP XML, ROI PNGs + masks 0-7; see "
        "docs/smp_tiger.md) (default: %(default)s)",
    )
    p.add_argument(
        "--out", help="output folder (default: data/synthetic, or data/synthetic_tiger for tiger)"
    )
    p.add_argument("--n-slides", type=int, help="number of slides (default: 6; tiger: 10)")
    p.add_argument("--size", type=int, help="slide side in pixels (default: 8192; tiger: 4096)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--splits",
        type=int,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        help="slides per split (default: 4 1 1; tiger: 8 1 1, recorded only: the TIGER reader "
        "splits by slide itself)",
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
    from datamodules.errors import InputError
    from datamodules.synthetic.generator import ensure_dataset

    args = build_parser().parse_args(argv)
    tiger = args.layout == "tiger"
    if tiger:
        from datamodules.synthetic.tiger import SYNTH_DEFAULTS as defaults
    else:
        defaults = {"n_slides": 6, "size": 8192, "splits": (4, 1, 1)}
    out = Path(args.out or ("data/synthetic_tiger" if tiger else "data/synthetic"))
    params = dict(
        n_slides=args.n_slides or defaults["n_slides"],
        size=args.size or defaults["size"],
        seed=args.seed,
        splits=tuple(args.splits or defaults["splits"]),
        unlabeled_band=args.unlabeled_band,
        label_noise=args.label_noise,
        layout=args.layout,
    )
    manifest_path = out / "manifest.json"
    before = manifest_path.read_bytes() if manifest_path.exists() else None
    if out.exists() and any(out.iterdir()) and before is None and not args.overwrite:
        raise InputError(out, "folder exists and is not a synthetic set; pass --overwrite")
    if before is not None and not args.overwrite:
        old = json.loads(before).get("params", {})
        new = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
        changed = sorted(k for k, v in new.items() if k in old and old[k] != v)
        if changed:
            raise InputError(
                out, f"holds a set with other {', '.join(changed)}; pass --overwrite to replace it"
            )
    start = time.perf_counter()
    manifest = ensure_dataset(out, progress=not args.quiet, **params)
    took = time.perf_counter() - start
    n = len(manifest["slides"])
    verb = "reused" if before is not None and manifest_path.read_bytes() == before else "generated"
    print(f"{verb} {n} synthetic slides in {out.resolve()} ({took:.1f} s)")
    return 0
