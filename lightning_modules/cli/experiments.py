"""Where the experiment YAMLs live, the overlay every run starts from, and schedule names.

`experiments/defaults.yaml` holds what every experiment repeated (seed, run folder, CSV logger,
checkpoint / resume / learning-rate callbacks); the CLI reads it before any ``--config``, so an
experiment YAML keeps only what it reproduces. Each experiment names its reduced CPU schedule
(``cpu_schedule: <name>`` = experiments/schedule/<name>.yaml), which `make train TRAINER=cpu`
adds: the CLI and the tests resolve the name here (the Makefile reads the key with sed and
checks the file itself, so that a typo fails before anything is installed).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from datamodules.errors import InputError

#: the checkout's experiments/ folder (the suite runs from its checkout: `make install` is -e)
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
#: the shared overlay under every experiment (LightningCLI's default config file)
DEFAULTS = EXPERIMENTS / "defaults.yaml"
SCHEDULES = EXPERIMENTS / "schedule"


def schedule_names() -> list[str]:
    return sorted(p.stem for p in SCHEDULES.glob("*.yaml"))


def schedule_file(name: str, named_in: str | Path | None = None) -> Path:
    """experiments/schedule/<name>.yaml, or an `InputError` naming the YAML that gave `name`."""
    path = SCHEDULES / f"{name}.yaml"
    if not path.is_file():
        have = ", ".join(schedule_names())
        problem = f"cpu_schedule {name!r}: there is no experiments/schedule/{path.name}"
        raise InputError(named_in, f"{problem} (have: {have})")
    return path


def cpu_schedule(experiment: str | Path) -> Path:
    """The reduced CPU schedule an experiment YAML names with its ``cpu_schedule`` key."""
    path = Path(experiment)
    tree = yaml.safe_load(path.read_text()) or {}
    name = tree.get("cpu_schedule") if isinstance(tree, dict) else None
    if not name:
        raise InputError(path, "names no cpu_schedule (a file stem under experiments/schedule/)")
    return schedule_file(str(name), path)
