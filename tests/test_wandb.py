"""wandb overlay: a real offline run next to the CSV logger, grouped and tagged by experiment."""

import os
import subprocess
from pathlib import Path

from lightning_modules.cli.loggers import describe_run, has_api_key
from tests.cli_args import experiment_args, short_train, wsiseg_command

ROOT = Path(__file__).resolve().parents[1]


def test_offline_run_without_key(tmp_path, synthetic_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true")  # no ~/.netrc, so no API key
    env["PYTHONPATH"] = str(ROOT)
    argv = experiment_args(
        "train", "dmmn_s2", synthetic_root, tmp_path / "runs", tiny="tiny.yaml",
        overlays=("logger/wandb.yaml",), extra=tuple(short_train(1, train_batches=1)),
    )  # fmt: skip
    r = subprocess.run(
        [*wsiseg_command(), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wandb: offline (no API key)" in r.stdout and "wandb sync" in r.stdout
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    blob = runs[0].read_bytes()
    assert b"val/miou" in blob and b"data:" in blob  # metrics and the data tag were logged
    # CSV logging stays on beside wandb
    assert (tmp_path / "runs" / "dmmn_s2" / "version_0" / "metrics.csv").is_file()


def test_describe_run():
    model = type("DMMN", (), {"hparams": {"arch": "m3"}})()
    data = type("D", (), {"hparams": type("H", (), {"root": "data/synthetic"})()})()
    group, tags = describe_run(model, data, "dmmn_m3")
    assert group == "dmmn" and tags == ["DMMN", "DMMN-m3", "data:synthetic"]


def test_api_key_detection(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not has_api_key()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_api_key()
