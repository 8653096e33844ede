"""Slide: the five real files, level choice, padding, resampling geometry, pickling."""

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from datamodules.errors import InputError
from datamodules.slides.slide import Slide, mpp_of

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present")


@needs_real
def test_svs_with_mpp():
    s = Slide(REAL / "small_HE.svs")
    assert s.dimensions == (2220, 2967)
    assert s.level_count == 1
    assert s.mpp == pytest.approx(0.499, abs=1e-3)
    assert s.vendor == "aperio"
    assert {"label", "macro", "thumbnail"} <= set(s.associated_images)


@needs_real
def test_jpeg2000_svs_needs_mpp():
    path = REAL / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(InputError, match="no resolution"):
        Slide(path)
    s = Slide(path, mpp=0.25)
    assert s.level_count == 2
    # 4x coarser than level 0: level 1 (downsample 2) is the coarsest with enough resolution
    assert s.best_level(1.0) == 1
    assert s.best_level(0.25) == 0
    region = s.read((1000, 1000), (128, 128), mpp=1.0)
    assert region.shape == (128, 128, 3) and region.dtype == np.uint8
    assert region.std() > 5  # real tissue, not padding


@needs_real
def test_96dpi_tiff_is_refused_unless_told():
    path = REAL / "CropBreastSlide.tiff"
    with pytest.raises(InputError, match="implausible resolution 264.6"):
        Slide(path)
    s = Slide(path, mpp=0.5)
    assert s.level_count == 6
    assert s.best_level(0.5) == 0
    assert s.best_level(2.0) == 2  # downsample 4.002 counts as 4 (0.1 % tolerance)
    assert s.best_level(1.999) == 1


@needs_real
@pytest.mark.parametrize("mpp,level", [(1.0, 1), (2.0, 2), (4.0, 2)])
def test_pyramid_and_flat_tiff_agree(mpp, level):
    """The same region from the pyramid (a coarse level, downsample 2.001...) and from the flat
    TIFF (level 0, area-averaged) agrees: level geometry is exact at non-integer downsamples."""
    pyr = Slide(REAL / "CropBreastSlide.tiff", mpp=0.5)
    flat = Slide(REAL / "CropBreastSlide.tif", mpp=0.5)
    assert flat.level_count == 1 and pyr.best_level(mpp) == level
    a = pyr.read((400, 300), (200, 150), mpp=mpp).astype(float)
    b = flat.read((400, 300), (200, 150), mpp=mpp).astype(float)
    assert np.abs(a - b).mean() < 5  # a one-pixel shift gives ~15


