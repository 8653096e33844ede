"""Views with two image inputs per target: DA-RefineNet's dual input and its multi-size baseline.

`DualInputView` gives a *slice* (the labelled target, ``size``² at ``magnification``) and a *full
image*: the field ``context``× larger on each side, centred on the slice, downsampled to the same
``size``². Both are read through `Slide` at their own resolution (the full image from a coarse
pyramid level, anti-aliased), so the two branches see different images — the authors' release fed
the slice to both. With the paper's BACH numbers (500² slice, context 10) the full image is a
5000² level-0 block at 20x seen as 500² pixels.

`MultiSizeView` is the paper's control: the second input is the slice itself resized, with no
extra context, so a gain of the dual input over it is due to context, not to a second encoder.

Both return ``(2, size, size, 3)`` uint8 (view 0 = slice) and the slice's labels; the views share
one centre, so the rotations and flips of the training augmentation keep them aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.errors import InputError
from datamodules.slides.slide import Slide
from datamodules.views.base import View

LAYOUTS = ("stretch", "pad")


def _check(size: int, magnification: float, factor: float, name: str) -> None:
    if int(size) < 8:
        raise InputError(None, f"view size must be >= 8 pixels, got {size}")
    if not magnification > 0:
        raise InputError(None, f"view magnification must be > 0, got {magnification}")
    if not factor >= 1:
        raise InputError(None, f"view {name} must be >= 1, got {factor}")


class _TwoInputView(View):
    """Shared parts: the slice read, the slice centre and the refusal of elastic balancing."""

    size: int
    magnification: float

    @property
    def num_views(self) -> int:
        return 2

    def centre(self, slide: Slide, location) -> tuple[float, float]:
        """Level-0 centre of the slice whose top-left corner is `location`."""
        half = self.target_footprint(slide) / 2
        return location[0] + half, location[1] + half

    def read_slice(self, slide: Slide, labels, location) -> tuple[np.ndarray, np.ndarray]:
        size = (self.size, self.size)
        return slide.read(location, size, mpp=self.mpp), labels.read(location, size, self.mpp)

    def read_field(self, slide: Slide, labels, location):
        # A deformed copy would need the whole k-times field at the slice's resolution
        # (5000² pixels for the paper's setup): refused instead of silently slow.
        raise InputError(
            None,
            f"{type(self).__name__} does not support elastically deformed balancing copies; "
            "set data.init_args.balance_deform: false (copies are then repeated)",
        )


@dataclass(frozen=True)
class DualInputView(_TwoInputView):
    """Slice + full image (DA-RefineNet).

    Args:
        size: slice side in pixels (the paper's BACH setup: 500); the full image has the same.
        magnification: slice magnification (20x == 0.5 um/px).
        context: k, the full image's side over the slice's side (paper: 10). The full image is
            read at ``context``× the slice's um/px, centred on the slice, padded with the slide's
            pad value (white glass) where it leaves the slide. The slice's footprint is the
            centre ``size / context`` pixels of the full image (see `slice_box`).
    """

    size: int = 500
    magnification: float = 20.0
    context: float = 10.0

    def __post_init__(self) -> None:
        _check(self.size, self.magnification, self.context, "context")

    def slice_box(self) -> tuple[float, float, float, float]:
        """Where the slice lies in the full image, as fractions (x0, y0, x1, y1) of its side."""
        half = 0.5 / self.context
        return (0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half)

    def read(self, slide: Slide, labels, location) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.read_slice(slide, labels, location)
        full = slide.read(
            center=self.centre(slide, location),
            size=(self.size, self.size),
            mpp=self.mpp * self.context,
        )
        return np.stack([image, full]), label


@dataclass(frozen=True)
class MultiSizeView(_TwoInputView):
    """Slice + the slice itself at a smaller size: the multi-size dual-input baseline.

    The second input is the slice read at ``factor``× its um/px (``size / factor`` pixels, from
    a coarser pyramid level like the full image), brought back to ``size``² so both views stack:

    - ``layout="stretch"``: resized up to ``size``² (bilinear): the same field at 1/``factor`` of
      the resolution — an image pyramid of the slice.
    - ``layout="pad"``: pasted into the centre of a ``size``² canvas of the slide's pad value:
      exactly `DualInputView`'s full image with ``context = factor``, minus everything outside
      the slice — the cleanest "no extra context" control.
    """

    size: int = 500
    magnification: float = 20.0
    factor: float = 2.0
    layout: str = "stretch"

    def __post_init__(self) -> None:
        _check(self.size, self.magnification, self.factor, "factor")
        if self.layout not in LAYOUTS:
            raise InputError(None, f"view layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def small_size(self) -> int:
        """Side of the resized slice in pixels."""
        return max(1, int(round(self.size / self.factor)))

    def read(self, slide: Slide, labels, location) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.read_slice(slide, labels, location)
        n, s = self.size, self.small_size
        # the same level-0 footprint as the slice, fewer pixels
        small = slide.read(location, (s, s), mpp=self.mpp * n / s)
        if self.layout == "stretch":
            second = cv2.resize(small, (n, n), interpolation=cv2.INTER_LINEAR)
        else:
            second = np.full_like(image, slide.pad_value)
            lo = (n - s) // 2
            second[lo : lo + s, lo : lo + s] = small
        return np.stack([image, second]), label
