"""LightningCLI in subclass mode: the experiment YAML picks model and data by `class_path`.

`wsiseg train` is fit + test of the best checkpoint + a results report in the run folder, the
one-command path behind `make train`.
"""

from __future__ import annotations

import sys

from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningCLI

from .config_errors import WsisegArgumentParser
from .loggers import WandbOptions, make_wandb_logger

PAPER = "paper"


class WsisegCLI(LightningCLI):
    """Lightning's CLI plus `--schedule` (which training schedule a run used) and `--wandb.*`
    (a wandb logger added next to the experiment's CSV logger)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(WandbOptions, "wandb")
        parser.add_argument(
            "--schedule",
            type=str,
            default=PAPER,
            help="the training schedule's description, printed and stored with the results "
            "(experiments/schedule/*.yaml set it; default: the paper's settings)",
        )

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config[self.subcommand] if self.subcommand else self.config
        options = WandbOptions(**dict(config.get("wandb") or {}))
        if not options.enabled or self.subcommand not in (None, "fit", "validate", "test"):
            return
        csv = next((lg for lg in self.trainer.loggers if hasattr(lg, "name")), None)
        experiment = getattr(csv, "name", "") or ""
        save_dir = getattr(csv, "save_dir", None) or self.trainer.default_root_dir
        wandb = make_wandb_logger(options, self.model, self.datamodule, experiment, save_dir)
        self.trainer.loggers = [*self.trainer.loggers, wandb]


def _make_cli(args: list[str], run: bool) -> WsisegCLI:
    """Build the CLI with `args` as sys.argv; help and errors say `wsiseg` (``prog``).

    sys.argv[0] stays the real script: DDP's launcher re-runs it for the other ranks while
    `fit` runs inside this call.
    """
    saved, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "wsiseg", *args]
    try:
        return WsisegCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": False},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "wsiseg"},
            parser_class=WsisegArgumentParser,  # config mistakes: one line naming the YAML
            run=run,
        )
    finally:
        sys.argv = saved


def run_lightning(args: list[str]) -> WsisegCLI:
    """One Lightning subcommand: fit, validate, test or predict."""
    return _make_cli(args, run=True)


def run_train(args: list[str]) -> int:
    """Fit, test the best checkpoint, print and save the results table."""
    from .report import print_schedule, write_report

    if args and args[0] in ("-h", "--help"):
        print(
            "usage: wsiseg train --config EXPERIMENT.yaml [--config OVERLAY.yaml ...]"
            " [--key value]\n"
            "\nFit, then test the best checkpoint (val/miou), then print the results table and\n"
            "write results.md/results.json and overlays under the run folder. Takes the same\n"
            "options as `wsiseg fit` (see `wsiseg fit --help`)."
        )
        return 0
    cli = _make_cli(args, run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    schedule = cli.config.get("schedule", PAPER)
    if trainer.is_global_zero:
        print_schedule(schedule, args)
    trainer.fit(model, datamodule=data)
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    trainer.test(model, datamodule=data, ckpt_path="best" if best else None)
    if trainer.is_global_zero:
        write_report(trainer, model, schedule, best)
    return 0
