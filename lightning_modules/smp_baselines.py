"""`SMPSegmenter`: segmentation_models_pytorch baselines on the shared task.

The TIGER stroma project trained smp ``Unet(vgg16)``, ``Unet(resnet34)`` and ``FPN(resnet34)``
with smp's Dice loss, Adam 1e-4 -> 1e-5 after epoch 15, 25 epochs, batch 16. Any smp
architecture and encoder can be named here, so the class is also the single-scale baseline for
the other methods' data (a multi-view batch is read from its first, target view).

Binary tasks (two classes, e.g. ``tiger_stroma``) use one output channel and a sigmoid, as the
project did; the net's output ``z`` is returned as the two-class logits ``[0, z]``, whose
softmax is ``[1 - sigmoid(z), sigmoid(z)]`` and whose arg-max is ``z > 0``, so the shared
task's scores, overlays and probabilities need no special case.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from datamodules.errors import InputError
from lightning_modules.base import SegmentationTask
from lightning_modules.nets.weights import (
    load_encoder_weights,
    resolve_encoder_weights,
    torchvision_imagenet_urls,
)
from lightning_modules.optim import milestone_decay

MODES = ("binary", "multiclass")
DICE_CLASSES = ("all", "positive")


class BinaryAsTwoClass(nn.Module):
    """A one-channel net as two-class logits ``[0, z]`` (see the module doc)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


class SMPDice(nn.Module):
    """smp's Dice loss on our logits; ignored pixels (255) count for neither side.

    ``classes="all"``: the mean Dice over every class (for binary, stroma and rest from
    ``[1 - sigmoid(z), sigmoid(z)]``). ``classes="positive"`` (binary only): smp's binary
    Dice of the positive class alone; with a majority positive class it pulls every logit up
    until the sigmoid saturates on "all positive" (see docs/smp_tiger.md).
    """

    def __init__(self, ignore_index: int, classes: str = "all"):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.positive = classes == "positive"
        kind = "binary" if self.positive else "multiclass"
        self.dice = DiceLoss(kind, from_logits=True, ignore_index=ignore_index)

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        return self.dice(logits[:, 1:2] if self.positive else logits, label)


def build_smp(arch: str, encoder: str, out_channels: int, **kwargs) -> nn.Module:
    """An smp model with random weights; unknown names are an `InputError` listing the choices."""
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(
            arch, encoder_name=encoder, encoder_weights=None, classes=out_channels, **kwargs
        )
    except KeyError as err:
        text = str(err.args[0]) if err.args else str(err)
        if "architecture" in text:
            choices = ", ".join(smp.MODEL_ARCHITECTURES_MAPPING)
            msg = f"unknown smp architecture {arch!r}; choose from {choices}"
            raise InputError(None, msg) from None
        if "encoder" in text:
            raise InputError(
                None,
                f"unknown smp encoder {encoder!r}; see segmentation_models_pytorch.encoders."
                "get_encoder_names() (e.g. resnet34, vgg16, efficientnet-b0, tu-<timm name>)",
            ) from None
        raise
    except TypeError as err:  # a wrong architecture keyword
        raise InputError(None, f"smp {arch}: {err}") from None


class SMPSegmenter(SegmentationTask):
    """Any smp architecture/encoder with Dice loss, Adam and a step learning-rate schedule.

    Args:
        arch: smp architecture (Unet, FPN, UnetPlusPlus, DeepLabV3Plus, Linknet, ...).
        encoder: smp encoder name (vgg16, resnet34, ...).
        encoder_weights: ``imagenet`` (a local copy of torchvision's file; never downloaded),
            ``null`` (random initialisation) or a path to a state dict.
        num_classes: output classes (2 for the stroma task, 7 for all TIGER classes).
        class_map: class map name for class names, colours and ordinal scores.
        mode: "binary" (one sigmoid channel; needs 2 classes) or "multiclass" (softmax);
            None: binary for 2 classes, else multiclass.
        dice_classes: "all" (mean Dice over the classes) or, binary only, "positive" (smp's
            binary Dice of the positive class alone; see `SMPDice`).
        lr, weight_decay: Adam settings (project: 1e-4, 0).
        lr_milestones, lr_gamma: MultiStepLR over epochs (project: [15], 0.1: 1e-5 from epoch
            15 on).
        arch_kwargs: extra smp model arguments (e.g. ``decoder_channels``).
        num_overlays: overlay pictures per validation epoch and for the test set.
    """

    def __init__(
        self,
        arch: str = "Unet",
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        num_classes: int = 2,
        class_map: str | None = "tiger_stroma",
        mode: str | None = None,
        dice_classes: str = "all",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        arch_kwargs: dict | None = None,
        num_overlays: int = 4,
    ) -> None:
        mode = mode or ("binary" if num_classes == 2 else "multiclass")
        if mode not in MODES:
            raise InputError(None, f"mode must be one of {MODES}, got {mode!r}")
        if mode == "binary" and num_classes != 2:
            raise InputError(None, f"binary mode needs num_classes 2, got {num_classes}")
        if dice_classes not in DICE_CLASSES or (dice_classes == "positive" and mode != "binary"):
            raise InputError(
                None,
                f"dice_classes must be 'all', or 'positive' in binary mode; got {dice_classes!r}",
            )
        self.mode = mode
        super().__init__(num_classes=num_classes, class_map=class_map, num_overlays=num_overlays)

    def configure_models(self) -> None:
        hp = self.hparams
        out = 1 if self.mode == "binary" else hp.num_classes
        net = build_smp(hp.arch, hp.encoder, out, **(hp.arch_kwargs or {}))
        self.output_stride = int(getattr(net.encoder, "output_stride", 32))
        path = resolve_encoder_weights(
            hp.encoder_weights, hp.encoder, torchvision_imagenet_urls(hp.encoder)
        )
        if path is not None:
            loaded = load_encoder_weights(net.encoder, path)
            print(f"{hp.encoder} encoder: {loaded} tensors from {path}", flush=True)
        self.net = BinaryAsTwoClass(net) if self.mode == "binary" else net

    def configure_losses(self) -> None:
        self.criterion = SMPDice(self.ignore_index, self.hparams.dice_classes)

    def forward(self, image: Tensor) -> Tensor:
        if image.ndim == 5:  # (B, V, 3, H, W) from a multi-view DataModule: the target view
            image = image[:, 0]
        return super().forward(image)

    def check_view(self, view) -> None:
        """Any view (a multi-view batch is read from view 0) whose side the encoder divides."""
        super().check_view(view)
        size = getattr(view, "size", None)
        if isinstance(size, int) and size % self.output_stride:
            raise InputError(
                None,
                f"{self.hparams.arch}({self.hparams.encoder}) needs patch sides divisible by "
                f"{self.output_stride}; the data's view size is {size}",
            )

    def lr_schedule(self, optimizer) -> dict | None:
        """MultiStepLR over epochs; the optimizer is the base's Adam (from ``lr`` and
        ``weight_decay``: the class has no ``optimizer`` argument)."""
        hp = self.hparams
        milestones = [15] if hp.lr_milestones is None else list(hp.lr_milestones)
        if not milestones:
            return None
        scheduler = milestone_decay(optimizer, milestones, hp.lr_gamma)
        return {"scheduler": scheduler, "interval": "epoch"}
