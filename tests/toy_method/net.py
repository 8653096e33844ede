"""The toy method's network: a plain nn.Module from normalised images to per-pixel logits."""

from __future__ import annotations

from torch import Tensor, nn


class ToyNet(nn.Module):
    """Two 3x3 convolutions (the second dilated, for a 7-px field) and a 1x1 classifier: it
    sees colour and a little texture, enough to beat the majority class on the synthetic
    slides, and costs nothing on a CPU. Output size = input size."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
