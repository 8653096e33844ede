"""The results report of `wsiseg train`: a table on stdout and results.md/json in the run folder."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from lightning_modules.metrics import format_table, majority_scores

#: the schedule name of a run that trains as its paper did (no reduced CPU schedule)
PAPER = "paper"
#: per-tile test confusion counts next to results.json (see `save_per_tile`)
PER_TILE = "per_tile.npz"


def data_fingerprint(root) -> str | None:
    """sha256 of the data: of ``manifest.json`` where the folder has one (the synthetic
    benchmark), else of its files' relative paths and sizes. Runs of one study must agree."""
    if root is None or not Path(root).is_dir():
        return None
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.is_file():
        return "manifest:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    files = (p for p in root.rglob("*") if p.is_file())
    listing = sorted(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}" for p in files)
    return "files:" + hashlib.sha256("\n".join(listing).encode()).hexdigest()


def save_per_tile(path: Path, tiles, class_names) -> bool:
    """Write ``confusion`` (N, C, C) int64 with each tile's ``slide``, ``x``, ``y`` (level 0)."""
    if tiles is None or len(tiles[1]) == 0:
        return False
    counts, ids = tiles
    np.savez_compressed(
        path,
        confusion=np.asarray(counts, np.int64),
        slide=np.array([i[0] for i in ids]),
        x=np.array([i[1] for i in ids], np.float64),
        y=np.array([i[2] for i in ids], np.float64),
        class_names=np.array(list(class_names)),
    )
    return True


def print_schedule(schedule: str, args: list[str]) -> None:
    """Say plainly which schedule this run uses, and how to run the paper's."""
    if schedule == PAPER:
        print("schedule: the paper's settings (as in the experiment YAML)", flush=True)
        return
    print(f"schedule: REDUCED — {schedule}", flush=True)
    print(
        "  the experiment YAML keeps the paper's settings; to run them drop the schedule overlay, "
        "e.g. `make train EXP=... SCHEDULE=paper TRAINER=gpu`",
        flush=True,
    )


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def write_report(trainer, model, schedule: str, best_checkpoint: str | None) -> Path:
    """Print the test table next to the majority-class baseline and save both."""
    run_dir = _run_dir(trainer)
    run_dir.mkdir(parents=True, exist_ok=True)
    scores = dict(model.test_scores or {})
    names = list(model.class_names)
    cm = getattr(model, "test_confusion", None)
    majority = majority_scores(cm.sum(axis=1), names, model.ordinal) if cm is not None else {}
    title = f"{type(model).__name__} ({getattr(model.hparams, 'arch', '')}) test results".replace(
        " ()", ""
    )
    lines = [
        f"# {title}",
        "",
        format_table(scores, names),
        "",
        f"- test mIoU **{scores.get('miou', float('nan')):.4f}**; always predicting the majority "
        f"class scores mIoU {majority.get('miou', float('nan')):.4f}",
        f"- schedule: {schedule}",
        f"- parameters: {model.parameter_count:,}",
        f"- best checkpoint: {best_checkpoint or '(none: last weights)'}",
        f"- overlays: {run_dir / 'overlays'}",
    ]
    text = "\n".join(lines) + "\n"
    (run_dir / "results.md").write_text(text)
    timing = {
        k.split("/", 1)[1]: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("test/relative_inference_time")
    }
    data = getattr(trainer, "datamodule", None)
    root = getattr(getattr(data, "hparams", None), "root", None)
    per_tile = save_per_tile(run_dir / PER_TILE, getattr(model, "test_tile_confusion", None), names)
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything
    payload = {
        "experiment": getattr(trainer.logger, "name", None) if trainer.logger else None,
        "method": type(model).__name__,
        "arch": dict(model.hparams).get("arch"),
        "data": None if root is None else str(root),
        "data_hash": data_fingerprint(root),
        "seed": None if seed is None else int(seed),
        "class_names": names,
        **timing,
        "hparams": {k: v for k, v in dict(model.hparams).items() if _jsonable(v)},
        "scores": _clean(scores),
        "majority_scores": _clean(majority),
        "confusion": None if cm is None else cm.tolist(),
        "schedule": schedule,
        "parameters": model.parameter_count,
        "best_checkpoint": best_checkpoint,
        "per_tile": PER_TILE if per_tile else None,
    }
    (run_dir / "results.json").write_text(json.dumps(payload, indent=2))
    print("\n" + text + f"\nwritten to {run_dir}/results.md", flush=True)
    return run_dir


def _run_dir(trainer) -> Path:
    """``trainer.log_dir`` without its broadcast: only rank 0 writes the report, and under DDP
    a broadcast there would wait for ranks that have already finished (gloo: crash)."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None:
        return Path(trainer.default_root_dir)
    path = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return Path(path or trainer.default_root_dir)


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
