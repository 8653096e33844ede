"""RefineNet decoders on ResNet encoders: single-input RefineNet and dual-input DA-RefineNet.

Blocks (GUIDE §5, light-weight RefineNet style, no batch norm in the decoder):

- RCU, residual conv unit: ``x + conv3×3(ReLU(conv3×3(ReLU(x))))``.
- CRP, chained residual pooling: after a ReLU, 4 × (maxpool 5×5 stride 1 → conv1×1), each
  stage's output added back: context pooled over growing windows at full resolution.
- Multi-resolution fusion: the coarser decoder output goes through conv3×3 and is upsampled
  bilinearly to the finer level, then fused with that level's encoder features.

Every encoder level (strides 32, 16, 8, 4) is reduced by conv1×1 to the decoder width (512 at the
deepest level, 256 elsewhere, times `width`) and refined by `rcu_blocks` RCUs. One `RefineLevel`
fuses its inputs, applies CRP and one output RCU. The head (conv3×3 to the classes) predicts at
stride 4; the task upsamples logits to the label grid.

DA-RefineNet adds a second ResNet encoder for the *full image* and, at each level, fuses three
maps — slice features ``s``, the upsampled coarser output ``up`` and full-image features ``f`` —
by the paper's switch (`FUSIONS`):

- ``add``: ``s + up + f``;
- ``concat``: ``conv1×1(cat(s, up, f))``;
- ``attention``: ``w = σ(conv1×1(ReLU(conv1×1(GAP(cat(s, up, f))))))``, ``out = up + s·w``.

At the deepest level there is no ``up``; the full-image features take its place (attention:
``out = f + s·w``). The full image enters *everywhere* through its own encoder, which the
authors' release did not do (it fed the slice to both branches).

``aligned=True`` (beyond the paper): before fusion, each full-image feature map is cropped to the
slice's footprint — the centre 1/`context` of its side — with RoIAlign and resized to the slice
features' size, so fused features describe the same place (their receptive fields still reach
far beyond the slice); the default fuses feature maps of different places, as the paper does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.errors import InputError
from lightning_modules.nets.encoders import ResNetEncoder, build_encoder

FUSIONS = ("add", "concat", "attention")
ARCHS = ("single", "dual")
BASE_WIDTHS = (256, 256, 256, 512)  # stride 4, 8, 16, 32


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class RCU(nn.Module):
    """Residual conv unit without batch norm: ``x + conv(ReLU(conv(ReLU(x))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv3x3(channels, channels), conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class CRP(nn.Module):
    """Chained residual pooling: ``stages`` × (maxpool5 s1 p2 → conv1×1), each added back."""

    def __init__(self, channels: int, stages: int = 4) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 1, bias=False) for _ in range(stages)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        path = x
        for conv in self.convs:
            path = conv(self.pool(path))
            x = x + path
        return x


class Fusion(nn.Module):
    """Fuses the present maps of (slice, up, full), all ``channels`` wide and the same size."""

    def __init__(self, mode: str, channels: int, inputs: int, reduction: int = 4) -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise InputError(None, f"fusion must be one of {', '.join(FUSIONS)}, got {mode!r}")
        self.mode, self.inputs = mode, inputs
        if inputs > 1 and mode == "concat":
            self.proj = nn.Conv2d(inputs * channels, channels, 1)
        elif inputs > 1 and mode == "attention":
            hidden = max(channels // reduction, 8)
            self.fc1 = nn.Conv2d(inputs * channels, hidden, 1)
            self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, s: Tensor, up: Tensor | None = None, f: Tensor | None = None) -> Tensor:
        parts = [t for t in (s, up, f) if t is not None]
        if len(parts) != self.inputs:
            raise ValueError(f"fusion built for {self.inputs} inputs got {len(parts)}")
        if self.inputs == 1:  # nothing to fuse (single-input deepest level)
            return s
        if self.mode == "add":
            return torch.stack(parts).sum(0)
        if self.mode == "concat":
            return self.proj(torch.cat(parts, 1))
        pooled = F.adaptive_avg_pool2d(torch.cat(parts, 1), 1)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))
        base = up if up is not None else f
        return base + s * w


class InputPath(nn.Sequential):
    """conv1×1 from the encoder's channels to the decoder width, then `rcu_blocks` RCUs."""

    def __init__(self, cin: int, width: int, rcu_blocks: int) -> None:
        super().__init__(nn.Conv2d(cin, width, 1), *[RCU(width) for _ in range(rcu_blocks)])


class RefineLevel(nn.Module):
    """One RefineNet block: input paths, multi-resolution fusion, CRP, output RCU."""

    def __init__(
        self,
        cin: int,
        width: int,
        prev_width: int | None,
        fusion: str,
        full_cin: int | None,
        rcu_blocks: int,
    ) -> None:
        super().__init__()
        self.slice_path = InputPath(cin, width, rcu_blocks)
        self.full_path = InputPath(full_cin, width, rcu_blocks) if full_cin else None
        self.up = conv3x3(prev_width, width) if prev_width else None
        inputs = 1 + (prev_width is not None) + (full_cin is not None)
        self.fuse = Fusion(fusion, width, inputs)
        self.crp = CRP(width)
        self.out = RCU(width)

    def forward(self, s: Tensor, prev: Tensor | None = None, f: Tensor | None = None) -> Tensor:
        s = self.slice_path(s)
        size = s.shape[-2:]
        up = None
        if prev is not None:
            up = F.interpolate(self.up(prev), size=size, mode="bilinear", align_corners=False)
        if f is not None:
            f = self.full_path(f)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        return self.out(self.crp(self.fuse(s, up, f)))


