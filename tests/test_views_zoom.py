"""RAZN's ZoomView: one footprint at m and r·m, tiles in the model's order, the simulated setup,
extras through PatchDataset (augmented with the field) and WSIDataModule batches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from datamodules.datasets import PatchDataset, SlideSource, augmentation
from datamodules.errors import InputError
from datamodules.labels.sources import open_labels
from datamodules.slides.slide import Slide
from datamodules.views.zoom import ZoomView
from datamodules.wsi import WSIDataModule
from lightning_modules.nets.razn import to_tiles

SIZE = 32  # x0 side; the slide is 1024² at 0.5 um/px (20x): 8x8 fields of 128 level-0 px at 5x


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[:2]
    return a.reshape(h // k, k, w // k, k, -1).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    """Random RGB (lossless PNG, 20x) and a label mask of 8-px blocks with classes 0..3."""
    d = tmp_path_factory.mktemp("zoom")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:1024, 0:1024]
    mask = (1 + (xx // 8 + 3 * (yy // 8)) % 4).astype(np.uint8)  # bach mask values 1..4
    cv2.imwrite(str(d / "slide.png"), image[..., ::-1])
    cv2.imwrite(str(d / "mask.png"), mask)
    slide = Slide(d / "slide.png", mpp=0.5)
    labels = open_labels(d / "mask.png", "bach", slide)
    return slide, labels, image, mask


def test_zoom_levels_share_one_footprint(noise):
    slide, labels, image, mask = noise
    view = ZoomView(size=SIZE, magnification=5.0, zoom=2, levels=2)
    x0, label, extra = view.read(slide, labels, (256, 384))
    assert x0.shape == (1, SIZE, SIZE, 3) and label.shape == (SIZE, SIZE)
    assert extra["zoom1"].shape == (2 * SIZE, 2 * SIZE, 3)
    assert extra["zoom2"].shape == (4 * SIZE, 4 * SIZE, 3)
    assert extra["zoom2_label"].shape == (4 * SIZE, 4 * SIZE)
    field = image[384 : 384 + 128, 256 : 256 + 128].astype(float)  # 128 level-0 px = 32 at 5x
    assert np.abs(extra["zoom2"] - field).max() == 0  # 20x = level 0 itself
    assert np.abs(extra["zoom1"] - block_mean(field, 2)).max() <= 1
    assert np.abs(x0[0] - block_mean(field, 4)).max() <= 1
    truth = mask[384 : 384 + 128, 256 : 256 + 128] - 1
    assert (extra["zoom2_label"] == truth).all()
    assert (extra["zoom1_label"] == truth[::2, ::2]).all()
    assert (label == truth[::4, ::4]).all()


def test_tiles_are_row_major_quarters(noise):
    slide, labels, _, _ = noise
    _, _, extra = ZoomView(size=SIZE).read(slide, labels, (0, 0))
    z = torch.from_numpy(extra["zoom1"]).permute(2, 0, 1)[None]
    tiles = to_tiles(z, 2)
    assert tiles.shape == (4, 3, SIZE, SIZE)
    quarters = [
        z[..., :SIZE, :SIZE],
        z[..., :SIZE, SIZE:],
        z[..., SIZE:, :SIZE],
        z[..., SIZE:, SIZE:],
    ]
    for i, q in enumerate(quarters):
        assert torch.equal(tiles[i], q[0])


def test_simulated_setup_degrades_detail_on_one_grid(noise):
    slide, labels, image, mask = noise
    view = ZoomView(size=64, magnification=5.0, zoom=2, simulate_from=20.0)
    assert view.mpp == pytest.approx(0.5)  # the field is 64² at 20x
    x0, label, extra = view.read(slide, labels, (128, 128))
    field = image[128:192, 128:192]
    assert x0.shape == (1, 64, 64, 3) and extra["zoom1"].shape == (64, 64, 3)
    assert (label == mask[128:192, 128:192] - 1).all() and (extra["zoom1_label"] == label).all()

    def detail(a):  # high-frequency energy
        return float(np.abs(cv2.Laplacian(a.astype(np.float32), cv2.CV_32F)).mean())

    assert detail(x0[0]) < detail(extra["zoom1"]) < detail(field)
    # the paper's numbers scaled to 64²: x0 = 64 -> 16 -> 64 (5x detail), x1 = 64 -> 32 -> 64 (10x)
    for got, side in ((x0[0], 16), (extra["zoom1"], 32)):
        low = cv2.resize(field, (side, side), interpolation=cv2.INTER_AREA)
        assert (got == cv2.resize(low, (64, 64), interpolation=cv2.INTER_LINEAR)).all()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"size": 30}, "multiple of 8"),
        ({"zoom": 1}, "zoom must be an integer >= 2"),
        ({"levels": 0}, "levels must be >= 1"),
        ({"simulate_from": 10.0, "levels": 2}, "below the finest zoom level"),
    ],
)
def test_bad_settings_are_input_errors(kwargs, words):
    with pytest.raises(InputError, match=words):
        ZoomView(**kwargs)


def test_no_elastic_balancing(noise):
    slide, labels, _, _ = noise
    with pytest.raises(InputError, match="balance_deform: false"):
        ZoomView(size=SIZE).read_field(slide, labels, (0, 0))


def test_patch_dataset_augments_extras_with_the_field(noise):
    slide, labels, _, _ = noise
    view = ZoomView(size=SIZE)
    src = [SlideSource("s", slide, labels, "train")]
    entries = [(0, float(x), float(y), False) for x in (0, 128, 512) for y in (0, 256)]
    plain = PatchDataset(src, entries, view)[0]
    assert plain["image"].shape == (3, SIZE, SIZE) and plain["image"].dtype == torch.uint8
    assert plain["zoom1"].shape == (3, 2 * SIZE, 2 * SIZE) and plain["zoom1"].dtype == torch.uint8
    assert plain["zoom1_label"].shape == (2 * SIZE, 2 * SIZE)
    assert plain["zoom1_label"].dtype == torch.int64
    augmented = PatchDataset(src, entries, view, augmentation(1, view.extra_targets), seed=0)
    rotated = 0
    for i in range(len(entries)):
        s, ref = augmented[i], PatchDataset(src, entries, view)[i]
        # after any rotation/flip, x0 is still the 2x2 mean of the zoomed field, and the labels
        # still nest; brightness/colour changes hit both alike
        x0 = s["image"].permute(1, 2, 0).numpy().astype(float)
        z = s["zoom1"].permute(1, 2, 0).numpy().astype(float)
        assert np.abs(block_mean(z, 2) - x0).mean() < 3
        assert torch.equal(s["zoom1_label"][::2, ::2], s["label"])
        rotated += not torch.equal(s["label"], ref["label"])
    assert rotated > 0  # the transform did move things


def test_datamodule_batches_carry_the_zoomed_field(synthetic_root):
    view = ZoomView(size=64, magnification=5.0)
    dm = WSIDataModule(
        root=str(synthetic_root), view=view, batch_size=2, num_workers=0, synthesize=False
    )
    dm.setup()
    # 2048² slides at 0.5 um/px: 64² at 5x = 256 level-0 px, an 8x8 grid per slide
    assert 0 < len(dm.datasets["train"]) <= 64
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64)
    assert batch["zoom1"].shape == (2, 3, 128, 128)
    assert batch["zoom1_label"].shape == (2, 128, 128)
    valid = batch["label"] != 255
    assert valid.any() and int(batch["label"][valid].max()) <= 3
