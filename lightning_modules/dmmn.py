"""`DMMN`: Deep Multi-Magnification Networks (Ho et al. 2021) on the shared task.

One class for the four architectures (``arch``: s2, ms, m2s, m3). Loss: cross-entropy weighted
w_c = 1 − N_c / Σ N_c over the training set's annotated pixels after class balancing (taken from
the DataModule when fitting starts), unlabeled pixels ignored. Optimizer: SGD as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_modules.base import SegmentationTask
from lightning_modules.losses import WeightedCrossEntropy, dmmn_class_weights
from lightning_modules.nets.dmmn import build_dmmn


class DMMN(SegmentationTask):
    """DMMN family.

    Args:
        arch: "s2" (DSMN-S2, one U-Net at 20x), "ms" (multi-encoder single-decoder),
            "m2s" (multi-encoder multi-decoder single-concatenation), "m3" (multi-encoder
            multi-decoder multi-concatenation, the paper's best).
        num_classes: output classes (4 for BACH, 6 for the DMMN breast data).
        class_map: class map name for class names, colours and the BACH score.
        width: channel multiplier (1.0 = the paper's 32..512 widths; the CPU schedule uses less).
        literal_release: M3 only: follow the authors' released code (no 5x term at the last
            up step) instead of the paper's figure.
        optimizer: "sgd" (the paper) or "adam" (same lr/weight decay; converges in far fewer
            steps, which the reduced CPU schedule needs).
        lr, momentum, weight_decay: SGD settings (paper: 5e-5, 0.99, 1e-4).
        class_weights: fixed loss weights; None = computed from the training pixels.
    """

    def __init__(
        self,
        arch: str = "m3",
        num_classes: int = 4,
        class_map: str | None = "bach",
        width: float = 1.0,
        literal_release: bool = False,
        optimizer: str = "sgd",
        lr: float = 5e-5,
        momentum: float = 0.99,
        weight_decay: float = 1e-4,
        class_weights: list[float] | None = None,
        num_overlays: int = 4,
    ) -> None:
        super().__init__(num_classes=num_classes, class_map=class_map, num_overlays=num_overlays)
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def configure_models(self) -> None:
        hp = self.hparams
        self.net = build_dmmn(hp.arch, hp.num_classes, hp.width, literal_release=hp.literal_release)

    def configure_losses(self) -> None:
        hp = self.hparams
        if hp.class_weights is not None:
            weights = torch.tensor(hp.class_weights, dtype=torch.float32)
            self.criterion = WeightedCrossEntropy(weights, self.ignore_index)
        else:
            self.criterion = WeightedCrossEntropy.uniform(hp.num_classes, self.ignore_index)

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

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.optimizer != "sgd":
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {hp.optimizer!r}")
        return torch.optim.SGD(
            self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
