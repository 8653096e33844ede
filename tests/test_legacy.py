"""Checkpoints written before the re-layout (v0.1 class paths) still segment and test.

`tests/data/legacy/dmmn_s2_5x_v0.1.ckpt` was written by `wsiseg fit` at commit 961e859 (DSMN-S2
at width 1/32 on 5x targets, one step; 106 kB). Its datamodule hyper-parameters name the view
``datamodules.views.MultiMagView``, a path that no longer exists.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import tiffslide
import torch

from lightning_modules.cli.checkpoints import load_method
from lightning_modules.cli.legacy import MOVED_CLASSES, MOVED_MODULES, current
from lightning_modules.cli.main import main
from tests.cli_args import experiment_args

OLD = Path(__file__).parent / "data" / "legacy" / "dmmn_s2_5x_v0.1.ckpt"


def test_the_fixture_really_is_old():
    ckpt = torch.load(OLD, map_location="cpu", weights_only=False)
    view = ckpt["datamodule_hyper_parameters"]["view"]
    assert view["class_path"] == "datamodules.views.MultiMagView"


def test_every_alias_resolves():
    for old, new in MOVED_MODULES.items():
        assert current(f"{old}.Thing") == f"{new}.Thing"
        importlib.import_module(new)
    for old, new in MOVED_CLASSES.items():
        module, _, name = current(old).rpartition(".")
        assert current(old) == new and hasattr(importlib.import_module(module), name)
    assert current("lightning_modules.dmmn.DMMN") == "lightning_modules.dmmn.DMMN"


def test_old_checkpoint_segments_a_slide(synthetic_root, tmp_path):
    ckpt = tmp_path / "old.ckpt"  # no config.yaml beside it: only the checkpoint speaks
    shutil.copy(OLD, ckpt)
    method = load_method(ckpt)
    assert type(method.view).__name__ == "MultiMagView" and method.view.magnification == 5
    out = tmp_path / "seg"
    slide = synthetic_root / "slide_02.tiff"
    rc = main(["segment", "--no-progress", "--ckpt", str(ckpt), str(slide), "--out", str(out)])
    assert rc == 0
    mask = tiffslide.TiffSlide(out / "slide_02_mask.tiff")
    assert mask.dimensions == (2048, 2048)
    labels = mask.read_region((0, 0), 0, mask.dimensions, as_array=True)[..., 0]
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 255}
    summary = json.loads((out / "slide_02.json").read_text())
    assert summary["method"] == "DMMN"


def test_old_checkpoint_tests_through_ckpt_path(synthetic_root, tmp_path):
    extra = ("--model.init_args.arch", "s2", "--model.init_args.width", "0.03125",
             "--data.init_args.view.init_args.magnification", "5",
             "--trainer.limit_test_batches", "1", "--ckpt_path", str(OLD))  # fmt: skip
    args = experiment_args(
        "test", "dmmn_m3", synthetic_root, tmp_path, tiny="tiny.yaml", extra=extra
    )
    assert main(args) == 0
