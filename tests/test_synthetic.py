"""Synthetic benchmark slides: file formats, label agreement, determinism and the designed cues."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import tiffslide

from datamodules.errors import InputError
from datamodules.slides.slide import Slide
from datamodules.synthetic.generator import _assign_splits, ensure_dataset, generate
from datamodules.synthetic.layout import BENIGN_CLS, IN_SITU, INVASIVE, RIM_PX, layout_default
from datamodules.synthetic.render import slide_rngs
from datamodules.synthetic.textures import (
    BENIGN,
    EPITHELIUM,
    RIM,
    STROMA,
    ZOOM_BLOCK,
    make_bank,
)

SIZE = 2048
PARAMS = {"n_slides": 2, "size": SIZE, "seed": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    manifest = generate(out, progress=False, **PARAMS)
    return out, manifest


def read_mask(path) -> np.ndarray:
    slide = Slide(path)
    return slide.read((0, 0), slide.dimensions, raw=True, resample="nearest")


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (px) of every pixel to the nearest pixel of another label."""
    k = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(labels, k) != cv2.erode(labels, k)
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)


def test_files_and_manifest(dataset):
    out, manifest = dataset
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["class_map"] == "bach" and manifest["mpp"] == 0.5
    assert manifest["params"]["size"] == SIZE and manifest["seed"] == 0
    assert [s["split"] for s in manifest["slides"]] == ["train", "val"]
    for rec in manifest["slides"]:
        assert set(rec["files"]) == {"image", "mask", "annotations"}
        for f in rec["files"].values():
            assert "/" not in f and (out / f).is_file()
        assert (rec["width"], rec["height"]) == (SIZE, SIZE)
        assert sum(rec["pixel_counts"].values()) == SIZE * SIZE


