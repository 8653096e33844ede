"""LightningCLI in subclass mode: the experiment YAML picks model and data by `class_path`."""

from __future__ import annotations

import sys

from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningCLI


class WsisegCLI(LightningCLI):
    """Lightning's CLI with the suite's defaults (experiment YAMLs live in experiments/)."""


def run_lightning(args: list[str]) -> WsisegCLI:
    """Run one Lightning subcommand; `args` replace sys.argv so help shows `wsiseg`."""
    saved, sys.argv = sys.argv, ["wsiseg", *args]
    try:
        return _make_cli()
    finally:
        sys.argv = saved


def _make_cli() -> WsisegCLI:
    return WsisegCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": False},
        auto_configure_optimizers=False,
    )
