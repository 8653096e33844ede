"""WSIDataModule: split by slide, DMMN's patch rules, batch layout, aligned augmentation, class
balancing, plain slide folders and bad input caught before training."""

from __future__ import annotations

import logging
import re

import cv2
import numpy as np
import pytest
import torch

from datamodules.datasets import PatchDataset, augmentation
from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE
from datamodules.views.multimag import MultiMagView
from datamodules.wsi import SPLITS, WSIDataModule

#: The synthetic XML marks only lesions; with this map everything else is unlabeled, so the
#: "> 1 % annotated" rule has something to reject (with the bach map every pixel is labelled).
LESIONS_ONLY = """\
classes: [normal, benign, in situ, invasive]
unannotated: ignore
aliases: {carcinoma in situ: in situ, invasive carcinoma: invasive}
"""


def make(root, **kw) -> WSIDataModule:
    kw = {"augment": False, "batch_size": 2, "num_workers": 0, "synthesize": False, **kw}
    dm = WSIDataModule(root=str(root), **kw)
    dm.setup()
    return dm


def slides_of(dm, split) -> set[str]:
    ds = dm.datasets[split]
    return {ds.sources[e[0]].name for e in ds.entries}


def stained(rgb: np.ndarray) -> float:
    """Share of clearly coloured pixels (HSV saturation > 20): tissue, not glass."""
    return float((cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1] > 20).mean())


@pytest.fixture(scope="module")
def dm(synthetic_root):
    return make(synthetic_root)


@pytest.fixture
def lesions_map(tmp_path):
    path = tmp_path / "lesions.yaml"
    path.write_text(LESIONS_ONLY)
    return path


def test_split_by_slide(dm):
    assert {s: slides_of(dm, s) for s in SPLITS} == {
        "train": {"slide_00"},
        "val": {"slide_01"},
        "test": {"slide_02"},
    }
    for split in SPLITS:
        assert len(dm.datasets[split]) > 10


def test_targets_on_grid_on_tissue(dm):
    ds = dm.datasets["train"]
    src = ds.sources[0]
    kept = {(x, y) for _, x, y, _ in ds.entries}
    glass = 0
    for y in range(0, 2048, 256):
        for x in range(0, 2048, 256):
            views, _ = dm.view.read(src.slide, src.labels, (x, y))
            share = stained(views[0])
            if (x, y) in kept:
                assert share >= 0.1, (x, y, share)
            elif share == 0:
                glass += 1
    assert glass >= 8  # the slide's glass corners exist and were all left out
    assert all(x % 256 == 0 and y % 256 == 0 for x, y in kept)


def test_every_training_target_is_over_one_percent_annotated(synthetic_root, lesions_map):
    dm = make(synthetic_root, class_map=str(lesions_map), labels="annotations")
    loose = make(
        synthetic_root, class_map=str(lesions_map), labels="annotations", min_annotated=-1.0
    )
    ds = dm.datasets["train"]
    assert 10 < len(ds) < len(loose.datasets["train"])  # the rule rejects some tissue targets
    for s, x, y, _ in ds.entries:
        _, label = dm.view.read(ds.sources[s].slide, ds.sources[s].labels, (x, y))
        assert (label != IGNORE).mean() > 0.01, (x, y)
    rejected = {e[1:3] for e in loose.datasets["train"].entries} - {e[1:3] for e in ds.entries}
    src = ds.sources[0]
    for x, y in rejected:
        _, label = dm.view.read(src.slide, src.labels, (x, y))
        assert (label != IGNORE).mean() < 0.02, (x, y)


def test_batches(dm):
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (2, 3, 3, 256, 256)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (2, 256, 256)
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3, IGNORE}
    assert batch["meta"]["slide"] == ["slide_00", "slide_00"]
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 3, 256, 256) and val["meta"]["slide"][0] == "slide_01"


PALETTE = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], np.uint8)


