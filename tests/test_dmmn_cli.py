"""The DMMN experiments through the real `wsiseg` CLI: the shipped YAMLs, a trainer overlay and
tests/conf/tiny.yaml (width x0.125, batch 2, no workers) on the session's synthetic slides.

Paths that differ per test (data root, run folders) go on the command line, so nothing is
written under the repository's runs/.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lightning_modules.cli.main import main
from tests.cli_args import experiment_args, short_train, wsiseg_command
from tests.score_checks import miou_by_hand

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["s2", "ms", "m2s", "m3"]


def args(command, arch, data, out, trainer="cpu", schedule=""):
    overlays = (f"schedule/{schedule}.yaml",) if schedule else ()
    return experiment_args(
        command, f"dmmn_{arch}", data, out, tiny="tiny.yaml", trainer=trainer, overlays=overlays
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_dev_run(arch, synthetic_root, out, capsys):
    rc = main([*args("fit", arch, synthetic_root, out), "--trainer.fast_dev_run", "1"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert "DMMN class weights" in printed.out  # weights from the balanced training counts
    assert "invasive" in printed.out and "gain" in printed.out  # the balancing table
    # one validation batch went through the net and was drawn
    assert (out / "overlays" / "val_epoch000_0.png").is_file()


def test_train_writes_results(synthetic_root, out, capsys):
    limits = short_train()
    rc = main([*args("train", "m3", synthetic_root, out, schedule="cpu_budget"), *limits])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert "schedule: REDUCED — CPU budget" in printed.out
    run = out / "dmmn_m3" / "version_0"
    md, js = run / "results.md", run / "results.json"
    assert md.is_file() and js.is_file(), sorted(map(str, out.rglob("*")))
    table = md.read_text()
    for name in ("normal", "benign", "in situ", "invasive"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert len(row.split("|")) == 6  # class, IoU, recall, precision
    assert "| **mIoU** |" in table and "| **BACH score** |" in table
    result = json.loads(js.read_text())
    assert result["method"] == "DMMN" and result["hparams"]["arch"] == "m3"
    assert result["hparams"]["width"] == 0.125  # tiny.yaml comes after the schedule overlay
    assert result["schedule"].startswith("CPU budget")
    assert result["hparams"]["optimizer"] == "adam"  # from the schedule overlay
    assert result["scores"]["miou"] == pytest.approx(miou_by_hand(result["confusion"]))
    assert result["best_checkpoint"] and Path(result["best_checkpoint"]).is_file()
    assert len(result["confusion"]) == 4 and sum(map(sum, result["confusion"])) > 0
    assert (run / "config.yaml").is_file()  # LightningCLI saved the resolved config


def wsiseg(*argv: str, timeout: int) -> subprocess.CompletedProcess:
    """Run `wsiseg` in a fresh process, in the current (test) working directory."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*wsiseg_command(), *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_misspelt_key_is_a_clean_error(synthetic_root, out, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    widht: 0.125\n")
    r = wsiseg(*args("fit", "m3", synthetic_root, out), "--config", str(bad),
               "--trainer.fast_dev_run", "1", timeout=300)  # fmt: skip
    assert r.returncode != 0
    assert "widht" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()  # failed before training


def test_missing_data_root_is_one_line(tmp_path, out, capsys):
    rc = main([*args("fit", "s2", tmp_path / "nowhere", out), "--trainer.fast_dev_run", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "nowhere: no such data folder" in err and "Traceback" not in err


@pytest.mark.slow
def test_ddp_two_cpu_processes(synthetic_root, out):
    """dmmn_m3 under experiments/trainer/ddp_cpu.yaml: 2 gloo ranks, through the console script
    (the launcher re-runs the script for rank 1, so sys.argv[0] must be the real one)."""
    r = wsiseg(*args("fit", "m3", synthetic_root, out, trainer="ddp_cpu"),
               "--trainer.fast_dev_run", "2", timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEMBER: 2/2" in r.stderr or "MEMBER: 2/2" in r.stdout  # both ranks joined
    assert "Traceback" not in r.stderr
    assert (out / "overlays" / "val_epoch000_0.png").is_file()
