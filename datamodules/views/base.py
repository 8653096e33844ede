"""Views: the patch geometry of each method, read through `Slide` and a label source.

A view is told *where* (the level-0 top-left corner of a target patch) and returns *what* the
method sees: image views as a uint8 ``(V, H, W, 3)`` array and the target's labels ``(H, W)``.
Positions are the same for every method, so samplers and whole-slide inference share one grid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from datamodules.sampling.geometry import TileGeometry
from datamodules.slides.slide import Slide, mpp_of


class View(ABC):
    """Base of all views (a common type, so experiment YAMLs pick one by ``class_path``)."""

    size: int
    magnification: float

    @property
    def mpp(self) -> float:
        """Micrometres per pixel of the target patch."""
        return mpp_of(self.magnification)

    @property
    def geometry(self) -> TileGeometry:
        """Input, output (= labelled target) and grid stride of the method's patches: all
        ``size`` here; a view whose method predicts less than it reads overrides this."""
        return TileGeometry(self.size, self.size, self.mpp)

    def target_footprint(self, slide: Slide) -> float:
        """Level-0 side of the labelled target patch (the geometry's output)."""
        return self.geometry.output * self.mpp / slide.mpp

    @property
    @abstractmethod
    def num_views(self) -> int:
        """Number of image views the method gets per target."""

    @abstractmethod
    def read(self, slide: Slide, labels, location) -> tuple[np.ndarray, np.ndarray]:
        """(V, H, W, 3) uint8 views and (H, W) target labels for the target at `location`."""
