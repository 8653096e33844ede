"""`SingleView`: one patch at one magnification (the smp and single-scale baselines)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.slides.slide import Slide
from datamodules.views.base import View


@dataclass(frozen=True)
class SingleView(View):
    """One ``size``² patch at ``mpp`` (20x by default): the smp / single-scale baselines."""

    size: int = 256
    magnification: float = 20.0

    @property
    def num_views(self) -> int:
        return 1

    def read(self, slide: Slide, labels, location) -> tuple[np.ndarray, np.ndarray]:
        size = (self.size, self.size)
        image = slide.read(location, size, mpp=self.mpp)
        return image[None], labels.read(location, size, self.mpp)
