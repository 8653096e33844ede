"""`wsiseg segment`: whole-slide inference through the real CLI, its files and its geometry.

Checkpoints are tiny DMMN-M3 nets trained for one step by `wsiseg fit` (tests/ckpt_fixtures.py):
the 20x one reads DMMN's own 1024²-per-256² pattern; the 5x one makes runs on the real slides
cheap (16x fewer targets) while exercising the same code.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import tiffslide
import torch
from ckpt_fixtures import DMMN_5X, DMMN_20X, tiny_checkpoint

from datamodules.labels.sources import read_annotations
from datamodules.slides.slide import Slide
from datamodules.wholeslide import TileDataset, collate, plan_slide
from lightning_modules.cli.checkpoints import load_method
from lightning_modules.cli.main import main
from lightning_modules.outputs.mask_writer import GridStitcher, MaskTiffWriter
from lightning_modules.outputs.slide_files import write_geojson
from tests.cli_args import wsiseg_command

ROOT = Path(__file__).resolve().parents[1]
REAL_NEED_MPP = ["tcga-cr-7395-01a-01-ts1.svs", "CropBreastSlide.tiff", "CropBreastSlide.tif",
                 "target_image.png"]  # fmt: skip


@pytest.fixture(scope="module")
def ckpt20(tmp_path_factory, synthetic_root) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp(), synthetic_root, DMMN_20X)


@pytest.fixture(scope="module")
def ckpt5(tmp_path_factory, synthetic_root) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp(), synthetic_root, DMMN_5X)


def segment(*argv, capsys=None) -> tuple[int, str]:
    rc = main(["segment", "--no-progress", *map(str, argv)])
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


def read_mask(path: Path) -> tuple[np.ndarray, tiffslide.TiffSlide]:
    ts = tiffslide.TiffSlide(path)
    return ts.read_region((0, 0), 0, ts.dimensions, as_array=True)[..., 0], ts


def test_synthetic_slide(ckpt20, synthetic_root, tmp_path, capsys):
    slide_path = synthetic_root / "slide_02.tiff"
    out = tmp_path / "seg"
    rc, err = segment("--ckpt", ckpt20, slide_path, "--out", out, "--num-workers", "2",
                      capsys=capsys)  # fmt: skip
    assert rc == 0, err[-3000:]
    slide = Slide(slide_path)
    mask, ts = read_mask(out / "slide_02_mask.tiff")
    # the mask has the slide's geometry and mpp, and a pyramid
    assert ts.dimensions == slide.dimensions and mask.shape == slide.dimensions[::-1]
    assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(slide.mpp)
    assert ts.level_count >= 2 and ts.level_downsamples[1] == pytest.approx(4, rel=0.01)
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 4}

    # every tissue cell holds exactly what the method predicts for it; other cells are 0
    method = load_method(ckpt20)
    assert method.pad_value == 0  # DMMN zero-pads (the paper), as in its training data
    job = plan_slide(Slide(slide_path, pad_value=0), method.view, "slide_02")
    assert 0 < len(job.cells) < 64  # the synthetic slide has glass around the tissue
    data = TileDataset([job], method.view)
    picks = [0, len(job.cells) // 2, len(job.cells) - 1]
    batch = collate([data[i] for i in picks])
    with torch.inference_mode():
        expected = method.model.predict_step(batch, 0)["labels"].numpy() + 1
    for k, i in enumerate(picks):
        r, c = job.cells[i]
        got = mask[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256]
        assert (got == expected[k]).mean() > 0.999
    tissue = np.zeros((8, 8), bool)
    tissue[tuple(job.cells.T)] = True
    cells = mask.reshape(8, 256, 8, 256).transpose(0, 2, 1, 3)
    assert (cells[~tissue] == 0).all() and (cells[tissue] > 0).all()

    # the summary: areas from the mask, timing, decode counters
    info = json.loads((out / "slide_02.json").read_text())
    assert info["method"] == "DMMN" and info["tiles"] == len(job.cells)
    assert info["pad_value"] == 0
    assert info["dimensions"] == list(slide.dimensions) and info["target_mpp"] == 0.5
    px_mm2 = (0.5e-3) ** 2
    for v, name in enumerate(info["classes"], start=1):
        assert info["areas_mm2"][name] == pytest.approx((mask == v).sum() * px_mm2)
    assert info["segmented_mm2"] == pytest.approx((mask > 0).sum() * px_mm2)
    assert info["seconds_per_tile"] > 0 and info["tiles_needed"] > 0
    assert info["decode_amplification"] >= 1.0
    assert info["zoom_rate"] is None  # DMMN does not zoom

    # QuPath polygons: annotations named after predicted classes
    geo = json.loads((out / "slide_02.geojson").read_text())
    assert {f["properties"]["objectType"] for f in geo["features"]} == {"annotation"}
    predicted = {info["classes"][v - 1] for v in np.unique(mask) if v}
    assert {f["properties"]["classification"]["name"] for f in geo["features"]} <= predicted

    png = cv2.imread(str(out / "slide_02_overlay.png"))
    assert png.shape[1] == 1024 and png.shape[0] > 1024  # 2048 / 2, plus the legend strip
    assert "slide_02: " in err and "tiles/s" in err
    assert not list(out.glob("*.part*"))


def test_every_real_slide(ckpt5, real_data, tmp_path, capsys):
    """All five real files: SVS with mpp, JPEG 2000 SVS without, pyramidal TIFF with a bogus
    mpp, flat strip TIFF, PNG (the last four need --mpp)."""
    out = tmp_path / "real"
    rc, err = segment("--ckpt", ckpt5, real_data / "small_HE.svs", "--out", out, capsys=capsys)
    assert rc == 0, err[-3000:]
    listing = tmp_path / "slides.txt"  # a list, all five: the SVS done above is skipped
    listing.write_text("".join(f"{real_data / n}\n" for n in ["small_HE.svs", *REAL_NEED_MPP]))
    rc, err = segment("--ckpt", ckpt5, listing, "--out", out, "--mpp", "0.5", "--resume",
                      capsys=capsys)  # fmt: skip
    assert rc == 0, err[-3000:]
    assert "1 already done" in err
    for name, mpp in [("small_HE.svs", None)] + [(n, 0.5) for n in REAL_NEED_MPP]:
        slide = Slide(real_data / name, mpp=mpp)
        stem = Path(name).stem if "Crop" not in name else name.replace(".", "_")  # a clash
        mask, ts = read_mask(out / f"{stem}_mask.tiff")
        assert ts.dimensions == slide.dimensions, name
        assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(slide.mpp), name
        assert Slide(out / f"{stem}_mask.tiff").mpp == pytest.approx(slide.mpp)
        info = json.loads((out / f"{stem}.json").read_text())
        assert info["tiles"] > 0 and (mask > 0).any(), name  # real tissue was found
        assert (out / f"{stem}_overlay.png").stat().st_size > 0


def test_missing_mpp_fails_before_work(ckpt5, real_data, tmp_path, capsys):
    svs = real_data / "tcga-cr-7395-01a-01-ts1.svs"
    rc, err = segment("--ckpt", ckpt5, svs, "--out", tmp_path / "o", capsys=capsys)
    assert rc == 2 and "no resolution (mpp)" in err and "--mpp" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_refuse_resume_overwrite(ckpt5, synthetic_root, tmp_path, capsys):
    out = tmp_path / "seg"
    slides = [synthetic_root / "slide_00.tiff", synthetic_root / "slide_01.tiff"]
    assert segment("--ckpt", ckpt5, *slides, "--out", out, capsys=capsys)[0] == 0
    masks = [out / "slide_00_mask.tiff", out / "slide_01_mask.tiff"]
    first = [p.stat().st_mtime_ns for p in masks]

    rc, err = segment("--ckpt", ckpt5, *slides, "--out", out, capsys=capsys)
    assert rc == 2 and "output folder exists" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1

    (out / "slide_01.json").unlink()  # as if interrupted before slide_01 completed
    rc, err = segment("--ckpt", ckpt5, *slides, "--out", out, "--resume", capsys=capsys)
    assert rc == 0 and "1 already done" in err
    assert masks[0].stat().st_mtime_ns == first[0]  # skipped
    assert masks[1].stat().st_mtime_ns != first[1] and (out / "slide_01.json").is_file()

    rc, err = segment("--ckpt", ckpt5, *slides, "--out", out, "--overwrite", capsys=capsys)
    assert rc == 0 and all(p.stat().st_mtime_ns != t for p, t in zip(masks, first, strict=True))


def test_slide_without_tissue(ckpt5, tmp_path, capsys):
    blank = tmp_path / "glass.png"
    cv2.imwrite(str(blank), np.full((700, 900, 3), 242, np.uint8))
    with pytest.warns(UserWarning, match="no tissue found"):
        rc, err = segment("--ckpt", ckpt5, blank, "--mpp", "0.5", "--out", tmp_path / "o",
                          capsys=capsys)  # fmt: skip
    assert rc == 0, err
    mask, ts = read_mask(tmp_path / "o" / "glass_mask.tiff")
    assert ts.dimensions == (900, 700) and not mask.any()
    info = json.loads((tmp_path / "o" / "glass.json").read_text())
    assert info["tiles"] == 0 and info["segmented_mm2"] == 0


def test_overlap_keeps_tile_centres(ckpt5, real_data, tmp_path, capsys):
    png = real_data / "target_image.png"
    rc, err = segment("--ckpt", ckpt5, png, "--mpp", "0.5", "--overlap", "32",
                      "--out", tmp_path / "o", capsys=capsys)  # fmt: skip
    assert rc == 0, err
    mask, ts = read_mask(tmp_path / "o" / "target_image_mask.tiff")
    assert ts.dimensions == (1000, 1000) and (mask > 0).all()
    assert json.loads((tmp_path / "o" / "target_image.json").read_text())["overlap"] == 32
    rc, err = segment("--ckpt", ckpt5, png, "--mpp", "0.5", "--overlap", "5",
                      "--out", tmp_path / "p", capsys=capsys)  # fmt: skip
    assert rc == 2 and "--overlap must be an even number" in err


@pytest.mark.parametrize(
    ("hparams", "problem"),
    [
        ({"_class_path": "lightning_modules.nope.Nope"}, "unknown method 'lightning_modules.nope"),
        ({"_class_path": "torch.nn.Linear"}, "unknown method 'torch.nn.Linear'"),
        ({}, "does not say which method made it"),
    ],
)
def test_unknown_method(hparams, problem, tmp_path, real_data, capsys):
    ckpt = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, ckpt)
    png = real_data / "target_image.png"
    rc, err = segment("--ckpt", ckpt, png, "--mpp", "0.5", "--out", tmp_path / "o", capsys=capsys)
    assert rc == 2 and problem in err and len(err.strip().splitlines()) == 1


def test_stitcher_resamples_to_level0(tmp_path):
    """Slide at 0.25 um/px, model at 0.5: every model pixel covers 2x2 level-0 pixels; cells
    that never arrive stay 0; the file is exactly that, at every pyramid level."""
    cell, grid = 16, (3, 2)  # 48 x 32 model pixels -> 96 x 64 level-0, cropped to 90 x 61
    writer = MaskTiffWriter(tmp_path / "m.tiff", (90, 61), 0.25, tile=32)
    stitcher = GridStitcher(writer, grid, cell, scale=2.0)
    rng = np.random.default_rng(0)
    model = np.zeros((32, 48), np.uint8)
    for r, c in [(0, 0), (0, 2), (1, 1)]:  # row-major, (0, 1), (1, 0), (1, 2) missing
        tile = rng.integers(1, 5, (cell, cell), dtype=np.uint8)
        model[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = tile
        stitcher.put(r, c, tile)
    stitcher.finish()
    writer.close()
    expected = model.repeat(2, 0).repeat(2, 1)[:61, :90]
    got = tifffile.imread(tmp_path / "m.tiff")
    assert got.shape == (61, 90) and np.array_equal(got, expected)
    assert np.array_equal(writer.counts[:5], np.bincount(expected.ravel(), minlength=5))
    with tifffile.TiffFile(tmp_path / "m.tiff") as tf:
        level = tf.series[0].levels[1].asarray()
    assert np.array_equal(level, expected[2::4, 2::4][: 61 // 4, : 90 // 4])


def test_geojson_polygons_with_holes(tmp_path):
    """A ring of class 2 around a block of class 1, and a bar of class 3, at downsample 4:
    polygons in level-0 coordinates that the suite's own GeoJSON reader takes back."""
    low = np.zeros((60, 80), np.uint8)
    low[10:40, 10:40] = 2
    low[20:30, 20:30] = 1
    low[45:55, 60:75] = 3
    names, colors = ["normal", "benign", "in situ", "invasive"], [(0, 0, 0)] * 4
    write_geojson(tmp_path / "p.geojson", low, 4, names, colors)
    by = {r.label: r.polygon for r in read_annotations(tmp_path / "p.geojson")}
    assert set(by) == {"normal", "benign", "in situ"}
    # vertices are boundary-pixel centres, (j + 0.5) * 4 in level-0 pixels
    assert by["in situ"].bounds == (242.0, 182.0, 298.0, 218.0)
    assert by["normal"].area == pytest.approx((9 * 4) ** 2)
    assert len(by["benign"].interiors) == 1
    # (the hole's ring cuts its four corners: half a pixel each)
    assert by["benign"].area == pytest.approx((29**2 - 11**2 + 2) * 16)
    assert not by["benign"].intersects(by["normal"].representative_point())


def test_writer_abort_leaves_no_file(tmp_path):
    writer = MaskTiffWriter(tmp_path / "m.tiff", (2000, 3000), 0.5)
    writer.write(np.ones((700, 2000), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ddp_two_cpu_processes(ckpt20, synthetic_root, tmp_path):
    """Slides, not tiles, are split over 2 gloo ranks; every slide is written exactly once."""
    out = tmp_path / "seg"
    cmd = wsiseg_command()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(
        [*cmd, "segment", "--ckpt", str(ckpt20), str(synthetic_root), "--out", str(out),
         "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--num-workers", "0",
         "--no-progress"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    infos = [json.loads((out / f"slide_0{i}.json").read_text()) for i in range(3)]
    assert {i["rank"] for i in infos} == {0, 1} and {i["world_size"] for i in infos} == {2}
    assert "Traceback" not in r.stderr
    for i in range(3):
        mask, ts = read_mask(out / f"slide_0{i}_mask.tiff")
        assert ts.dimensions == (2048, 2048) and (mask > 0).any()