def decode(rgb: np.ndarray) -> np.ndarray:
    """Nearest palette colour: recovers the class after brightness/contrast/colour jitter."""
    d = ((rgb[..., None, :].astype(np.int32) - PALETTE.astype(np.int32)) ** 2).sum(-1)
    return d.argmin(-1)


def test_augmentation_keeps_views_and_label_aligned():
    """Views coloured by a random 4-px-block label field stay consistent with the label."""
    rng = np.random.default_rng(0)
    field = np.kron(rng.integers(0, 4, (256, 256)), np.ones((4, 4), np.int64))  # 1024²
    views = np.stack(
        [
            PALETTE[field[384:640, 384:640]],
            PALETTE[field[256:768:2, 256:768:2]],
            PALETTE[field[::4, ::4]],
        ]
    )
    label = field[384:640, 384:640].astype(np.uint8)
    ds = PatchDataset([], [], MultiMagView(), transform=augmentation(3))
    changed = 0
    for _ in range(12):
        out_views, out_label = ds._augment(views, label)
        assert out_views.shape == (3, 256, 256, 3) and out_label.shape == (256, 256)
        np.testing.assert_array_equal(decode(out_views[0]), out_label)
        up2 = decode(out_views[1])[64:192, 64:192].repeat(2, 0).repeat(2, 1)
        up4 = decode(out_views[2])[96:160, 96:160].repeat(4, 0).repeat(4, 1)
        np.testing.assert_array_equal(up2, out_label)
        np.testing.assert_array_equal(up4, out_label)
        changed += not np.array_equal(out_label, label)
    assert changed >= 6  # rotations and flips did happen


def test_class_balancing_raises_rare_class_share(synthetic_root, capsys):
    plain = make(synthetic_root)
    before = plain.class_pixel_counts
    assert before is not None and before.sum() > 0 and (before > 0).all()
    assert capsys.readouterr().out == ""  # no table without balancing
    dm = make(synthetic_root, balance_rates=[0, 3, 0, 0], class_order=[1, 3, 2, 0])
    out = capsys.readouterr().out
    assert re.search(r"class\s+before\s+share\s+after\s+share\s+gain", out)
    assert "benign" in out and "total" in out
    np.testing.assert_array_equal(dm.counts_before, before)
    after = dm.class_pixel_counts
    assert after[1] / after.sum() > 1.5 * before[1] / before.sum()
    # every patch containing benign is used 4 times: once as is and 3 extra deformed copies
    entries = dm.datasets["train"].entries
    assert len(entries) > len(plain.datasets["train"])
    assert sum(not e[3] for e in entries) == len(plain.datasets["train"])
    deformed = [i for i, e in enumerate(entries) if e[3]]
    item = dm.datasets["train"][deformed[0]]
    assert item["image"].shape == (3, 3, 256, 256) and 1 in item["label"].unique().tolist()
    # the CPU schedule repeats the copies instead of deforming them: same entries, no warps
    repeat = make(
        synthetic_root, balance_rates=[0, 3, 0, 0], class_order=[1, 3, 2, 0], balance_deform=False
    )
    capsys.readouterr()
    assert [e[:3] for e in repeat.datasets["train"].entries] == [e[:3] for e in entries]
    assert not any(e[3] for e in repeat.datasets["train"].entries)
    np.testing.assert_array_equal(repeat.class_pixel_counts, after)


def test_experiment_balancing_favours_lesions(synthetic_root, capsys):
    """The experiments' extra copies (normal 0, benign 1, in situ 2, invasive 2, invasive first)."""
    dm = make(synthetic_root, balance_rates=[0, 1, 2, 2], class_order=[3, 2, 1, 0])
    capsys.readouterr()
    before, after = dm.counts_before, dm.class_pixel_counts
    share_b, share_a = before / before.sum(), after / after.sum()
    assert share_a[0] < share_b[0]  # normal down, the carcinomas up
    assert share_a[2] > share_b[2] and share_a[3] > share_b[3]


