"""A study's finished runs read back from their folders: results.json + per_tile.npz.

Runs are aggregated only when they score the same data and the same test tiles: every
results.json must record the same ``data_hash`` (the manifest's sha256) and every per_tile.npz
the same tile list; a run on other data is an error naming its file, never silently mixed in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from datamodules.errors import InputError
from lightning_modules.cli.report import PER_TILE
from lightning_modules.cli.study.bootstrap import RunEvidence
from lightning_modules.cli.study.plan import Study

EXTRAS = ("relative_inference_time",)  # per-run scalars, resampled over runs only


def load_run(run_dir: Path, experiment: str, seed: int) -> tuple[RunEvidence, dict, tuple]:
    """(evidence, results.json, tile ids) of one finished run."""
    path = run_dir / "results.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read: {err}") from err
    tiles_path = run_dir / PER_TILE
    if not tiles_path.is_file():
        raise InputError(tiles_path, "missing: the run predates per-tile counts; rerun it")
    with np.load(tiles_path) as npz:
        tiles = npz["confusion"].astype(np.int64)
        ids = tuple(zip(npz["slide"].tolist(), npz["x"].tolist(), npz["y"].tolist(), strict=True))
    if result.get("confusion") is not None and not np.array_equal(
        tiles.sum(axis=0), np.asarray(result["confusion"])
    ):
        raise InputError(tiles_path, "per-tile counts do not sum to results.json's confusion")
    extras = {k: float(result[k]) for k in EXTRAS if _finite(result.get(k))}
    evidence = RunEvidence(experiment, seed, tiles, extras, name=str(run_dir))
    return evidence, result, ids


def load_study_runs(study: Study) -> tuple[dict[str, list[RunEvidence]], dict, list]:
    """experiment -> evidence of its finished runs; a common info dict; the missing runs."""
    runs: dict[str, list[RunEvidence]] = {}
    missing, first = [], None
    for run in study.runs:
        if not (run.run_dir / "results.json").is_file():
            missing.append(run)
            continue
        evidence, result, ids = load_run(run.run_dir, run.experiment, run.seed)
        info = {
            "data_hash": result.get("data_hash"),
            "class_names": result.get("class_names"),
            "ordinal": "bach_score" in (result.get("scores") or {}),
            "class_map": (result.get("hparams") or {}).get("class_map"),
            "ids": ids,
            "file": run.run_dir / "results.json",
        }
        if first is None:
            first = info
        else:
            _same(first, info)
        runs.setdefault(run.experiment, []).append(evidence)
    if first is None:
        raise InputError(study.folder, f"no finished runs of study {study.name!r} yet")
    return runs, first, missing


def _same(first: dict, info: dict) -> None:
    if info["data_hash"] != first["data_hash"] or first["data_hash"] is None:
        raise InputError(
            info["file"],
            f"scored other data (data_hash {info['data_hash']}) than {first['file']} "
            f"({first['data_hash']}): runs on other data are not aggregated",
        )
    if info["class_names"] != first["class_names"]:
        raise InputError(info["file"], f"other classes than {first['file']}")
    if info["ids"] != first["ids"]:
        raise InputError(
            info["file"].with_name(PER_TILE),
            f"other test tiles ({len(info['ids'])}) than {first['file']} ({len(first['ids'])})",
        )


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
