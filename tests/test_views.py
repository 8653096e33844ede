"""DMMN's MultiMagView: exact footprints, one centre, padding, anti-aliasing, other base mpps.

Most checks use slides of random noise written losslessly: any shift, scale or rounding error in
a footprint then shows up as a large pixel difference against a block mean computed here.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from datamodules.labels.classmaps import IGNORE
from datamodules.labels.sources import MaskLabels, open_labels
from datamodules.sampling.grid import grid_index
from datamodules.slides.slide import Slide
from datamodules.synthetic.files import pyramid
from datamodules.views.multimag import MultiMagView
from datamodules.views.single import SingleView

VIEW = MultiMagView()  # 256² target at 20x, field 1024², scales 1, 2, 4


def write_tiff(path, level0: np.ndarray, mpp: float, levels: int = 1):
    """A lossless (zlib) TIFF with `levels` pyramid levels (downsamples 1, 2, 4, ...)."""
    label = level0.ndim == 2
    stack = pyramid(level0, nearest=label)[:levels]
    px_per_cm = 1e4 / mpp
    kw = {
        "photometric": "minisblack" if label else "rgb",
        "compression": "zlib",
        "compressionargs": {"level": 1},
        "resolution": (px_per_cm, px_per_cm),
        "resolutionunit": "CENTIMETER",
        "metadata": None,
    }
    if levels > 1:
        kw["tile"] = (256, 256)
    with tifffile.TiffWriter(path) as tw:
        tw.write(stack[0], subifds=levels - 1, **kw)
        for lvl in stack[1:]:
            tw.write(lvl, subfiletype=1, **kw)
    return path


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[:2]
    return a.reshape(h // k, k, w // k, k, -1).mean(axis=(1, 3))


def bach_labels(mask: np.ndarray) -> np.ndarray:
    """Mask values (class + 1, 0 = unlabeled) to training labels, as the bach class map does."""
    return np.where(mask == 0, IGNORE, mask.astype(np.int64) - 1).astype(np.uint8)


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    """2048² random RGB at 0.5 um/px as a 1-level and a 5-level TIFF, plus a random label mask."""
    d = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (2048, 2048), dtype=np.uint8)
    return {
        "image": image,
        "mask": mask,
        "flat": write_tiff(d / "flat.tiff", image, 0.5),
        "pyramid": write_tiff(d / "pyramid.tiff", image, 0.5, levels=5),
        "mask_path": write_tiff(d / "mask.tiff", mask, 0.5),
    }


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def max_err(view: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(view.astype(np.float64) - expected.reshape(view.shape)).max())


@pytest.mark.parametrize("kind", ["flat", "pyramid"])
def test_footprints_are_exact_and_centred(noise, kind):
    """20x = centre 256² of the 1024² field, 10x = centre 512² / 2, 5x = whole field / 4."""
    slide = Slide(noise[kind])
    labels = MaskLabels(noise["mask_path"], "bach", mpp=0.5, expected_dimensions=slide.dimensions)
    if kind == "pyramid":
        assert slide.level_count == 5
    views, label = VIEW.read(slide, labels, (768, 768))  # target centre (896, 896)
    assert views.shape == (3, 256, 256, 3) and views.dtype == np.uint8
    assert label.shape == (256, 256) and label.dtype == np.uint8
    im = noise["image"].astype(np.float64)
    assert max_err(views[0], im[768:1024, 768:1024]) == 0
    assert max_err(views[1], block_mean(im[640:1152, 640:1152], 2)) <= 1
    assert max_err(views[2], block_mean(im[384:1408, 384:1408], 4)) <= 1
    # the label is exactly the target patch
    np.testing.assert_array_equal(label, bach_labels(noise["mask"][768:1024, 768:1024]))


def test_shifted_footprint_would_be_caught(noise):
    """Guard for the test above: a 1-px shift of the 10x footprint is far outside the tolerance."""
    slide = Slide(noise["flat"])
    views, _ = VIEW.read(slide, MaskLabels(noise["mask_path"], "bach"), (769, 768))
    im = noise["image"].astype(np.float64)
    assert max_err(views[1], block_mean(im[640:1152, 640:1152], 2)) > 20


def test_single_view_is_the_20x_view(noise):
    slide = Slide(noise["flat"])
    labels = MaskLabels(noise["mask_path"], "bach")
    single, single_label = SingleView().read(slide, labels, (512, 256))
    multi, multi_label = VIEW.read(slide, labels, (512, 256))
    assert single.shape == (1, 256, 256, 3)
    np.testing.assert_array_equal(single[0], multi[0])
    np.testing.assert_array_equal(single_label, multi_label)


def test_corner_target_is_padded(noise):
    """At the slide corner the field reaches 384 px past the edge: white padding, same geometry."""
    slide = Slide(noise["flat"])
    labels = MaskLabels(noise["mask_path"], "bach")
    im = noise["image"].astype(np.float64)
    views, label = VIEW.read(slide, labels, (0, 0))  # field [-384, 640)
    assert views.shape == (3, 256, 256, 3)
    assert (views[2, :96] == 255).all() and (views[2, :, :96] == 255).all()
    assert max_err(views[2, 96:, 96:], block_mean(im[:640, :640], 4)) <= 1
    assert (views[1, :64] == 255).all() and (views[1, :, :64] == 255).all()
    assert max_err(views[1, 64:, 64:], block_mean(im[:384, :384], 2)) <= 1
    np.testing.assert_array_equal(label, bach_labels(noise["mask"][:256, :256]))
    # the opposite corner: padding at the bottom and right
    views, _ = VIEW.read(slide, labels, (1792, 1792))  # field [1408, 2432)
    assert (views[2, 160:] == 255).all() and (views[2, :, 160:] == 255).all()
    assert max_err(views[2, :160, :160], block_mean(im[1408:, 1408:], 4)) <= 1


def test_slide_smaller_than_the_field(tmp_path):
    """A 300x200 slide (smaller than one 1024² field, even than the target): padded, works."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 200, (200, 300, 3), dtype=np.uint8)
    mask = rng.integers(1, 5, (200, 300), dtype=np.uint8)
    slide = Slide(write_tiff(tmp_path / "small.tiff", image, 0.5))
    labels = open_labels(write_tiff(tmp_path / "small_mask.tiff", mask, 0.5), "bach", slide)
    views, label = VIEW.read(slide, labels, (0, 0))
    assert views.shape == (3, 256, 256, 3)
    np.testing.assert_array_equal(views[0, :200], image[:, :256])
    assert (views[0, 200:] == 255).all()
    np.testing.assert_array_equal(label[:200], bach_labels(mask[:, :256]))
    assert (label[200:] == IGNORE).all()
    # the 5x view holds the whole slide, a quarter of its size, in the middle of white padding
    inside = views[2, 96 : 96 + 50, 96 : 96 + 75]
    assert max_err(inside, block_mean(image[:200, :300].astype(np.float64), 4)) <= 1
    assert (views[2, :96] == 255).all() and (views[2, 146:] == 255).all()
    # the sampler finds its targets: a 2x1 grid, the second one partly off the slide
    grid = grid_index(slide, labels, 4, 256, 0.5, min_tissue=0)
    assert grid.positions.tolist() == [[0.0, 0.0], [256.0, 0.0]]
    views, label = VIEW.read(slide, labels, tuple(grid.positions[1]))
    assert (label[:, 44:] == IGNORE).all() and (label[:200, :44] != IGNORE).all()


