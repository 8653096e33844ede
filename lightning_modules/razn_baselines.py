"""RAZN's four baselines (Dong et al. 2018, Table 1), on the same ZoomView batches as RAZN.

All use RAZN's segmenter (dilated ResNet-18 FCN, output stride 8), Adam with RAZN's schedule and
the same data, so the comparison isolates *how* the two magnifications are used:

- :class:`Scale1`: one network on x0 (magnification m) only — the speed reference.
- :class:`Scale2`: one network on the r² zoomed tiles (r·m) of every field, trained on each
  tile's own label; stitched and resized to x0's grid, as RAZN's zoomed answer.
- :class:`MultiScaleMax`: one network shared by both scales, trained on both; the two score
  maps (on x0's grid) fused by a per-pixel max.
- :class:`AttentionToScale` (Chen et al. 2016): the same shared network plus a small head that
  turns the concatenated features of both scales into per-pixel soft weights over the scales;
  the output is the weighted sum of the score maps.

MS and attention train on the fused output plus each scale's own output (Chen et al.'s extra
supervision), so the shared network stays a good segmenter at both scales.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.razn import from_tiles, images_only, zoom_pyramid
from lightning_modules.optim import AdamOnly
from lightning_modules.razn_common import ZoomTask


def _label_size(batch: dict[str, Any]):
    return (batch["label"] if "label" in batch else batch["image"]).shape[-2:]


def _to_grid(x: Tensor, size) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _ZoomBaseline(ZoomTask):
    """One FCN segmenter (RAZN's construction, `ZoomTask`) and the zoomed-tile helpers.

    Args:
        num_classes, class_map, num_overlays: as in :class:`SegmentationTask`.
        width: channel multiplier (1.0 = ResNet-18).
        optimizer: "adam" (RAZN's; the only choice, kept so schedules can name it).
        lr, lr_step, lr_gamma: Adam lr, ×``lr_gamma`` every ``lr_step`` steps (RAZN: 0.01,
            50k, 0.1).
        pretrained: None or a local torchvision resnet18 state-dict file.
    """

    def __init__(
        self,
        num_classes: int = 4,
        class_map: str | None = "bach",
        width: float = 1.0,
        optimizer: AdamOnly = "adam",
        lr: float = 0.01,
        lr_step: int = 50_000,
        lr_gamma: float = 0.1,
        pretrained: str | None = None,
        num_overlays: int = 4,
    ) -> None:
        super().__init__(num_classes=num_classes, class_map=class_map, num_overlays=num_overlays)

    def configure_models(self) -> None:
        self.net = self.build_segmenters(1)[0]

    def lr_schedule(self, optimizer) -> dict:
        return {"scheduler": self.step_decay(optimizer), "interval": "step"}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._extra_logs: dict[str, Tensor] = {}
        loss = self.train_loss(batch)
        b = batch["label"].shape[0]
        self.log("train/loss", loss, batch_size=b, prog_bar=True)
        for key, value in self._extra_logs.items():
            self.log(key, value, batch_size=b)
        return loss

    def train_loss(self, batch: dict[str, Any]) -> Tensor:
        return self.criterion(self.batch_logits(batch), batch["label"])

    # ---------------------------------------------------------------- helpers
    def _both(self, batch: dict[str, Any], features: bool = False):
        """One shared-net pass over x0 and the zoomed tiles; returns per-scale outputs."""
        images, labels, q = zoom_pyramid(batch, 1)
        x0, tiles = images
        out = self.net(self.normalize(torch.cat([x0, tiles])), return_features=features)
        logits, feats = out if features else (out, None)
        b = x0.shape[0]
        return logits[:b], logits[b:], (None if feats is None else (feats[:b], feats[b:])), q[1]

    def _stitch(self, tile_maps: Tensor, q: int, size) -> Tensor:
        """r² tile maps -> one map, resized to grid ``size`` (logits to the label grid)."""
        return _to_grid(from_tiles(tile_maps, q), size)

    def _tile_loss(self, tile_logits: Tensor, batch: dict[str, Any]) -> Tensor:
        _, labels, _ = zoom_pyramid(batch, 1)
        tile_label = labels[1]
        return self.criterion(_to_grid(tile_logits, tile_label.shape[-2:]), tile_label)


class Scale1(_ZoomBaseline):
    """FCN on x0 alone (no zoom): the fastest model and the timing reference."""

    def batch_logits(self, batch: dict[str, Any]) -> Tensor:
        return self.logits(batch["image"], _label_size(batch))


class Scale2(_ZoomBaseline):
    """FCN on every field's zoomed tiles (always zoom)."""

    def _tiles(self, batch):
        images, _, q = zoom_pyramid(images_only(batch), 1)
        return self.net(self.normalize(images[1])), q[1]

    def batch_logits(self, batch: dict[str, Any]) -> Tensor:
        tile_logits, q = self._tiles(batch)
        return self._stitch(tile_logits, q, _label_size(batch))

    def train_loss(self, batch: dict[str, Any]) -> Tensor:
        tile_logits, _ = self._tiles(batch)
        return self._tile_loss(tile_logits, batch)


class MultiScaleMax(_ZoomBaseline):
    """Shared FCN on x0 and the zoomed tiles, score maps fused by a per-pixel max."""

    def _scales(self, batch):
        l0, l1, _, q = self._both(batch)
        size = _label_size(batch)
        s0 = _to_grid(l0, size)
        s1 = self._stitch(l1, q, size)
        return s0, s1, l1

    def batch_logits(self, batch: dict[str, Any]) -> Tensor:
        s0, s1, _ = self._scales(batch)
        return torch.maximum(s0, s1)

    def train_loss(self, batch: dict[str, Any]) -> Tensor:
        s0, s1, l1 = self._scales(batch)
        label = batch["label"]
        fused = self.criterion(torch.maximum(s0, s1), label)
        return fused + self.criterion(s0, label) + self._tile_loss(l1, batch)


class AttentionToScale(_ZoomBaseline):
    """Shared FCN on both scales; per-pixel softmax weights over the scales from a small head
    (conv3×3 + ReLU + conv1×1 on the concatenated features, as Chen et al. 2016)."""

    def configure_models(self) -> None:
        super().configure_models()
        c = self.net.feature_channels
        hidden = max(1, c // 2)
        self.attention = nn.Sequential(
            nn.Conv2d(2 * c, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 2, 1)
        )

    def _scales(self, batch):
        """Fused on the stitched tiles' grid (r× finer than x0's stride-8 grid), the resolution
        of Scale 2's and RAZN's zoomed answers, so only the fusion rule differs from them."""
        l0, l1, (f0, f1), q = self._both(batch, features=True)
        s1, g1 = from_tiles(l1, q), from_tiles(f1, q)
        grid = s1.shape[-2:]
        weights = torch.softmax(self.attention(torch.cat([_to_grid(f0, grid), g1], 1)), dim=1)
        fused = weights[:, :1] * _to_grid(l0, grid) + weights[:, 1:] * s1
        size = _label_size(batch)
        return _to_grid(fused, size), _to_grid(l0, size), l1, weights

    def batch_logits(self, batch: dict[str, Any]) -> Tensor:
        return self._scales(batch)[0]

    def train_loss(self, batch: dict[str, Any]) -> Tensor:
        fused, s0, l1, weights = self._scales(batch)
        label = batch["label"]
        self._extra_logs = {"train/attention_zoom": weights[:, 1].mean().detach()}
        return self.criterion(fused, label) + self.criterion(s0, label) + self._tile_loss(l1, batch)
