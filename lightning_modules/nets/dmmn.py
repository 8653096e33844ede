"""Deep Multi-Magnification Networks (Ho et al. 2021) as plain ``nn.Module``s.

Calling convention (one for all four nets): ``net(x)`` with ``x`` a float tensor
``(B, V, 3, H, W)`` holding the views in the order of :data:`VIEWS` = (20x, 10x, 5x), all the same
size and centred on the same point (20x = centre 256² of a 1024² field, 10x = centre 512²
downsampled x2, 5x = the whole field downsampled x4).  The output is ``(B, num_classes, H, W)``
logits for the 20x view.  DSMN-S2 reads view 0 only and also accepts V = 1.  One stacked tensor
collates, moves between devices and crosses DDP as one object.

The four variants and the choices made where the paper is silent are described in docs/dmmn.md.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_modules.nets.blocks import (
    Decoder,
    Encoder,
    Head,
    Upsampler,
    centre_crop,
    init_weights,
    scaled_widths,
)

VIEWS = ("20x", "10x", "5x")
"""View order along dim 1 of the input; each view covers twice the field of the one before."""

Arch = Literal["s2", "ms", "m2s", "m3"]
M3Wiring = Literal["release", "figure"]
M3_WIRINGS = ("release", "figure")
"""DMMN-M3 wirings: the authors' released network (default: it made the paper's numbers) and
the reading of the paper's figure (same-level maps brought up by CONV_TR upsamplers)."""


