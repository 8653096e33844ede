"""Optimizers and learning-rate decays built from a method's settings, in one place.

A method names its optimizer with a string argument typed `OptimizerName` (or a narrower
``Literal``), so the CLI's parser refuses an unknown name while it reads the config (exit 2,
one line); `OptimizerSettings` checks the same again for methods built from Python and builds
the optimizer. The SGD/Adam choice, what ``momentum`` and ``weight_decay`` mean for each, and
the decay schedules are written here once, for `SegmentationTask.configure_optimizers` and for
RAZN's one-optimizer-per-network setup alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from datamodules.errors import InputError

OptimizerName = Literal["sgd", "adam"]
"""The optimizers a method can name (``optimizer: sgd`` in an experiment YAML)."""
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
AdamOnly = Literal["adam"]
"""For methods that train with Adam only (RAZN and its baselines); the argument stays so
schedules can name it."""

_DISPLAY = {"sgd": "SGD", "adam": "Adam"}


@dataclass(frozen=True)
class OptimizerSettings:
    """Which optimizer, and its settings; ``momentum`` is SGD's (Adam has none).

    ``choices``: the names the method accepts; ``owner``: the method, for error messages.
    """

    name: str
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    choices: tuple[str, ...] = OPTIMIZERS
    owner: str = "the method"

    def __post_init__(self) -> None:
        if self.name not in self.choices:
            allowed = " or ".join(_DISPLAY.get(c, c) for c in self.choices)
            names = ", ".join(repr(c) for c in self.choices)
            raise InputError(
                None,
                f"{self.owner} trains with {allowed}: optimizer must be {names}, got {self.name!r}",
            )
        if not self.lr > 0:
            raise InputError(None, f"lr must be > 0, got {self.lr}")
        for key in ("momentum", "weight_decay"):
            if not getattr(self, key) >= 0:
                raise InputError(None, f"{key} must be >= 0, got {getattr(self, key)}")

    @classmethod
    def from_hparams(
        cls, hp: Mapping[str, Any], choices: tuple[str, ...] = OPTIMIZERS, owner: str = ""
    ) -> OptimizerSettings:
        """From a method's hyper-parameters ``optimizer`` (absent: Adam), ``lr``, ``momentum``
        and ``weight_decay`` (absent: 0)."""
        return cls(
            name=hp.get("optimizer", "adam"),
            lr=hp["lr"],
            momentum=hp.get("momentum", 0.0),
            weight_decay=hp.get("weight_decay", 0.0),
            choices=tuple(choices),
            owner=owner or "the method",
        )

    def build(self, params: Iterable) -> torch.optim.Optimizer:
        """The optimizer over ``params`` (tensors or parameter-group dicts, whose own ``lr``
        wins over ``self.lr``)."""
        if self.name == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


def step_decay(optimizer: torch.optim.Optimizer, every: int, gamma: float):
    """lr × ``gamma`` every ``every`` scheduler steps (RAZN: 0.1 every 50k iterations)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, int(every), gamma)


def milestone_decay(optimizer: torch.optim.Optimizer, milestones: Iterable[int], gamma: float):
    """lr × ``gamma`` at each milestone (the smp project: 0.1 at epoch 15)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=gamma)
