"""RAZN's networks (Dong et al. 2018): ResNet-18 FCN segmenters and the light zoom policy.

Segmenter f_θ: ResNet-18 whose last two residual stages (torchvision's ``layer3``/``layer4``,
whose first convs the paper calls conv3_1 and conv4_1, counting residual stages from 1) keep their
resolution with dilation 2 and 4 instead of striding, so the output stride is 8, then an FCN head
(conv3×3 to a quarter of the channels + BN + ReLU + dropout, conv1×1 to the classes).

Policy g_φ: the ResNet-18 outline (stem, four stages, global pooling, one linear unit) with each
two-block stage replaced by a single conv3×3 + BN + ReLU, so deciding whether to zoom costs a
few percent of one segmenter pass (:func:`conv_macs` measures it).

``width`` scales every channel count (1.0 = ResNet-18's 64..512); attribute names follow
torchvision's ``resnet18``, so its state dict loads into a width-1 segmenter's encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from datamodules.errors import InputError

STAGE_WIDTHS = (64, 128, 256, 512)


def scaled(width: float, base: int) -> int:
    if not width > 0:
        raise InputError(None, f"width multiplier must be > 0, got {width}")
    return max(1, round(width * base))


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """ResNet basic block (two conv3×3 + BN) with optional stride and dilation."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        d = dilation
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, padding=d, dilation=d, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, padding=d, dilation=d, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _stem(out_ch: int) -> list[nn.Module]:
    return [
        nn.Conv2d(3, out_ch, 7, 2, 3, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]


class DilatedResNet18(nn.Module):
    """ResNet-18 encoder with output stride 8 (layer3/layer4 dilated 2/4, not strided)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        w = [scaled(width, c) for c in STAGE_WIDTHS]
        self.out_channels = w[3]
        self.conv1, self.bn1, self.relu, self.maxpool = _stem(w[0])
        self.layer1 = nn.Sequential(BasicBlock(w[0], w[0]), BasicBlock(w[0], w[0]))
        self.layer2 = nn.Sequential(BasicBlock(w[0], w[1], stride=2), BasicBlock(w[1], w[1]))
        # conv3_1 / conv4_1 in the paper: no downsampling, dilation keeps the receptive field.
        self.layer3 = nn.Sequential(
            BasicBlock(w[1], w[2], dilation=1), BasicBlock(w[2], w[2], dilation=2)
        )
        self.layer4 = nn.Sequential(
            BasicBlock(w[2], w[3], dilation=2), BasicBlock(w[3], w[3], dilation=4)
        )
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class FCNSegmenter(nn.Module):
    """f_θ: dilated ResNet-18 + FCN head; logits at 1/8 of the input size."""

    output_stride = 8

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.1):
        super().__init__()
        self.encoder = DilatedResNet18(width)
        c = self.encoder.out_channels
        hidden = max(1, c // 4)
        self.head = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(hidden, num_classes, 1)
        self.feature_channels = c
        _init(self)

    def forward(self, x: Tensor, return_features: bool = False):
        features = self.encoder(x)
        logits = self.classifier(self.head(features))
        return (logits, features) if return_features else logits

    def load_backbone(self, path: str | Path) -> None:
        """Load a torchvision ``resnet18`` state dict (a local file; nothing is downloaded)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such ResNet-18 weights file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt or foreign file: say which
            raise InputError(path, f"cannot read weights: {err}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        own = self.encoder.state_dict()
        picked = {k: v for k, v in state.items() if k in own}
        bad = [k for k, v in picked.items() if v.shape != own[k].shape]
        if not picked or bad:
            why = "no ResNet-18 keys" if not picked else f"shapes differ ({bad[0]}, ...)"
            raise InputError(path, f"not torchvision resnet18 weights for width 1.0: {why}")
        self.encoder.load_state_dict(picked, strict=False)


class PolicyNet(nn.Module):
    """g_φ: zoom probability of a field; ResNet-18 outline with one conv per stage."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        w = [scaled(width, c) for c in STAGE_WIDTHS]
        layers = _stem(w[0])
        prev = w[0]
        for c, stride in zip(w, (1, 2, 2, 2), strict=True):
            layers += [
                nn.Conv2d(prev, c, 3, stride, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            prev = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, 1)
        _init(self)
        nn.init.zeros_(self.fc.weight)  # p = 0.5 at the start: no prior for or against zooming
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Zoom logit per image, shape (N,)."""
        return self.fc(self.features(x).mean(dim=(2, 3))).squeeze(1)


# ---------------------------------------------------------- tiles and zoom batches
def to_tiles(x: Tensor, n: int) -> Tensor:
    """(B, C, n·h, n·w) -> (B·n², C, h, w): each image cut into n×n tiles, row-major per image."""
    if n == 1:
        return x
    b, c, hh, ww = x.shape
    if hh % n or ww % n:
        raise ValueError(f"a {hh}x{ww} image does not split into {n}x{n} tiles")
    h, w = hh // n, ww // n
    return x.reshape(b, c, n, h, n, w).permute(0, 2, 4, 1, 3, 5).reshape(b * n * n, c, h, w)


def from_tiles(t: Tensor, n: int) -> Tensor:
    """Inverse of :func:`to_tiles`: (B·n², C, h, w) -> (B, C, n·h, n·w)."""
    if n == 1:
        return t
    bn, c, h, w = t.shape
    b = bn // (n * n)
    return t.reshape(b, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, n * h, n * w)


def zoom_pyramid(batch: dict[str, Any], levels: int) -> tuple[list, list, list[int]]:
    """Per level k: the nodes (fields or tiles) as a batch of ``size``² images, their labels and
    q_k, the tiles per side a level-(k−1) node splits into (r natively, 1 when simulated).

    Nodes of level k are in quadtree order: the q_k² children of node j are j·q_k² … + q_k² − 1.
    """
    x0 = batch["image"]
    size = x0.shape[-1]
    images, labels, q = [x0], [batch.get("label")], [1]
    side = size
    for k in range(1, levels + 1):
        if f"zoom{k}" not in batch:
            raise InputError(None, f"batch has no 'zoom{k}': use a ZoomView with levels >= {k}")
        z, zl = batch[f"zoom{k}"], batch.get(f"zoom{k}_label")
        qk = z.shape[-1] // side
        if qk < 1 or z.shape[-1] != qk * side:
            raise ValueError(f"zoom{k} is {z.shape[-1]} px, not a multiple of {side}")
        q.append(qk)
        side = z.shape[-1]
        zl = None if zl is None else zl[:, None]
        for n in q[1:]:
            z = to_tiles(z, n)
            zl = None if zl is None else to_tiles(zl, n)
        images.append(z)
        labels.append(None if zl is None else zl[:, 0])
    return images, labels, q


def images_only(batch: dict[str, Any]) -> dict[str, Any]:
    """The image entries of a batch (inference must not depend on labels)."""
    return {
        k: v
        for k, v in batch.items()
        if k == "image" or (k.startswith("zoom") and not k.endswith("_label"))
    }


def load_pretrained(segmenters: nn.ModuleList, pretrained: str | None) -> None:
    """Load local ResNet-18 weights into every segmenter's encoder (no download, ever)."""
    if pretrained is None:
        return
    if str(pretrained).lower() == "imagenet":
        raise InputError(
            None,
            "pretrained: 'imagenet' needs a download, and this suite never downloads weights. "
            "Save torchvision's resnet18 ImageNet state dict on a machine with network "
            "(torch.save(resnet18(weights='IMAGENET1K_V1').state_dict(), 'resnet18.pth')) and "
            "pass that file's path as pretrained (width must be 1.0)",
        )
    for seg in segmenters:
        seg.load_backbone(pretrained)


# ---------------------------------------------------------------------- cost
def conv_macs(module: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on a ``(1, in_channels, *input_size)`` input,
    counted over Conv2d and Linear layers (the rest is < 1 % of a CNN's arithmetic)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    def linear_hook(m: nn.Linear, _inp, out: Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, in_channels, *input_size))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return total


def policy_cost_ratio(num_classes: int = 4, width: float = 1.0, size: int = 256) -> float:
    """Policy MACs / segmenter MACs at ``size``² (the paper reports ≈ 7.1 %)."""
    seg = conv_macs(FCNSegmenter(num_classes, width), (size, size))
    return conv_macs(PolicyNet(width), (size, size)) / seg