def test_pyramids_as_tiffslide_and_slide_see_them(dataset):
    out, manifest = dataset
    rec = manifest["slides"][0]
    for key in ("image", "mask"):
        ts = tiffslide.TiffSlide(out / rec["files"][key])
        assert ts.properties["tiffslide.mpp-x"] == pytest.approx(0.5)
        assert ts.level_count == 5
        assert ts.level_downsamples == pytest.approx((1, 2, 4, 8, 16))
        assert ts.dimensions == (SIZE, SIZE)
        assert ts.properties["tiffslide.level[0].tile-width"] == 256
        ts.close()
    slide = Slide(out / rec["files"]["image"])
    assert slide.mpp == 0.5 and slide.level_count == 5
    patch = slide.read(center=(SIZE // 2, SIZE // 2), size=(256, 256), magnification=5)
    assert patch.shape == (256, 256, 3) and patch.std() > 5
    # mask levels are nearest-neighbour copies of level 0 (no invented in-between values)
    mask0 = read_mask(out / rec["files"]["mask"])
    level2 = Slide(out / rec["files"]["mask"]).read(
        (0, 0), (SIZE // 4,) * 2, mpp=2.0, raw=True, resample="nearest"
    )
    assert np.array_equal(level2, mask0[::4, ::4])
    assert set(np.unique(mask0)) <= {1, 2, 3, 4}  # no unlabeled pixels by default


def test_xml_rasterises_to_the_mask(dataset):
    from datamodules.labels.classmaps import load_class_map
    from datamodules.labels.sources import PolygonLabels, read_annotations

    out, manifest = dataset
    for rec in manifest["slides"]:
        mask = read_mask(out / rec["files"]["mask"])
        regions = read_annotations(out / rec["files"]["annotations"])
        assert len(regions) == sum(rec["regions"].values())  # one polygon per lesion, no merges
        labels = PolygonLabels(regions, load_class_map("bach"), slide_mpp=0.5).read(
            (0, 0), (SIZE, SIZE)
        )
        agree = labels == mask.astype(np.int64) - 1
        assert agree.mean() > 0.998
        assert agree[boundary_distance(mask) > 3].mean() > 0.99


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    out, manifest = dataset
    generate(tmp_path / "again", progress=False, workers=1, **PARAMS)
    for rec in manifest["slides"]:
        for f in rec["files"].values():
            assert (tmp_path / "again" / f).read_bytes() == (out / f).read_bytes(), f
    other = generate(tmp_path / "other", progress=False, n_slides=1, size=SIZE, seed=1)
    assert (tmp_path / "other" / "slide_00.tiff").read_bytes() != (
        out / "slide_00.tiff"
    ).read_bytes()
    assert other["slides"][0]["pixel_counts"] != manifest["slides"][0]["pixel_counts"]


def test_classes_are_imbalanced_like_bach(dataset):
    _, manifest = dataset
    counts = manifest["pixel_counts"]
    total = sum(counts.values())
    frac = {k: v / total for k, v in counts.items()}
    assert frac["normal"] > 0.75
    for lesion in ("benign", "in situ", "invasive"):
        assert 0.005 < frac[lesion] < 0.12, frac
    # white glass is part of normal and a large share of every slide
    for rec in manifest["slides"]:
        assert 0.2 < 1 - rec["tissue_pixels"] / SIZE**2 < 0.55


def test_unlabeled_bands_only_along_boundaries(dataset, tmp_path):
    out, manifest = dataset
    band = generate(tmp_path, progress=False, unlabeled_band=16, **PARAMS)
    for rec, rec_band in zip(manifest["slides"], band["slides"], strict=True):
        # the image and the XML do not change, only the mask
        for key in ("image", "annotations"):
            assert (tmp_path / rec["files"][key]).read_bytes() == (
                out / rec["files"][key]
            ).read_bytes()
        full = read_mask(out / rec["files"]["mask"])
        partial = read_mask(tmp_path / rec["files"]["mask"])
        zero = partial == 0
        assert rec_band["pixel_counts"]["unlabeled"] == zero.sum() > 0
        assert np.array_equal(partial[~zero], full[~zero])
        dist = boundary_distance(full)
        assert dist[zero].max() <= 8  # a 16-px band centred on the boundary
        assert zero[dist <= 4].mean() > 0.99


def test_label_noise_changes_annotations_not_pixels(dataset, tmp_path):
    out, manifest = dataset
    noisy = generate(tmp_path, progress=False, label_noise=0.5, **PARAMS)
    for rec, rec_noisy in zip(manifest["slides"], noisy["slides"], strict=True):
        assert (tmp_path / rec["files"]["image"]).read_bytes() == (
            out / rec["files"]["image"]
        ).read_bytes()
        n_regions = sum(rec["regions"].values())
        assert len(rec_noisy["relabelled"]) == round(0.5 * n_regions)
        assert all(r["true"] != r["annotated"] for r in rec_noisy["relabelled"])
        assert rec_noisy["pixel_counts"] != rec["pixel_counts"]


def test_benign_differs_from_stroma_only_at_20x():
    """Hypothesis (b): averaged x4 (5x) the two textures are the same; at 20x they are not."""
    bank = make_bank(np.random.default_rng(0), tile=256)
    stroma, benign = (bank[i, ..., :3].astype(np.float32) for i in (STROMA, BENIGN))

    def down(a, f):
        return cv2.resize(a, (a.shape[1] // f, a.shape[0] // f), interpolation=cv2.INTER_AREA)

    assert np.abs(stroma - benign).mean() > 8  # 20x
    assert np.abs(down(stroma, 2) - down(benign, 2)).mean() > 3  # 10x: partly visible
    assert np.abs(down(stroma, ZOOM_BLOCK) - down(benign, ZOOM_BLOCK)).max() < 1.0  # 5x


def test_in_situ_and_invasive_share_the_20x_texture():
    """Hypothesis (a): both are EPITHELIUM inside; only in situ has a rim, invasive has cords."""
    lay = layout_default(4096, slide_rngs(0, 0)[0])
    tex = lay.tex
    seen = {IN_SITU: 0, INVASIVE: 0, BENIGN_CLS: 0}
    for region in lay.regions:
        m = np.zeros(tex.shape, np.uint8)
        cv2.fillPoly(m, [np.round(region.polygon).astype(np.int32)], 1)
        core = cv2.erode(m, np.ones((2 * RIM_PX + 5,) * 2, np.uint8)) > 0
        inside = tex[m > 0]
        seen[region.cls] += 1
        if region.cls == IN_SITU:
            assert np.all(tex[core] == EPITHELIUM)  # solid tumour cells
            assert np.mean(inside == RIM) > 0.02  # the rim is visible context
        elif region.cls == INVASIVE:
            assert not np.any(inside == RIM)
            assert 0.3 < np.mean(inside == EPITHELIUM) < 0.85  # cords and sheets in stroma
            assert set(np.unique(inside)) <= {EPITHELIUM, STROMA}
        else:
            assert set(np.unique(tex[core])) == {BENIGN}
    assert all(seen.values())


def test_ensure_dataset_reuses_and_regenerates(tmp_path):
    params = {"n_slides": 1, "size": 1024, "seed": 5}
    first = ensure_dataset(tmp_path, progress=False, **params)
    image = tmp_path / first["slides"][0]["files"]["image"]
    stamp = image.stat().st_mtime_ns
    time.sleep(0.01)
    assert ensure_dataset(tmp_path, progress=False, **params) == first
    assert image.stat().st_mtime_ns == stamp  # reused, not rewritten
    (tmp_path / first["slides"][0]["files"]["mask"]).unlink()
    ensure_dataset(tmp_path, progress=False, **params)
    assert (tmp_path / first["slides"][0]["files"]["mask"]).is_file()
    changed = ensure_dataset(tmp_path, progress=False, **{**params, "label_noise": 0.5})
    assert changed["params"]["label_noise"] == 0.5
    with pytest.raises(InputError, match="unknown"):
        ensure_dataset(tmp_path, progress=False, n_slide=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 1000}, "multiple of 16"),
        ({"n_slides": 0}, "n_slides"),
        ({"label_noise": 1.5}, "label_noise"),
        ({"splits": (1, 1)}, "splits"),
        ({"layout": "tiger", "label_noise": 0.1}, "layout 'tiger' takes no"),
        ({"layout": "camelyon"}, "unknown layout"),
    ],
)
def test_bad_parameters_are_input_errors(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        generate(tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())


def test_split_assignment():
    assert _assign_splits(6, (4, 1, 1)) == ["train"] * 4 + ["val", "test"]
    assert _assign_splits(2, (4, 1, 1)) == ["train", "val"]
    assert _assign_splits(5, (1, 0, 0)) == ["train"] * 5
    assert _assign_splits(10, (8, 1, 1)).count("train") == 8


@pytest.mark.slow
def test_default_set_is_fast(tmp_path):
    start = time.perf_counter()
    manifest = generate(tmp_path, progress=False)
    assert time.perf_counter() - start < 60
    assert len(manifest["slides"]) == 6


def tree_bytes(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "extra",
    [{"unlabeled_band": 16, "label_noise": 0.3}, {"layout": "tiger"}],
    ids=["bach_band_noise", "tiger"],
)
def test_ensure_dataset_is_bit_for_bit_reproducible(tmp_path, extra):
    """Every file of two sets with the same parameters (on 2 threads and on 1) is byte-identical:
    pyramids, masks, XML, ROI PNGs and the manifest."""
    params = {"n_slides": 2, "size": 1024, "seed": 3, **extra}
    ensure_dataset(tmp_path / "a", progress=False, workers=2, **params)
    ensure_dataset(tmp_path / "b", progress=False, workers=1, **params)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert sorted(a) == sorted(b) and len(a) >= 5
    for name, data in a.items():
        assert data == b[name], name
