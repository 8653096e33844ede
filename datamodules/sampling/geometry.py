"""One tile geometry: what a method reads, what it predicts, and the grid its predictions tile.

A method reads ``input``² pixels at ``mpp`` and predicts ``output``² pixels centred in them (a
net with valid convolutions predicts less than it reads). Predictions sit on a grid of step
``stride``; each keeps the centre ``stride``² of its output (``stride < output``: tiles overlap
and the seams are cut off, as ``wsiseg segment --overlap`` does). Grid cell ``(row, col)``
covers level-0 ``[col * s, (col + 1) * s) x [row * s, (row + 1) * s)``, ``s = stride * mpp /
slide mpp``. The training grid, the whole-slide plan, the stitcher and the base task's logits
all derive their sizes from here, so they cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from numbers import Integral, Real

from datamodules.errors import InputError


def grid_shape(dimensions: tuple[float, float], cell: float) -> tuple[int, int]:
    """(rows, cols) of cells of level-0 side `cell` covering `dimensions` (w, h); at least 1."""
    w, h = dimensions
    return max(1, math.ceil(h / cell - 1e-6)), max(1, math.ceil(w / cell - 1e-6))


@dataclass(frozen=True)
class TileGeometry:
    """Sides in pixels at `mpp`; `stride` defaults to `output` (outputs abut: no gap, no overlap).

    Refused: non-positive sizes, an output larger than the input or not centred on a whole pixel
    (``input - output`` odd), a stride larger than the output (gaps between predictions).
    """

    input: int
    output: int
    mpp: float
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.stride is None:
            object.__setattr__(self, "stride", self.output)
        for name in ("input", "output", "stride"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
                raise InputError(None, f"tile {name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if not (isinstance(self.mpp, Real) and self.mpp > 0):
            raise InputError(None, f"tile mpp must be positive, got {self.mpp!r}")
        if self.output > self.input:
            raise InputError(None, f"tile output {self.output} is larger than input {self.input}")
        if (self.input - self.output) % 2:
            raise InputError(None, f"tile input {self.input} - output {self.output} must be even")
        if self.stride > self.output:
            raise InputError(
                None, f"tile stride {self.stride} > output {self.output} leaves gaps between tiles"
            )
        if (self.output - self.stride) % 2:
            raise InputError(None, f"tile output {self.output} - stride {self.stride} must be even")

    # ------------------------------------------------------------------ inside one tile
    @property
    def offset(self) -> int:
        """Pixels from the input's edge to the output's (the output is centred)."""
        return (self.input - self.output) // 2

    @property
    def keep_offset(self) -> int:
        """Pixels from the output's edge to the kept centre ``stride``²."""
        return (self.output - self.stride) // 2

    def with_margin(self, margin: int) -> TileGeometry:
        """The same grid with `margin` more pixels read and predicted on each side (cut off)."""
        m = int(margin)
        return replace(self, input=self.input + 2 * m, output=self.output + 2 * m)

    # ------------------------------------------------------------------ on a slide
    def footprint(self, slide_mpp: float) -> float:
        """Level-0 side of a grid cell (the grid's level-0 stride)."""
        return self.stride * self.mpp / slide_mpp

    def scale(self, slide_mpp: float) -> float:
        """Level-0 pixels per model pixel."""
        return self.footprint(slide_mpp) / self.stride

    def grid(self, dimensions: tuple[int, int], slide_mpp: float) -> tuple[int, int]:
        """(rows, cols) of the grid over a slide of level-0 `dimensions` (w, h)."""
        return grid_shape(dimensions, self.footprint(slide_mpp))

    def output_corner(self, row: int, col: int, slide_mpp: float) -> tuple[float, float]:
        """Level-0 (x, y) top-left of the output of cell (row, col): the location views take."""
        side = self.footprint(slide_mpp)
        shift = self.keep_offset * self.mpp / slide_mpp
        return (col * side - shift, row * side - shift)