def test_read_and_in_memory_cut_agree(synthetic_root):
    """`read` (pyramid levels) and `read_field` + `cut` (in-memory area averaging) agree."""
    slide = Slide(synthetic_root / "slide_00.tiff")
    labels = open_labels(synthetic_root / "slide_00_mask.tiff", "bach", slide)
    for location in [(768, 768), (0, 1024), (1792, 256)]:
        views, label = VIEW.read(slide, labels, location)
        field, field_labels = VIEW.read_field(slide, labels, location)
        assert field.shape == (1024, 1024, 3) and field_labels.shape == (1024, 1024)
        cut_views, cut_label = VIEW.cut(field, field_labels)
        assert cut_views.shape == views.shape == (3, 256, 256, 3)
        np.testing.assert_array_equal(cut_label, label)
        np.testing.assert_array_equal(cut_views[0], views[0])
        # 10x and 5x differ only by the JPEG noise of the stored pyramid levels (~3-4 grey
        # levels); a 1-px misregistration costs more than twice that
        for k in (1, 2):
            err = mean_abs(views[k, 8:-8, 8:-8], cut_views[k, 8:-8, 8:-8])
            shifted = mean_abs(views[k, 8:-8, 9:-7], cut_views[k, 8:-8, 8:-8])
            assert err < 6, (location, k, err)
            if views[k].std() > 30:  # textured (not blank glass): misregistration shows
                assert shifted > 2 * err, (location, k, err, shifted)
    with pytest.raises(ValueError):
        VIEW.cut(field[:512, :512], field_labels[:512, :512])