@needs_real
def test_near_integer_level_is_copied_not_warped():
    """CropBreast's 4x level has downsample 4.0023: a 256² read at 4x is its level box exactly,
    as tiffslide reads it; a read whose drift exceeds NEAR_INTEGER_SHIFT (0.5 px) still warps."""
    import math

    import tiffslide

    from datamodules.slides.slide import NEAR_INTEGER_SHIFT, _near_integer_box

    path = REAL / "CropBreastSlide.tiff"
    s, ts = Slide(path, mpp=0.5), tiffslide.TiffSlide(path)
    ds = s.level_downsamples[2]
    assert ds == pytest.approx(4.0023, abs=1e-4) and NEAR_INTEGER_SHIFT == 0.5
    for x, y in ((400, 300), (1000, 500), (0, 0)):
        got = s.read((x, y), (240, 200), mpp=2.0)
        loc = (math.ceil(x // 4 * ds - 1e-9), math.ceil(y // 4 * ds - 1e-9))
        box = ts.read_region(loc, 2, (240, 200), as_array=True)[..., :3]
        assert np.array_equal(got, box)
    # 1000 px at 2x from level 1 (downsample 2.0011) drifts 0.55 px over the output: warped
    ds1 = s.level_downsamples[1]
    assert 1000 * (1 - 2 / ds1) > NEAR_INTEGER_SHIFT
    assert _near_integer_box((0, 0), (2.0, 2.0), ds1, (1000, 600)) is None
    assert _near_integer_box((0, 0), (2.0, 2.0), ds1, (400, 400)) == (0, 0)
    wide = s.read((0, 0), (1000, 600), mpp=1.0)
    box1 = ts.read_region((0, 0), 1, (1000, 600), as_array=True)[..., :3]
    assert not np.array_equal(wide, box1)
    assert np.abs(wide.astype(int) - box1).mean() < 5  # the same place, resampled
    # off the nominal grid (x = 401 is not a multiple of 4): warped, as at an exact level
    assert _near_integer_box((401, 300), (4.0, 4.0), ds, (240, 200)) is None


def _pyramid(tmp_path, base):
    levels = [base]
    for _ in range(3):
        levels.append(cv2.resize(levels[-1], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    path = tmp_path / "pyr.tif"
    kw = dict(photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            base,
            subifds=3,
            tile=(256, 256),
            resolution=(2e4, 2e4),
            resolutionunit="CENTIMETER",
            **kw,
        )
        for level in levels[1:]:
            tw.write(level, subfiletype=1, tile=(64, 64), **kw)
    return path


@pytest.mark.parametrize(
    "mpp,loc,level,tol",
    [
        (1.0, (100, 200), 1, 0.01),
        (2.0, (100, 200), 2, 0.6),
        (4.0, (0, 0), 3, 0.6),
        (1.5, (37, 11), 1, 2.0),
        (3.0, (5, 5), 2, 4.0),
    ],
)
def test_pyramid_levels_match_level0(tmp_path, mpp, loc, level, tol):
    """Reads from a coarse level equal area-averaged level-0 reads (aligned: exactly)."""
    rng = np.random.default_rng(0)
    base = cv2.resize(
        rng.integers(0, 255, (64, 64, 3), np.uint8), (1024, 1024), interpolation=cv2.INTER_CUBIC
    )
    pyr = Slide(_pyramid(tmp_path, base))
    tifffile.imwrite(
        tmp_path / "flat.tif",
        base,
        photometric="rgb",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    flat = Slide(tmp_path / "flat.tif")
    assert pyr.level_downsamples == [1.0, 2.0, 4.0, 8.0]
    assert pyr.best_level(mpp) == level
    a = pyr.read(loc, (100, 100), mpp=mpp).astype(float)
    b = flat.read(loc, (100, 100), mpp=mpp).astype(float)
    assert np.abs(a - b).mean() < tol


@needs_real
def test_plain_png():
    path = REAL / "target_image.png"
    with pytest.raises(InputError, match="no resolution"):
        Slide(path)
    s = Slide(path, mpp=0.5)
    assert s.dimensions == (1000, 1000) and s.level_count == 1
    full = s.read((0, 0), (1000, 1000))
    half = s.read((0, 0), (500, 500), mpp=1.0)
    block = full.reshape(500, 2, 500, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(half - block).max() <= 1  # area averaging = anti-aliased


def test_padding_and_centre(tmp_path):
    img = np.full((100, 120, 3), 10, np.uint8)
    p = tmp_path / "flat.tif"
    tifffile.imwrite(p, img, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    s = Slide(p)
    assert s.mpp == pytest.approx(0.5)
    out = s.read((-10, -20), (40, 40), pad_value=7)
    assert (out[:20] == 7).all() and (out[:, :10] == 7).all()
    assert (out[20:, 10:] == 10).all()
    centred = s.read(center=(0, 0), size=(40, 40), pad_value=0)
    assert (centred[:20, :20] == 0).all() and (centred[20:, 20:] == 10).all()
    # entirely outside: all padding, default pad value 255 (white glass)
    assert (s.read((500, 500), (8, 8)) == 255).all()


def test_subpixel_geometry(tmp_path):
    """A vertical edge lands where the level-0 geometry says, at any output mpp."""
    img = np.zeros((64, 256, 3), np.uint8)
    img[:, 100:] = 200
    p = tmp_path / "edge.tif"
    tifffile.imwrite(p, img, photometric="rgb")
    s = Slide(p, mpp=1.0)
    for mpp in (1.0, 2.0, 4.0, 2.5, 3.3):
        row = s.read((0, 0), (int(256 / mpp), 4), mpp=mpp)[2, :, 0].astype(float)
        edge = np.argmax(row > 100)
        assert abs(edge * mpp - 100) <= mpp + 1e-6, (mpp, edge)
    # nearest keeps the label values; area mixes them at the edge
    labels = s.read((0, 0), (77, 4), mpp=3.3, resample="nearest", raw=True)
    assert set(np.unique(labels)) <= {0, 200}


def test_magnification():
    assert mpp_of(20) == 0.5 and mpp_of(5) == 2.0


def test_pickle_reopens_lazily(tmp_path):
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    s = Slide(p, mpp=0.5)
    s.read((0, 0), (8, 8))
    assert s._handle is not None
    t = pickle.loads(pickle.dumps(s))
    assert t._handle is None and t.read((0, 0), (8, 8)).shape == (8, 8, 3)


@pytest.mark.parametrize(
    "content,name,match",
    [
        (b"", "empty.svs", "empty"),
        (b"this is not a slide\n", "notes.svs", "not a slide"),
        (b"\x89PNG\r\n\x1a\nbroken", "broken.png", "cannot decode"),
    ],
)
def test_bad_files(tmp_path, content, name, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        Slide(p, mpp=0.5)
    assert name in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        Slide(tmp_path / "nope.svs")


def test_truncated_tiff(tmp_path):
    p = tmp_path / "full.tif"
    data = np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8)
    tifffile.imwrite(
        p,
        data,
        photometric="rgb",
        tile=(128, 128),
        compression="zlib",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    raw = p.read_bytes()
    cut = tmp_path / "cut.tif"
    # keep the header and IFD (written first by tifffile? no: keep the first half of the tiles)
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as info:
        Slide(cut).read((0, 0), (512, 512))
    assert "cut.tif" in str(info.value)


def test_implausible_override(tmp_path):
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="outside"):
        Slide(p, mpp=300)