def test_plain_folder_of_slides_and_xml(synthetic_root, tmp_path, caplog):
    for i in range(3):
        for ext in (".tiff", ".xml"):
            (tmp_path / f"slide_0{i}{ext}").symlink_to(synthetic_root / f"slide_0{i}{ext}")
    (tmp_path / "orphan.tiff").symlink_to(synthetic_root / "slide_00.tiff")  # no label: skipped
    with caplog.at_level(logging.WARNING, logger="datamodules.wsi"):
        dm = make(tmp_path, slide_glob="*.tiff", label_suffix=".xml", seed=0)
    assert "orphan.tiff" in caplog.text
    names = [slides_of(dm, s) for s in SPLITS]
    assert all(len(n) == 1 for n in names)  # 3 slides at 20 % val / 20 % test: one each
    assert set.union(*names) == {"slide_00", "slide_01", "slide_02"}
    again = make(tmp_path, slide_glob="*.tiff", label_suffix=".xml", seed=0)
    assert [slides_of(again, s) for s in SPLITS] == names  # the split is seeded
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 3, 256, 256)
    # XML labels (unannotated = normal) agree with the label masks of the same slide
    src = dm.datasets["train"].sources[0]
    mask_dm = make(synthetic_root)
    by_name = {s.name: s for s in mask_dm.datasets["train"].sources}
    _, from_xml = dm.view.read(src.slide, src.labels, (768, 768))
    _, from_mask = dm.view.read(src.slide, by_name[src.name].labels, (768, 768))
    assert (from_xml == from_mask).mean() > 0.97


def test_class_map_not_matching_the_xml(synthetic_root):
    with pytest.raises(InputError, match="not in class map 'tiger'"):
        make(synthetic_root, class_map="tiger", labels="annotations")


def test_class_map_not_matching_the_masks(synthetic_root, tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("classes: [normal, benign]\nmask_values: {0: ignore, 1: normal, 2: benign}\n")
    with pytest.raises(InputError, match=r"mask value\(s\) \[3, 4\]"):
        make(synthetic_root, class_map=str(path))


def test_unknown_label_in_xml(synthetic_root, tmp_path):
    (tmp_path / "a.tiff").symlink_to(synthetic_root / "slide_00.tiff")
    xml = (synthetic_root / "slide_00.xml").read_text()
    (tmp_path / "a.xml").write_text(xml.replace('Text="Benign"', 'Text="Mystery lesion"'))
    with pytest.raises(InputError, match="'Mystery lesion' not in class map 'bach'"):
        make(tmp_path, slide_glob="*.tiff", val_fraction=0, test_fraction=0)


def test_no_patch_passes_the_annotation_rule(synthetic_root):
    with pytest.raises(InputError, match=r"no train patch.*slide_00"):
        make(synthetic_root, min_annotated=1.1)


def test_missing_root(tmp_path):
    with pytest.raises(InputError, match="no such data folder"):
        make(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no slides matching"):
        make(tmp_path, slide_glob="*.svs")


def test_unlabeled_band_reaches_the_batch_as_ignore(synthetic_root, synthetic_band_root, dm):
    """DMMN-style partial masks: the unlabeled band is IGNORE in labels and left out of counts."""
    band = make(synthetic_band_root)
    assert band.counts_before.sum() < dm.counts_before.sum()
    ds = band.datasets["train"]
    assert [e[1:3] for e in ds.entries] == [e[1:3] for e in dm.datasets["train"].entries]
    shares = []
    for i in range(0, len(ds), 4):
        label = ds[i]["label"]
        shares.append(float((label == IGNORE).float().mean()))
        full = dm.datasets["train"][i]["label"]  # the same target without the band
        keep = label != IGNORE
        assert torch.equal(label[keep], full[keep])  # the band only removes labels
    assert max(shares) > 0.01 and min(shares) < 0.5
