"""`MultiMagView`: DMMN's one field seen at 20x, 10x and 5x around the same centre."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.slides.slide import Slide
from datamodules.views.base import View


@dataclass(frozen=True)
class MultiMagView(View):
    """DMMN's views: one field ``context``× the target, seen at three magnifications.

    For a 256² target at 20x the field is 1024² at 20x: the 20x view is its centre 256², the 10x
    view its centre 512² at 10x and the 5x view the whole field at 5x, each ``size``² pixels and
    centred on the target. `read` takes every view from its own pyramid level (anti-aliased by
    `Slide`); `cut` makes the same views from a field already in memory (after elastic
    deformation), by area averaging, so both paths give the same geometry.
    """

    size: int = 256
    magnification: float = 20.0
    scales: tuple[int, ...] = (1, 2, 4)

    @property
    def num_views(self) -> int:
        return len(self.scales)

    @property
    def field_size(self) -> int:
        """Side of the whole field in pixels at the target magnification (1024 for DMMN)."""
        return self.size * max(self.scales)

    def _centre(self, slide: Slide, location) -> tuple[float, float]:
        half = self.target_footprint(slide) / 2
        return location[0] + half, location[1] + half

    def read(self, slide: Slide, labels, location) -> tuple[np.ndarray, np.ndarray]:
        centre = self._centre(slide, location)
        size = (self.size, self.size)
        views = np.stack(
            [slide.read(center=centre, size=size, mpp=self.mpp * s) for s in self.scales]
        )
        return views, labels.read(location, size, self.mpp)

    def read_field(self, slide: Slide, labels, location) -> tuple[np.ndarray, np.ndarray]:
        """The whole field and its labels at the target magnification (for deformation)."""
        centre = self._centre(slide, location)
        size = (self.field_size, self.field_size)
        image = slide.read(center=centre, size=size, mpp=self.mpp)
        side = self.field_size * self.mpp / slide.mpp
        corner = (centre[0] - side / 2, centre[1] - side / 2)
        return image, labels.read(corner, size, self.mpp)

    def cut(self, field: np.ndarray, field_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Views and target labels from an in-memory field (``field_size``² at the target mpp)."""
        n = self.field_size
        if field.shape[:2] != (n, n):
            raise ValueError(f"expected a {n}x{n} field, got {field.shape[:2]}")
        views = []
        for s in self.scales:
            side = self.size * s
            lo = (n - side) // 2
            crop = field[lo : lo + side, lo : lo + side]
            if s > 1:
                crop = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
            views.append(crop)
        lo = (n - self.size) // 2
        return np.stack(views), field_labels[lo : lo + self.size, lo : lo + self.size]
