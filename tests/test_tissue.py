"""Tissue masks on real slides (glass, no glass, frozen), synthetic slides and edge cases."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.sampling.tissue import mask_from_rgb, tissue_fraction, tissue_mask
from datamodules.slides.slide import Slide
from datamodules.synthetic.generator import generate
from datamodules.synthetic.layout import layout_default
from datamodules.synthetic.render import slide_rngs
from datamodules.synthetic.textures import FAT, GLASS

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def real(name: str) -> Path:
    path = REAL / name
    if not path.exists():
        pytest.skip(f"real test slide {name} not available")
    return path


def test_real_svs_with_glass_has_a_sensible_tissue_fraction():
    slide = Slide(real("small_HE.svs"))
    mask, mpp = tissue_mask(slide)
    assert mpp == 16.0
    assert mask.shape == (93, 70)  # 2220 x 2967 px at 0.499 um/px, ceil'd at 16 um/px
    assert 0.25 < mask.mean() < 0.6
    # the left third of this slide is white glass, its centre column is tissue
    assert mask[:, : mask.shape[1] // 5].mean() < 0.05
    assert mask[60:80, 30:45].mean() > 0.8


def test_real_frozen_section_and_tissue_only_crop():
    frozen, _ = tissue_mask(Slide(real("tcga-cr-7395-01a-01-ts1.svs"), mpp=0.5))
    assert 0.45 < frozen.mean() < 0.8
    # a crop inside tissue has no glass: Otsu must not split pale stroma from the lobule
    crop, _ = tissue_mask(Slide(real("CropBreastSlide.tiff"), mpp=0.5), mpp=4.0)
    assert crop.mean() > 0.9


def test_blank_glass_gives_an_empty_mask():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(240, 3, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not mask_from_rgb(glass, 16.0).any()
    # dust specks and a black pen line on glass are not tissue either
    glass[50:52, 60:62] = (150, 150, 150)
    glass[100:104, :] = 5
    assert not mask_from_rgb(glass, 16.0).any()


def test_small_specks_dropped_and_small_holes_filled():
    rgb = np.full((200, 200, 3), 242, np.uint8)
    rgb[40:160, 40:160] = (220, 150, 200)  # tissue, 1.9 mm at 16 um/px
    rgb[90:93, 90:93] = 242  # a 48 um hole inside it
    rgb[5:7, 180:182] = (200, 100, 180)  # a 32 um speck on the glass
    mask = mask_from_rgb(rgb, 16.0)
    assert mask[90:93, 90:93].all()
    assert not mask[5:7, 180:182].any()
    assert mask[40:160, 40:160].mean() > 0.99 and mask.sum() < 125**2


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_tissue")
    generate(out, n_slides=1, size=2048, seed=3, progress=False, workers=1)
    truth = layout_default(2048, slide_rngs(3, 0)[0]).tex
    return out / "slide_00.tiff", truth


def test_synthetic_slide_mask_matches_the_drawn_tissue(synthetic_slide):
    path, tex = synthetic_slide
    mask, mpp = tissue_mask(Slide(path), mpp=8.0)
    assert mask.shape == (128, 128)
    # fat is as white as glass inside its cells: compare with stained tissue only, at 8 um/px
    stained = ((tex != GLASS) & (tex != FAT)).astype(np.float32)
    truth = cv2.resize(stained, (128, 128), interpolation=cv2.INTER_AREA) > 0.5
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9


def test_tissue_fraction_integer_cells():
    mask = np.zeros((64, 64), bool)
    mask[:32, :16] = True  # cells of 8 mask px: 4 x 2 cells fully covered
    mask[32:36, 16:24] = True  # half of one cell
    frac = tissue_fraction(mask, mask_mpp=16.0, slide_mpp=0.5, cell=256)
    assert frac.shape == (8, 8) and frac.dtype == np.float32
    assert np.allclose(frac[:4, :2], 1.0)
    assert frac[4, 2] == pytest.approx(0.5)
    assert frac.sum() == pytest.approx(8.5)


def test_tissue_fraction_fractional_cells_and_extent():
    mask = np.ones((10, 10), bool)
    # cells of 256 px at 1 um/px with a 0.5 um/px slide = 512 level-0 px = 16 mask px at 16 um/px
    # given an extent of 6000 level-0 px: 12 cells; beyond the mask's 320 level-0 px there is none
    frac = tissue_fraction(mask, 16.0, 0.5, cell=256, mpp=1.0, dimensions=(6000, 300))
    assert frac.shape == (1, 12)
    assert frac[0, 0] == pytest.approx(100 / 256)
    assert np.all(frac[0, 1:] == 0)
    # cells of 1.5 mask px: area-exact even when cells split mask pixels; the last cell of 7
    # covers mask px [9, 10.5), of which one exists
    frac = tissue_fraction(mask, 16.0, 0.5, cell=48, mpp=0.5)
    assert frac.shape == (7, 7)
    assert np.allclose(frac[:6, :6], 1.0)
    assert frac[6, 6] == pytest.approx((1 / 1.5) ** 2)
    assert frac[6, 0] == pytest.approx(1 / 1.5)
