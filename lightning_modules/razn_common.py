"""`ZoomTask`: what RAZN and its four baselines share, written once.

RAZN's segmenter (dilated ResNet-18 FCN, optionally with a local torchvision ResNet-18 file for
its encoder), Adam (the only choice) with a step decay of its learning rate, the
`datamodules.views.zoom.ZoomView` batches they all read, and the Scale-1 model that relative
inference time is measured against. The methods keep their own constructor arguments (RAZN's
``levels``, ``alpha``, …); this class reads ``width``, ``pretrained``, ``lr``, ``lr_step`` and
``lr_gamma`` from ``hparams``.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from datamodules.views.zoom import ZoomView
from lightning_modules.base import SegmentationTask
from lightning_modules.nets.razn import FCNSegmenter, load_pretrained
from lightning_modules.optim import AdamOnly, step_decay


class ZoomTask(SegmentationTask):
    """Shared construction of the RAZN family (see the module doc)."""

    optimizer_choices = get_args(AdamOnly)

    def build_segmenters(self, count: int) -> nn.ModuleList:
        """``count`` FCN segmenters of ``width``; ``pretrained`` loaded into each encoder."""
        hp = self.hparams
        segmenters = nn.ModuleList(FCNSegmenter(self.num_classes, hp.width) for _ in range(count))
        load_pretrained(segmenters, hp.pretrained)
        return segmenters

    def step_decay(self, optimizer: torch.optim.Optimizer):
        """lr × ``lr_gamma`` every ``lr_step`` training iterations (paper: 0.1 every 50k)."""
        return step_decay(optimizer, self.hparams.lr_step, self.hparams.lr_gamma)

    def view_types(self) -> tuple[type, ...]:
        return (ZoomView,)

    def timing_reference(self) -> nn.Module:
        """The Scale-1 model relative inference time is measured against (same width)."""
        return FCNSegmenter(self.num_classes, self.hparams.width)
