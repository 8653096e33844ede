"""A trained run's checkpoint -> the method (LightningModule) and the view it was trained with.

A Lightning checkpoint saved through `wsiseg fit/train` holds ``hyper_parameters`` with the
model's ``_class_path`` and ``datamodule_hyper_parameters`` with the View object, so inference
needs nothing but the file. Older or hand-made checkpoints fall back to the run's
``config.yaml`` (LightningCLI writes it next to the ``checkpoints/`` folder), or one given.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from datamodules.errors import InputError
from datamodules.views.base import View
from lightning_modules.cli.legacy import current


@dataclass
class TrainedMethod:
    """A loaded checkpoint: the model (eval mode, CPU), its view and where they came from."""

    model: Any  # a lightning_modules.base.SegmentationTask
    view: View
    class_path: str
    checkpoint: Path
    config: Path | None
    pad_value: int = 255  # the training data's value outside a slide (DMMN: 0)

    @property
    def method(self) -> str:
        return type(self.model).__name__


def _import(class_path: str):
    module, _, name = current(class_path).rpartition(".")
    if not module:
        raise ImportError(f"{class_path!r} is not a dotted class path")
    return getattr(importlib.import_module(module), name)


def run_config(checkpoint: Path, config: str | Path | None = None) -> tuple[dict, Path | None]:
    """The run's LightningCLI config: `config` if given, else config.yaml next to the run."""
    if config is not None:
        candidates = [Path(config)]
        if not candidates[0].is_file():
            raise InputError(config, "config file not found")
    else:
        candidates = [checkpoint.parent / "config.yaml", checkpoint.parent.parent / "config.yaml"]
    for path in candidates:
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as err:
                raise InputError(path, f"cannot read the run config: {err}") from None
            return (data if isinstance(data, dict) else {}), path
    return {}, None


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def method_class(class_path: str | None, where: Path):
    """The SegmentationTask subclass named by `class_path`, or a one-line InputError."""
    from lightning_modules.base import SegmentationTask

    if not class_path:
        raise InputError(
            where,
            "does not say which method made it (no _class_path in its hyper_parameters and no "
            "config.yaml next to it); pass the run's config with --config",
        )
    try:
        cls = _import(class_path)
    except (ImportError, AttributeError, ValueError) as err:
        raise InputError(where, f"unknown method {class_path!r} ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, SegmentationTask)):
        raise InputError(where, f"unknown method {class_path!r}: not a wsiseg SegmentationTask")
    return cls


def view_from(value, where: Path) -> View | None:
    """A View object, or a ``{class_path, init_args}`` mapping as in the experiment YAMLs."""
    if value is None or isinstance(value, View):
        return value
    if isinstance(value, dict) and "class_path" in value:
        try:
            cls = _import(value["class_path"])
        except (ImportError, AttributeError, ValueError) as err:
            raise InputError(where, f"unknown view {value['class_path']!r} ({err})") from None
        if not (isinstance(cls, type) and issubclass(cls, View)):
            raise InputError(where, f"{value['class_path']!r} is not a datamodules View")
        args = dict(value.get("init_args") or {})
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        return cls(**args)
    raise InputError(where, f"cannot make a view from {value!r}")


def load_method(checkpoint: str | Path, config: str | Path | None = None) -> TrainedMethod:
    """Load the method and view of a `wsiseg fit/train` checkpoint (see the module doc)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise InputError(path, f"not a PyTorch checkpoint: {err}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise InputError(path, "not a Lightning checkpoint (no state_dict)")
    hparams = ckpt.get("hyper_parameters") or {}
    data_hparams = ckpt.get("datamodule_hyper_parameters") or {}
    cfg, cfg_path = run_config(path, config)
    model_cfg, data_cfg = _section(cfg, "model"), _section(cfg, "data")
    class_path = (model_cfg.get("class_path") if config else None) or hparams.get("_class_path")
    class_path = class_path or model_cfg.get("class_path")
    cls = method_class(class_path, path)
    view = None if config else view_from(data_hparams.get("view"), path)
    view = view or view_from(_section(data_cfg, "init_args").get("view"), cfg_path or path)
    if view is None:
        raise InputError(
            path,
            "cannot tell which view (patch geometry) the method was trained with: the checkpoint "
            "stores none and no config.yaml was found next to it; pass the run's config with "
            "--config",
        )
    try:
        model = cls.load_from_checkpoint(path, map_location="cpu")
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"cannot load {cls.__name__} from it: {err}") from None
    model.eval()
    pad = data_hparams.get("pad_value") if not config else None
    pad = pad if pad is not None else _section(data_cfg, "init_args").get("pad_value", 255)
    return TrainedMethod(model, view, class_path, path, cfg_path, int(pad))
