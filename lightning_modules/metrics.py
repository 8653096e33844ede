"""Segmentation scores, all derived from one confusion matrix.

Keeping a single ``(C, C)`` count matrix (rows = truth, columns = prediction) as the only
metric state means every score (IoU, recall, precision, accuracy, the BACH score) agrees
with every other, DDP synchronises one tensor, and the same numpy functions score a whole
slide in ``wsiseg evaluate`` as score patches during validation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from datamodules.labels.classmaps import IGNORE


def channel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=1)`` (the first maximum), as uint8 for up to 8 channels: a running
    compare-and-update ~3x faster on CPU than ``max(dim=1)``, ~20x than ``argmax`` (a strided
    reduction there). A NaN logit never wins here; it does in ``argmax``."""
    n = logits.shape[1]
    if n > 8:
        return logits.max(dim=1).indices
    best = logits[:, 0]
    idx = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for c in range(1, n):
        cur = logits[:, c]
        idx += (cur > best).to(torch.uint8) * (c - idx)  # wraps mod 256: idx -> c where greater
        best = torch.maximum(best, cur)
    return idx


class ConfusionMatrix(Metric):
    """Pixel confusion matrix, ``cm[truth, prediction]``, summed over batches and ranks.

    ``update`` takes logits / probabilities ``(B, C, ...)`` (arg-maxed over dim 1) or class
    indices shaped like ``target``.  Pixels whose target is ``ignore_index`` are skipped; any
    other target outside ``0..C-1`` is an error (a wrong class map, not something to hide).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    cm: torch.Tensor

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        c = self.num_classes
        self.add_state("cm", torch.zeros(c, c, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = channel_argmax(preds)
        if preds.shape != target.shape:
            raise ValueError(
                f"preds {tuple(preds.shape)} and target {tuple(target.shape)} do not match"
            )
        c = self.num_classes
        target = target.long().flatten()
        preds = preds.long().flatten()
        valid = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            valid = target != self.ignore_index
        bad_t = valid & ((target < 0) | (target >= c))
        bad_p = valid & ((preds < 0) | (preds >= c))
        if bool((bad_t | bad_p).any()):  # one host sync per update
            if bool(bad_t.any()):
                raise ValueError(
                    f"target holds values outside 0..{c - 1} (and not ignore_index="
                    f"{self.ignore_index}): {torch.unique(target[bad_t]).tolist()[:10]}"
                )
            raise ValueError(f"preds hold class indices outside 0..{c - 1}")
        # Ignored pixels go to an extra bin that is dropped, so no boolean indexing is needed.
        flat = torch.where(valid, target * c + preds, torch.full_like(target, c * c))
        counts = torch.zeros(c * c + 1, dtype=torch.int64, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        self.cm += counts[: c * c].view(c, c)

    def compute(self) -> torch.Tensor:
        return self.cm.clone()


def per_sample_confusion(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None
) -> torch.Tensor:
    """One confusion matrix per sample: ``(B, C, C)`` int64 counts of class indices ``(B, ...)``
    (their sum over B is what `ConfusionMatrix.update` adds for the batch)."""
    c, b = int(num_classes), int(target.shape[0])
    target = target.long().reshape(b, -1)
    preds = preds.long().reshape(b, -1)
    valid = torch.ones_like(target, dtype=torch.bool)
    if ignore_index is not None:
        valid = target != ignore_index
    offset = torch.arange(b, device=target.device)[:, None] * (c * c)
    flat = torch.where(valid, offset + target * c + preds, torch.full_like(target, b * c * c))
    counts = torch.bincount(flat.flatten(), minlength=b * c * c + 1)
    return counts[: b * c * c].view(b, c, c)


class TileConfusions:
    """Per-tile confusion counts of the test set, with each tile's ``(slide, x, y)``: the
    evidence a study's bootstrap resamples (lightning_modules/cli/study/bootstrap.py).

    Kept as plain lists (slide names are strings); `gather` collects every rank's tiles on all
    ranks (``all_gather_object``), so under DDP the sum over tiles is the synced confusion.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts: list[np.ndarray] = []
        self.ids: list[tuple[str, float, float]] = []

    def update(self, preds, target, num_classes: int, ignore_index, meta=None) -> None:
        cm = per_sample_confusion(preds, target, num_classes, ignore_index).cpu().numpy()
        n = cm.shape[0]
        meta = meta if isinstance(meta, dict) else {}
        slides = list(meta.get("slide", [""] * n))
        xs = _floats(meta.get("x"), n)
        ys = _floats(meta.get("y"), n)
        self.counts.append(cm)
        self.ids += [(str(s), x, y) for s, x, y in zip(slides, xs, ys, strict=True)]

    def gather(self) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """(counts ``(N, C, C)``, ids) over all ranks, sorted by tile id (rank-independent)."""
        parts = [(self.counts, self.ids)]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (self.counts, self.ids))
        counts = [c for part_counts, _ in parts for c in part_counts]
        ids = [i for _, part_ids in parts for i in part_ids]
        if not counts:
            return np.zeros((0, 0, 0), np.int64), []
        stacked = np.concatenate(counts).astype(np.int64)
        order = sorted(range(len(ids)), key=lambda k: ids[k])
        return stacked[order], [ids[k] for k in order]


def _floats(values, n: int) -> list[float]:
    if values is None:
        return [-1.0] * n
    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.reshape(-1).tolist()]
    return [float(v) for v in values]


def class_key(name: str) -> str:
    """Metric-key form of a class name ("in situ" -> "in_situ"), safe for CSV columns and wandb."""
    return re.sub(r"\W+", "_", str(name)).strip("_") or "class"


