"""The RAZN experiments through the real `wsiseg` CLI: the shipped YAMLs, a trainer overlay and
tests/conf/razn_tiny.yaml (64² fields, width x1/16, batch 2, no workers) on the session's
synthetic slides; paths that differ per test go on the command line (nothing under runs/)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.labels.classmaps import load_class_map
from datamodules.slides.slide import Slide
from datamodules.wholeslide import TileDataset, collate, plan_slide
from lightning_modules.cli.checkpoints import load_method
from lightning_modules.cli.main import main
from tests.ckpt_fixtures import RAZN_5X, tiny_checkpoint
from tests.cli_args import experiment_args, short_train, wsiseg_command
from tests.score_checks import iou_by_hand

ROOT = Path(__file__).resolve().parents[1]
EXPS = ["razn", "razn_m2", "razn_scale1", "razn_scale2", "razn_ms", "razn_attention"]


def args(command, exp, data, out, trainer="cpu", overlays=()):
    return experiment_args(
        command, exp, data, out, tiny="razn_tiny.yaml", trainer=trainer, overlays=overlays
    )


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets on a shared 2-core machine (see test_razn.py)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("exp", EXPS)
def test_fast_dev_run(exp, synthetic_root, out, capsys):
    rc = main([*args("fit", exp, synthetic_root, out), "--trainer.fast_dev_run", "1"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert (out / "overlays" / "val_epoch000_0.png").is_file()


def test_simulated_zoom_overlay(synthetic_root, out, capsys):
    extra = ["data/razn_simulated.yaml"]
    rc = main(
        [
            *args("fit", "razn", synthetic_root, out, overlays=extra),
            "--data.init_args.view.init_args.size", "64",
            "--trainer.fast_dev_run", "1",
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err[-3000:]


LIMITS = short_train()


def test_train_reports_zoom_groups_and_relative_time(synthetic_root, out, capsys):
    overlays = ["schedule/razn_cpu.yaml"]
    extra = ["--trainer.log_every_n_steps", "1"]
    rc = main([*args("train", "razn", synthetic_root, out, overlays=overlays), *LIMITS, *extra])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert "schedule: REDUCED — RAZN CPU budget" in printed.out
    run = out / "razn" / "version_0"
    result = json.loads((run / "results.json").read_text())
    assert result["method"] == "RAZN" and result["hparams"]["width"] == 0.0625
    assert result["hparams"]["lr"] == 1e-3  # from the schedule overlay
    s = result["scores"]
    carcinoma = iou_by_hand(result["confusion"], load_class_map("bach").groups["carcinoma"])
    assert s["group_iou/carcinoma"] == (None if carcinoma is None else pytest.approx(carcinoma))
    # razn_tiny.yaml: 2 test fields, so each zoom rate is 0, 1/2 or 1 (a fraction of fields,
    # not e.g. a mean probability); the same for every class that has fields
    rates = [v for k, v in s.items() if k.startswith("zoom_rate")]
    assert len(rates) >= 2 and set(rates) <= {0.0, 0.5, 1.0}, s
    assert "| **IoU non carcinoma** |" in (run / "results.md").read_text()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    timing = [r for r in rows if r.get("test/relative_inference_time")]
    assert timing and float(timing[0]["test/relative_inference_time"]) > 0
    assert float(timing[0]["test/timing_fields"]) >= 1
    zooms = [r for r in rows if r.get("train/zoom_rate")]
    assert zooms and {float(r["train/zoom_rate"]) for r in zooms} <= {0.0, 0.5, 1.0}  # batch 2


def test_bad_alpha_is_one_line(synthetic_root, out, capsys):
    rc = main([*args("fit", "razn", synthetic_root, out), "--model.init_args.alpha", "0.3"])
    err = capsys.readouterr().err
    assert rc == 2 and "alpha must be in (0.5, 1]" in err and "Traceback" not in err


class RankMetrics(pl.Callback):
    """Writes every rank's logged metrics and a parameter checksum to $RAZN_RANK_DUMP."""

    def _dump(self, trainer, pl_module, stage):
        folder = Path(os.environ["RAZN_RANK_DUMP"])
        folder.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        params = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        payload = {"metrics": metrics, "params": params}
        (folder / f"{stage}_rank{trainer.global_rank}.json").write_text(json.dumps(payload))

    def on_fit_end(self, trainer, pl_module):
        self._dump(trainer, pl_module, "fit")

    def on_test_end(self, trainer, pl_module):
        self._dump(trainer, pl_module, "test")


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(synthetic_root, out, tmp_path):
    """razn under experiments/trainer/ddp_cpu.yaml (2 gloo ranks) through the console script:
    fit + test finish, and both ranks log the same metrics and hold the same weights."""
    dump = tmp_path / "ranks"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        "RAZN_RANK_DUMP": str(dump),
        "OMP_NUM_THREADS": "1",
    }
    cmd = wsiseg_command()
    r = subprocess.run(
        [
            *cmd,
            *args("train", "razn", synthetic_root, out, trainer="ddp_cpu"),
            *LIMITS,
            "--trainer.callbacks+=tests.test_razn_cli.RankMetrics",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEMBER: 2/2" in r.stderr + r.stdout
    for stage in ("fit", "test"):
        a, b = (json.loads((dump / f"{stage}_rank{i}.json").read_text()) for i in (0, 1))
        assert a["params"] == pytest.approx(b["params"], rel=1e-9)
        assert a["metrics"].keys() == b["metrics"].keys() and a["metrics"]
        for key, value in a["metrics"].items():
            assert value == pytest.approx(b["metrics"][key], rel=1e-5, abs=1e-6), key
    test_keys = json.loads((dump / "test_rank0.json").read_text())["metrics"]
    assert "test/miou" in test_keys and "test/relative_inference_time" in test_keys
    assert "test/zoom_rate" in test_keys


def test_segment_reports_the_policys_zoom_rate(synthetic_root, tmp_path_factory, tmp_path, capsys):
    """`segment`'s per-slide zoom_rate is the fraction of the slide's tiles the policy zooms:
    computed here from the policy directly on the same tiles, at a threshold chosen between
    two of their zoom probabilities so that the rate is neither 0 nor 1."""
    ckpt = tiny_checkpoint(tmp_path_factory.getbasetemp(), synthetic_root, RAZN_5X)
    method = load_method(ckpt)
    model, view = method.model, method.view
    slide_path = synthetic_root / "slide_02.tiff"
    job = plan_slide(Slide(slide_path), view, "slide_02")
    tiles = TileDataset([job], view)
    batch = collate([tiles[i] for i in range(len(tiles))])
    with torch.inference_mode():
        p = torch.sigmoid(model.policies[0](model.normalize(batch["image"])).float())
    p = p.sort().values
    n = len(p)
    k = max(range(n // 4, 3 * n // 4 + 1), key=lambda i: float(p[i] - p[i - 1]))
    assert n >= 8 and p[k] - p[k - 1] > 1e-4, p  # a clear gap: batching cannot flip a tile
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["hyper_parameters"]["threshold"] = float(p[k - 1] + p[k]) / 2
    thresholded = tmp_path / "razn_thresholded.ckpt"
    torch.save(state, thresholded)
    shutil.copy(ckpt.parents[1] / "config.yaml", tmp_path / "config.yaml")  # the run's view

    out = tmp_path / "seg"
    rc = main(["segment", "--no-progress", "--ckpt", str(thresholded), str(slide_path),
               "--out", str(out), "--batch-size", "3"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err[-3000:]
    info = json.loads((out / "slide_02.json").read_text())
    assert info["method"] == "RAZN" and info["tiles"] == n
    assert info["zoom_rate"] == (n - k) / n
