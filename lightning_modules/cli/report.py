"""The results report of `wsiseg train`: a table on stdout and results.md/json in the run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lightning_modules.metrics import format_table, majority_scores

#: the schedule name of a run that trains as its paper did (no reduced CPU schedule)
PAPER = "paper"


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
    payload = {
        "experiment": getattr(trainer.logger, "name", None) if trainer.logger else None,
        "method": type(model).__name__,
        "arch": dict(model.hparams).get("arch"),
        "data": None if root is None else str(root),
        "class_names": names,
        **timing,
        "hparams": {k: v for k, v in dict(model.hparams).items() if _jsonable(v)},
        "scores": _clean(scores),
        "majority_scores": _clean(majority),
        "confusion": None if cm is None else cm.tolist(),
        "schedule": schedule,
        "parameters": model.parameter_count,
        "best_checkpoint": best_checkpoint,
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
