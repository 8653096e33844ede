"""wandb overlay: a real offline run next to the CSV logger, grouped and tagged by experiment."""

import os
import subprocess
import sys
from pathlib import Path

from lightning_modules.cli.loggers import describe_run, has_api_key

ROOT = Path(__file__).resolve().parents[1]


def test_offline_run_without_key(tmp_path, synthetic_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true")  # no ~/.netrc, so no API key
    cmd = [
        sys.executable,
        "-m",
        "lightning_modules.cli.main",
        "train",
        "--config",
        ROOT / "experiments/dmmn_s2.yaml",
        "--config",
        ROOT / "experiments/trainer/cpu.yaml",
        "--config",
        ROOT / "tests/conf/tiny.yaml",
        "--config",
        ROOT / "experiments/logger/wandb.yaml",
        "--data.init_args.root",
        synthetic_root,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
    ]
    r = subprocess.run(
        list(map(str, cmd)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
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
