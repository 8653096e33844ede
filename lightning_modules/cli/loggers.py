"""wandb for comparisons across runs: added next to the CSV logger, offline without an API key.

`experiments/logger/wandb.yaml` turns it on. The run is grouped by experiment family (the part
of the experiment name before the first "_": dmmn, razn, smp, ...) and tagged with the method
and the data, so runs of all methods on the same slides line up on one dashboard.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WandbOptions:
    """`--wandb.*` options of `wsiseg fit/train` (see experiments/logger/wandb.yaml)."""

    enabled: bool = False
    project: str = "wsiseg"
    entity: str | None = None
    group: str | None = None  # default: the experiment family
    name: str | None = None  # default: the experiment
    tags: list[str] = field(default_factory=list)  # added to method and data tags
    offline: bool | None = None  # default: offline when no API key is configured
    log_model: bool = False


def has_api_key() -> bool:
    """An API key in WANDB_API_KEY or ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def describe_run(model, datamodule, experiment: str) -> tuple[str, list[str]]:
    """(group, tags): experiment family; method (+ architecture) and data folder."""
    family = experiment.split("_")[0] if experiment else type(model).__name__.lower()
    method = type(model).__name__
    arch = getattr(getattr(model, "hparams", {}), "get", lambda *_: None)("arch")
    tags = [method] + ([f"{method}-{arch}"] if arch else [])
    root = getattr(getattr(datamodule, "hparams", None), "root", None)
    if root:
        tags.append(f"data:{Path(str(root)).name}")
    return family, tags


def make_wandb_logger(
    options: WandbOptions, model, datamodule, experiment: str, save_dir: str, run_id=None
):
    """A WandbLogger for this run; prints where an offline run is and how to sync it.
    `run_id`: the run's wandb id (a resumed run passes its first id: wandb continues that run)."""
    from pytorch_lightning.loggers import WandbLogger

    offline = (not has_api_key()) if options.offline is None else options.offline
    group, tags = describe_run(model, datamodule, experiment)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        project=options.project,
        entity=options.entity,
        group=options.group or group,
        tags=sorted(set(tags + list(options.tags))),
        name=options.name or experiment or None,
        save_dir=save_dir,
        offline=offline,
        log_model=options.log_model,
        id=run_id,
        resume="allow" if run_id else None,
    )
    if offline:
        print(
            f"wandb: offline (no API key); the run is written under {Path(save_dir) / 'wandb'}; "
            f"upload it later with `wandb sync {Path(save_dir) / 'wandb' / 'offline-run-*'}`",
            flush=True,
        )
    return logger