def test_views_share_a_centre_on_a_synthetic_slide(synthetic_root):
    """The centre of each coarser view is the 20x view, downsampled (through the JPEG pyramid)."""
    slide = Slide(synthetic_root / "slide_00.tiff")
    labels = open_labels(synthetic_root / "slide_00_mask.tiff", "bach", slide)
    views, _ = VIEW.read(slide, labels, (1024, 768))
    v20 = views[0].astype(np.float32)
    half = cv2.resize(v20, (128, 128), interpolation=cv2.INTER_AREA)
    quarter = cv2.resize(v20, (64, 64), interpolation=cv2.INTER_AREA)
    err10 = mean_abs(views[1, 64:192, 64:192], half)
    err5 = mean_abs(views[2, 96:160, 96:160], quarter)
    assert err10 < 6 and err5 < 8, (err10, err5)
    # one coarse pixel off centre is clearly worse: the check can fail
    assert mean_abs(views[1, 65:193, 64:192], half) > 1.5 * err10
    assert mean_abs(views[2, 96:160, 97:161], quarter) > 1.5 * err5


def test_views_are_anti_aliased(tmp_path):
    """A 1-px checkerboard is uniform grey at 10x and 5x, on and off the pixel grid."""
    yy, xx = np.mgrid[:2048, :2048]
    board = np.where((yy + xx) % 2 == 0, 255, 0).astype(np.uint8)
    slide = Slide(write_tiff(tmp_path / "board.tiff", np.dstack([board] * 3), 0.5))
    labels = MaskLabels(
        write_tiff(tmp_path / "m.tiff", np.ones((2048, 2048), np.uint8), 0.5), "bach"
    )
    for location in [(768, 768), (700.3, 650.7)]:
        views, _ = VIEW.read(slide, labels, location)
        for v in views[1:]:
            assert abs(float(v.mean()) - 127.5) < 2 and float(v.std()) < 2, (location, v.std())
        if location == (768, 768):
            assert views[0].std() > 100  # on the pixel grid the 20x view keeps the pattern


def test_other_base_mpp_covers_the_same_micrometres(tmp_path):
    """On a 0.25 um/px (40x) slide the 20x view is the centre 512 level-0 px averaged 2x2, etc."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (2048, 2048), dtype=np.uint8)
    slide = Slide(write_tiff(tmp_path / "x40.tiff", image, 0.25, levels=3))
    assert slide.mpp == pytest.approx(0.25)
    labels = open_labels(write_tiff(tmp_path / "x40_mask.tiff", mask, 0.25), "bach", slide)
    assert VIEW.target_footprint(slide) == pytest.approx(512)
    views, label = VIEW.read(slide, labels, (768, 768))  # centre (1024, 1024): field = slide
    im = image.astype(np.float64)
    assert max_err(views[0], block_mean(im[768:1280, 768:1280], 2)) <= 1
    assert max_err(views[1], block_mean(im[512:1536, 512:1536], 4)) <= 1
    assert max_err(views[2], block_mean(im, 8)) <= 1.5
    # labels at 0.5 um/px: the class at each output pixel's centre (level-0 odd pixels)
    np.testing.assert_array_equal(label, bach_labels(mask[769:1280:2, 769:1280:2]))
