"""The torch elastic deformation against the elasticdeform path it replaces (same control grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.labels.classmaps import IGNORE
from datamodules.sampling.balancing import _elasticdeform, control_grid, elastic_deform
from datamodules.sampling.elastic_torch import (
    deform_batch,
    deform_field,
    dense_displacement,
    spline_matrix,
)
from datamodules.slides.slide import Slide

N = 1024


@pytest.fixture(scope="module")
def field(real_data):
    """A real 1024² H&E field and a label with four regions, IGNORE included."""
    image = Slide(real_data / "small_HE.svs").read((500, 800), (N, N))
    label = np.zeros((N, N), np.uint8)
    label[:, 300:] = 1
    label[400:700, 200:600] = 2
    label[900:, :] = 255
    return image, label


def test_spline_matrix_interpolates_the_control_points():
    a = spline_matrix(1025, 17)  # control point k on pixel 64 k
    np.testing.assert_allclose(a[::64], np.eye(17), atol=1e-12)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-12)  # a constant grid stays constant
    np.testing.assert_allclose(a, a[::-1, ::-1], atol=1e-12)  # symmetric about the centre
    assert a[544, 8] == pytest.approx(a[544, 9]) and a[544, 8] > 0.5  # halfway between 8 and 9


def test_dense_field_is_elasticdeforms():
    """Deforming a ramp with linear interpolation returns elasticdeform's displacement."""
    grid = control_grid(3)
    ramp = np.tile(np.arange(N, dtype=np.float64)[:, None], (1, N))
    got = _elasticdeform().deform_grid(ramp, grid, order=1, mode="nearest") - ramp
    ours = dense_displacement(torch.from_numpy(grid)[None], N, N)[0, 0].numpy()
    inside = (ramp + ours >= 0) & (ramp + ours <= N - 1)  # where the ramp is not clamped
    assert inside.mean() > 0.99
    np.testing.assert_allclose(ours[inside], got[inside], atol=1e-9)


def test_same_grid_same_deformation_as_elasticdeform(field):
    """Tolerance: mean |Δ| <= 0.75 and 99th percentile <= 6 grey levels (measured 0.51 / 4):
    Keys' bicubic against elasticdeform's prefiltered cubic B-spline; a wrong field is far off."""
    image, label = field
    ref_img, ref_lbl = elastic_deform(image, label, 7)
    img, lbl = deform_field(image, label, 7)
    diff = np.abs(img.astype(int) - ref_img)
    assert diff.mean() <= 0.75 and np.percentile(diff, 99) <= 6
    other = np.abs(deform_field(image, label, 8)[0].astype(int) - ref_img)
    assert other.mean() > 4 * diff.mean()  # another grid is measurably different
    # labels: identical wherever the reference's 3x3 neighbourhood has one value
    pad = np.pad(ref_lbl, 1, mode="edge")
    shifts = [pad[dy : dy + N, dx : dx + N] for dy in range(3) for dx in range(3)]
    interior = np.all([s == ref_lbl for s in shifts], axis=0)
    assert interior.mean() > 0.98
    assert np.array_equal(lbl[interior], ref_lbl[interior])
    assert set(np.unique(lbl)) == {0, 1, 2, 255}


def test_batched_equals_one_by_one_and_is_deterministic(field):
    image, label = field
    crop, lab = image[:256, :256], label[380:636, 180:436]  # a corner of region 2 in the crop
    grids = torch.from_numpy(np.stack([control_grid(1), control_grid(2)]))
    imgs = torch.from_numpy(np.stack([crop, crop[::-1].copy()])).permute(0, 3, 1, 2)
    labs = torch.from_numpy(np.stack([lab, lab]))
    out, out_lab = deform_batch(imgs, labs, grids)
    assert out.dtype == torch.uint8 and out_lab.dtype == torch.uint8
    for k in range(2):
        one, one_lab = deform_batch(imgs[k : k + 1], labs[k : k + 1], grids[k : k + 1])
        assert torch.equal(one[0], out[k]) and torch.equal(one_lab[0], out_lab[k])
    assert not torch.equal(out_lab[0], labs[0]) and not torch.equal(out_lab[0], out_lab[1])
    again = deform_field(crop, lab, 1)
    assert np.array_equal(again[0], out[0].permute(1, 2, 0).numpy())
    # zero displacement is the identity, borders included
    ident, ident_lab = deform_batch(imgs, labs, torch.zeros_like(grids))
    assert torch.equal(ident, imgs) and torch.equal(ident_lab, labs)


def _balanced(root, **kw):
    from datamodules.wsi import WSIDataModule

    dm = WSIDataModule(
        root=str(root), balance_rates=[1, 4, 1, 1], class_order=[1, 3, 2, 0], num_workers=0, **kw
    )
    dm.setup()
    return dm


def test_device_copies_match_the_loader_path(synthetic_root, capsys):
    """Copies deformed in the step (`deform_on_device`) are the loader's copies: same grid, same
    labels; views within 1 grey level (block means round half up, cv2's INTER_AREA not always)."""
    from datamodules.datasets import collate
    from datamodules.sampling.elastic_torch import deform_on_device

    cpu = _balanced(synthetic_root, augment=False).datasets["train"]
    dev = _balanced(synthetic_root, augment=False, deform_on_device=True).datasets["train"]
    capsys.readouterr()
    copies = [i for i, e in enumerate(cpu.entries) if e[3]][:3]
    items = [0, *copies]  # entry 0 is as is
    assert not cpu.entries[0][3] and len(copies) == 3
    batch = collate([dev[i] for i in items])
    assert batch["deform"]["index"].tolist() == [1, 2, 3]
    assert batch["deform"]["field"].shape == (3, 3, 1024, 1024)
    assert (batch["label"][1:] == IGNORE).all()  # placeholders until the step
    done = deform_on_device(batch)
    ref = collate([cpu[i] for i in items])
    assert "deform" not in done and "deform" not in ref
    assert torch.equal(done["label"], ref["label"])
    assert torch.equal(done["image"][:, 0], ref["image"][:, 0])  # the 20x view: no averaging
    diff = (done["image"].int() - ref["image"].int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.1
    # ... and they are deformed: the same patch as is has other labels
    as_is = cpu.entries.index((*cpu.entries[copies[0]][:3], False))
    assert not torch.equal(done["label"][1], cpu[as_is]["label"])
