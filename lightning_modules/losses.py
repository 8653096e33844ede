"""Losses shared by the segmentation tasks.

DMMN trains with cross-entropy weighted by w_c = 1 − N_c / Σ N_c, where N_c counts annotated
training pixels of class c (after class balancing); unlabeled pixels (255) are ignored, and the
weighted sum is divided by the number N of annotated pixels (the paper), not by the sum of their
weights (``F.cross_entropy``'s mean), which would renormalise every batch and cancel the class
weights in a batch of one class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE


def dmmn_class_weights(counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """DMMN class weights w_c = 1 − N_c / Σ N_c as a float32 tensor.

    A class with N_c = 0 gets weight 1, which is what the formula gives anyway: an absent class
    is the rarest one, and weight 0 would silently drop its pixels from validation losses (and
    make a batch of only such pixels divide by zero).  Only an empty training set (Σ N_c = 0)
    or negative counts are refused.
    """
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64), dtype=torch.float64).flatten()
    if n.numel() == 0 or bool((n < 0).any()):
        raise InputError(None, f"class pixel counts must be >= 0 per class, got {n.tolist()}")
    total = n.sum()
    if total <= 0:
        raise InputError(None, "no annotated training pixels: cannot compute DMMN class weights")
    return (1.0 - n / total).to(torch.float32)


class WeightedCrossEntropy(nn.Module):
    """Class-weighted cross-entropy over (N, C, H, W) logits and (N, H, W) integer targets.

    The weights live in a buffer, so they follow ``.to(device)`` and are saved in (and restored
    from) checkpoints; ``set_weight`` updates them in place once the DataModule has counted the
    balanced training pixels.  ``normalize`` picks the reduction over non-ignored pixels:
    ``"pixels"`` (default, the DMMN paper) Σ w_t·ℓ / N; ``"weights"`` Σ w_t·ℓ / Σ w_t, the
    weighted mean of ``F.cross_entropy``.  With unit weights the two agree.  A batch with no
    annotated (or no weighted) pixel gives a zero loss that is still part of the graph — so
    ``backward`` and DDP's gradient all-reduce run on every rank instead of failing or giving NaN.
    """

    weight: torch.Tensor

    def __init__(
        self,
        weight: Sequence[float] | torch.Tensor,
        ignore_index: int = IGNORE,
        normalize: Literal["pixels", "weights"] = "pixels",
    ) -> None:
        super().__init__()
        if normalize not in ("pixels", "weights"):
            raise InputError(None, f"normalize must be 'pixels' or 'weights', got {normalize!r}")
        self.normalize = normalize
        w = torch.as_tensor(weight, dtype=torch.float32).flatten().clone()
        if w.numel() == 0 or bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise InputError(None, f"class weights must be finite and >= 0, got {w.tolist()}")
        self.register_buffer("weight", w)
        self.ignore_index = int(ignore_index)

    @classmethod
    def uniform(
        cls, num_classes: int, ignore_index: int = IGNORE, normalize: str = "pixels"
    ) -> WeightedCrossEntropy:
        """Unit weights, for modules built before the training pixels are counted."""
        return cls(torch.ones(num_classes), ignore_index, normalize)

    @property
    def num_classes(self) -> int:
        return self.weight.numel()

    def set_weight(self, weight: Sequence[float] | torch.Tensor) -> None:
        """Replace the class weights in place (keeps the buffer's device)."""
        w = torch.as_tensor(weight, dtype=torch.float32).flatten()
        if w.shape != self.weight.shape:
            raise InputError(
                None, f"expected {self.num_classes} class weights, got {w.numel()}: {w.tolist()}"
            )
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise InputError(None, f"class weights must be finite and >= 0, got {w.tolist()}")
        self.weight.copy_(w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be (N, {self.num_classes}, ...), got {tuple(logits.shape)}"
            )
        target = target.long()
        loss_sum = F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, reduction="sum"
        )
        valid = target != self.ignore_index
        if self.normalize == "pixels":
            denom = valid.sum().to(loss_sum.dtype)
        else:
            denom = (self.weight[torch.where(valid, target, 0)] * valid).sum()
        # No host sync: with no weighted pixel loss_sum is an exact 0 with a grad_fn.
        return loss_sum / denom.clamp_min(torch.finfo(loss_sum.dtype).tiny)

    def extra_repr(self) -> str:
        w = ", ".join(f"{v:.4f}" for v in self.weight.tolist())
        return f"weight=[{w}], ignore_index={self.ignore_index}, normalize={self.normalize}"
