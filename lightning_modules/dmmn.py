"""`DMMN`: Deep Multi-Magnification Networks (Ho et al. 2021) on the shared task.

One class for the four architectures (``arch``: s2, ms, m2s, m3). Loss: cross-entropy weighted
w_c = 1 − N_c / Σ N_c over the training set's annotated pixels after class balancing (taken from
the DataModule when fitting starts), unlabeled pixels ignored. Optimizer: SGD as in the paper
(built by the base task from ``optimizer``, ``lr``, ``momentum``, ``weight_decay``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from datamodules.views.multimag import MultiMagView
from lightning_modules.base import SegmentationTask
from lightning_modules.losses import WeightedCrossEntropy, dmmn_class_weights
from lightning_modules.nets.dmmn import build_dmmn
from lightning_modules.optim import OptimizerName


class DMMN(SegmentationTask):
    """DMMN family.

    Args:
        arch: "s2" (DSMN-S2, one U-Net at 20x), "ms" (multi-encoder single-decoder),
            "m2s" (multi-encoder multi-decoder single-concatenation), "m3" (multi-encoder
            multi-decoder multi-concatenation, the paper's best).
        num_classes: output classes (4 for BACH, 6 for the DMMN breast data).
        class_map: class map name for class names, colours and the BACH score.
        width: channel multiplier (1.0 = the paper's 32..512 widths; the CPU schedule uses less).
        m3_wiring: M3 only: "release" (default: the authors' released network, 27.07 M
            parameters at width 1 for 4 classes) or "figure" (the paper's figure read with
            CONV_TR upsamplers, 38.3 M); see docs/dmmn.md.
        literal_release: the boolean of checkpoints written before ``m3_wiring`` existed
            (True = "release", False = "figure"); when given it decides the wiring.
        optimizer: "sgd" (the paper) or "adam" (same lr/weight decay; converges in far fewer
            steps, which the reduced CPU schedule needs).
        lr, momentum, weight_decay: SGD settings (paper: 5e-5, 0.99, 1e-4).
        class_weights: fixed loss weights; None = computed from the training pixels.
        loss_norm: "pixels" (the paper: the weighted sum over pixels divided by the number of
            annotated pixels) or "weights" (divided by the sum of their weights, as
            ``F.cross_entropy``'s weighted mean; the reading before issue 12).
    """

    def __init__(
        self,
        arch: str = "m3",
        num_classes: int = 4,
        class_map: str | None = "bach",
        width: float = 1.0,
        m3_wiring: Literal["release", "figure"] = "release",
        literal_release: bool | None = None,
        optimizer: OptimizerName = "sgd",
        lr: float = 5e-5,
        momentum: float = 0.99,
        weight_decay: float = 1e-4,
        class_weights: list[float] | None = None,
        loss_norm: Literal["pixels", "weights"] = "pixels",
        num_overlays: int = 4,
    ) -> None:
        # the base saves the hyperparameters and calls configure_models/losses/metrics (once)
        super().__init__(num_classes=num_classes, class_map=class_map, num_overlays=num_overlays)

    def configure_models(self) -> None:
        hp = self.hparams
        wiring = hp.m3_wiring
        if hp.get("literal_release") is not None:  # hparams of an old checkpoint
            wiring = "release" if hp.literal_release else "figure"
        self.net = build_dmmn(hp.arch, hp.num_classes, hp.width, m3_wiring=wiring)

    def view_types(self) -> tuple[type, ...]:
        return (MultiMagView,)

    def view_counts(self) -> tuple[int, ...]:
        """Three views (20x, 10x, 5x); DSMN-S2 reads only the 20x one, so one view will do."""
        return (1, 3) if self.net.min_views == 1 else (3,)

    def configure_losses(self) -> None:
        hp = self.hparams
        if hp.class_weights is not None:
            weights = torch.tensor(hp.class_weights, dtype=torch.float32)
            self.criterion = WeightedCrossEntropy(weights, self.ignore_index, hp.loss_norm)
        else:
            self.criterion = WeightedCrossEntropy.uniform(
                hp.num_classes, self.ignore_index, hp.loss_norm
            )

    def on_fit_start(self) -> None:
        """Weights from the training pixel counts (after balancing), unless given explicitly."""
        data = getattr(self.trainer, "datamodule", None)
        counts = getattr(data, "class_pixel_counts", None)
        if self.hparams.class_weights is None and counts is not None:
            weights = dmmn_class_weights(np.asarray(counts))
            self.criterion.set_weight(weights.to(self.device))
            if self.trainer.is_global_zero:
                pretty = ", ".join(
                    f"{n} {w:.3f}" for n, w in zip(self.class_names, weights.tolist(), strict=True)
                )
                print(f"DMMN class weights (1 - N_c / sum N): {pretty}", flush=True)
