"""The DA-RefineNet family's experiments through the real `wsiseg` CLI: each shipped YAML, a
trainer overlay and tests/conf/tiny_refinenet.yaml (64² slices, batch 2) on the session's
synthetic slides, with the decoder shrunk on the command line (real ResNet encoders).

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
EXPERIMENTS = ROOT / "experiments"
REFINENETS = [
    "da_refinenet_r50_attention",
    "da_refinenet_r50_add",
    "da_refinenet_r50_concat",
    "da_refinenet_r101_attention",
    "da_refinenet_r152_attention",
    "refinenet_r50_single",
    "da_refinenet_multisize",
]
SHRINK = ["--model.init_args.width", "0.125", "--model.init_args.rcu_blocks", "1"]


def args(command, exp, data, out, trainer="cpu", overlays=()):
    shrink = SHRINK if exp in REFINENETS else []
    return experiment_args(
        command, exp, data, out, tiny="tiny_refinenet.yaml", trainer=trainer,
        overlays=overlays, extra=tuple(shrink),
    )  # fmt: skip


#: the same code paths as ResNet-50 with deeper slice encoders: slow on 2 shared cores
BIG = {"da_refinenet_r101_attention", "da_refinenet_r152_attention"}


CASES = [pytest.param(e, marks=pytest.mark.slow) if e in BIG else e for e in REFINENETS]


@pytest.mark.parametrize("exp", [*CASES, "unet_bach"])
def test_fast_dev_run(exp, synthetic_root, out, capsys):
    rc = main([*args("fit", exp, synthetic_root, out), "--trainer.fast_dev_run", "1"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    # one validation batch went through the net and was drawn
    assert (out / "overlays" / "val_epoch000_0.png").is_file()


def test_train_with_the_cpu_budget_schedule(synthetic_root, out, capsys):
    limits = short_train(test_batches=1)
    schedule = EXPERIMENTS / "schedule" / "cpu_budget_refinenet.yaml"
    exp = "da_refinenet_r50_attention"
    rc = main([*args("train", exp, synthetic_root, out, overlays=(schedule,)), *limits])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert "schedule: REDUCED — CPU budget" in printed.out
    run = out / exp / "version_0"
    result = json.loads((run / "results.json").read_text())
    assert result["method"] == "DARefineNet"
    hp = result["hparams"]
    assert (hp["arch"], hp["fusion"], hp["slice_encoder"]) == ("dual", "attention", "resnet50")
    assert (hp["optimizer"], hp["encoder_lr"]) == ("adam", 1e-3)  # from the schedule
    assert hp["width"] == 0.125  # the command line comes last
    assert result["schedule"].startswith("CPU budget")
    assert {"miou", "bach_score", "accuracy"} <= set(result["scores"])
    assert result["scores"]["miou"] == pytest.approx(miou_by_hand(result["confusion"]))
    config = (run / "config.yaml").read_text()
    assert "DualInputView" in config and "context: 10.0" in config


def test_bach_folder_overlay(synthetic_root, tmp_path, out, capsys):
    """experiments/data/bach_xml.yaml: slides + Aperio XML of the same stem, split by slide."""
    folder = tmp_path / "bach"
    folder.mkdir()
    for i in range(3):
        for suffix in (".tiff", ".xml"):
            (folder / f"slide_0{i}{suffix}").symlink_to(synthetic_root / f"slide_0{i}{suffix}")
    overlay = (EXPERIMENTS / "data" / "bach_xml.yaml",)
    argv = args("fit", "da_refinenet_r50_attention", folder, out, overlays=overlay)
    rc = main([*argv, "--data.init_args.slide_glob", "*.tiff", "--trainer.fast_dev_run", "1"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert (out / "overlays" / "val_epoch000_0.png").is_file()


def test_imagenet_offline_fails_before_training(synthetic_root, out, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    argv = args("fit", "refinenet_r50_single", synthetic_root, out)
    argv += ["--model.init_args.encoder_weights", "imagenet", "--trainer.fast_dev_run", "1"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert "ImageNet weights for resnet50" in err and "never downloads" in err
    assert "--model.init_args.encoder_weights /path/to/resnet50-0676ba61.pth" in err
    assert "Traceback" not in err
    assert not (out / "overlays").exists()  # nothing ran


def test_view_that_does_not_fit_the_net_is_refused(synthetic_root, out, tmp_path, capsys):
    wrong = tmp_path / "dual_view.yaml"
    wrong.write_text(
        "data:\n  init_args:\n    view:\n"
        "      class_path: datamodules.views.dual.DualInputView\n"
        "      init_args: {size: 64, context: 10.0}\n"
    )
    argv = args("fit", "refinenet_r50_single", synthetic_root, out, overlays=(wrong,))
    rc = main([*argv, "--trainer.fast_dev_run", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert "takes 1 image input(s)" in err and "DualInputView gives 2" in err


def wsiseg(*argv: str, timeout: int) -> subprocess.CompletedProcess:
    """The installed `wsiseg` console script in a fresh process (DDP re-runs it per rank)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*wsiseg_command(), *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_attention_under_ddp_two_cpu_processes(synthetic_root, out):
    """The paper's best model with experiments/trainer/ddp_cpu.yaml: 2 gloo ranks."""
    argv = args("fit", "da_refinenet_r50_attention", synthetic_root, out, trainer="ddp_cpu")
    r = wsiseg(*argv, "--trainer.fast_dev_run", "2", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEMBER: 2/2" in r.stderr or "MEMBER: 2/2" in r.stdout  # both ranks joined
    assert "Traceback" not in r.stderr
    assert (out / "overlays" / "val_epoch000_0.png").is_file()
