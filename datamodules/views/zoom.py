"""RAZN's view: a field at magnification m, and the same field zoomed in r× (and r²× …).

``x0`` is the field at m as ``size``² pixels (the one image view); zooming in reads the same
level-0 footprint at r·m, an ``r·size``² image whose r² tiles of ``size``² are what the zoomed
segmenter sees, each with its own label at r·m.  The zoomed images travel as whole fields
(``zoom1`` (r·H, r·W, 3), ``zoom1_label`` (r·H, r·W), ``zoom2`` …) rather than as tiles, so rotating
or flipping during augmentation moves the tiles with the field; the model cuts them with
``lightning_modules.nets.razn.to_tiles`` (row-major, so tile i covers rows
``i // r`` and columns ``i % r`` of the field's r×r grid).

``simulate_from`` gives the paper's simulated setup instead: the field is ``size``² pixels read
at that (higher) magnification and every x_k is it degraded to m·r^k detail and resized back
(for 256² at 20x with m = 5x, r = 2: x0 = 256 → 64 → 256, "Scale 1"; x1 = 256 → 128 → 256,
"Scale 2"), so a zoomed field is one image of the same size on the same label grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.errors import InputError
from datamodules.slides.slide import Slide, mpp_of
from datamodules.views.base import View


@dataclass(frozen=True)
class ZoomView(View):
    """x0 = ``size``² at ``magnification``; zoom level k = the same field at
    ``magnification · zoom^k`` for k = 1..``levels`` (``levels`` > 1: recursive zoom).

    ``read`` returns ``(x0[None], label, extra)`` with ``extra`` = ``{"zoom<k>": image,
    "zoom<k>_label": labels}`` per level; `PatchDataset` turns extras into batch entries.
    """

    size: int = 256
    magnification: float = 5.0
    zoom: int = 2
    levels: int = 1
    simulate_from: float | None = None

    def __post_init__(self) -> None:
        if int(self.size) < 8 or int(self.size) % 8:
            raise InputError(None, f"ZoomView size must be a multiple of 8, got {self.size}")
        if int(self.zoom) < 2 or int(self.zoom) != self.zoom:
            raise InputError(None, f"ZoomView zoom must be an integer >= 2, got {self.zoom}")
        if int(self.levels) < 1:
            raise InputError(None, f"ZoomView levels must be >= 1, got {self.levels}")
        if not self.magnification > 0:
            raise InputError(None, f"magnification must be > 0, got {self.magnification}")
        if self.simulate_from is not None:
            finest = self.magnification * self.zoom**self.levels
            if self.simulate_from < finest - 1e-9:
                raise InputError(
                    None,
                    f"simulate_from={self.simulate_from}x is below the finest zoom level "
                    f"({finest:g}x): the simulated views would need detail the field lacks",
                )
            if self.size % round(self.simulate_from / self.magnification):
                raise InputError(None, "simulate: size must divide by simulate_from/magnification")

    @property
    def num_views(self) -> int:
        return 1

    @property
    def mpp(self) -> float:
        """Micrometres per pixel of x0's label grid (the sampler's grid)."""
        return mpp_of(self.simulate_from if self.simulate_from else self.magnification)

    @property
    def extra_targets(self) -> dict[str, str]:
        """Albumentations kind of every extra array (augmented with the same parameters)."""
        out = {}
        for k in range(1, self.levels + 1):
            out[f"zoom{k}"] = "image"
            out[f"zoom{k}_label"] = "mask"
        return out

    def level_magnification(self, k: int) -> float:
        return self.magnification * self.zoom**k

    def read(self, slide: Slide, labels, location) -> tuple[np.ndarray, np.ndarray, dict]:
        if self.simulate_from:
            return self._read_simulated(slide, labels, location)
        size = (self.size, self.size)
        x0 = slide.read(location, size, mpp=self.mpp)
        label = labels.read(location, size, self.mpp)
        extra = {}
        for k in range(1, self.levels + 1):
            side = self.size * self.zoom**k
            mpp = self.mpp / self.zoom**k  # same level-0 footprint, zoom^k times the pixels
            extra[f"zoom{k}"] = slide.read(location, (side, side), mpp=mpp)
            extra[f"zoom{k}_label"] = labels.read(location, (side, side), mpp)
        return x0[None], label, extra

    def _read_simulated(self, slide: Slide, labels, location):
        size = (self.size, self.size)
        field = slide.read(location, size, mpp=self.mpp)
        label = labels.read(location, size, self.mpp)
        extra = {}
        for k in range(1, self.levels + 1):
            factor = self.simulate_from / self.level_magnification(k)
            extra[f"zoom{k}"] = self.degrade(field, factor)
            extra[f"zoom{k}_label"] = label.copy()
        return self.degrade(field, self.simulate_from / self.magnification)[None], label, extra

    @staticmethod
    def degrade(image: np.ndarray, factor: float) -> np.ndarray:
        """Area-downsample by ``factor`` and resize back (bilinear): less detail, same grid."""
        if factor <= 1 + 1e-9:
            return image.copy()
        h, w = image.shape[:2]
        small = (max(1, round(w / factor)), max(1, round(h / factor)))
        low = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        return cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)

    # Elastic class balancing (DMMN) would have to warp every zoom level consistently.
    def read_field(self, slide: Slide, labels, location):
        raise InputError(
            None, "ZoomView does not support elastic class balancing: set balance_deform: false"
        )

    def cut(self, field, field_labels):
        return self.read_field(None, None, None)
