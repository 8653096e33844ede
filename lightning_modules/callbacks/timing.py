"""Relative inference time: seconds per field of a method / seconds of a Scale-1 model.

RAZN's speed claim is relative (Table 1: time per field relative to the Scale-1 FCN on the same
machine), which cancels the device out of the number, so any method can be put on the same
scale.  The callback keeps the first ``num_fields`` test fields, then at the end of the test
epoch times each one through the method's own inference (``batch_logits``: for RAZN the policy
decides whether to zoom, so its time varies per field) and through the reference, one field at
a time, interleaved so load changes hit both alike, after a warm-up, synchronising CUDA before
every clock read; a field's time is the fastest of ``repeats`` passes (as `timeit` advises:
slower passes measure other processes, not the model).  Logged:
``test/relative_inference_time`` (mean over fields of t_method / mean t_reference) and
``_std``, ``test/inference_time_ms``, ``test/reference_time_ms`` and ``test/timing_fields``
(distinct fields; fewer than ``num_fields`` are cycled through).

The reference is the method's own ``timing_reference()`` when it has one (the RAZN family: its
Scale-1 segmenter at the run's width), else a full-width Scale-1 ResNet-18 FCN, fed the field's
target view on its label grid: one fixed yardstick for every method in the suite.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.razn import FCNSegmenter


def _batch_size(batch: dict[str, Any]) -> int:
    return int(batch["label"].shape[0] if "label" in batch else batch["image"].shape[0])


def field_of(batch: Any, i: int, device: torch.device | str = "cpu") -> Any:
    """Field ``i`` of a collated batch as a batch of one (tensors copied to ``device``)."""
    if isinstance(batch, Tensor):
        return batch[i : i + 1].to(device, copy=True)
    if isinstance(batch, dict):
        return {k: field_of(v, i, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [batch[i]]
    return batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RelativeInferenceTime(pl.Callback):
    """Time per field relative to a Scale-1 reference (see the module doc).

    Args:
        num_fields: fields timed (the paper: 100).
        warmup: untimed passes of method and reference before timing (allocator, cuDNN and
            thread-pool start-up would otherwise land on the first fields).
        repeats: passes per field; the fastest counts.
        reference_width: width of the reference ResNet-18 FCN; None = the method's
            ``timing_reference()`` if it has one, else 1.0.
    """

    def __init__(
        self,
        num_fields: int = 100,
        warmup: int = 5,
        repeats: int = 3,
        reference_width: float | None = None,
    ):
        super().__init__()
        if num_fields < 1 or warmup < 0 or repeats < 1:
            raise ValueError("num_fields and repeats must be >= 1, warmup >= 0")
        self.num_fields = int(num_fields)
        self.repeats = int(repeats)
        self.warmup = int(warmup)
        self.reference_width = reference_width
        self._fields: list[dict] = []
        self.result: dict[str, float] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fields = []

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.is_global_zero or not isinstance(batch, dict):
            return
        for i in range(_batch_size(batch)):
            if len(self._fields) >= self.num_fields:
                return
            self._fields.append(field_of(batch, i))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Rank 0 times (several ranks timing at once would share the device); all log its result.
        result = self.measure(pl_module, self._fields) if trainer.is_global_zero else None
        result = trainer.strategy.broadcast(result, src=0)
        self._fields = []
        if not result:
            return
        self.result = result
        for key, value in result.items():
            pl_module.log(f"test/{key}", float(value), sync_dist=True)

    # ------------------------------------------------------------------ measuring
    def reference(self, pl_module: pl.LightningModule) -> nn.Module:
        make = getattr(pl_module, "timing_reference", None)
        if self.reference_width is None and callable(make):
            return make()
        return FCNSegmenter(int(pl_module.num_classes), width=self.reference_width or 1.0)

    @torch.inference_mode()
    def measure(self, pl_module: pl.LightningModule, fields: list[dict]) -> dict[str, float]:
        """Time every field (cycling to ``num_fields``); empty dict without fields."""
        if not fields:
            return {}
        device = pl_module.device
        fields = [field_of(f, 0, device) for f in fields]
        ref = self.reference(pl_module).to(device).eval()
        was_training = pl_module.training
        pl_module.eval()

        def run_method(f):
            if hasattr(pl_module, "batch_logits"):
                return pl_module.batch_logits(f)
            return pl_module(f["image"])

        def run_reference(f):
            image, size = _reference_input(f)
            logits = ref(pl_module.normalize(image) if hasattr(pl_module, "normalize") else image)
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

        try:
            for i in range(self.warmup):
                run_method(fields[i % len(fields)])
                run_reference(fields[i % len(fields)])
            t_method, t_ref = [], []
            for i in range(self.num_fields):
                f = fields[i % len(fields)]
                best_m = best_r = float("inf")
                for _ in range(self.repeats):
                    best_m = min(best_m, _timed(run_method, f, device))
                    best_r = min(best_r, _timed(run_reference, f, device))
                t_method.append(best_m)
                t_ref.append(best_r)
        finally:
            pl_module.train(was_training)
        t_method, t_ref = np.asarray(t_method), np.asarray(t_ref)
        relative = t_method / t_ref.mean()
        std = float(relative.std(ddof=1)) if len(relative) > 1 else 0.0
        return {
            "relative_inference_time": float(relative.mean()),
            "relative_inference_time_std": std,
            "inference_time_ms": float(t_method.mean() * 1e3),
            "reference_time_ms": float(t_ref.mean() * 1e3),
            "timing_fields": float(len(fields)),
        }


def _timed(fn, field: dict, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn(field)
    _sync(device)
    return time.perf_counter() - t0


def _reference_input(field: dict) -> tuple[Tensor, tuple[int, int]]:
    """The target view on the label grid (view 0 of multi-view images), or a blank one."""
    image = field["image"]
    if image.ndim == 5:
        image = image[:, 0]
    size = tuple(field["label"].shape[-2:]) if "label" in field else tuple(image.shape[-2:])
    if tuple(image.shape[-2:]) != size:
        image = torch.zeros((1, 3, *size), dtype=torch.uint8, device=image.device)
    return image, size
