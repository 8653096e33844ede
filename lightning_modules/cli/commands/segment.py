"""`wsiseg segment --ckpt RUN.ckpt SLIDE... --out DIR`: whole-slide inference with any method.

The checkpoint says which method and view; slides are split over the Trainer's devices/ranks;
per slide: ``<name>_mask.tiff`` (pyramidal label mask, the slide's size and mpp),
``<name>_overlay.png``, ``<name>.geojson`` (QuPath) and ``<name>.json`` (areas, timing).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from datamodules.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsiseg segment",
        description="Segment whole slides with a trained checkpoint: a tissue-masked grid at the "
        "method's geometry, read through the method's own view, batched, written tile by tile "
        "(memory does not grow with slide area). Per slide: NAME_mask.tiff (pyramidal, tiled, "
        "values = class + 1, 0 = not segmented), NAME_overlay.png, NAME.geojson (QuPath) and "
        "NAME.json (class areas in mm², timing, decode amplification).",
        epilog="examples:\n"
        "  wsiseg segment --ckpt runs/dmmn_m3/version_0/checkpoints/last.ckpt slide.svs --out seg\n"
        "  wsiseg segment --ckpt RUN.ckpt data/slides/ --out seg --resume --devices 2\n"
        "  wsiseg segment --ckpt RUN.ckpt scan.png --mpp 0.5 --out seg",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("slides", nargs="+", help="slide files, folders of slides, or .txt lists")
    p.add_argument("--ckpt", required=True, help="checkpoint of a `wsiseg fit/train` run")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float, help="level-0 um/px for slides without (a right) one")
    p.add_argument("--config", help="the run's config.yaml, if the checkpoint lacks the view")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per batch (default: 8)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (default: 2)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, auto (default: auto)")
    p.add_argument("--devices", default="1", help="devices per node; slides split over them")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes (default: 1)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy (auto: ddp if >1)")
    p.add_argument("--precision", default="32-true", help="e.g. 32-true, bf16-mixed, 16-mixed")
    p.add_argument(
        "--min-tissue",
        type=float,
        default=0.0,
        help="segment grid cells whose tissue fraction exceeds this (default: 0 = any tissue)",
    )
    p.add_argument("--all-tiles", action="store_true", help="no tissue mask: segment every cell")
    p.add_argument(
        "--overlap",
        type=int,
        default=0,
        help="pixels (at the model's resolution) by which tiles overlap; each keeps its centre "
        "(for plain-tile methods such as the smp baselines; default: 0)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip slides already done in --out")
    mode.add_argument("--overwrite", action="store_true", help="redo slides already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _devices(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """An existing, non-empty output folder is only used with --resume or --overwrite."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise InputError(
            out,
            "output folder exists; pass --resume to skip the slides already done there, or "
            "--overwrite to redo them",
        )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.overlap < 0 or args.overlap % 2:
        raise InputError(None, f"--overlap must be an even number >= 0, got {args.overlap}")
    if args.batch_size < 1 or args.num_workers < 0:
        raise InputError(None, "--batch-size must be >= 1 and --num-workers >= 0")
    out = Path(args.out)
    check_out_dir(out, args.resume, args.overwrite)

    from datamodules.slides.slide import Slide
    from datamodules.wholeslide import find_slides, output_names
    from lightning_modules.cli.checkpoints import load_method

    slides = find_slides(args.slides, out)
    output_names(slides)  # clashing names fail here
    for path in slides:  # bad files and missing mpp fail here, before any process starts
        Slide(path, mpp=args.mpp)
    trained = load_method(args.ckpt, args.config)
    view = trained.view
    if args.overlap and not (dataclasses.is_dataclass(view) and hasattr(view, "size")):
        raise InputError(None, f"--overlap needs a view with a size field, not {view!r}")
    return run(args, slides, trained, out)


def run(args, slides, trained, out: Path, **trainer_options) -> int:
    """Segment `slides` with `trained` (a `TrainedMethod`); `trainer_options` go to the Trainer
    (e.g. ``limit_predict_batches`` or extra ``callbacks`` for benchmarks)."""
    import pytorch_lightning as pl

    from datamodules.wholeslide import WholeSlideData
    from lightning_modules.callbacks.slide_writer import SlideWriter

    model, view = trained.model, trained.view
    info = {
        "checkpoint": str(trained.checkpoint),
        "method": trained.method,
        "class_path": trained.class_path,
        "view": repr(view),
        "target_mpp": view.mpp,
        "class_map": model.hparams.get("class_map"),
        "overlap": args.overlap,
        "pad_value": trained.pad_value,
        "min_tissue": None if args.all_tiles else args.min_tissue,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "precision": args.precision,
    }
    writer = SlideWriter(model.class_names, model.class_colors, info, progress=not args.no_progress)
    data = WholeSlideData(
        slides,
        out,
        view,
        mpp=args.mpp,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        min_tissue=args.min_tissue,
        use_tissue=not args.all_tiles,
        margin=args.overlap // 2,
        resume=args.resume,
        pad_value=trained.pad_value,
    )
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=_devices(args.devices),
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[writer, *trainer_options.pop("callbacks", ())],
        default_root_dir=str(out),
        **trainer_options,
    )
    trainer.predict(model, datamodule=data, return_predictions=False)
    writer.finish(trainer, model)  # slides the predict loop never saw (no tissue on a rank)
    if trainer.is_global_zero:
        done = len(slides) - len(data.skipped)
        skipped = f", {len(data.skipped)} already done (skipped)" if data.skipped else ""
        print(f"segmented {done} slide(s){skipped}; outputs in {out}", file=sys.stderr)
    return 0
