"""`TileGeometry`: one validated description of input, output, stride and mpp, and a method whose
net predicts less than it reads (96² in, the centre 64² out) segmenting a slide through the
whole-slide path (plan -> dataset -> predict -> stitch -> mask TIFF) without gaps or overlaps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from datamodules.errors import InputError
from datamodules.sampling.geometry import TileGeometry, grid_shape
from datamodules.slides.slide import Slide
from datamodules.views.base import View
from datamodules.views.multimag import MultiMagView
from datamodules.views.single import SingleView
from lightning_modules.base import SegmentationTask
from lightning_modules.cli.checkpoints import TrainedMethod
from lightning_modules.cli.commands.segment import build_parser, run


@dataclass(frozen=True)
class CentreView(View):
    """Reads ``size + context`` pixels around a ``size``² target (a valid-convolution method)."""

    size: int = 64
    magnification: float = 20.0
    context: int = 32

    @property
    def geometry(self) -> TileGeometry:
        return TileGeometry(self.size + self.context, self.size, self.mpp)

    @property
    def num_views(self) -> int:
        return 1

    def read(self, slide, labels, location):
        g = self.geometry
        shift = g.offset * self.mpp / slide.mpp
        corner = (location[0] - shift, location[1] - shift)
        image = slide.read(corner, (g.input, g.input), mpp=self.mpp)
        return image[None], labels.read(location, (g.output, g.output), self.mpp)


class RedQuartileCrop(nn.Module):
    """Class = red value // 64 (exact, no floating-point ties), output = the centre crop."""

    def __init__(self, crop: int):
        super().__init__()
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = torch.round((x[:, 0] * 0.25 + 0.5) * 255)  # undo the base task's normalisation
        logits = nn.functional.one_hot((red // 64).long().clamp(0, 3), 4).permute(0, 3, 1, 2)
        c = self.crop
        return logits.float()[..., c:-c, c:-c]


class CentreMethod(SegmentationTask):
    def __init__(self, crop: int = 16):
        super().__init__(num_classes=4, num_overlays=0)

    def configure_models(self) -> None:
        self.net = RedQuartileCrop(self.hparams.crop)


def test_geometry_is_validated_once():
    g = TileGeometry(96, 64, 0.5)
    assert (g.stride, g.offset, g.keep_offset) == (64, 16, 0)
    assert g.footprint(0.25) == 128.0 and g.scale(0.25) == 2.0
    assert g.grid((1000, 700), 0.5) == (11, 16)  # 700 / 64 -> 11 rows, 1000 / 64 -> 16 columns
    assert g.output_corner(2, 3, 0.5) == (192.0, 128.0)
    m = g.with_margin(8)
    assert (m.input, m.output, m.stride, m.keep_offset) == (112, 80, 64, 8)
    assert m.output_corner(2, 3, 0.5) == (184.0, 120.0)
    assert grid_shape((1024, 1024), 256.0) == (4, 4) and grid_shape((1, 1), 256.0) == (1, 1)
    for args, problem in [
        ((0, 0, 0.5), "tile input must be a positive integer, got 0"),
        ((64.5, 64, 0.5), "tile input must be a positive integer, got 64.5"),
        ((64, 96, 0.5), "tile output 96 is larger than input 64"),
        ((96, 63, 0.5), "tile input 96 - output 63 must be even"),
        ((96, 64, 0.5, 80), "tile stride 80 > output 64 leaves gaps between tiles"),
        ((96, 64, 0.5, 61), "tile output 64 - stride 61 must be even"),
        ((96, 64, 0.0), "tile mpp must be positive, got 0.0"),
    ]:
        with pytest.raises(InputError) as err:
            TileGeometry(*args)
        assert str(err.value) == problem


def test_views_describe_their_geometry():
    assert SingleView(256, 20.0).geometry == TileGeometry(256, 256, 0.5, 256)
    assert MultiMagView(256, 5.0).geometry == TileGeometry(256, 256, 2.0)
    assert CentreView().geometry == TileGeometry(96, 64, 0.5)


def _segment(png: Path, out: Path, mpp: float, overlap: int = 0, workers: int = 0) -> np.ndarray:
    args = build_parser().parse_args(
        [str(png), "--ckpt", "none", "--out", str(out), "--mpp", str(mpp), "--all-tiles",
         "--no-progress", "--num-workers", str(workers), "--accelerator", "cpu",
         "--overlap", str(overlap)]
    )  # fmt: skip
    method = TrainedMethod(CentreMethod(), CentreView(), "tests.CentreMethod", Path("none"), None)
    assert run(args, [png], method, out) == 0
    return tifffile.imread(out / f"{png.stem}_mask.tiff")


@pytest.mark.parametrize(("mpp", "overlap"), [(0.5, 0), (0.25, 0), (0.5, 16)])
def test_output_smaller_than_input_tiles_the_slide(synthetic_root, tmp_path, mpp, overlap):
    """1000 x 700 pixels (not a multiple of 64): every level-0 pixel holds exactly the class of
    its own red value, so no tile is shifted, missing or written over another (a wrong crop or
    read offset moves the texture; a gap leaves 0); the mask has the slide's size."""
    rgb = Slide(synthetic_root / "slide_00.tiff").read((500, 600), (1000, 700))
    png = tmp_path / "crop.png"
    cv2.imwrite(str(png), rgb[..., ::-1])
    mask = _segment(png, tmp_path / "seg", mpp, overlap)
    assert mask.shape == (700, 1000)
    # the model's grid at 0.5 um/px, sampled back to level 0 by nearest neighbour
    model = Slide(png, mpp=mpp).read((0, 0), (round(1000 * mpp / 0.5), round(700 * mpp / 0.5)),
                                     mpp=0.5)  # fmt: skip
    expected = model[..., 0] // 64 + 1
    f = round(0.5 / mpp)
    expected = expected.repeat(f, 0).repeat(f, 1)[:700, :1000]
    assert len(np.unique(expected)) >= 3  # the check has texture to catch a shift
    assert np.array_equal(mask, expected)


def test_overlap_needs_a_view_whose_size_sets_both(tmp_path):
    from datamodules.wholeslide import TileDataset, plan_slide

    png = tmp_path / "glass.png"
    cv2.imwrite(str(png), np.full((300, 300, 3), 200, np.uint8))

    @dataclass(frozen=True)
    class FixedInput(CentreView):
        @property
        def geometry(self) -> TileGeometry:
            return TileGeometry(128, self.size, self.mpp)

    job = plan_slide(Slide(png, mpp=0.5), FixedInput(), "g", use_tissue=False, margin=8)
    with pytest.raises(InputError, match="its size does not set both"):
        TileDataset([job], FixedInput())
