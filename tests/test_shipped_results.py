"""The committed study summaries (results/studies/) still give the verdicts docs/results.md quotes.

A change to scoring, the bootstrap or the summaries' format that moves a published first-claim
verdict or its interval fails here, so the docs cannot silently go stale.
"""

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# study: (first claim's high − low, its 95 % interval, verdict) as docs/results.md prints them
FIRST_CLAIMS = {
    "dmmn": (-0.135, -0.210, -0.058, "contradicted"),
    "da_refinenet": (-0.010, -0.056, 0.033, "undecided"),
    "da_refinenet_long": (0.080, 0.025, 0.129, "supported"),
    "razn": (0.107, 0.068, 0.144, "supported"),
    "tiger": (-0.006, -0.014, 0.002, "undecided"),
    "tiger_power": (-0.026, -0.054, -0.004, "undecided"),
}


@pytest.mark.parametrize("name", sorted(FIRST_CLAIMS))
def test_committed_summaries_reproduce_the_first_claim(name, tmp_path):
    from lightning_modules.cli.study.plan import load_study
    from lightning_modules.cli.study.report import build_report

    shutil.copytree(ROOT / "results" / "studies" / name, tmp_path / name,
                    ignore=shutil.ignore_patterns("report", "wandb"))  # fmt: skip
    study = load_study(ROOT / "experiments" / "studies" / f"{name}.yaml", out=tmp_path)
    report = build_report(study)
    assert report.missing == []
    first = report.claims[0]
    got = (round(first["diff"], 3), round(first["lo"], 3), round(first["hi"], 3), first["verdict"])
    assert got == FIRST_CLAIMS[name]