def decoder_widths(width: float) -> tuple[int, ...]:
    if not width > 0:
        raise InputError(None, f"width must be > 0, got {width}")
    return tuple(max(8, int(round(c * width))) for c in BASE_WIDTHS)


class RefineNetDecoder(nn.Module):
    """Four `RefineLevel`s from the deepest level up, and a conv3×3 classifier at stride 4."""

    def __init__(
        self,
        channels: tuple[int, ...],
        num_classes: int,
        full_channels: tuple[int, ...] | None = None,
        fusion: str = "add",
        width: float = 1.0,
        rcu_blocks: int = 2,
    ) -> None:
        super().__init__()
        if int(rcu_blocks) < 0:
            raise InputError(None, f"rcu_blocks must be >= 0, got {rcu_blocks}")
        widths = decoder_widths(width)
        levels = []
        for i in reversed(range(4)):
            prev = widths[i + 1] if i < 3 else None
            full = full_channels[i] if full_channels else None
            levels.append(RefineLevel(channels[i], widths[i], prev, fusion, full, rcu_blocks))
        self.levels = nn.ModuleList(levels)  # deepest first
        self.head = conv3x3(widths[0], num_classes)

    def forward(self, feats: list[Tensor], full: list[Tensor] | None = None) -> Tensor:
        x = None
        for level, i in zip(self.levels, reversed(range(4)), strict=True):
            x = level(feats[i], x, full[i] if full is not None else None)
        return self.head(x)


class RefineNet(nn.Module):
    """Single-input RefineNet: ``(B, 3, H, W)`` -> logits ``(B, C, H/4, W/4)``."""

    def __init__(
        self,
        num_classes: int,
        encoder: ResNetEncoder,
        width: float = 1.0,
        rcu_blocks: int = 2,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = RefineNetDecoder(
            encoder.channels, num_classes, width=width, rcu_blocks=rcu_blocks
        )

    def encoders(self) -> list[nn.Module]:
        return [self.encoder]

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"RefineNet takes (B, 3, H, W) images, got {tuple(x.shape)}; "
                "use a one-view data view (datamodules.views.single.SingleView)"
            )
        return self.decoder(self.encoder(x))


class DualRefineNet(nn.Module):
    """DA-RefineNet: ``(B, 2, 3, H, W)`` (slice, full image) -> logits ``(B, C, H/4, W/4)``."""

    def __init__(
        self,
        num_classes: int,
        slice_encoder: ResNetEncoder,
        full_encoder: ResNetEncoder,
        fusion: str = "attention",
        width: float = 1.0,
        rcu_blocks: int = 2,
        aligned: bool = False,
        context: float = 10.0,
    ) -> None:
        super().__init__()
        if aligned and not context >= 1:
            raise InputError(None, f"context must be >= 1 for aligned fusion, got {context}")
        self.slice_encoder, self.full_encoder = slice_encoder, full_encoder
        self.aligned, self.context = bool(aligned), float(context)
        self.decoder = RefineNetDecoder(
            slice_encoder.channels,
            num_classes,
            full_channels=full_encoder.channels,
            fusion=fusion,
            width=width,
            rcu_blocks=rcu_blocks,
        )

    def encoders(self) -> list[nn.Module]:
        return [self.slice_encoder, self.full_encoder]

    def align(self, f: Tensor, size: tuple[int, int]) -> Tensor:
        """The slice's footprint (centre 1/context of the side) of `f`, resized to `size`."""
        from torchvision.ops import roi_align

        h, w = f.shape[-2:]
        half = 0.5 / self.context
        box = torch.tensor(
            [(0.5 - half) * w, (0.5 - half) * h, (0.5 + half) * w, (0.5 + half) * h],
            dtype=f.dtype,
            device=f.device,
        )
        idx = torch.arange(f.shape[0], dtype=f.dtype, device=f.device)[:, None]
        boxes = torch.cat([idx, box.expand(f.shape[0], 4)], 1)
        return roi_align(f, boxes, output_size=size, spatial_scale=1.0, aligned=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != 2 or x.shape[2] != 3:
            raise ValueError(
                f"DA-RefineNet takes (B, 2, 3, H, W) = (slice, full image), got "
                f"{tuple(x.shape)}; use a two-view data view (datamodules.views.dual)"
            )
        feats = self.slice_encoder(x[:, 0])
        full = self.full_encoder(x[:, 1])
        if self.aligned:
            full = [self.align(f, tuple(s.shape[-2:])) for f, s in zip(full, feats, strict=True)]
        return self.decoder(feats, full)


def build_refinenet(
    arch: str = "dual",
    num_classes: int = 4,
    slice_encoder: str = "resnet50",
    full_encoder: str = "resnet50",
    fusion: str = "attention",
    width: float = 1.0,
    rcu_blocks: int = 2,
    aligned: bool = False,
    context: float = 10.0,
    encoder_weights: str | None = None,
) -> RefineNet | DualRefineNet:
    """The net for ``arch`` ("single" or "dual"); `encoder_weights` applies to every encoder."""
    if arch not in ARCHS:
        raise InputError(None, f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if fusion not in FUSIONS:
        raise InputError(None, f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    enc = build_encoder(slice_encoder, encoder_weights)
    if arch == "single":
        return RefineNet(num_classes, enc, width=width, rcu_blocks=rcu_blocks)
    full = build_encoder(full_encoder, encoder_weights)
    return DualRefineNet(
        num_classes,
        enc,
        full,
        fusion=fusion,
        width=width,
        rcu_blocks=rcu_blocks,
        aligned=aligned,
        context=context,
    )
