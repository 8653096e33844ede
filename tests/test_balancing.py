"""DMMN class balancing: elastic deformation, patch classes, expansion by rate, pixel counts."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.errors import InputError
from datamodules.sampling.balancing import (
    IGNORE,
    balanced_index,
    class_pixel_counts,
    elastic_deform,
    expected_counts_after_balancing,
    format_counts,
    item_rng,
    patch_class,
    patch_pixel_counts,
)

# Well separated colours, one per label value (IGNORE included), to check image/label alignment.
PALETTE = {
    0: (230, 230, 230),
    1: (40, 160, 40),
    2: (40, 40, 200),
    3: (200, 40, 40),
    IGNORE: (20, 20, 20),
}


def _field(size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A label of 32-px blocks (4 classes + IGNORE) and an image whose colour encodes it."""
    rng = np.random.default_rng(seed)
    values = np.array(list(PALETTE), dtype=np.uint8)
    blocks = rng.choice(values, size=(size // 32, size // 32))
    label = np.kron(blocks, np.ones((32, 32), dtype=np.uint8)).astype(np.uint8)
    lut = np.zeros((256, 3), dtype=np.uint8)
    for v, c in PALETTE.items():
        lut[v] = c
    return lut[label], label


def _decode(image: np.ndarray) -> np.ndarray:
    """Nearest palette colour of each pixel -> label value."""
    values = np.array(list(PALETTE))
    colours = np.array(list(PALETTE.values()), dtype=np.float32)
    d = ((image[..., None, :].astype(np.float32) - colours) ** 2).sum(-1)
    return values[d.argmin(-1)]


@pytest.fixture(scope="module")
def field():
    return _field()


@pytest.fixture(scope="module")
def deformed(field):
    image, label = field
    return elastic_deform(image, label, np.random.default_rng(7))


def test_deform_keeps_shapes_and_dtypes(field, deformed):
    image, label = field
    out_img, out_lbl = deformed
    assert out_img.shape == image.shape and out_img.dtype == np.uint8
    assert out_lbl.shape == label.shape and out_lbl.dtype == np.uint8


def test_deform_changes_image_and_label(field, deformed):
    image, label = field
    out_img, out_lbl = deformed
    assert np.abs(out_img.astype(int) - image).mean() > 1.0
    assert (out_lbl != label).mean() > 0.01
    # ... but it is a small, local deformation (σ = 4 px), not a scramble
    assert (out_lbl == label).mean() > 0.8


def test_deform_label_values_stay_in_original_set(field):
    image, label = field
    label = label.copy()
    label[label == 1] = 0  # input set {0, 2, 3, IGNORE}
    _, out_lbl = elastic_deform(image, label, 3)
    assert set(np.unique(out_lbl).tolist()) <= set(np.unique(label).tolist())
    assert IGNORE in out_lbl


def test_deform_image_and_label_stay_aligned(deformed):
    out_img, out_lbl = deformed
    agreement = (_decode(out_img) == out_lbl).mean()
    assert agreement >= 0.95, agreement


def test_deform_is_reproducible_per_seed(field, deformed):
    image, label = field
    again = elastic_deform(image, label, np.random.default_rng(7))
    assert np.array_equal(again[0], deformed[0]) and np.array_equal(again[1], deformed[1])
    other = elastic_deform(image, label, np.random.default_rng(8))
    assert not np.array_equal(other[0], deformed[0])
    # an int seed and a legacy RandomState are accepted too
    assert np.array_equal(elastic_deform(image, label, 5)[0], elastic_deform(image, label, 5)[0])
    rs = elastic_deform(image, label, np.random.RandomState(5))
    assert rs[0].shape == image.shape


def test_deform_ignores_global_numpy_state(field):
    image, label = field
    np.random.seed(1)
    a = elastic_deform(image, label, 11)
    np.random.seed(2)
    b = elastic_deform(image, label, 11)
    assert np.array_equal(a[0], b[0])


def test_deform_larger_sigma_moves_more(field):
    image, label = field
    small = elastic_deform(image, label, 4, sigma=1.0)[1]
    large = elastic_deform(image, label, 4, sigma=8.0)[1]
    assert (small != label).mean() < (large != label).mean()


def test_deform_rejects_bad_arrays(field):
    image, label = field
    with pytest.raises(ValueError, match="image"):
        elastic_deform(image[..., 0], label, 0)
    with pytest.raises(ValueError, match="label"):
        elastic_deform(image, label[:-1], 0)
    with pytest.raises(ValueError, match="label"):
        elastic_deform(image, label.astype(np.int32), 0)


def test_item_rng_reproducible_and_distinct():
    a = item_rng(42, 0, 5).standard_normal(4)
    assert np.array_equal(a, item_rng(42, 0, 5).standard_normal(4))
    assert not np.array_equal(a, item_rng(42, 0, 6).standard_normal(4))
    assert not np.array_equal(a, item_rng(42, 1, 5).standard_normal(4))


BACH_ORDER = [3, 2, 1, 0]  # invasive, in situ, benign, normal


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 2], 2),
        ([0, 3, IGNORE], 3),
        ([0], 0),
        ([1, 0, IGNORE], 1),
        ([IGNORE], None),
    ],
)
def test_patch_class_takes_highest_order(values, expected):
    label = np.array(values * 4, dtype=np.uint8).reshape(4, -1)
    assert patch_class(label, BACH_ORDER) == expected


