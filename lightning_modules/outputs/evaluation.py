"""Whole-slide confusion matrix of a predicted label mask against any annotation, window by window.

A slide at 0.5 um/px is billions of pixels, so neither the prediction nor the truth is loaded
whole: both are read through the suite's readers (`Slide` for the mask, `open_labels` for XML,
GeoJSON or mask truth) one window at a time at the evaluation mpp, and only the ``(C, C)`` count
matrix is kept. Unlabeled truth pixels (IGNORE) are excluded; prediction pixels the model did
not segment (mask value 0, no tissue) count as `unsegmented_as` or, when that is None, are left
out and counted separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE, ClassMap
from datamodules.labels.sources import POLYGON_SUFFIXES, open_labels, read_annotations
from datamodules.sampling.geometry import grid_shape
from datamodules.slides.slide import Slide

RASTER_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class SlideConfusion:
    """Counts of one slide: ``cm[truth, prediction]`` and what was left out."""

    cm: np.ndarray
    labelled: int  # truth pixels with a class
    unsegmented: int  # of those, pixels the prediction left at 0 (not segmented)
    mpp: float
    windows: int


def check_same_slide(pred: Slide, truth_path: Path, class_map: ClassMap) -> None:
    """A truth of another size than the prediction is a different slide: say so in one line."""
    W, H = pred.dimensions
    suffix = truth_path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        w, h = Slide(truth_path, mpp=pred.mpp).dimensions
        k = max(round(W / w), 1)
        same = (w, h) == (W, H)
        downsample = k > 1 and w in (W // k, -(-W // k)) and h in (H // k, -(-H // k))
        if not (same or downsample):
            raise InputError(
                truth_path,
                f"the truth mask is {w}x{h} but the prediction {pred.path.name} is {W}x{H}: "
                "not the same slide (sizes must match, or the truth be an exact downsample)",
            )
    elif suffix in POLYGON_SUFFIXES:
        regions = read_annotations(truth_path)
        if regions:
            x1 = max(r.polygon.bounds[2] for r in regions)
            y1 = max(r.polygon.bounds[3] for r in regions)
            if x1 > W * 1.05 + 16 or y1 > H * 1.05 + 16:
                raise InputError(
                    truth_path,
                    f"annotations reach ({x1:.0f}, {y1:.0f}), beyond the {W}x{H} prediction "
                    f"{pred.path.name}: not the same slide",
                )


def stream_confusion(
    pred: Slide,
    truth,
    num_classes: int,
    mpp: float | None = None,
    window: int = 2048,
    unsegmented_as: int | None = None,
) -> SlideConfusion:
    """Confusion matrix of `pred` (mask values class + 1, 0 = not segmented) against the label
    source `truth` over the whole slide at `mpp` (default: the prediction's level 0)."""
    c = int(num_classes)
    mpp = float(pred.mpp if mpp is None else mpp)
    f = mpp / pred.mpp  # level-0 pixels per evaluation pixel
    W, H = pred.dimensions
    ny, nx = grid_shape((W, H), f)  # evaluation pixels covering the slide
    cm = np.zeros(c * c, np.int64)
    labelled = unsegmented = windows = 0
    for y0 in range(0, ny, window):
        for x0 in range(0, nx, window):
            size = (min(window, nx - x0), min(window, ny - y0))
            loc = (x0 * f, y0 * f)
            p = pred.read(loc, size, mpp=mpp, resample="nearest", raw=True, pad_value=0)
            t = truth.read(loc, size, mpp)
            valid = t != IGNORE
            if not valid.any():
                continue
            t, p = t[valid].astype(np.int64), p[valid].astype(np.int64)
            if p.max() > c:
                raise InputError(
                    pred.path,
                    f"prediction holds mask value {int(p.max())}, but the class map has only {c} "
                    f"classes (values 1..{c}; 0 = not segmented)",
                )
            labelled += t.size
            blank = p == 0
            unsegmented += int(blank.sum())
            if unsegmented_as is None:
                t, p = t[~blank], p[~blank] - 1
            else:
                p = np.where(blank, unsegmented_as, p - 1)
            cm += np.bincount(t * c + p, minlength=c * c)
            windows += 1
    return SlideConfusion(cm.reshape(c, c), labelled, unsegmented, mpp, windows)


def evaluate_slide(
    pred_path: str | Path,
    truth_path: str | Path,
    class_map: ClassMap,
    mpp: float | None = None,
    eval_mpp: float | None = None,
    window: int = 2048,
    unsegmented_as: int | None = None,
) -> SlideConfusion:
    """Open a predicted mask (level-0 `mpp` if its file lacks one) and its truth; stream."""
    pred = Slide(pred_path, mpp=mpp, pad_value=0)
    truth_path = Path(truth_path)
    if not truth_path.is_file():
        raise InputError(truth_path, "truth file not found")
    check_same_slide(pred, truth_path, class_map)
    truth = open_labels(truth_path, class_map, pred)
    return stream_confusion(pred, truth, class_map.num_classes, eval_mpp, window, unsegmented_as)
