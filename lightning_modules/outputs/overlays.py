"""Overlay pictures: class colours blended over the tissue, for a quick look at what a model does.

All arrays are RGB ``uint8`` ``(H, W, 3)``; labels are integer ``(H, W)`` with 255 = unlabeled.
Unlabeled pixels keep the plain image (no tint), so annotation gaps stay visible.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from datamodules.labels.classmaps import IGNORE

_TAB10 = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_TEXT_H = 20
_GAP = 4


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours (tab10, then evenly spaced hues) for maps without colours."""
    colors = list(_TAB10[:n])
    for i in range(len(colors), n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.9)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _table(colors: Sequence[Sequence[int]]) -> np.ndarray:
    table = np.zeros((256, 3), dtype=np.uint8)
    c = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)[:255]
    table[: len(c)] = c
    return table


def _valid(label: np.ndarray, n: int, ignore: int) -> np.ndarray:
    return (label >= 0) & (label < n) & (label != ignore)


def colorize(
    label: np.ndarray, colors: Sequence[Sequence[int]], ignore: int = IGNORE
) -> np.ndarray:
    """Label map -> RGB picture; ``ignore`` and values without a colour are black."""
    label = np.asarray(label)
    rgb = _table(colors)[np.clip(label, 0, 255).astype(np.uint8)]
    rgb[~_valid(label, len(colors), ignore)] = 0
    return rgb


def blend(
    image: np.ndarray,
    label: np.ndarray,
    colors: Sequence[Sequence[int]],
    alpha: float = 0.45,
    ignore: int = IGNORE,
) -> np.ndarray:
    """Class colours blended over ``image`` with weight ``alpha``; unlabeled pixels untouched."""
    image = np.asarray(image, dtype=np.uint8)
    label = np.asarray(label)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
    tinted = (1.0 - alpha) * image + alpha * colorize(label, colors, ignore).astype(np.float64)
    out = image.copy()
    keep = _valid(label, len(colors), ignore)
    out[keep] = np.rint(tinted[keep]).astype(np.uint8)
    return out


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((_TEXT_H, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, title, (3, _TEXT_H - 6), _FONT, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def _legend(width: int, names: Sequence[str], colors: Sequence[Sequence[int]]) -> np.ndarray:
    """Swatch + name entries, wrapped into as many rows as ``width`` needs."""
    entries = [(str(n), tuple(int(v) for v in c)) for n, c in zip(names, colors, strict=True)]
    entries.append(("no tint = unlabeled", None))
    rows: list[list[tuple[int, str, tuple | None]]] = [[]]
    x = _GAP
    for name, color in entries:
        (tw, _), _ = cv2.getTextSize(name, _FONT, _FONT_SCALE, 1)
        w = (14 if color is not None else 0) + tw + 3 * _GAP
        if rows[-1] and x + w > width:
            rows.append([])
            x = _GAP
        rows[-1].append((x, name, color))
        x += w
    strip = np.full((len(rows) * _TEXT_H + _GAP, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        y = r * _TEXT_H + _GAP
        for x, name, color in row:
            tx = x
            if color is not None:
                cv2.rectangle(strip, (x, y + 3), (x + 12, y + 15), color, -1)
                cv2.rectangle(strip, (x, y + 3), (x + 12, y + 15), (0, 0, 0), 1)
                tx = x + 14 + _GAP
            cv2.putText(strip, name, (tx, y + 14), _FONT, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def overlay_panel(
    image: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    alpha: float = 0.45,
    ignore: int = IGNORE,
    min_height: int = 192,
) -> np.ndarray:
    """``image | truth | prediction`` side by side with titles and a colour legend below.

    The image is resized to the label grid when they differ (e.g. a label at a coarser mpp);
    small patches are enlarged by an integer factor (nearest) to at least ``min_height`` rows so
    the text stays legible.
    """
    image = np.asarray(image, dtype=np.uint8)
    truth, pred = np.asarray(truth), np.asarray(pred)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got {image.shape}")
    if truth.shape != pred.shape or truth.ndim != 2:
        raise ValueError(f"truth {truth.shape} and pred {pred.shape} must be the same (H, W)")
    h, w = truth.shape
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    panels = [
        image,
        blend(image, truth, colors, alpha, ignore),
        blend(image, pred, colors, alpha, ignore),
    ]
    scale = max(1, math.ceil(min_height / h))
    if scale > 1:
        panels = [np.repeat(np.repeat(p, scale, axis=0), scale, axis=1) for p in panels]
    titled = [_titled(p, t) for p, t in zip(panels, ("image", "truth", "prediction"), strict=True)]
    gap = np.full((titled[0].shape[0], _GAP, 3), 255, dtype=np.uint8)
    row = np.concatenate([titled[0], gap, titled[1], gap, titled[2]], axis=1)
    return np.ascontiguousarray(np.concatenate([row, _legend(row.shape[1], class_names, colors)]))


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an RGB (or grey) uint8 array as PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array, dtype=np.uint8)
    bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"could not write {path}")
    return path
