"""The LightningModule every method shares: normalisation, loss logging, scores, overlays.

A method subclasses :class:`SegmentationTask` and fills two hooks — ``configure_models``
(sets ``self.net``) and ``configure_losses`` (sets ``self.criterion``) — reading its settings
from ``self.hparams``.  The optimizer comes from the ``optimizer``/``lr``/``momentum``/
``weight_decay`` arguments (`lightning_modules.optim`), with ``parameter_groups`` and
``lr_schedule`` as hooks; ``view_types``/``view_counts``/``check_view`` say which data views
the method reads, checked in ``setup``.  Everything a results table or a comparison between
methods depends on (how images are normalised, how scores are computed and synchronised, what
is logged under which name) lives here once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE
from lightning_modules.callbacks.divergence import FiniteGuard
from lightning_modules.metrics import ConfusionMatrix, TileConfusions, channel_argmax, scores
from lightning_modules.optim import OPTIMIZERS, OptimizerSettings
from lightning_modules.outputs.overlays import default_colors, overlay_panel, save_png

NORM_MEAN = 0.5
"""Images become float in [0, 1], then ``(x − NORM_MEAN) / NORM_STD``: roughly zero-mean,
unit-variance for H&E without per-data-set statistics, and the same for every method."""
NORM_STD = 0.25


def target_size(batch: dict[str, Any]) -> tuple[int, int] | None:
    """The label grid of a batch: its labels', or the tile geometry's output in whole-slide
    inference (``meta["output"]``), or None (the image's)."""
    label = batch.get("label")
    if label is not None:
        return tuple(label.shape[-2:])
    output = (batch.get("meta") or {}).get("output")
    if output is None:
        return None
    side = int(output[0]) if isinstance(output, Tensor | np.ndarray | list | tuple) else int(output)
    return side, side


def centred(outer: tuple[int, ...], inner: tuple[int, ...]) -> bool:
    """`inner` fits centred in `outer` on whole pixels (a TileGeometry's output in its input)."""
    return all(a >= b and (a - b) % 2 == 0 for a, b in zip(outer, inner, strict=True))


class SegmentationTask(FiniteGuard, pl.LightningModule):
    """Shared task. Batches are dicts: ``image`` uint8 ``(B, 3, H, W)`` or ``(B, V, 3, H, W)``
    (view 0 is the target view), ``label`` int64 ``(B, H, W)`` with ``ignore_index`` for
    unlabeled pixels, optional ``meta``.

    Args:
        num_classes: number of output classes.
        class_map: class-map name or YAML path (``datamodules.labels.classmaps``) for class names,
            overlay colours and whether the classes are ordinal (then the BACH score is
            reported); ``None`` names them ``class_0``, ``class_1``, …
        ignore_index: label value skipped by loss and scores.
        num_overlays: overlay pictures saved per validation epoch and for the test set.
        norm_mean, norm_std: the normalisation constants (see ``NORM_MEAN``).

    Logged: ``train/loss`` (per step), ``val/loss`` and ``test/loss`` (per epoch: the mean over
    patches of the batch losses, synced), and every finite value of
    :func:`lightning_modules.metrics.scores` as ``val/<key>`` / ``test/<key>`` — ``val/miou``
    is the checkpoint monitor.
    """

    predict_probabilities: bool = True
    """Whether ``predict_step`` returns ``probs`` (see there)."""

    hparams_ignore: tuple[str, ...] = ()
    """Constructor arguments left out of ``hparams`` (e.g. module objects)."""
    optimizer_choices: tuple[str, ...] = OPTIMIZERS
    """The ``optimizer`` names the method trains with (see `lightning_modules.optim`)."""

    net: nn.Module
    criterion: nn.Module

    def __init__(
        self,
        num_classes: int,
        class_map: str | None = None,
        ignore_index: int = IGNORE,
        num_overlays: int = 4,
        norm_mean: float = NORM_MEAN,
        norm_std: float = NORM_STD,
    ) -> None:
        super().__init__()
        # Called here, Lightning collects the arguments of every subclass __init__ as well.
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        if int(num_classes) < 1:
            raise InputError(None, f"num_classes must be >= 1, got {num_classes}")
        if not norm_std > 0:
            raise InputError(None, f"norm_std must be > 0, got {norm_std}")
        if int(num_overlays) < 0:
            raise InputError(None, f"num_overlays must be >= 0, got {num_overlays}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.num_overlays = int(num_overlays)
        self.norm_mean, self.norm_std = float(norm_mean), float(norm_std)
        self.class_groups: dict[str, tuple[int, ...]] = {}  # from the class map: group_iou/<name>
        self.class_names, self.class_colors, self.ordinal = self._class_info(class_map)
        self.test_scores: dict[str, float] = {}
        self.val_scores: dict[str, float] = {}
        self.test_confusion: np.ndarray | None = None
        self.test_tiles = TileConfusions()  # per-tile counts: a study's bootstrap evidence
        self.test_tile_confusion: tuple[np.ndarray, list] | None = None
        self._overlay_root: Path | None = None
        self._test_overlays_saved = 0
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        if "lr" in self.hparams:  # a bad optimizer setting fails here, not when fitting starts
            self.optimizer_settings()

    def _class_info(self, class_map: str | None) -> tuple[list[str], list[tuple], bool]:
        n = self.num_classes
        if class_map is None:
            return [f"class_{i}" for i in range(n)], default_colors(n), False
        from datamodules.labels.classmaps import load_class_map  # the data side owns class maps

        cmap = load_class_map(class_map)
        self.class_groups = dict(getattr(cmap, "groups", None) or {})
        if len(cmap.classes) != n:
            raise InputError(
                getattr(cmap, "source", None),
                f"class map {cmap.name!r} has {len(cmap.classes)} classes "
                f"({', '.join(cmap.classes)}) but num_classes is {n}",
            )
        colors = [tuple(c) for c in cmap.colors] if cmap.colors else default_colors(n)
        return list(cmap.classes), colors, bool(cmap.ordinal)

    # ----------------------------------------------------------------- hooks for subclasses
    def configure_models(self) -> None:
        """Set ``self.net``: a plain ``nn.Module`` mapping normalised images to logits."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_models")

    def configure_losses(self) -> None:
        """Set ``self.criterion(logits, label)``; default: unweighted cross-entropy."""
        from lightning_modules.losses import WeightedCrossEntropy

        self.criterion = WeightedCrossEntropy.uniform(self.num_classes, self.ignore_index)

    def configure_metrics(self) -> None:
        """One confusion matrix per stage; every score is derived from it. The stage loss is a
        batch-size-weighted mean synced by torchmetrics (float sums), not by ``self.log``'s
        ``sync_dist``: that floors its integer batch count when ranks score unequal numbers
        of patches (Lightning-AI/pytorch-lightning#21859), as unpadded DDP evaluation does."""
        self.val_cm = ConfusionMatrix(self.num_classes, self.ignore_index)
        self.test_cm = ConfusionMatrix(self.num_classes, self.ignore_index)
        self.val_loss_mean = MeanMetric()
        self.test_loss_mean = MeanMetric()

    # ------------------------------------------------------------ optimizer and schedule
    def optimizer_settings(self) -> OptimizerSettings:
        """From ``hparams``: ``optimizer`` (absent: Adam), ``lr``, ``momentum``, weight decay."""
        return OptimizerSettings.from_hparams(
            self.hparams, self.optimizer_choices, type(self).__name__
        )

    def parameter_groups(self) -> Iterable[nn.Parameter] | list[dict]:
        """What the optimizer updates: every parameter at ``lr``; methods with per-part learning
        rates return parameter-group dicts (``{"params": ..., "lr": ...}``)."""
        return self.parameters()

    def lr_schedule(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """A Lightning ``lr_scheduler`` dict (``{"scheduler": ..., "interval": ...}``) or None
        (constant learning rate)."""
        return None

    def configure_optimizers(self):
        optimizer = self.optimizer_settings().build(self.parameter_groups())
        schedule = self.lr_schedule(optimizer)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # -------------------------------------------------------------------- data views
    def view_types(self) -> tuple[type, ...]:
        """The data-view classes the method reads (subclasses count); empty: any."""
        return ()

    def view_counts(self) -> tuple[int, ...]:
        """The numbers of image inputs (``view.num_views``) the method takes; empty: any."""
        return ()

    def check_view(self, view) -> None:
        """Refuse, in one line and before any step runs, a data view the method cannot read;
        methods extend it with their own geometry checks (the nets keep their shape checks)."""
        name, method = type(view).__name__, type(self).__name__
        types = self.view_types()
        use = " or ".join(f"{t.__module__}.{t.__name__}" for t in types)
        counts = self.view_counts()
        if counts and view.num_views not in counts:
            raise InputError(
                None,
                f"{method} takes {' or '.join(map(str, counts))} image input(s) but the data "
                f"view {name} gives {view.num_views}" + (f"; use {use}" if use else ""),
            )
        if types and not isinstance(view, types):
            raise InputError(None, f"{method} reads {use} batches, not the data view {name}")

    # ----------------------------------------------------------------------- forward
    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def normalize(self, image: Tensor) -> Tensor:
        """uint8 [0, 255] (or float already in [0, 1]) -> ``(x − mean) / std`` float (in place
        on the new float copy of a uint8 image: same values, a third of the memory traffic)."""
        if image.dtype == torch.uint8:
            return image.float().div_(255.0).sub_(self.norm_mean).div_(self.norm_std)
        return (image.float() - self.norm_mean) / self.norm_std

    def forward(self, image: Tensor) -> Tensor:
        return self.net(self.normalize(image))

    def logits(self, image: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Logits on the target grid `size` (default: the image's), the output of the view's
        `TileGeometry`, centred in the input: a same-padded net's input-sized logits are
        cropped to it, nets with a coarser output are upsampled bilinearly."""
        out = self(image)
        size = tuple(size) if size is not None else tuple(image.shape[-2:])
        have = tuple(out.shape[-2:])
        if have == tuple(image.shape[-2:]) and have != size and centred(have, size):
            y, x = (have[0] - size[0]) // 2, (have[1] - size[1]) // 2
            out = out[..., y : y + size[0], x : x + size[1]]
        elif have != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out

    def batch_logits(self, batch: dict[str, Any]) -> Tensor:
        """Logits of a batch dict on its label grid (whole-slide tiles: the geometry's output,
        ``meta["output"]``; else the image's): what eval steps, `predict_step` and the timing
        callback call; methods that need more of the batch than ``image`` (RAZN's zoomed
        fields) override this."""
        return self.logits(batch["image"], target_size(batch))

    # ------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        label = batch["label"]
        loss = self.criterion(self.batch_logits(batch), label)
        self.log("train/loss", loss, batch_size=label.shape[0], prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        pred = self._eval_step(batch, "val", self.val_cm)
        if (
            batch_idx == 0
            and dataloader_idx == 0
            and self.num_overlays > 0
            and not self.trainer.sanity_checking
            and self.trainer.is_global_zero
        ):
            n = min(self.num_overlays, pred.shape[0])
            names = [f"val_epoch{self.current_epoch:03d}_{i}" for i in range(n)]
            self._save_overlays(batch, pred, names, "val/overlays")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        pred = self._eval_step(batch, "test", self.test_cm)
        self.test_tiles.update(
            pred, batch["label"], self.num_classes, self.ignore_index, batch.get("meta")
        )
        left = self.num_overlays - self._test_overlays_saved
        if left > 0 and self.trainer.is_global_zero:
            n = min(left, pred.shape[0])
            start = self._test_overlays_saved
            names = [f"test_{start + i}" for i in range(n)]
            self._save_overlays(batch, pred, names, "test/overlays")
            self._test_overlays_saved += n

    def _eval_step(self, batch: dict[str, Any], stage: str, cm: ConfusionMatrix) -> Tensor:
        label = batch["label"]
        logits = self.batch_logits(batch)
        loss = self.criterion(logits, label)
        mean = getattr(self, f"{stage}_loss_mean")
        mean.update(loss.detach(), weight=label.shape[0])
        self.log(f"{stage}/loss", mean, on_step=False, on_epoch=True, prog_bar=stage == "val")
        pred = channel_argmax(logits)
        cm.update(pred, label)
        return pred

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        """Per-pixel class probabilities ``(B, C, H, W)`` float16 (on the target view's grid),
        and ``labels`` ``(B, H, W)``: the arg-max of the logits (float16 probabilities tie where
        the top two are within ~5e-4, which would bias an arg-max of ``probs`` to class 0).
        ``probs`` is None while ``predict_probabilities`` is off (`SlideWriter` needs labels
        only, and the soft-max costs as much as a trivial model)."""
        logits = self.batch_logits(batch) if isinstance(batch, dict) else self.logits(batch)
        probs = None
        if self.predict_probabilities:
            probs = torch.softmax(logits.float(), dim=1).to(torch.float16)
        meta = batch.get("meta") if isinstance(batch, dict) else None
        return {"probs": probs, "labels": channel_argmax(logits), "meta": meta}

    # ------------------------------------------------------------------ epoch ends
    def setup(self, stage: str) -> None:
        view = getattr(getattr(self.trainer, "datamodule", None), "view", None)
        if view is not None:
            self.check_view(view)
        # trainer.log_dir broadcasts from rank 0, so it must be read on every rank: here.
        root = self.trainer.log_dir or self.trainer.default_root_dir
        self._overlay_root = Path(root) / "overlays"

    def on_validation_epoch_end(self) -> None:
        result = self._log_scores("val", self.val_cm)
        if result is not None and not self.trainer.sanity_checking:
            self.val_scores = result

    def on_validation_epoch_start(self) -> None:
        self._share_buffers()

    def on_test_epoch_start(self) -> None:
        self._test_overlays_saved = 0
        self.test_tiles.reset()
        self._share_buffers()

    def _share_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank before evaluating.

        DDP broadcasts them before each forward, but not after a manually optimised step
        (Lightning's forward redirection marks that forward as not syncing), so under manual
        optimisation (RAZN) every rank would keep its own statistics and score a different
        model, while the checkpoint holds rank 0's.
        """
        if self.automatic_optimization or self._trainer is None or self.trainer.world_size < 2:
            return
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for buffer in self.buffers():
            torch.distributed.broadcast(buffer.data, src=0)

    def on_test_epoch_end(self) -> None:
        self.test_tile_confusion = self.test_tiles.gather()  # every rank: a collective
        if self.test_cm.update_called:
            self.test_confusion = self.test_cm.compute().cpu().numpy()
        result = self._log_scores("test", self.test_cm)
        if result is not None:
            self.test_scores = result

    def _log_scores(self, stage: str, cm: ConfusionMatrix) -> dict[str, float] | None:
        """Compute (syncs ranks), log finite scores as ``<stage>/<key>``, reset."""
        if not cm.update_called:
            return None
        result = scores(
            cm.compute().cpu().numpy(), self.class_names, self.ordinal, self.class_groups
        )
        cm.reset()
        finite = {f"{stage}/{k}": v for k, v in result.items() if math.isfinite(v)}
        # Values are identical on every rank already; sync_dist only keeps Lightning from
        # warning about unsynced epoch-level values (the key set is identical too, so no hang).
        for name, value in finite.items():
            self.log(name, value, sync_dist=True, prog_bar=name == "val/miou")
        return result

    # --------------------------------------------------------------------- overlays
    @staticmethod
    def _display_image(image: Tensor) -> np.ndarray:
        """(3, H, W) or (V, 3, H, W) -> (H, W, 3) uint8 of view 0."""
        if image.ndim == 4:
            image = image[0]
        image = image.detach().cpu()
        if image.dtype != torch.uint8:
            image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return image.permute(1, 2, 0).numpy()

    def _save_overlays(self, batch: dict[str, Any], pred: Tensor, names: list[str], key: str):
        root = self._overlay_root or Path(self.trainer.default_root_dir) / "overlays"
        pictures = []
        for i, name in enumerate(names):
            panel = overlay_panel(
                self._display_image(batch["image"][i]),
                batch["label"][i].detach().cpu().numpy(),
                pred[i].detach().cpu().numpy(),
                self.class_names,
                self.class_colors,
                ignore=self.ignore_index,
            )
            save_png(root / f"{name}.png", panel)
            pictures.append(panel)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image(key=key, images=pictures, caption=names, step=self.global_step)
