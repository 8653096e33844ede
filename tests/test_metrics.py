"""Scores from one confusion matrix: hand-made matrices, the BACH score, the majority baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_modules.metrics import (
    ConfusionMatrix,
    bach_score,
    class_key,
    format_table,
    majority_scores,
    scores,
)

BACH = ["normal", "benign", "in situ", "invasive"]


def pixel_bach_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """The challenge formula written per pixel, to check the confusion-matrix form against."""
    gt, pred = gt.astype(float), pred.astype(float)
    num = np.abs(pred - gt).sum()
    den = (np.maximum(gt, 3 - gt) * ((pred > 0) | (gt > 0))).sum()
    return 1.0 - num / den


def test_per_class_scores_by_hand():
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    s = scores(cm, ["a", "b", "c"])
    assert s["iou/a"] == pytest.approx(5 / 8)
    assert s["recall/a"] == pytest.approx(5 / 6)
    assert s["precision/a"] == pytest.approx(5 / 7)
    assert s["iou/b"] == pytest.approx(3 / 6)
    assert s["recall/b"] == pytest.approx(3 / 5)
    assert s["precision/b"] == pytest.approx(3 / 4)
    # class c is in neither truth nor prediction: undefined, and left out of the mean
    assert math.isnan(s["iou/c"]) and math.isnan(s["recall/c"]) and math.isnan(s["precision/c"])
    assert s["miou"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert s["accuracy"] == pytest.approx(8 / 11)
    w = np.array([1 / 6, 1 / 5])
    assert s["weighted_iou"] == pytest.approx((w * [5 / 8, 3 / 6]).sum() / w.sum())
    assert "bach_score" not in s


def test_class_only_predicted_counts_in_miou_not_weighted_iou():
    s = scores(torch.tensor([[3, 1], [0, 0]]), ["a", "b"])
    assert s["iou/b"] == 0.0 and s["precision/b"] == 0.0 and math.isnan(s["recall/b"])
    assert s["miou"] == pytest.approx(0.75 / 2)
    assert s["weighted_iou"] == pytest.approx(0.75)


def test_empty_matrix_is_nan_not_an_error():
    s = scores(np.zeros((2, 2)), ["a", "b"], ordinal=True)
    assert all(math.isnan(s[k]) for k in ("miou", "weighted_iou", "accuracy", "bach_score"))


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        scores(np.eye(2), ["a", "b", "c"])


def test_bach_score_perfect_and_maximally_wrong():
    assert scores(np.diag([7, 3, 2, 9]), BACH, ordinal=True)["bach_score"] == 1.0
    assert bach_score(np.diag([50, 0, 0, 0])) == 1.0  # all normal, all right
    worst = np.zeros((4, 4))
    worst[0, 3] = worst[1, 3] = worst[2, 0] = worst[3, 0] = 10
    assert bach_score(worst) == pytest.approx(0.0)


def test_bach_score_excludes_normal_normal_pixels():
    cm = np.zeros((4, 4))
    cm[3, 2] = 1  # invasive called in situ: error 1 of a possible 3
    assert bach_score(cm) == pytest.approx(2 / 3)
    cm[0, 0] = 1000  # correctly normal pixels leave the denominator, so nothing changes
    assert bach_score(cm) == pytest.approx(2 / 3)
    cm[0, 1] = 1  # normal called benign: +1 error, +3 possible
    assert bach_score(cm) == pytest.approx(1 - 2 / 6)


def test_bach_score_matches_pixel_formula():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(2, 40, 40))
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 4, size=gt.shape))
    metric = ConfusionMatrix(4)
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert bach_score(metric.compute()) == pytest.approx(pixel_bach_score(gt, pred))


def test_confusion_matrix_ignores_255_and_accumulates():
    metric = ConfusionMatrix(3)
    target = torch.tensor([[0, 1, 2, 255]])
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, :] = 1.0  # predict class 1 everywhere
    metric.update(logits, target)
    metric.update(torch.tensor([[2, 2, 2, 2]]), target)
    cm = metric.compute()
    assert cm.dtype == torch.int64
    expected = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 1, 1]])
    assert torch.equal(cm, expected)
    metric.reset()
    assert metric.cm.sum() == 0 and not metric.update_called


def test_confusion_matrix_rows_are_truth():
    metric = ConfusionMatrix(2)
    metric.update(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 1]))
    assert metric.compute().tolist() == [[0, 2], [0, 1]]


def test_confusion_matrix_refuses_out_of_range_labels():
    metric = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="do not match"):
        metric.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))


def test_majority_baseline():
    s = majority_scores([10, 30, 5], ["a", "b", "c"])
    assert s["iou/b"] == pytest.approx(30 / 45)
    assert s["iou/a"] == 0.0 and s["iou/c"] == 0.0
    assert s["miou"] == pytest.approx(30 / 45 / 3)
    assert s["accuracy"] == pytest.approx(30 / 45)
    b = majority_scores([100, 1, 1, 2], BACH, ordinal=True)
    # always "normal": the 100 normal pixels leave the score; 1 + 2 + 2·3 error of 2 + 2 + 2·3
    assert b["bach_score"] == pytest.approx(1 - 9 / 10)


def test_class_keys_and_table():
    assert class_key("in situ") == "in_situ"
    assert class_key("tumor-associated stroma") == "tumor_associated_stroma"
    s = scores(np.array([[5, 1, 0, 0], [2, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 4]]), BACH, True)
    table = format_table(s, BACH)
    lines = table.splitlines()
    assert lines[0].startswith("| class | IoU")
    assert "| normal | 0.6250 | 0.8333 | 0.7143 |" in lines
    assert "| in situ | – | – | – |" in lines
    assert any(line.startswith("| **mIoU** | ") for line in lines)
    assert any(line.startswith("| **BACH score** | ") for line in lines)
    assert "BACH" not in format_table(scores(np.eye(2), ["a", "b"]), ["a", "b"])


@pytest.mark.parametrize("channels", [1, 2, 4, 8, 12])
def test_channel_argmax_is_argmax_with_first_maximum_on_ties(channels):
    from lightning_modules.metrics import channel_argmax

    g = torch.Generator().manual_seed(channels)
    logits = torch.randint(-3, 4, (3, channels, 17, 19), generator=g).float()  # many ties
    got = channel_argmax(logits)
    assert got.dtype == (torch.uint8 if channels <= 8 else torch.int64)
    assert torch.equal(got.long(), logits.argmax(dim=1))
