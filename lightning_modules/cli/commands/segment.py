"""`wsiseg segment --ckpt RUN.ckpt SLIDE... --out DIR`: whole-slide inference with any method.

The checkpoint says which method and view; slides are split over the Trainer's devices/ranks;
per slide: ``<name>_mask.tiff`` (pyramidal label mask, the slide's size and mpp),
``<name>_overlay.png``, ``<name>.geojson`` (QuPath) and ``<name>.json`` (areas, timing).

A batch outlives its bad slides: one that cannot be opened, planned or read is written to
``failures.csv`` and skipped, the others are segmented, and the exit status is 1 (``--on-error
stop``: the first error ends the run, as does any error with a single slide). Each slide is
claimed (lightning_modules.outputs.claims) so that processes sharing ``--out`` split the work.
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
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads of the main process (default: torch's, one per core); with a light "
        "model on few cores, --threads 1 leaves the cores to the workers (~3x faster on 2 "
        "cores; a heavy model on CPU wants them all: docs/benchmarks.md)",
    )
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
    p.add_argument(
        "--on-error",
        choices=("skip", "stop"),
        default="skip",
        help="a slide that cannot be read: skip it and list it in OUT/failures.csv (exit 1 at "
        "the end), or stop the run (default: skip)",
    )
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
    if args.batch_size < 1 or args.num_workers < 0 or (args.threads or 1) < 1:
        raise InputError(None, "--batch-size, --threads must be >= 1 and --num-workers >= 0")
    out = Path(args.out)
    check_out_dir(out, args.resume, args.overwrite)

    from datamodules.slides.slide import Slide
    from datamodules.wholeslide import find_slides, output_names
    from lightning_modules.cli.checkpoints import load_method

    slides = find_slides(args.slides, out)
    names = output_names(slides)  # clashing names fail here
    failed = []
    for path in slides:  # bad files and missing mpp fail here, before any process starts
        try:
            Slide(path, mpp=args.mpp)
        except InputError as err:
            if args.on_error == "stop" or len(slides) == 1:
                raise
            failed.append((str(path), "open", str(err)))
    trained = load_method(args.ckpt, args.config)
    view = trained.view
    if args.overlap and not (dataclasses.is_dataclass(view) and hasattr(view, "size")):
        raise InputError(None, f"--overlap needs a view with a size field, not {view!r}")
    bad = {s for s, _, _ in failed}
    keep = [i for i, p in enumerate(slides) if str(p) not in bad]
    batch = Batch(args, out, [slides[i] for i in keep], [names[i] for i in keep], failed)
    return batch.run(trained)


def run(args, slides, trained, out: Path, **trainer_options) -> int:
    """Segment `slides` with `trained` (a `TrainedMethod`); `trainer_options` go to the Trainer
    (e.g. ``limit_predict_batches`` or extra ``callbacks`` for benchmarks)."""
    from datamodules.wholeslide import output_names

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return Batch(args, out, slides, output_names(slides)).run(trained, **trainer_options)


class Batch:
    """The slides of one `wsiseg segment` call. A slide that fails mid-run (one process,
    ``--on-error skip``) is recorded, and the slides not yet written run again without it."""

    def __init__(self, args, out: Path, slides, names, failed=()):
        from lightning_modules.outputs.claims import Claims

        self.args, self.out = args, out
        self.todo = list(zip(slides, names, strict=True))
        self.failed: list[tuple[str, str, str]] = list(failed)  # (slide, stage, reason)
        self.finished: list[str] = []  # slide paths written complete
        self.skipped: list[str] = []  # slide paths already done in --out
        self.claimed: list[str] = []
        self.claims = Claims(out)
        self.alone = len(self.todo) == 1 and not self.failed
        self.rank = 0

    @property
    def skip(self) -> bool:
        return self.args.on_error == "skip" and not self.alone

    def run(self, trained, **trainer_options) -> int:
        from lightning_modules.outputs import failures

        resume = self.args.resume
        try:
            while self.todo:
                self._round(trained, resume, trainer_options)
                resume = False  # later rounds hold only slides this run has not written
        except InputError:
            if self.skip:  # a batch: say what was done and where its failures are listed
                self._report(failures)
            raise
        finally:
            self.claims.release_all()
        return self._report(failures)

    def _report(self, failures) -> int:
        if self.rank != 0:
            return 1 if self.failed else 0
        path = failures.update(self.out, self.failed, self.finished + self.skipped)
        parts = [f"segmented {len(self.finished)} slide(s)"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} already done (skipped)")
        if self.claimed:
            parts.append(f"{len(self.claimed)} claimed by another process (skipped)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed (listed in {path})")
        print(f"{', '.join(parts)}; outputs in {self.out}", file=sys.stderr)
        return 1 if self.failed else 0

    def _round(self, trained, resume: bool, trainer_options: dict) -> None:
        """One predict run over `todo`; leaves in `todo` what a skipped failure left undone."""
        data, trainer, writer = _prepare(
            self.args, self.todo, trained, self.out, self.claims.claim, self.skip, resume,
            dict(trainer_options),
        )  # fmt: skip
        try:
            trainer.predict(trained.model, datamodule=data, return_predictions=False)
            writer.finish(trainer, trained.model)  # slides the predict loop never saw
            error = None
        except InputError as err:
            error = err
        self.rank = trainer.global_rank
        paths = dict((n, str(p)) for p, n in self.todo)
        self.finished += [paths[n] for n in writer.finished]
        # ranks agree only when none failed (a rank that raised is not there to gather)
        self.failed += _gather(data.failures) if error is None else data.failures
        self.skipped += [paths[n] for n in data.skipped]
        self.claimed += data.claimed
        if error is None:
            self.todo = []
            return
        bad = self._culprit(error, writer)
        if bad is None or not self.skip or trainer.world_size > 1:
            if bad is not None and self.skip:
                self.failed.append((str(bad[0]), "segment", str(error)))
            raise error
        self.failed.append((str(bad[0]), "segment", str(error)))
        out_of_round = set(data.skipped) | set(data.claimed) | set(writer.finished)
        planned = {job.name for job in data.jobs}
        self.todo = [(p, n) for p, n in self.todo
                     if n in planned and n not in out_of_round and n != bad[1]]  # fmt: skip

    def _culprit(self, err: InputError, writer):
        """(slide, name) an error is about: the slide its message names, else the one being
        stitched when it came; None if neither (then it is not one slide's fault)."""
        text = str(err)
        named = [(p, n) for p, n in self.todo if str(p) in text]
        if named:
            return max(named, key=lambda pn: len(str(pn[0])))
        return next(((p, n) for p, n in self.todo if n == writer.failed), None)


def _gather(rows: list) -> list:
    """Planning failures of every DDP rank (each rank plans its own slides)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, list(rows))
        return [r for part in every for r in part]
    return list(rows)


def _prepare(args, todo, trained, out: Path, claim, skip_bad, resume, trainer_options):
    """The datamodule, Trainer and `SlideWriter` of one predict run over `todo` (path, name)."""
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
        "threads": args.threads,
        "precision": args.precision,
    }
    writer = SlideWriter(model.class_names, model.class_colors, info, progress=not args.no_progress)
    data = WholeSlideData(
        [p for p, _ in todo],
        out,
        view,
        mpp=args.mpp,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        min_tissue=args.min_tissue,
        use_tissue=not args.all_tiles,
        margin=args.overlap // 2,
        resume=resume,
        pad_value=trained.pad_value,
        claim=claim,
        skip_bad=skip_bad,
        names=[n for _, n in todo],
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
    return data, trainer, writer
