"""Stop a run whose loss goes NaN/inf, before the bad step and before a bad checkpoint.

Without this, a diverged run keeps stepping on NaN weights for the rest of its epochs, saves
them as ``last.ckpt`` over the last good one, and `wsiseg train` then tests and reports them
as if the run had finished. Lightning's ``detect_anomaly`` finds the op but costs several times
the step; here one finiteness check per backward suffices.

The check sits in ``on_before_backward``, which Lightning calls for automatic optimisation and
for ``manual_backward`` alike (RAZN), so every method gets it from `SegmentationTask`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class TrainingDiverged(RuntimeError):
    """The training loss (or the weights about to be saved) stopped being finite."""


class FiniteGuard:
    """LightningModule mixin: raise `TrainingDiverged` on a non-finite loss (all DDP ranks stop
    together) and refuse to save non-finite weights, so the last good checkpoint stays."""

    def on_before_backward(self, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:  # one rank's NaN stops every rank
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            value = float(loss.detach().float().sum()) if loss.numel() else math.nan
            raise TrainingDiverged(
                f"training loss is {value} at epoch {self.current_epoch}, global step "
                f"{self.global_step}; stopped before that step. {_last_good(trainer)} "
                "Lower the learning rate or check the data before resuming."
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = [
            name
            for name, value in checkpoint.get("state_dict", {}).items()
            if torch.is_tensor(value)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ]
        if bad:
            trainer = getattr(self, "_trainer", None)
            raise TrainingDiverged(
                f"weights are not finite ({bad[0]}"
                + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                + f") at epoch {self.current_epoch}: not saving them. {_last_good(trainer)}"
            )


def _last_good(trainer) -> str:
    callback = getattr(trainer, "checkpoint_callback", None)
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return f"Last good checkpoint: {path}." if path else "No checkpoint was saved yet."
