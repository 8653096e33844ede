"""ResNet encoders (torchvision, random init or local weights) that return four feature levels.

RefineNet decodes the outputs of the four residual stages (strides 4, 8, 16, 32). The encoder is a
torchvision ``ResNet`` without its pooling head and classifier, so torchvision's ImageNet files
load into it key for key (see `lightning_modules.nets.weights`).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from datamodules.errors import InputError
from lightning_modules.nets.weights import (
    load_encoder_weights,
    resolve_encoder_weights,
    torchvision_imagenet_urls,
)

#: Output channels of the four stages per encoder (stride 4, 8, 16, 32).
RESNET_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "resnet152": (256, 512, 1024, 2048),
}
ENCODERS = tuple(RESNET_CHANNELS)


class ResNetEncoder(nn.Module):
    """The stem and four stages of a torchvision ResNet; ``forward`` -> ``[c1, c2, c3, c4]``."""

    def __init__(self, name: str = "resnet50", weights: Path | None = None) -> None:
        super().__init__()
        if name not in RESNET_CHANNELS:
            raise InputError(None, f"encoder must be one of {', '.join(ENCODERS)}, got {name!r}")
        import torchvision.models as tvm

        net = getattr(tvm, name)(weights=None)
        self.name = name
        self.channels = RESNET_CHANNELS[name]
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        if weights is not None:
            load_encoder_weights(self, weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c1, c2, c3, self.layer4(c3)]


def build_encoder(name: str, encoder_weights: str | Path | None = None) -> ResNetEncoder:
    """An encoder with ``encoder_weights`` resolved: ``imagenet`` | ``None`` | a path."""
    if name not in RESNET_CHANNELS:
        raise InputError(None, f"encoder must be one of {', '.join(ENCODERS)}, got {name!r}")
    path = resolve_encoder_weights(encoder_weights, name, torchvision_imagenet_urls(name))
    return ResNetEncoder(name, path)
