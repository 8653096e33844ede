"""Faults injected into a real `wsiseg fit` by tests/test_faults.py, as trainer callbacks
(``--trainer.callbacks+=tests.fault_callbacks.NAME``): each breaks one thing mid-run the way it
breaks for users, so the run's own error handling is what gets tested.

Kept apart from the test module: the CLI subprocess imports this file, and it needs nothing
from pytest.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class TruncateSlides(pl.Callback):
    """Cut every slide image of the data folder to 2 % of its bytes once training starts (a file
    overwritten or cut off on a network share while a run reads it)."""

    def on_train_start(self, trainer, pl_module) -> None:
        root = Path(trainer.datamodule.root)
        for path in sorted(root.glob("*.tiff")):
            if not path.name.endswith("_mask.tiff"):
                with open(path, "r+b") as f:
                    f.truncate(max(path.stat().st_size // 50, 64))


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


class KillWorker(pl.Callback):
    """SIGKILL the DataLoader workers after the first training batch (the kernel's OOM killer)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            for pid in _children(os.getpid()):
                os.kill(pid, signal.SIGKILL)


class PoisonLoss(pl.Callback):
    """From the second epoch on, normalisation divides by zero: inputs become ±inf and the loss
    NaN, while the weights stay finite (what the first epoch saved must survive). With `rank`,
    only that DDP rank's loss goes NaN: every rank must still stop, none may hang."""

    def __init__(self, rank: int | None = None):
        self.rank = rank

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= 1 and self.rank in (None, trainer.global_rank):
            pl_module.norm_std = 0.0
