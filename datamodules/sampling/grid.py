"""Where to sample: the view's `TileGeometry` grid, tissue-masked, with class statistics.

Per slide, one coarse label raster (``k`` pixels per grid cell) and one Otsu tissue mask give, for
every cell, the tissue fraction, the annotated fraction (labels other than IGNORE) and estimated
pixel counts per class. That is enough for DMMN's ">1 % annotated" rule, its patch classes and
its class-balancing report, without reading a single full-resolution label patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.labels.classmaps import IGNORE
from datamodules.sampling.geometry import TileGeometry
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
    geometry: TileGeometry | int,
    mpp: float | None = None,
    *,
    min_annotated: float = 0.01,
    min_tissue: float = 0.1,
    tissue_mpp: float = 16.0,
    k: int = 16,
) -> GridIndex:
    """Cells of the `geometry`'s grid (a bare size and `mpp`: ``TileGeometry(size, size, mpp)``)
    with > `min_annotated` labelled pixels and at least `min_tissue` tissue (Otsu) in the cell;
    `min_tissue=0` turns tissue masking off. Positions are the outputs' top-left corners."""
    if not isinstance(geometry, TileGeometry):
        geometry = TileGeometry(geometry, geometry, mpp)
    size, mpp = geometry.stride, geometry.mpp
    step = geometry.footprint(slide.mpp)  # level-0 side of a cell
    rows, cols = geometry.grid(slide.dimensions, slide.mpp)
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
    shift = geometry.output_corner(0, 0, slide.mpp)[0]  # 0 unless outputs overlap
    positions = np.stack([xs * step + shift, ys * step + shift], axis=1).astype(np.float64)
    scale = (size / k) ** 2
    return GridIndex(
        positions=positions,
        class_counts=counts[idx, :num_classes].astype(np.int64) * int(round(scale)),
        tissue=tissue[idx],
        annotated=annotated[idx],
    )
