"""The TIGER reader and the synthetic TIGER layout: files, label agreement, splits, padding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import Polygon, box

from datamodules.errors import InputError
from datamodules.labels.sources import PolygonLabels, read_annotations
from datamodules.synthetic.generator import ensure_dataset
from datamodules.synthetic.layout import Region
from datamodules.synthetic.tiger import ROI_DIR, XML_DIR, hole_free, visible_regions
from datamodules.tiger import TigerDataModule, assign_splits, slide_of, split_counts
from datamodules.views.single import SingleView
from lightning_modules.cli.main import main

#: 3 slides of 1024² with 3 ROIs each: one slide per split at 80/10/10.
TINY_TIGER = {"n_slides": 3, "size": 1024, "seed": 0, "splits": (1, 1, 1), "layout": "tiger"}


def tiger_set(tmp_path_factory) -> Path:
    """The session's tiny synthetic TIGER set (shared with test_smp_cli.py; made once)."""
    out = tmp_path_factory.getbasetemp() / "synthetic_tiger"
    ensure_dataset(out, progress=False, workers=1, **TINY_TIGER)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tiger_set(tmp_path_factory)


def make(root, **kw) -> TigerDataModule:
    kw = {"view": SingleView(size=64), "num_workers": 0, "batch_size": 4, **kw}
    dm = TigerDataModule(str(root), **kw)
    dm.setup()
    return dm


def roi_files(root: Path) -> list[Path]:
    return sorted((root / ROI_DIR / "images").glob("*.png"))


# ---------------------------------------------------------------------- synthetic layout
def test_layout_files_and_names(root):
    rois = roi_files(root)
    manifest = json.loads((root / "manifest.json").read_text())
    listed = [r for s in manifest["slides"] for r in s["rois"]]
    assert len(rois) == len(listed) >= 6 and manifest["class_map"] == "tiger"
    for image in rois:
        x1, y1, x2, y2 = map(int, image.stem.split("_[")[1].rstrip("]").split(","))
        rgb = cv2.imread(str(image))
        mask = cv2.imread(str(image.parent.parent / "masks" / image.name), cv2.IMREAD_UNCHANGED)
        assert rgb.shape[:2] == mask.shape == (y2 - y1, x2 - x1)
        assert set(np.unique(mask)) <= set(range(8)) and 5 not in np.unique(mask)
    for i in range(3):
        assert (root / XML_DIR / f"slide_{i:02d}.xml").is_file()
        assert (root / "wsirois/wsi-level-annotations/images" / f"slide_{i:02d}.tif").is_file()


