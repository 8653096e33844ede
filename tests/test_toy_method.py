"""A fifth method from outside the package: tests/toy_method/ (its net, its LightningModule,
its YAML with an existing view) through the real `wsiseg train` -> `segment` -> `evaluate` ->
`compare`, with nothing under datamodules/ or lightning_modules/ written for it."""

from __future__ import annotations

import json

import numpy as np

from datamodules.slides.slide import Slide
from lightning_modules.cli.main import main
from lightning_modules.metrics import majority_scores
from tests.cli_args import ROOT, experiment_args

TOY = ROOT / "tests" / "toy_method" / "toy.yaml"


def test_toy_method_trains_segments_evaluates_and_compares(synthetic_root, out, capsys):
    argv = experiment_args("train", TOY, synthetic_root, out, tiny="toy_tiny.yaml",
                           cpu_schedule=True)  # fmt: skip
    rc = main(argv)
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert "REDUCED — CPU budget (experiments/schedule/cpu_budget_smp.yaml)" in printed.out
    run = out / "toy" / "version_0"  # the toy YAML names the shared CSV logger's run
    result = json.loads((run / "results.json").read_text())
    assert (result["experiment"], result["method"]) == ("toy", "ToyMethod")
    assert result["hparams"]["lr_milestones"] == [4]  # from the schedule the toy YAML names
    assert result["scores"]["miou"] > result["majority_scores"]["miou"] + 0.05
    best = out / "toy" / "version_0" / "checkpoints"
    assert result["best_checkpoint"].startswith(str(best / "epoch"))  # defaults.yaml's callback

    seg = out / "seg"
    slide = synthetic_root / "slide_02.tiff"  # the test split
    rc = main(["segment", "--ckpt", result["best_checkpoint"], str(slide), "--out", str(seg),
               "--accelerator", "cpu", "--num-workers", "0", "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err[-3000:]
    info = json.loads((seg / "slide_02.json").read_text())
    assert info["class_path"] == "tests.toy_method.method.ToyMethod"
    assert info["target_mpp"] == 1.0  # the schedule's SingleView, 128² at 10x, from the ckpt
    mask = Slide(seg / "slide_02_mask.tiff", pad_value=0)
    assert mask.dimensions == Slide(slide).dimensions == (2048, 2048)

    rc = main(["evaluate", "--pred", str(seg / "slide_02_mask.tiff"),
               "--truth", str(synthetic_root / "slide_02_mask.tiff")])  # fmt: skip
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    whole = json.loads((seg / "slide_02_eval.json").read_text())
    assert whole["labelled_pixels"] == 2048 * 2048
    cm = np.asarray(whole["confusion"])
    assert cm.sum() == 2048 * 2048
    baseline = majority_scores(cm.sum(axis=1), result["class_names"], True)
    assert whole["scores"]["miou"] > baseline["miou"] + 0.05
    assert f"{whole['scores']['miou']:.4f}" in printed.out

    rc = main(["compare", str(out / "toy"), "--out", str(out / "cmp" / "comparison")])
    assert rc == 0, capsys.readouterr().err
    rows = [r for r in (out / "cmp" / "comparison.md").read_text().splitlines() if "| toy |" in r]
    assert len(rows) == 1 and f"| {result['scores']['miou']:.4f} |" in rows[0]
