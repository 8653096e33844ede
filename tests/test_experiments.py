"""Experiments compose: experiments/defaults.yaml under every experiment YAML, and each YAML
names its own reduced CPU schedule (`cpu_schedule:`), which `make train TRAINER=cpu` adds.

The expectations below are what the 21 experiment YAMLs spelled out before the shared overlay,
and the schedule each got from the Makefile's old name patterns (dmmn_* -> cpu_budget, razn* ->
razn_cpu, smp_* and unet_bach -> cpu_budget_smp, everything else -> cpu_budget_refinenet).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from lightning_modules.cli.main import main
from tests.cli_args import EXPERIMENTS, ROOT

NAMES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem != "defaults")


def old_schedule(name: str) -> str:
    if name.startswith("dmmn_"):
        return "cpu_budget"
    if name.startswith("razn"):
        return "razn_cpu"
    if name.startswith("smp_") or name == "unet_bach":
        return "cpu_budget_smp"
    return "cpu_budget_refinenet"


def old_epochs(name: str) -> int:
    families = {"dmmn_": 20, "razn": 100, "smp_": 25}
    return next((n for prefix, n in families.items() if name.startswith(prefix)), 40)


def resolved(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as stop:
        main(["fit", *args, "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_there_are_the_21_experiments():
    assert len(NAMES) == 21 and "dmmn_m3" in NAMES and "unet_bach" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_experiment_resolves_to_its_old_trainer_logger_and_callbacks(name, capsys):
    config = resolved(capsys, "--config", str(EXPERIMENTS / f"{name}.yaml"))
    trainer = config["trainer"]
    assert config["seed_everything"] == 0
    assert config["cpu_schedule"] == old_schedule(name)
    assert (trainer["default_root_dir"], trainer["max_epochs"]) == ("runs", old_epochs(name))
    logger = trainer["logger"]
    assert logger["class_path"] == "pytorch_lightning.loggers.CSVLogger"
    assert (logger["init_args"]["save_dir"], logger["init_args"]["name"]) == ("runs", name)
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in trainer["callbacks"]]
    timing = ["RelativeInferenceTime"] if name.startswith("razn") else []
    assert callbacks == ["ModelCheckpoint", "ResumeCheckpoint", "LearningRateMonitor", *timing]
    best = trainer["callbacks"][0]["init_args"]
    metric = "val/iou/stroma" if name.startswith("smp_") else "val/miou"
    short = "iou" if name.startswith("smp_") else "miou"
    assert (best["monitor"], best["mode"], best["save_last"]) == (metric, "max", True)
    assert best["filename"] == f"epoch{{epoch:03d}}-{short}{{{metric}:.4f}}"
    assert not best["auto_insert_metric_name"]
    assert trainer["callbacks"][1]["init_args"]["every_minutes"] == 10


def test_the_shared_blocks_live_once_in_defaults():
    """No experiment repeats the run folder, the logger class or the seed."""
    for name in NAMES:
        tree = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
        assert "seed_everything" not in tree, name
        assert set(tree["trainer"]) <= {"max_epochs", "logger", "callbacks"}, name
        assert tree["trainer"]["logger"] == {"init_args": {"name": name}}, name


def make_n(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("no make")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip


def train_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 0, run.stderr
    text = run.stdout.replace("\\\n", " ")
    return next(line for line in text.splitlines() if "wsiseg train" in line)


def test_make_train_adds_the_schedule_each_experiment_names():
    for name in NAMES:
        line = train_line(make_n("train", f"EXP={name}"))
        assert f"--config experiments/{name}.yaml " in line
        assert f"--config experiments/schedule/{old_schedule(name)}.yaml" in line, name
        assert line.count("experiments/schedule/") == 1, name


def test_make_train_gpu_or_paper_adds_no_schedule():
    assert "experiments/schedule/" not in train_line(make_n("train", "EXP=razn", "TRAINER=gpu"))
    assert "experiments/schedule/" not in train_line(make_n("train", "EXP=razn", "SCHEDULE=paper"))
    line = train_line(make_n("train", "EXP=dmmn_m3", "SCHEDULE=razn_cpu"))
    assert "--config experiments/schedule/razn_cpu.yaml" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (("EXP=dmmn_m9",), "no experiment experiments/dmmn_m9.yaml; have: da_refinenet_multisize"),
        (("EXP=dmmn_m3", "SCHEDULE=fast"), "no schedule experiments/schedule/fast.yaml; have: pa"),
        (("EXP=../tests/conf/tiny",), "experiments/../tests/conf/tiny.yaml names no cpu_schedule"),
    ],
)
def test_make_train_unknown_experiment_or_schedule_is_one_line(args, message):
    run = make_n("train", *args)
    assert run.returncode == 2
    assert run.stdout == ""  # nothing installed, generated or trained
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr


def test_cli_unknown_cpu_schedule_is_one_line_naming_the_yaml(tmp_path, capsys):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("cpu_schedule: cpu_fast\n")
    exp = str(EXPERIMENTS / "dmmn_m3.yaml")
    assert main(["fit", "--config", exp, "--config", str(overlay)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"wsiseg fit: error: {overlay}: cpu_schedule 'cpu_fast': there is no "
        "experiments/schedule/cpu_fast.yaml (have: cpu_budget, cpu_budget_refinenet, "
        "cpu_budget_smp, razn_cpu)"
    ]
    assert main(["fit", "--config", exp, "--cpu_schedule", "cpu_fast"]) == 2
    assert capsys.readouterr().err.startswith("wsiseg fit: error: cpu_schedule 'cpu_fast'")
