"""The toy method's LightningModule: the shared task plus its net and its optimizer.

`SegmentationTask` does the rest (normalisation, loss and score logging, overlays,
`predict_step` for `wsiseg segment`); the hyper-parameters saved in the checkpoint are this
__init__'s arguments, so `segment` rebuilds the method from the file alone.
"""

from __future__ import annotations

import torch

from lightning_modules.base import SegmentationTask
from tests.toy_method.net import ToyNet


class ToyMethod(SegmentationTask):
    """Args: num_classes, class_map, num_overlays as the shared task; ``width`` of the net;
    Adam at ``lr``, times 0.1 at each of ``lr_milestones`` (epochs; none by default). ``lr``
    and ``lr_milestones`` are the names the CPU schedule it names (cpu_budget_smp) sets."""

    def __init__(
        self,
        num_classes: int = 4,
        class_map: str | None = "bach",
        width: int = 8,
        lr: float = 1e-2,
        lr_milestones: list[int] | None = None,
        num_overlays: int = 1,
    ) -> None:
        super().__init__(num_classes=num_classes, class_map=class_map, num_overlays=num_overlays)

    def configure_models(self) -> None:
        self.net = ToyNet(self.num_classes, int(self.hparams.width))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if not self.hparams.lr_milestones:
            return optimizer
        steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.hparams.lr_milestones))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": steps, "interval": "epoch"}}
