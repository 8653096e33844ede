"""Building blocks shared by every DMMN variant (Ho et al. 2021), written once.

The paper's U-Net is the original one with halved widths and without batch norm: every conv is
conv3x3 (pad 1) + ReLU, two per level, max-pool 2 down, and ConvTranspose2d(k3, s2, p1,
output_padding 1) + ReLU up.  The multi-magnification variants differ only in *where* they
concatenate features of the 10x / 5x branches, so the branches, the crop that aligns their
footprints with the 20x one, and the upsampler are factored out here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

BASE_WIDTHS = (32, 64, 128, 256, 512)
"""U-Net widths halved (64..1024 -> 32..512), as in the paper and its released code."""


def scaled_widths(width: float = 1.0) -> tuple[int, ...]:
    """Widths ``round(width * BASE_WIDTHS)`` (at least 1): one knob that keeps the net's shape."""
    if not width > 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return tuple(max(1, round(width * w)) for w in BASE_WIDTHS)


class ConvReLU(nn.Sequential):
    """conv3x3 (pad 1) + ReLU: the only conv layer the paper uses (no batch norm)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True)
        )


class DoubleConv(nn.Sequential):
    """Two ConvReLU layers: one U-Net level."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvReLU(in_ch, out_ch), ConvReLU(out_ch, out_ch))


class ConvTrReLU(nn.Sequential):
    """ConvTranspose2d(k3, s2, p1, output_padding 1) + ReLU: exact x2 upsampling (CONV_TR)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
        )


class Upsampler(nn.Sequential):
    """CONV_TR_k: log2(k) ConvTrReLU layers in sequence, channels kept (CONV_TR_4 = 2 x CONV_TR_2).

    Learned upsampling of a centre-cropped coarse-magnification map back to the 20x grid.
    """

    def __init__(self, channels: int, factor: int):
        steps = round(math.log2(factor))
        if factor < 2 or 2**steps != factor:
            raise ValueError(f"upsampling factor must be a power of 2 >= 2, got {factor}")
        super().__init__(*(ConvTrReLU(channels, channels) for _ in range(steps)))
        self.factor = factor


def centre_crop(x: Tensor, factor: int) -> Tensor:
    """Central ``1/factor`` of the spatial extent of ``x`` (B, C, H, W).

    A 10x map covers twice the 20x field and a 5x map four times, both centred on the same point,
    so the central half / quarter has the 20x patch's footprint.  The crop must start on a whole
    pixel, otherwise the footprints would be misaligned by half a pixel: the extent must be
    divisible by ``2 * factor`` (for factor 2, 4 and other powers of 2).
    """
    h, w = x.shape[-2:]
    out_h, out_w = h // factor, w // factor
    for size, out in ((h, out_h), (w, out_w)):
        if size % factor or (size - out) % 2:
            raise ValueError(
                f"cannot centre-crop a {h}x{w} map by {factor} on whole pixels; "
                f"the input size must be a larger multiple (see DMMNNet.size_multiple)"
            )
    top, left = (h - out_h) // 2, (w - out_w) // 2
    return x[..., top : top + out_h, left : left + out_w]


class Encoder(nn.Module):
    """U-Net contracting path: returns ``[e0, e1, ..., e_bottleneck]``.

    ``e_i`` has ``widths[i]`` channels at 1/2**i of the input size; all but the last are the skip
    connections, the last is the bottleneck (no pooling after it).
    """

    def __init__(self, in_ch: int, widths: Sequence[int]):
        super().__init__()
        ins = [in_ch, *widths[:-1]]
        self.levels = nn.ModuleList(DoubleConv(a, b) for a, b in zip(ins, widths, strict=True))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class UpStep(nn.Module):
    """One decoder level: ConvTrReLU(in -> out), concat the skip, DoubleConv(out + skip -> out)."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.up = ConvTrReLU(in_ch, out_ch)
        self.conv = DoubleConv(out_ch + skip_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Decoder(nn.Module):
    """U-Net expanding path with optional extra inputs concatenated *before* each up step.

    ``extra_ch[k]`` channels are concatenated to the state before up step ``k`` (k = 0 is the
    bottleneck); that is where DMMN-MS and DMMN-M3 inject the 10x / 5x features.  ``depth`` up steps
    are built (fewer than ``len(widths) - 1`` for branches whose finest levels nobody reads, so that
    every parameter takes part in every backward, as DDP requires).
    """

    def __init__(
        self, widths: Sequence[int], extra_ch: Sequence[int] | None = None, depth: int | None = None
    ):
        super().__init__()
        n = len(widths) - 1
        depth = n if depth is None else depth
        extra_ch = list(extra_ch) if extra_ch is not None else [0] * depth
        if not 1 <= depth <= n or len(extra_ch) != depth:
            raise ValueError(f"bad decoder depth {depth} / extra channels {extra_ch}")
        self.extra_ch = extra_ch
        self.steps = nn.ModuleList(
            UpStep(widths[n - k] + extra_ch[k], widths[n - k - 1], widths[n - k - 1])
            for k in range(depth)
        )

    def forward(
        self, feats: Sequence[Tensor], extras: Sequence[Sequence[Tensor]] | None = None
    ) -> list[Tensor]:
        """``feats`` from :class:`Encoder`; returns the states ``[bottleneck, d_{n-1}, ...]``.

        ``extras[k]`` (tensors with the state's spatial size) are concatenated before step ``k``.
        """
        x = feats[-1]
        states = [x]
        for k, step in enumerate(self.steps):
            if extras is not None and len(extras[k]):
                x = torch.cat([x, *extras[k]], dim=1)
            x = step(x, feats[-2 - k])
            states.append(x)
        return states


class Head(nn.Sequential):
    """conv3x3 + ReLU then conv1x1 to ``num_classes`` logits (the paper's final layers)."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int):
        super().__init__(ConvReLU(in_ch, mid_ch), nn.Conv2d(mid_ch, num_classes, 1))


def init_weights(module: nn.Module) -> None:
    """He-normal weights and zero biases for every (transposed) conv in ``module``.

    Without batch norm, PyTorch's default init shrinks the signal about 3x per conv layer, so
    after the ~25 layers of a DMMN path a fresh net's output hardly depends on its input (and tiny
    widths start with dead ReLUs).  He init, as in the original U-Net, keeps the scale.  For a
    transposed conv the fan-in of an output pixel is ``in_ch * k² / stride²``.
    """
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            fan_in = m.in_channels * math.prod(m.kernel_size) / math.prod(m.stride)
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_in))
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