class DMMNNet(nn.Module):
    """Shared input checks and hyper-parameters of the DMMN family.

    ``width`` scales every branch's widths ``(32, 64, 128, 256, 512)`` (rounded, at least 1), so a
    CPU run can use e.g. 0.25 with the same topology.
    """

    arch: str = ""
    min_views = 3  # views the net reads; S2 needs only the 20x one

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"need num_classes >= 1 and in_channels >= 1, got {num_classes}, {in_channels}"
            )
        self.num_classes = num_classes
        self.width = width
        self.in_channels = in_channels
        self.widths = scaled_widths(width)
        self.depth = len(self.widths) - 1  # number of poolings / up steps
        self._crops: list[tuple[int, int]] = []  # (downsampling of the map, crop factor)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: 16 for the four poolings, and every centre crop
        by ``f`` of a map at 1/``d`` of the input must start on a whole pixel (``2 d f``)."""
        return math.lcm(2**self.depth, *(2 * d * f for d, f in self._crops))

    def split_views(self, x: Tensor) -> tuple[Tensor, ...]:
        """Validate ``x`` (B, V, C, H, W) and return its views as (B, C, H, W) tensors."""
        if not isinstance(x, Tensor) or x.ndim != 5:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects a (B, views, {self.in_channels}, H, W)"
                f" tensor with views ordered {VIEWS}, got {got}"
            )
        _, v, c, h, w = x.shape
        if v != 3 and not (self.min_views == 1 and v == 1):
            raise ValueError(
                f"{type(self).__name__} expects 3 views {VIEWS}"
                f"{' (or 1)' if self.min_views == 1 else ''}, got {v}"
            )
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels per view, got {c}")
        m = self.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise ValueError(f"{type(self).__name__} needs H and W divisible by {m}, got {h}x{w}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point tensor, got {x.dtype}")
        return x.unbind(dim=1)


class DSMNS2(DMMNNet):
    """DSMN-S2: the single-magnification baseline, one (halved) U-Net on the 20x view."""

    arch = "s2"
    min_views = 1

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3):
        super().__init__(num_classes, width, in_channels)
        w = self.widths
        self.encoder = Encoder(in_channels, w)
        self.decoder = Decoder(w)
        self.head = Head(w[0], w[0], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x20 = self.split_views(x)[0]
        return self.head(self.decoder(self.encoder(x20))[-1])


class DMMNMS(DMMNNet):
    """DMMN-MS: multi-encoder, single decoder, single concatenation.

    Three encoders; the 10x / 5x bottlenecks are centre-cropped (x2 / x4) to the 20x footprint,
    upsampled by CONV_TR_2 / CONV_TR_4 and concatenated with the 20x bottleneck.  The one decoder
    uses the 20x encoder's skips only (the coarse views carry context, not detail).
    """

    arch = "ms"

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3):
        super().__init__(num_classes, width, in_channels)
        w, n = self.widths, self.depth
        self.enc20, self.enc10, self.enc5 = (Encoder(in_channels, w) for _ in range(3))
        self.up10, self.up5 = Upsampler(w[n], 2), Upsampler(w[n], 4)
        self.decoder = Decoder(w, extra_ch=[2 * w[n]] + [0] * (n - 1))
        self.head = Head(w[0], w[0], num_classes)
        init_weights(self)
        self._crops = [(2**n, 2), (2**n, 4)]

    def forward(self, x: Tensor) -> Tensor:
        x20, x10, x5 = self.split_views(x)
        f20 = self.enc20(x20)
        b10 = self.up10(centre_crop(self.enc10(x10)[-1], 2))
        b5 = self.up5(centre_crop(self.enc5(x5)[-1], 4))
        extras = [[b10, b5]] + [[] for _ in range(self.depth - 1)]
        return self.head(self.decoder(f20, extras)[-1])


class DMMNM2S(DMMNNet):
    """DMMN-M2S: multi-encoder, multi-decoder, single concatenation.

    Three full U-Nets; the last decoder maps of the 10x / 5x nets are centre-cropped (x2 / x4),
    brought back to H x W by CONV_TR_2 / CONV_TR_4 and concatenated with the 20x one before the
    head (conv3x3 3w0 -> w0 + ReLU, conv1x1 -> classes).
    """

    arch = "m2s"

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3):
        super().__init__(num_classes, width, in_channels)
        w = self.widths
        self.enc20, self.enc10, self.enc5 = (Encoder(in_channels, w) for _ in range(3))
        self.dec20, self.dec10, self.dec5 = (Decoder(w) for _ in range(3))
        self.up10, self.up5 = Upsampler(w[0], 2), Upsampler(w[0], 4)
        self.head = Head(3 * w[0], w[0], num_classes)
        init_weights(self)
        self._crops = [(1, 2), (1, 4)]

    def forward(self, x: Tensor) -> Tensor:
        x20, x10, x5 = self.split_views(x)
        d20 = self.dec20(self.enc20(x20))[-1]
        d10 = self.up10(centre_crop(self.dec10(self.enc10(x10))[-1], 2))
        d5 = self.up5(centre_crop(self.dec5(self.enc5(x5))[-1], 4))
        return self.head(torch.cat([d20, d10, d5], dim=1))


class DMMNM3(DMMNNet):
    """DMMN-M3: multi-encoder, multi-decoder, multi-concatenation (the paper's best model).

    Before each up step of the 20x decoder, its state is concatenated with the 10x and 5x decoder
    maps that cover the same footprint at the same resolution:

    * ``m3_wiring="release"`` (default, the authors' released code, which produced the paper's
      numbers): no upsamplers; the 10x map is taken one decoder level finer and the 5x map two
      levels finer, so cropping alone matches the resolution; at the last up step there is no
      finer 5x level, so it gets the 10x term only.
    * ``m3_wiring="figure"`` (a reading of the paper's figure): the 10x / 5x decoder maps of the
      *same level* are centre-cropped (x2 / x4) and upsampled by CONV_TR_2 / CONV_TR_4, at all
      four up steps.  The 10x / 5x decoders stop one level early (their last level would be
      unused, leaving parameters without gradient under DDP).
    """

    arch = "m3"

    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        in_channels: int = 3,
        m3_wiring: M3Wiring = "release",
    ):
        super().__init__(num_classes, width, in_channels)
        if m3_wiring not in M3_WIRINGS:
            raise ValueError(f"m3_wiring must be one of {M3_WIRINGS}, got {m3_wiring!r}")
        w, n = self.widths, self.depth
        self.m3_wiring = m3_wiring
        self.enc20, self.enc10, self.enc5 = (Encoder(in_channels, w) for _ in range(3))
        if m3_wiring == "release":
            # Step k reads the 10x state k+1 and (while it exists) the 5x state k+2.
            extra = [w[n - k - 1] + (w[n - k - 2] if k + 2 <= n else 0) for k in range(n)]
            self.dec10, self.dec5 = Decoder(w), Decoder(w)
            self._crops = [(2 ** (n - k - 1), 2) for k in range(n)]
            self._crops += [(2 ** (n - k - 2), 4) for k in range(n - 1)]
        else:
            extra = [2 * w[n - k] for k in range(n)]
            self.dec10, self.dec5 = Decoder(w, depth=n - 1), Decoder(w, depth=n - 1)
            self.ups10 = nn.ModuleList(Upsampler(w[n - k], 2) for k in range(n))
            self.ups5 = nn.ModuleList(Upsampler(w[n - k], 4) for k in range(n))
            self._crops = [(2 ** (n - k), f) for k in range(n) for f in (2, 4)]
        self.dec20 = Decoder(w, extra_ch=extra)
        self.head = Head(w[0], w[0], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x20, x10, x5 = self.split_views(x)
        s10 = self.dec10(self.enc10(x10))
        s5 = self.dec5(self.enc5(x5))
        n = self.depth
        if self.m3_wiring == "release":
            extras = [
                [centre_crop(s10[k + 1], 2)] + ([centre_crop(s5[k + 2], 4)] if k + 2 <= n else [])
                for k in range(n)
            ]
        else:
            extras = [
                [self.ups10[k](centre_crop(s10[k], 2)), self.ups5[k](centre_crop(s5[k], 4))]
                for k in range(n)
            ]
        return self.head(self.dec20(self.enc20(x20), extras)[-1])


ARCHS: dict[str, type[DMMNNet]] = {c.arch: c for c in (DSMNS2, DMMNMS, DMMNM2S, DMMNM3)}


def build_dmmn(
    arch: Arch,
    num_classes: int,
    width: float = 1.0,
    in_channels: int = 3,
    m3_wiring: M3Wiring = "release",
) -> DMMNNet:
    """Build one of ``"s2" | "ms" | "m2s" | "m3"``; ``m3_wiring`` is read by ``"m3"`` only."""
    if arch not in ARCHS:
        raise ValueError(f"unknown DMMN arch {arch!r}; choose one of {sorted(ARCHS)}")
    if m3_wiring not in M3_WIRINGS:
        raise ValueError(f"m3_wiring must be one of {M3_WIRINGS}, got {m3_wiring!r}")
    if arch == "m3":
        return DMMNM3(num_classes, width, in_channels, m3_wiring=m3_wiring)
    return ARCHS[arch](num_classes, width, in_channels)
