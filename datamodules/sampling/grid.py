"""Where to sample: a stride-`size` grid of target patches, tissue-masked, with class statistics.

Per slide, one coarse label raster (``k`` pixels per grid cell) and one Otsu tissue mask give, for
every cell, the tissue fraction, the annotated fraction (labels other than IGNORE) and estimated
pixel counts per class. That is enough for DMMN's ">1 % annotated" rule, its patch classes and
its class-balancing report, without reading a single full-resolution label patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.labels.classmaps import IGNORE
from datamodules.sampling.tissue import tissue_fraction, tissue_mask
from datamodules.slides.slide import Slide


@dataclass
class GridIndex:
    """Target patches kept on one slide: level-0 top-left corners and class pixel counts."""

    positions: np.ndarray  # (N, 2) float level-0 (x, y)
    class_counts: np.ndarray  # (N, C) estimated pixels per class at the target mpp
    tissue: np.ndarray  # (N,) tissue fraction
    annotated: np.ndarray  # (N,) annotated fraction

    def __len__(self) -> int:
        return len(self.positions)


def grid_index(
    slide: Slide,
    labels,
    num_classes: int,
    size: int,
    mpp: float,
    *,
    min_annotated: float = 0.01,
    min_tissue: float = 0.1,
    tissue_mpp: float = 16.0,
    k: int = 16,
) -> GridIndex:
    """Cells of a stride-`size` grid (at `mpp`) with > `min_annotated` labelled pixels and at
    least `min_tissue` tissue (Otsu); `min_tissue=0` turns tissue masking off."""
    step = size * mpp / slide.mpp  # level-0 side of a cell
    w, h = slide.dimensions
    cols, rows = max(1, int(np.ceil(w / step - 1e-6))), max(1, int(np.ceil(h / step - 1e-6)))
    coarse = labels.read((0, 0), (cols * k, rows * k), mpp * size / k)
    cells = coarse.reshape(rows, k, cols, k).transpose(0, 2, 1, 3).reshape(rows * cols, k * k)
    binned = np.where(cells == IGNORE, num_classes, np.minimum(cells, num_classes))
    counts = np.stack([(binned == c).sum(1) for c in range(num_classes + 1)], axis=1)
    annotated = 1.0 - counts[:, num_classes] / (k * k)
    if min_tissue > 0:
        mask, mask_mpp = tissue_mask(slide, tissue_mpp)
        tissue = tissue_fraction(
            mask, mask_mpp, slide.mpp, cell=size, mpp=mpp, dimensions=slide.dimensions
        ).reshape(-1)[: rows * cols]
    else:
        tissue = np.ones(rows * cols, np.float32)
    keep = (annotated > min_annotated) & (tissue >= min_tissue)
    idx = np.flatnonzero(keep)
    ys, xs = np.divmod(idx, cols)
    positions = np.stack([xs * step, ys * step], axis=1).astype(np.float64)
    scale = (size / k) ** 2
    return GridIndex(
        positions=positions,
        class_counts=counts[idx, :num_classes].astype(np.int64) * int(round(scale)),
        tissue=tissue[idx],
        annotated=annotated[idx],
    )