def _as_matrix(cm, class_names: Sequence[str]) -> np.ndarray:
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    m = np.asarray(cm, dtype=np.float64)
    c = len(class_names)
    if m.shape != (c, c):
        raise ValueError(f"confusion matrix must be ({c}, {c}) for {c} classes, got {m.shape}")
    if (m < 0).any():
        raise ValueError("confusion matrix counts must be >= 0")
    return m


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def bach_score(cm) -> float:
    """BACH 2018 part B score of an ordinal confusion matrix (classes 0 = normal .. K-1).

    s = 1 − Σ|p − g| / Σ max(g, K−1−g)·[p > 0 or g > 0]: pixels that are normal in truth and
    prediction leave the denominator.  NaN without pixels; 1.0 when every pixel is such a
    pixel (nothing was got wrong and nothing could have been).
    """
    m = np.asarray(cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else cm, float)
    k = m.shape[0]
    if m.sum() <= 0:
        return math.nan
    g, p = np.indices(m.shape)
    num = float((m * np.abs(p - g)).sum())
    weight = np.maximum(g, k - 1 - g).astype(float)
    weight[0, 0] = 0.0
    den = float((m * weight).sum())
    return 1.0 if den == 0 else 1.0 - num / den


def group_iou(cm, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Per named group of classes, ``group_iou/<name>`` and ``within_group/<name>``.

    ``group_iou``: the IoU of the group merged into one class (a pixel is a true positive when
    truth and prediction both lie in the group), so confusions inside it (in situ vs invasive
    inside "carcinoma") do not count. ``within_group``: exactly those confusions, as balanced
    accuracy inside the group: the mean over its classes of P(predicted that class | truth that
    class, predicted a class of the group); 1/k (0.5 for a pair) means the net cannot tell the
    group's classes apart at all, however well it finds the group.
    """
    m = np.asarray(cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else cm, float)
    out = {}
    for name, members in groups.items():
        idx = np.asarray(list(members), dtype=int)
        inner = m[np.ix_(idx, idx)]
        tp = inner.sum()
        union = m[idx, :].sum() + m[:, idx].sum() - tp
        out[f"group_iou/{class_key(name)}"] = float(tp / union) if union > 0 else math.nan
        rows = inner.sum(axis=1)
        recall = np.diag(inner)[rows > 0] / rows[rows > 0]
        out[f"within_group/{class_key(name)}"] = float(recall.mean()) if recall.size else math.nan
    return out


def scores(
    cm,
    class_names: Sequence[str],
    ordinal: bool = False,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
    """All scores of a confusion matrix ``cm[truth, prediction]`` as plain floats.

    Keys: ``iou/<class>``, ``recall/<class>``, ``precision/<class>`` (NaN where undefined),
    ``miou`` (mean IoU over classes present in truth or prediction), ``weighted_iou`` (IoU
    weighted by inverse truth frequency over classes present in truth, as RAZN reports it, so
    rare classes count as much as common ones), ``accuracy`` (pixel accuracy) and, when
    ``ordinal``, ``bach_score``; with ``groups`` (name -> class indices) also
    ``group_iou/<name>`` and ``within_group/<name>`` (:func:`group_iou`).  ``<class>`` is
    ``class_key(name)``.
    """
    m = _as_matrix(cm, class_names)
    tp = np.diag(m)
    truth = m.sum(axis=1)
    pred = m.sum(axis=0)
    iou = _ratio(tp, truth + pred - tp)
    recall = _ratio(tp, truth)
    precision = _ratio(tp, pred)
    out: dict[str, float] = {}
    for i, name in enumerate(class_names):
        key = class_key(name)
        out[f"iou/{key}"] = float(iou[i])
        out[f"recall/{key}"] = float(recall[i])
        out[f"precision/{key}"] = float(precision[i])
    present = (truth + pred) > 0
    out["miou"] = float(iou[present].mean()) if present.any() else math.nan
    in_truth = truth > 0
    if in_truth.any():
        w = 1.0 / truth[in_truth]
        out["weighted_iou"] = float((w * iou[in_truth]).sum() / w.sum())
    else:
        out["weighted_iou"] = math.nan
    total = m.sum()
    out["accuracy"] = float(tp.sum() / total) if total > 0 else math.nan
    if ordinal:
        out["bach_score"] = bach_score(m)
    if groups:
        out.update(group_iou(m, groups))
    return out


def majority_scores(
    truth_counts: Sequence[int] | np.ndarray, class_names: Sequence[str], ordinal: bool = False
) -> dict[str, float]:
    """Scores of always predicting the most frequent truth class: the floor a model must beat."""
    counts = np.asarray(truth_counts, dtype=np.float64).reshape(-1)
    if counts.shape[0] != len(class_names):
        raise ValueError(f"need {len(class_names)} class counts, got {counts.shape[0]}")
    m = np.zeros((len(class_names), len(class_names)))
    if counts.sum() > 0:
        m[:, int(np.argmax(counts))] = counts
    return scores(m, class_names, ordinal)


def _fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def format_table(result: dict[str, float], class_names: Sequence[str]) -> str:
    """Markdown table: IoU / recall / precision per class, then the summary scores."""
    lines = ["| class | IoU | recall | precision |", "|---|---:|---:|---:|"]
    for name in class_names:
        key = class_key(name)
        cells = [_fmt(result.get(f"{m}/{key}")) for m in ("iou", "recall", "precision")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    summary = [("mIoU", "miou"), ("weighted IoU", "weighted_iou"), ("pixel accuracy", "accuracy")]
    summary += [
        (f"IoU {k.split('/', 1)[1].replace('_', ' ')}", k)
        for k in result
        if k.startswith("group_iou/")
    ]
    if "bach_score" in result:
        summary.append(("BACH score", "bach_score"))
    for label, key in summary:
        lines.append(f"| **{label}** | {_fmt(result.get(key))} | | |")
    return "\n".join(lines)
