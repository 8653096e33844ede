"""`DARefineNet`: Dual-input Attention RefineNet and its single-input baseline on the shared task.

Loss: the paper's NLL loss on log-softmax outputs, which is exactly cross-entropy
(``nll(log_softmax(z)) == cross_entropy(z)``); unlabeled pixels are ignored. Optimizer: SGD with
one learning rate for the ResNet encoders and a 10× larger one for the freshly initialised
RefineNet decoder, batch 12 (set in the experiment YAMLs). GUIDE §5 gives no numbers; the
defaults are light-weight RefineNet's training recipe (encoder 5e-4, decoder 5e-3, momentum 0.9,
weight decay 1e-5), on which the paper builds. Metrics (per-class IoU, mIoU, pixel accuracy,
BACH score) come from `SegmentationTask`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.errors import InputError
from datamodules.views.dual import DualInputView, MultiSizeView
from datamodules.views.single import SingleView
from lightning_modules.base import IGNORE, SegmentationTask
from lightning_modules.nets.refinenet import build_refinenet
from lightning_modules.optim import OptimizerName


class NLLLoss(nn.Module):
    """``nll_loss(log_softmax(logits))`` — identical to cross-entropy — over labelled pixels.

    Mean over non-ignored pixels; a batch with none gives a zero that stays in the graph (so
    backward and DDP's all-reduce still run), as `WeightedCrossEntropy` does.
    """

    def __init__(self, ignore_index: int = IGNORE) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.long()
        total = F.nll_loss(
            F.log_softmax(logits.float(), dim=1),
            target,
            ignore_index=self.ignore_index,
            reduction="sum",
        )
        count = (target != self.ignore_index).sum()
        return total / count.clamp_min(1)


class DARefineNet(SegmentationTask):
    """DA-RefineNet (``arch="dual"``) or RefineNet (``arch="single"``).

    Args:
        arch: "dual" (slice + full image; data view `datamodules.views.dual.DualInputView`, or
            `MultiSizeView` for the multi-size baseline) or "single" (one view: `SingleView`).
        num_classes, class_map: as in `SegmentationTask` (BACH: 4 classes, ordinal).
        slice_encoder: resnet50 | resnet101 | resnet152 (also resnet18/34 for small runs).
        full_encoder: the full-image encoder (paper: resnet50); dual only.
        fusion: add | concat | attention (paper's best) — see `lightning_modules.nets.refinenet`.
        aligned: fuse the slice's footprint of the full-image features (RoIAlign) instead of the
            whole full-image map (beyond the paper). Needs the view's `context`.
        context: the full image's side over the slice's side; must match the data view.
        width: decoder width multiplier (1.0 = 512 deepest / 256 elsewhere).
        rcu_blocks: RCUs on each input path of a RefineNet block (RefineNet: 2).
        encoder_weights: imagenet | null | path to a state dict
            (see `lightning_modules.nets.weights`).
        optimizer: "sgd" (the paper) or "adam" (for short CPU schedules from random init).
        lr: decoder learning rate; encoder_lr: encoders' learning rate (None = `lr`).
        momentum, weight_decay: SGD momentum (Adam ignores it) and weight decay.
    """

    def __init__(
        self,
        arch: str = "dual",
        num_classes: int = 4,
        class_map: str | None = "bach",
        slice_encoder: str = "resnet50",
        full_encoder: str = "resnet50",
        fusion: str = "attention",
        aligned: bool = False,
        context: float = 10.0,
        width: float = 1.0,
        rcu_blocks: int = 2,
        encoder_weights: str | None = None,
        optimizer: OptimizerName = "sgd",
        lr: float = 5e-3,
        encoder_lr: float | None = 5e-4,
        momentum: float = 0.9,
        weight_decay: float = 1e-5,
        num_overlays: int = 4,
    ) -> None:
        if encoder_lr is not None and not encoder_lr > 0:
            raise InputError(None, f"encoder_lr must be > 0, got {encoder_lr}")
        # the base saves the hyperparameters, calls configure_models/losses/metrics and checks
        # the optimizer settings
        super().__init__(num_classes=num_classes, class_map=class_map, num_overlays=num_overlays)

    def configure_models(self) -> None:
        hp = self.hparams
        self.net = build_refinenet(
            arch=hp.arch,
            num_classes=hp.num_classes,
            slice_encoder=hp.slice_encoder,
            full_encoder=hp.full_encoder,
            fusion=hp.fusion,
            width=hp.width,
            rcu_blocks=hp.rcu_blocks,
            aligned=hp.aligned,
            context=hp.context,
            encoder_weights=hp.encoder_weights,
        )

    def configure_losses(self) -> None:
        self.criterion = NLLLoss(self.ignore_index)

    @property
    def num_inputs(self) -> int:
        return 2 if self.hparams.arch == "dual" else 1

    def view_types(self) -> tuple[type, ...]:
        return (DualInputView, MultiSizeView) if self.num_inputs == 2 else (SingleView,)

    def view_counts(self) -> tuple[int, ...]:
        return (self.num_inputs,)

    def check_view(self, view) -> None:
        """The base's checks, and aligned fusion's context must be the view's."""
        super().check_view(view)
        if self.hparams.aligned:
            context = getattr(view, "context", None)
            if context is None or abs(float(context) - float(self.hparams.context)) > 1e-6:
                raise InputError(
                    None,
                    f"aligned fusion crops the slice's footprint (1/context of the full image) "
                    f"but the data view {type(view).__name__} has context {context} and the "
                    f"model {self.hparams.context}; set both to the same value",
                )

    def parameter_groups(self) -> list[dict]:
        """Encoders at `encoder_lr`, everything else (decoder, head) at `lr`."""
        hp = self.hparams
        enc_ids = {id(p) for enc in self.net.encoders() for p in enc.parameters()}
        encoder = [p for p in self.net.parameters() if id(p) in enc_ids]
        decoder = [p for p in self.net.parameters() if id(p) not in enc_ids]
        enc_lr = hp.lr if hp.encoder_lr is None else hp.encoder_lr
        return [
            {"params": encoder, "lr": enc_lr, "name": "encoder"},
            {"params": decoder, "lr": hp.lr, "name": "decoder"},
        ]
