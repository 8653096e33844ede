"""LightningCLI in subclass mode: the experiment YAML picks model and data by `class_path`.

`wsiseg train` is fit + test of the best checkpoint + a results report in the run folder, the
one-command path behind `make train`.
"""

from __future__ import annotations

import sys

from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lightning_modules.cli.config_errors import WsisegArgumentParser, config_files, defining_file
from lightning_modules.cli.experiments import DEFAULTS, schedule_file
from lightning_modules.cli.loggers import WandbOptions, make_wandb_logger
from lightning_modules.cli.report import PAPER, print_schedule, write_report
from lightning_modules.cli.resume import (
    claim_new_run,
    plan_resume,
    point_logger_at,
    wandb_run_id,
)


class WsisegCLI(LightningCLI):
    """Lightning's CLI on top of experiments/defaults.yaml, plus `--schedule` (which training
    schedule a run used), `--cpu_schedule` (the reduced schedule an experiment names) and
    `--wandb.*` (a wandb logger next to the experiment's CSV logger). ``--ckpt_path last|FILE``
    of fit (``resume_from`` for `wsiseg train`) continues that run in its own run folder."""

    def __init__(self, *args, resume_from: str | None = None, **kwargs) -> None:
        self.resume_from = resume_from
        self.resumed_run = None  # the run folder a resumed run continues in
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        """Check the ``cpu_schedule`` name; resolve ``--ckpt_path`` before the logger picks a new
        version folder (lightning_modules/cli/resume.py says why Lightning alone starts a resumed
        run afresh)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("cpu_schedule"):  # a name no schedule file has: one line naming the YAML
            args = sys.argv[1:]
            given = any(a.split("=")[0] == "--cpu_schedule" for a in args)
            named_in = None if given else defining_file("cpu_schedule", config_files(args))
            schedule_file(config["cpu_schedule"], named_in)
        if self.subcommand not in (None, "fit"):
            return
        ckpt = config.get("ckpt_path") if self.subcommand else self.resume_from
        if ckpt is None:
            claim_new_run(config.get("trainer"), rank_zero_only.rank)
            return
        plan = plan_resume(str(ckpt), config.get("trainer"))
        if self.subcommand:
            config["ckpt_path"] = plan.ckpt_path
        else:
            self.resume_from = plan.ckpt_path
        if plan.run_dir is not None:
            point_logger_at(config["trainer"], plan.run_dir)
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
            self.resumed_run = plan.run_dir
        else:
            claim_new_run(config.get("trainer"), rank_zero_only.rank)
        if rank_zero_only.rank == 0:
            where = plan.run_dir or "a new run folder"
            what = f"resuming from {plan.ckpt_path} in {where}"
            print(f"wsiseg: {what if plan.ckpt_path else 'nothing to resume: new run'}", flush=True)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(WandbOptions, "wandb")
        parser.add_argument(
            "--schedule",
            type=str,
            default=PAPER,
            help="the training schedule's description, printed and stored with the results "
            "(experiments/schedule/*.yaml set it; default: the paper's settings)",
        )
        parser.add_argument(
            "--cpu_schedule",
            type=str | None,
            default=None,
            help="the experiment's reduced CPU schedule, experiments/schedule/<name>.yaml: "
            "`make train TRAINER=cpu` adds it (this key only names it)",
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
        run_id = None  # remembered in the run folder, so a resumed run continues the wandb run
        if csv is not None and rank_zero_only.rank == 0:
            run_id = wandb_run_id(csv.log_dir, resuming=self.resumed_run is not None)
        wandb = make_wandb_logger(
            options, self.model, self.datamodule, experiment, save_dir, run_id=run_id
        )
        self.trainer.loggers = [*self.trainer.loggers, wandb]


def _make_cli(args: list[str], run: bool, resume_from: str | None = None) -> WsisegCLI:
    """Build the CLI with `args` as sys.argv; help and errors say `wsiseg` (``prog``).

    sys.argv[0] stays the real script: DDP's launcher re-runs it for the other ranks while
    `fit` runs inside this call.
    """
    saved, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "wsiseg", *args]
    defaults = {"default_config_files": [str(DEFAULTS)]}  # under every --config
    per_command = {name: defaults for name in LightningCLI.subcommands()} if run else defaults
    try:
        return WsisegCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": False},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "wsiseg", **per_command},
            parser_class=WsisegArgumentParser,  # config mistakes: one line naming the YAML
            run=run,
            resume_from=resume_from,
        )
    finally:
        sys.argv = saved


def run_lightning(args: list[str]) -> WsisegCLI:
    """One Lightning subcommand: fit, validate, test or predict."""
    return _make_cli(args, run=True)


def run_train(args: list[str]) -> int:
    """Fit, test the best checkpoint, print and save the results table."""
    from lightning_modules.cli.report import PAPER

    if args and args[0] in ("-h", "--help"):
        print(
            "usage: wsiseg train --config EXPERIMENT.yaml [--config OVERLAY.yaml ...]"
            " [--key value]\n"
            "\nFit, then test the best checkpoint (val/miou), then print the results table and\n"
            "write results.md/results.json and overlays under the run folder. Takes the same\n"
            "options as `wsiseg fit` (see `wsiseg fit --help`), --ckpt_path included:\n"
            "--ckpt_path last continues the experiment's latest run in its own folder."
        )
        return 0
    args, resume_from = _pop_option(args, "--ckpt_path")
    cli = _make_cli(args, run=False, resume_from=resume_from)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    schedule = cli.config.get("schedule", PAPER)
    if trainer.is_global_zero:
        print_schedule(schedule, args)
    trainer.fit(model, datamodule=data, ckpt_path=cli.resume_from)
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    trainer.test(model, datamodule=data, ckpt_path=best)
    if trainer.is_global_zero:
        write_report(trainer, model, schedule, best)
    return 0


def _pop_option(args: list[str], name: str) -> tuple[list[str], str | None]:
    """`args` without ``name VALUE`` / ``name=VALUE``, and the value (the last one given)."""
    rest, value, i = [], None, 0
    while i < len(args):
        if args[i] == name and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if args[i].startswith(name + "="):
            value = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return rest, value
