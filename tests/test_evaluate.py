"""`wsiseg evaluate`: whole-slide scores, streamed, against patch-level test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from ckpt_fixtures import DMMN_20X, tiny_checkpoint

from datamodules.labels.sources import MaskLabels
from datamodules.slides.slide import Slide
from datamodules.wsi import WSIDataModule
from lightning_modules.cli.checkpoints import load_method
from lightning_modules.cli.main import main
from lightning_modules.outputs.evaluation import stream_confusion
from lightning_modules.outputs.mask_writer import MaskTiffWriter


def write_mask(path: Path, values: np.ndarray, mpp: float = 0.5) -> Path:
    writer = MaskTiffWriter(path, values.shape[::-1], mpp, tile=64)
    writer.write(values.astype(np.uint8))
    return writer.close()


def evaluate(*argv, capsys) -> tuple[int, str, str]:
    rc = main(["evaluate", *map(str, argv)])
    printed = capsys.readouterr()
    return rc, printed.out, printed.err


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, synthetic_root) -> tuple[Path, Path]:
    """The checkpoint and its mask of the synthetic test slide, every cell segmented."""
    ckpt = tiny_checkpoint(tmp_path_factory.getbasetemp(), synthetic_root, DMMN_20X)
    out = tmp_path_factory.mktemp("evaluate") / "seg"
    slide = synthetic_root / "slide_02.tiff"
    rc = main(["segment", "--ckpt", str(ckpt), str(slide), "--out", str(out), "--all-tiles",
               "--num-workers", "0", "--no-progress"])  # fmt: skip
    assert rc == 0
    return ckpt, out / "slide_02_mask.tiff"


def test_agrees_with_patch_test_metrics(segmented, synthetic_root, capsys):
    """The test split is slide_02; with every grid cell kept, the patch-level test metrics of
    the checkpoint and the whole-slide evaluation of its mask count the same pixels."""
    ckpt, mask = segmented
    rc, out, err = evaluate("--pred", mask, "--truth", synthetic_root / "slide_02_mask.tiff",
                            capsys=capsys)  # fmt: skip
    assert rc == 0, err
    assert "| **BACH score** |" in out and "| **mIoU** |" in out
    slide_level = json.loads(mask.with_name("slide_02_eval.json").read_text())
    assert slide_level["labelled_pixels"] == 2048 * 2048
    assert slide_level["unsegmented_labelled_pixels"] == 0

    method = load_method(ckpt)
    model = method.model
    assert method.pad_value == 0  # DMMN zero-pads; `segment` read the same pixels
    data = WSIDataModule(root=str(synthetic_root), min_tissue=0.0, min_annotated=0.0,
                         augment=False, batch_size=8, num_workers=0, synthesize=False,
                         pad_value=method.pad_value)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(mask.parent))  # fmt: skip
    trainer.test(model, datamodule=data, verbose=False)
    patch = np.asarray(model.test_confusion)
    assert patch.sum() == 2048 * 2048  # all 64 targets of the slide
    whole = np.asarray(slide_level["confusion"])
    # the same pixels, the same arg-max of the logits; float rounding may flip a rare tie
    assert np.abs(whole - patch).sum() <= 1e-4 * patch.sum()
    for key, value in model.test_scores.items():
        got = slide_level["scores"][key]
        if value == value:  # not NaN
            assert got == pytest.approx(value, abs=1e-3), key


def test_xml_truth_matches_mask_truth(segmented, synthetic_root, tmp_path, capsys):
    _, mask = segmented
    js = [tmp_path / "mask.json", tmp_path / "xml.json"]
    truths = [synthetic_root / "slide_02_mask.tiff", synthetic_root / "slide_02.xml"]
    for truth, out in zip(truths, js, strict=True):
        rc, _, err = evaluate("--pred", mask, "--truth", truth, "--json", out,
                              "--eval-mpp", "1.0", capsys=capsys)  # fmt: skip
        assert rc == 0, err
    a, b = (json.loads(p.read_text()) for p in js)
    assert a["eval_mpp"] == 1.0 and a["labelled_pixels"] == 1024 * 1024
    # the XML is traced from the mask: the same labels on all but boundary pixels
    assert b["scores"]["accuracy"] == pytest.approx(a["scores"]["accuracy"], abs=0.01)


def test_counts_exact_with_unlabeled_and_unsegmented(tmp_path):
    """Truth 0 = unlabeled (excluded); prediction 0 = not segmented: counted as the class map's
    unannotated class when it has one, else left out and counted."""
    truth = np.array([[1, 1, 2, 0], [3, 4, 4, 0], [2, 2, 2, 2]], np.uint8).repeat(8, 0).repeat(8, 1)
    pred = np.array([[1, 2, 2, 4], [0, 4, 3, 1], [2, 2, 0, 2]], np.uint8).repeat(8, 0).repeat(8, 1)
    p = Slide(write_mask(tmp_path / "p.tiff", pred), pad_value=0)
    t = MaskLabels(write_mask(tmp_path / "t.tiff", truth), "bach", expected_dimensions=(32, 24))
    cells = 64
    left_out = stream_confusion(p, t, 4, window=16)
    assert left_out.labelled == 10 * cells and left_out.unsegmented == 2 * cells
    expected = np.zeros((4, 4), np.int64)
    for g, q in [(0, 0), (0, 1), (1, 1), (3, 3), (3, 2), (1, 1), (1, 1), (1, 1)]:
        expected[g, q] += cells
    assert np.array_equal(left_out.cm, expected)
    as_normal = stream_confusion(p, t, 4, window=16, unsegmented_as=0)
    expected[2, 0] += cells  # truth in situ, not segmented
    expected[1, 0] += cells  # truth benign, not segmented
    assert np.array_equal(as_normal.cm, expected)
    coarse = stream_confusion(p, t, 4, mpp=1.0, unsegmented_as=0)  # 2x2 pixels per sample
    assert np.array_equal(coarse.cm * 4, expected)


def test_sizes_must_match(segmented, synthetic_root, tmp_path, capsys):
    _, mask = segmented
    small = write_mask(tmp_path / "small.tiff", np.ones((1000, 1500), np.uint8))
    rc, _, err = evaluate("--pred", mask, "--truth", small, capsys=capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "1500x1000 but the prediction slide_02_mask.tiff is 2048x2048" in err
    # an exact integer downsample of the slide is the same slide at a coarser grid: accepted
    half = write_mask(tmp_path / "half.tiff", np.ones((1024, 1024), np.uint8), mpp=1.0)
    rc, _, err = evaluate("--pred", mask, "--truth", half, "--json", tmp_path / "h.json",
                          capsys=capsys)  # fmt: skip
    assert rc == 0, err
    far = tmp_path / "far.geojson"
    ring = [[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]
    far.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "invasive"}}}]}))  # fmt: skip
    rc, _, err = evaluate("--pred", mask, "--truth", far, capsys=capsys)
    assert rc == 2 and "not the same slide" in err


def test_bach_score_only_for_ordinal_maps(tmp_path, capsys):
    pred = write_mask(tmp_path / "p_mask.tiff", np.full((64, 64), 2, np.uint8))
    truth = write_mask(tmp_path / "t.tiff", np.full((64, 64), 6, np.uint8))  # TIGER: stroma
    rc, out, err = evaluate("--pred", pred, "--truth", truth, "--classes", "tiger_stroma",
                            capsys=capsys)  # fmt: skip
    assert rc == 0, err
    result = json.loads((tmp_path / "p_eval.json").read_text())
    assert "bach_score" not in result["scores"] and "BACH" not in out
    assert result["scores"]["iou/stroma"] == 1.0 and result["unsegmented_as"] is None
    pred_bad = write_mask(tmp_path / "bad_mask.tiff", np.full((64, 64), 3, np.uint8))
    rc, _, err = evaluate("--pred", pred_bad, "--truth", truth, "--classes", "tiger_stroma",
                          capsys=capsys)  # fmt: skip
    assert rc == 2 and "mask value 3" in err