def test_patch_class_follows_given_order_not_value():
    label = np.array([[0, 3]], dtype=np.uint8)
    assert patch_class(label, [0, 3]) == 0
    assert patch_class(label, [1, 2]) is None


@pytest.mark.parametrize("order", [[], [1, 1], [0, IGNORE]])
def test_patch_class_rejects_bad_order(order):
    with pytest.raises(InputError):
        patch_class(np.zeros((2, 2), np.uint8), order)


def test_balanced_index_adds_r_deformed_copies():
    """r_c is the number of EXTRA deformed copies (the paper's reading): 0 keeps a patch once."""
    classes = [3, 0, None, 2, 3, 1]
    rates = {3: 0, 2: 3, 1: 1}  # class 0 not mentioned -> 0 extra
    index = balanced_index(classes, rates)
    assert len(index) == 1 + 1 + 1 + 4 + 1 + 2
    assert index[:4] == [(0, False), (1, False), (2, False), (3, False)]
    assert index[4:7] == [(3, True)] * 3
    for i, cls in enumerate(classes):
        copies = [d for p, d in index if p == i]
        r = rates.get(cls, 0) if cls is not None else 0
        assert len(copies) == 1 + r
        assert copies[0] is False and all(copies[1:])
    assert balanced_index(classes, [0, 1, 3, 0]) == balanced_index(classes, {1: 1, 2: 3})
    assert balanced_index(classes, [0, 0, 0, 0]) == [(i, False) for i in range(6)]


@pytest.mark.parametrize("rates", [{0: -1}, [1, -1], {1: 1.5}, [True, 1]])
def test_balanced_index_rejects_bad_rates(rates):
    with pytest.raises(InputError, match="rates"):
        balanced_index([0, 1], rates)


def test_pixel_counts_ignore_unlabeled_and_reject_bad_values():
    a = np.array([[0, 0, 1], [IGNORE, 2, 2]], dtype=np.uint8)
    b = np.array([[3, IGNORE, IGNORE]], dtype=np.uint8)
    assert patch_pixel_counts(a, 4).tolist() == [2, 1, 2, 0]
    assert class_pixel_counts([a, b], 4).tolist() == [2, 1, 2, 1]
    with pytest.raises(InputError, match=r"\[7\]"):
        class_pixel_counts([np.array([[7, 0]], np.uint8)], 4)


def test_expected_counts_after_balancing():
    labels = [
        np.array([[0, 0, 3, IGNORE]], np.uint8),
        np.array([[0, 0, 0, 0]], np.uint8),
        np.array([[1, 2, 2, 0]], np.uint8),
        np.full((1, 4), IGNORE, np.uint8),
    ]
    classes = [patch_class(lbl, BACH_ORDER) for lbl in labels]
    assert classes == [3, 0, 2, None]
    per_patch = np.stack([patch_pixel_counts(lbl, 4) for lbl in labels])
    rates = {3: 2, 2: 1}  # extra copies: invasive patches used 3 times, in situ twice
    after = expected_counts_after_balancing(per_patch, classes, rates)
    # by hand: 3 × [2,0,0,1] + [4,0,0,0] + 2 × [1,1,2,0]
    assert after.tolist() == [12, 2, 4, 3]
    # same as counting the undeformed labels of the expanded index
    index = balanced_index(classes, rates)
    assert class_pixel_counts((labels[i] for i, _ in index), 4).tolist() == after.tolist()
    with pytest.raises(ValueError):
        expected_counts_after_balancing(per_patch[:2], classes, rates)


def test_format_counts_table():
    text = format_counts([900, 100, 0], [900, 400, 0], ["normal", "invasive", "in situ"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "before", "share", "after", "share", "gain"]
    row = next(line for line in lines if line.startswith("invasive")).split()
    assert row == ["invasive", "100", "10.0%", "400", "30.8%", "x4.00"]
    assert next(line for line in lines if line.startswith("in situ")).split()[-1] == "-"
    assert lines[-1].split()[:2] == ["total", "1,000"]
    with pytest.raises(ValueError):
        format_counts([1], [1, 2], ["a"])
