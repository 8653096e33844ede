"""Tissue masks: where on a slide there is tissue worth sampling or segmenting.

Samplers place patches on a stride-256 grid and keep the cells with enough tissue, so training does
not waste steps on white glass and inference can skip it. The mask is computed once per slide on a
coarse thumbnail (16 um/px: a 4 mm slide becomes 256 px), read through `Slide.thumbnail` so padding
and resizing follow the one geometry convention of the suite.
"""

from __future__ import annotations

import cv2
import numpy as np

from datamodules.sampling.geometry import grid_shape

#: Otsu never puts the tissue threshold below this saturation (0-255). Stained tissue is clearly
#: coloured (H&E stroma ~60, nuclei ~100+), glass and dust are grey; without the floor Otsu
#: happily splits the sensor noise of an all-white slide into "tissue".
MIN_SATURATION = 20
#: ... nor below this darkness (255 - grey): faint but colourless tissue (frozen sections,
#: poorly stained areas) is still caught when it is clearly darker than glass.
MIN_DARKNESS = 30
#: Pixels darker than this grey value are pen marks, cover-slip edges or scanner borders.
BLACK_LEVEL = 25


def tissue_mask(
    slide,
    mpp: float = 16.0,
    *,
    min_area_um2: float = 20_000.0,
    close_um: float = 48.0,
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of a whole slide at `mpp` um/px, and that mpp.

    Otsu's threshold on saturation (stain) OR on darkness (inverted grey), each floored at
    `MIN_SATURATION` / `MIN_DARKNESS` so an empty (all-glass) slide gives an empty mask rather than
    thresholded noise; near-black pixels are dropped. A small closing (`close_um`) bridges gaps
    inside tissue, and connected pieces (and holes) smaller than `min_area_um2` (default ~a
    140 um square, a few 256-px patches at 20x) are removed (filled). `slide` is a `Slide` (only
    `thumbnail(mpp)` and `mpp` are used); the mask covers the thumbnail, row = y, column = x.
    """
    mpp = float(mpp)
    if not mpp > 0:
        raise ValueError(f"mask mpp must be positive, got {mpp}")
    # never ask for a mask finer than the slide itself
    mpp = max(mpp, float(slide.mpp))
    thumb = slide.thumbnail(mpp)
    return mask_from_rgb(thumb, mpp, min_area_um2=min_area_um2, close_um=close_um), mpp


def mask_from_rgb(
    rgb: np.ndarray, mpp: float, *, min_area_um2: float = 20_000.0, close_um: float = 48.0
) -> np.ndarray:
    """The tissue mask of an RGB thumbnail at `mpp` um/px (see `tissue_mask`)."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {rgb.shape}")
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    dark = 255 - grey
    not_black = grey > BLACK_LEVEL
    # black borders would drag both thresholds: compute them on the other pixels only
    t_sat = _threshold(sat[not_black], MIN_SATURATION)
    t_dark = _threshold(dark[not_black], MIN_DARKNESS)
    mask = ((sat > t_sat) | (dark > t_dark)) & not_black
    return _clean(mask, mpp, min_area_um2=min_area_um2, close_um=close_um)


def _threshold(values: np.ndarray, floor: int) -> int:
    """Otsu's threshold of a 1-D uint8 sample, but never below `floor`.

    Otsu always splits in two; when the lower class is itself clearly above `floor` there is no
    glass in view (a crop inside tissue) and it split tissue from tissue, so fall back to `floor`.
    """
    if values.size == 0 or values.min() == values.max():
        return floor
    t, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    lower = values[values <= t]
    if lower.size and float(np.median(lower)) > floor:
        return floor
    return max(int(t), floor)


def _clean(mask: np.ndarray, mpp: float, *, min_area_um2: float, close_um: float) -> np.ndarray:
    """Close small gaps, drop specks, fill small holes: sizes in micrometres, so any mpp works."""
    m = mask.astype(np.uint8)
    k = int(round(close_um / mpp))
    if k >= 2:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k | 1, k | 1))
        # pad so the closing does not glue tissue to the image border
        pad = k
        m = cv2.copyMakeBorder(m, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad]
    min_px = min_area_um2 / (mpp * mpp)
    m = _drop_small(m, min_px)
    holes = _drop_small(1 - m, min_px, keep_border=True)
    return (1 - holes).astype(bool)


def _drop_small(m: np.ndarray, min_px: float, keep_border: bool = False) -> np.ndarray:
    """Zero 8-connected components of `m` smaller than `min_px` (keep border-touching if asked)."""
    if min_px <= 1:
        return m
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    if keep_border:
        h, w = m.shape
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        x1, y1 = x + stats[:, cv2.CC_STAT_WIDTH], y + stats[:, cv2.CC_STAT_HEIGHT]
        keep |= (x == 0) | (y == 0) | (x1 == w) | (y1 == h)
    keep[0] = False
    return keep[labels].astype(np.uint8)


def tissue_fraction(
    mask: np.ndarray,
    mask_mpp: float,
    slide_mpp: float,
    cell: int = 256,
    mpp: float | None = None,
    *,
    dimensions: tuple[int, int] | None = None,
) -> np.ndarray:
    """Fraction of tissue in each cell of a grid of `cell` px at `mpp` (default: the slide's).

    Cell ``[r, c]`` covers level-0 x in ``[c * s, (c + 1) * s)`` and y in ``[r * s, (r + 1) * s)``
    with ``s = cell * mpp / slide_mpp``: the top-left corners of a stride-`cell` grid of patches.
    The grid spans the level-0 `dimensions` ``(w, h)`` when given, else the mask's extent; area
    outside the mask counts as no tissue. Cells need not be a whole number of mask pixels: sums
    come from the integral image, which is exact at fractional positions for a pixelwise-constant
    mask. Returns a float32 ``(rows, cols)`` array in [0, 1].
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if cell <= 0 or mask_mpp <= 0 or slide_mpp <= 0:
        raise ValueError("cell, mask_mpp and slide_mpp must be positive")
    mpp = float(slide_mpp if mpp is None else mpp)
    cell_l0 = cell * mpp / slide_mpp  # level-0 px per cell
    cell_m = cell * mpp / mask_mpp  # mask px per cell
    if dimensions is None:
        ext_w, ext_h = mask.shape[1] * mask_mpp / slide_mpp, mask.shape[0] * mask_mpp / slide_mpp
    else:
        ext_w, ext_h = float(dimensions[0]), float(dimensions[1])
    rows, cols = grid_shape((ext_w, ext_h), cell_l0)
    m = mask.astype(np.float64)
    # integral image padded with its last row/column so positions past the mask add nothing
    integral = cv2.integral(m)  # (h + 1, w + 1), integral[y, x] = sum of m[:y, :x]
    xs = np.arange(cols + 1) * cell_m
    ys = np.arange(rows + 1) * cell_m
    sums = _interp2(integral, ys, xs)
    area = np.diff(np.diff(sums, axis=0), axis=1)
    return np.clip(area / (cell_m * cell_m), 0.0, 1.0).astype(np.float32)


def _interp2(table: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples of `table` on the grid ys x xs, clamped at its edges."""
    h, w = table.shape

    def split(v, n):
        v = np.clip(v, 0, n - 1)
        i0 = np.minimum(np.floor(v).astype(int), n - 2) if n > 1 else np.zeros(len(v), int)
        return i0, v - i0

    y0, fy = split(ys, h)
    x0, fx = split(xs, w)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    top = table[y0][:, x0] * (1 - fx) + table[y0][:, x1] * fx
    bottom = table[y1][:, x0] * (1 - fx) + table[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]
