"""Scores recomputed by hand from a run's confusion matrix (rows truth, columns prediction), so
CLI tests can check the reported numbers exactly instead of only their range."""

from __future__ import annotations

import numpy as np


def iou_by_hand(confusion, members) -> float | None:
    """IoU of the classes `members` taken as one class; None when neither truth nor prediction
    has any of them."""
    m = np.asarray(confusion, dtype=np.float64)
    idx = list(members)
    tp = m[np.ix_(idx, idx)].sum()
    union = m[idx, :].sum() + m[:, idx].sum() - tp
    return None if union == 0 else float(tp / union)


def miou_by_hand(confusion) -> float:
    """Mean IoU over the classes present in truth or prediction."""
    ious = [iou_by_hand(confusion, [c]) for c in range(len(confusion))]
    present = [v for v in ious if v is not None]
    return float(np.mean(present))
