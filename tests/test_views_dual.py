"""DualInputView / MultiSizeView: two different inputs, centred on the slice, read via `Slide`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datamodules.datasets import PatchDataset, SlideSource, augmentation
from datamodules.errors import InputError
from datamodules.slides.slide import Slide
from datamodules.views.dual import DualInputView, MultiSizeView

SIDE = 4096  # level-0 pixels of the test image (0.5 um/px, so 20x)
SQUARE = (1800, 1700, 2300, 2200)  # x0, y0, x1, y1 of a dark square on white


class ZeroLabels:
    """A label source that records the reads it was asked for."""

    def __init__(self):
        self.calls = []

    def read(self, location, size, mpp):
        self.calls.append((tuple(location), tuple(size), mpp))
        return np.zeros(size[::-1], np.uint8)


@pytest.fixture(scope="module")
def square_slide(tmp_path_factory) -> Slide:
    """A white PNG with one dark square: where it lands in each view shows the geometry."""
    image = np.full((SIDE, SIDE, 3), 255, np.uint8)
    x0, y0, x1, y1 = SQUARE
    image[y0:y1, x0:x1] = 20
    path = tmp_path_factory.mktemp("dual") / "square.png"
    cv2.imwrite(str(path), image)
    return Slide(path, mpp=0.5)


def dark_centroid(view: np.ndarray) -> tuple[float, float]:
    """(x, y) centre of mass of darkness in an (H, W, 3) image, in pixel-centre coordinates."""
    dark = 255.0 - view.mean(-1)
    ys, xs = np.mgrid[: dark.shape[0], : dark.shape[1]]
    return float((xs * dark).sum() / dark.sum()) + 0.5, float((ys * dark).sum() / dark.sum()) + 0.5


def test_dual_view_inputs_differ_and_are_centred(square_slide):
    view = DualInputView(size=64, magnification=20.0, context=10.0)
    centre = (2050.0, 1950.0)  # centre of the square
    location = (centre[0] - 32, centre[1] - 32)  # the 64² slice at level 0 (mpp 0.5)
    labels = ZeroLabels()
    views, label = view.read(square_slide, labels, location)
    assert views.shape == (2, 64, 64, 3) and views.dtype == np.uint8
    assert label.shape == (64, 64)
    assert labels.calls == [(location, (64, 64), 0.5)]  # labels of the slice only
    slice_, full = views
    assert slice_.max() <= 25  # the slice lies inside the square
    assert full.min() <= 25 and full.max() >= 250  # the full image sees square and glass
    # the field is 640 level-0 px seen as 64²: the 500² square is 50² px, at the centre
    assert (full < 128).all(-1).sum() == pytest.approx(50 * 50, abs=110)
    assert dark_centroid(full) == pytest.approx((32.0, 32.0), abs=0.3)


def test_full_image_centre_is_the_slice_downsampled(square_slide):
    """The slice's footprint in the full image equals the slice read at the full image's mpp."""
    view = DualInputView(size=64, magnification=20.0, context=4.0)
    location = (1790.0, 1650.0)  # the slice straddles the square's top-left corner
    views, _ = view.read(square_slide, ZeroLabels(), location)
    x0, y0, x1, y1 = (int(round(f * 64)) for f in view.slice_box())
    assert (x0, y0, x1, y1) == (24, 24, 40, 40)
    small = square_slide.read(location, (16, 16), mpp=0.5 * 4)
    assert np.abs(views[1][y0:y1, x0:x1].astype(int) - small.astype(int)).mean() < 2.0
    # and the slice itself shows the corner where the full image's centre does
    coarse = cv2.resize(views[0], (16, 16), interpolation=cv2.INTER_AREA)
    assert np.abs(coarse.astype(int) - small.astype(int)).mean() < 3.0


def test_full_image_pads_outside_the_slide(square_slide):
    view = DualInputView(size=64, magnification=20.0, context=10.0)
    views, _ = view.read(square_slide, ZeroLabels(), (0.0, 0.0))  # slide corner
    full = views[1]
    # the field reaches 288 px (level 0: 2880 / 10) beyond the top-left edges: white padding,
    # then the slide — which is also white here, so only the square tells them apart
    assert (full[:28, :28] == 255).all()
    assert views.shape == (2, 64, 64, 3)


@pytest.mark.parametrize("layout", ["stretch", "pad"])
def test_multisize_second_input_has_no_context(square_slide, layout):
    view = MultiSizeView(size=64, magnification=20.0, factor=4.0, layout=layout)
    # slice over the square's left edge: left quarter glass, the rest square
    location = (1784.0, 1918.0)
    views, _ = view.read(square_slide, ZeroLabels(), location)
    slice_, second = views
    assert views.shape == (2, 64, 64, 3)
    assert not np.array_equal(slice_, second)  # resized, not a copy
    if layout == "stretch":  # the same field, blurred: no pixel beyond the slice appears
        assert np.abs(slice_.astype(int) - second.astype(int)).mean() < 8
        assert dark_centroid(second) == pytest.approx(dark_centroid(slice_), abs=0.5)
    else:  # the slice at 1/4 size in the centre, pad value around it
        lo, s = (64 - 16) // 2, view.small_size
        assert s == 16
        outside = np.ones((64, 64), bool)
        outside[lo : lo + s, lo : lo + s] = False
        assert (second[outside] == 255).all()
        inner = cv2.resize(slice_, (16, 16), interpolation=cv2.INTER_AREA)
        assert np.abs(second[lo : lo + s, lo : lo + s].astype(int) - inner).mean() < 3
        # the dual view with context = factor is the same inside, but sees the square go on
        dual = DualInputView(size=64, magnification=20.0, context=4.0).read(
            square_slide, ZeroLabels(), location
        )[0][1]
        assert np.abs(dual[~outside].astype(int) - second[~outside]).mean() < 2
        assert (dual[outside] < 128).all(-1).sum() > 500


DIHEDRAL = [
    lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k) for k in range(4) for f in (0, 1)
]


def test_augmented_views_stay_aligned(square_slide):
    """Rotations and flips act on both views alike, about their common centre."""
    view = DualInputView(size=64, magnification=20.0, context=4.0)
    # the slice covers the square's top-left corner with unequal margins (16 columns and 24
    # rows of glass), so no rotation/flip leaves it or the full image unchanged
    location = (1784.0, 1676.0)
    src = SlideSource("square", square_slide, ZeroLabels(), "train")
    ds = PatchDataset([src], [(0, *location, False)] * 8, view, augmentation(2), seed=0)
    plain = view.read(square_slide, ZeroLabels(), location)[0]
    masks = [(v < 128).all(-1) for v in plain]
    used = set()
    for i in range(len(ds)):
        image = ds[i]["image"]
        assert tuple(image.shape) == (2, 3, 64, 64)
        got = [(v < 128).all(-1) for v in image.permute(0, 2, 3, 1).numpy()]
        # one rotation/flip maps BOTH plain views onto the augmented pair
        fits = [j for j, op in enumerate(DIHEDRAL) if all(
            (op(m) != g).mean() < 0.01 for m, g in zip(masks, got, strict=True)
        )]  # fmt: skip
        assert fits, f"sample {i}: slice and full image were transformed differently"
        used.add(fits[0])
    assert len(used) > 1  # augmentation did act


def test_bad_settings_are_input_errors(square_slide):
    with pytest.raises(InputError, match="context"):
        DualInputView(size=64, context=0.5)
    with pytest.raises(InputError, match="layout"):
        MultiSizeView(size=64, layout="tile")
    with pytest.raises(InputError, match="size"):
        DualInputView(size=4)
    with pytest.raises(InputError, match="balance_deform: false"):
        DualInputView(size=64).read_field(square_slide, ZeroLabels(), (0, 0))
    assert DualInputView().num_views == MultiSizeView().num_views == 2