def test_roi_masks_match_the_xml_and_the_slide(root):
    """ROI mask = the XML rasterised over the ROI (values 1-7, 0 where unannotated), and the
    ROI image is the slide's level 0 there."""
    from datamodules.slides.slide import Slide

    image = roi_files(root)[0]
    slide_name = slide_of(image.stem)
    x1, y1, x2, y2 = map(int, image.stem.split("_[")[1].rstrip("]").split(","))
    labels = PolygonLabels(
        read_annotations(root / XML_DIR / f"{slide_name}.xml"), "tiger", 0.5, (1024, 1024)
    ).read((x1, y1), (x2 - x1, y2 - y1))
    mask = cv2.imread(str(image.parent.parent / "masks" / image.name), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(np.where(labels == 255, 0, labels + 1), mask)
    assert (mask == 2).mean() > 0.2  # tumour-associated stroma dominates
    slide = Slide(root / "wsirois/wsi-level-annotations/images" / f"{slide_name}.tif")
    roi = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    level0 = slide.read((x1, y1), (x2 - x1, y2 - y1))
    assert np.abs(roi.astype(int) - level0.astype(int)).mean() < 3  # JPEG in the TIFF only


def test_hole_free_pieces_tile_the_polygon():
    square = box(0, 0, 100, 100)
    holes = [box(10, 10, 20, 30).exterior.coords, box(50, 60, 70, 65).exterior.coords]
    polygon = Polygon(square.exterior.coords, holes)
    pieces = hole_free(polygon)
    assert len(pieces) >= 3 and all(not p.interiors for p in pieces)
    assert sum(p.area for p in pieces) == pytest.approx(polygon.area)
    from shapely import union_all

    assert union_all(pieces).symmetric_difference(polygon).area < 1e-6


def test_visible_regions_never_overlap():
    """A later region hides an earlier one, so the pieces rasterise alike whatever the
    precedence of the class map."""
    regions = [
        Region(2, np.array(box(0, 0, 100, 100).exterior.coords[:-1])),
        Region(7, np.array(box(20, 20, 40, 40).exterior.coords[:-1])),  # rest inside stroma
        Region(1, np.array(box(60, 0, 120, 50).exterior.coords[:-1])),
    ]
    pieces = visible_regions(regions, [(0, 0, 110, 100)])
    area = {c: sum(p.area for cc, p in pieces if cc == c) for c in (1, 2, 7)}
    assert area == {1: 50 * 50, 2: 100 * 100 - 400 - 40 * 50, 7: 400}
    assert all(not p.interiors for _, p in pieces)


# ---------------------------------------------------------------------- splits
def test_split_counts_and_slide_grouping():
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert split_counts(151, (0.8, 0.1, 0.1)) == [121, 15, 15]
    assert split_counts(5, (1, 0, 0)) == [5, 0, 0]
    with pytest.raises(InputError, match="split_fractions"):
        split_counts(5, (0.5, 0.5))
    names = ["a_[1, 2, 3, 4]", "a_[5, 6, 7, 8]", "b_[0, 0, 9, 9]", "c"]
    slides = [slide_of(n) for n in names]
    assert slides == ["a", "a", "b", "c"]
    split = assign_splits(slides, (0.8, 0.1, 0.1), seed=0)
    assert sorted(split.values()) == ["test", "train", "val"]
    assert split == assign_splits(slides[::-1], (0.8, 0.1, 0.1), seed=0)  # order-free


def test_rois_split_by_slide_zero_padded_and_never_empty(root):
    dm = make(root)
    assert dm.layout == "tiger rois" and dm.num_classes == 2
    splits_of = {}
    for split, ds in dm.datasets.items():
        assert len(ds) > 0
        for s, *_ in ds.entries:
            splits_of.setdefault(slide_of(ds.sources[s].name), set()).add(split)
    assert all(len(v) == 1 for v in splits_of.values()) and len(splits_of) == 3
    ds = dm.datasets["val"]
    padded = 0
    for i in range(len(ds)):
        sample = ds[i]
        label, image = sample["label"].numpy(), sample["image"].numpy()
        assert image.shape == (3, 64, 64) and (label != 255).any()  # empty patches dropped
        assert set(np.unique(label)) <= {0, 1, 255}
        src = ds.sources[ds.entries[i][0]]
        w = src.slide.dimensions[0]
        x = int(ds.entries[i][1])
        if x + 64 > w:  # the ROI ends inside this patch: zeros and ignore beyond it
            padded += 1
            assert (image[:, :, w - x :] == 0).all() and (label[:, w - x :] == 255).all()
    assert padded > 0
    transform = dm.datasets["train"].transform
    assert [type(t).__name__ for t in transform.transforms] == [
        "RandomRotate90",
        "HorizontalFlip",
        "VerticalFlip",
    ]


def test_patch_split_pools_every_patch_and_leaks(root):
    by_slide = make(root)
    by_patch = make(root, split_by="patch")
    n = sum(len(d) for d in by_slide.datasets.values())
    sizes = [len(by_patch.datasets[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == n and sizes == split_counts(n, (0.8, 0.1, 0.1))

    def slides(split):
        ds = by_patch.datasets[split]
        return {slide_of(ds.sources[s].name) for s, *_ in ds.entries}

    assert slides("train") & slides("test")  # the documented leak


def test_wsi_source_and_seven_classes(root):
    dm = make(root, source="wsi", class_map="tiger")
    assert dm.layout == "tiger wsi" and dm.num_classes == 7
    labels = np.concatenate([dm.datasets["train"][i]["label"].numpy().ravel() for i in range(8)])
    values = set(np.unique(labels))
    assert values <= set(range(7)) | {255} and 1 in values  # tumour-associated stroma


def test_plain_pairs_and_flat_folders(root, tmp_path):
    pairs = tmp_path / "pairs"
    shutil.copytree(root / ROI_DIR, pairs)
    dm = make(pairs)
    assert dm.layout == "pairs" and len(dm.datasets["train"]) > 0
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in roi_files(root):
        shutil.copy(image, flat / image.name)
        shutil.copy(image.parent.parent / "masks" / image.name, flat / f"{image.stem}_mask.png")
    dm = make(flat, slide_glob="*.png", label_suffix="_mask.png")
    assert dm.layout == "flat"
    assert sum(len(d) for d in dm.datasets.values()) == sum(
        len(d) for d in make(root).datasets.values()
    )


def test_bad_input_is_an_input_error(root, tmp_path):
    with pytest.raises(InputError, match="no such data folder"):
        make(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no images with labels"):
        make(tmp_path)
    with pytest.raises(InputError, match="split_by"):
        TigerDataModule(str(root), split_by="roi")
    bad = tmp_path / "bad"
    shutil.copytree(root / ROI_DIR, bad)
    mask = sorted((bad / "masks").glob("*.png"))[0]
    cv2.imwrite(str(mask), np.full((40, 40), 9, np.uint8))
    cv2.imwrite(str(bad / "images" / mask.name), np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(InputError, match=r"mask value\(s\) \[9\]"):
        make(bad)


def test_synth_command_tiger_layout(tmp_path, capsys):
    out = tmp_path / "tiger"
    args = ["synth", "--layout", "tiger", "--out", str(out), "--n-slides", "2", "--size", "512"]
    assert main([*args, "--quiet"]) == 0
    assert "generated 2" in capsys.readouterr().out
    assert len(list((out / ROI_DIR / "masks").glob("slide_0*_[[]*].png"))) >= 2
    assert main([*args, "--quiet"]) == 0 and "reused 2" in capsys.readouterr().out
    assert main([*args, "--label-noise", "0.1", "--overwrite", "--quiet"]) == 2
    assert "layout 'tiger' takes no" in capsys.readouterr().err
