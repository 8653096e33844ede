"""Command lines for the CLI tests, built as `make train` builds them.

Experiment YAML, trainer overlay, the experiment's CPU schedule if asked, further overlays, the
test's tiny overlay, then the paths that differ per test on the command line, so nothing is
written under the repository (the CLI puts experiments/defaults.yaml under all of them).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lightning_modules.cli.experiments import cpu_schedule as named_schedule

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CONF = ROOT / "tests" / "conf"


def experiment_args(
    command: str,
    exp: str | Path,
    data: Path,
    out: Path,
    *,
    tiny: str | Path,
    trainer: str = "cpu",
    overlays: tuple[str | Path, ...] = (),
    extra: tuple[str, ...] = (),
    cpu_schedule: bool = False,
) -> list[str]:
    """`exp`: a name under experiments/ or a YAML path; `overlays` are paths or names relative
    to experiments/ (e.g. "schedule/razn_cpu.yaml"); `cpu_schedule` adds the one the
    experiment names, as `make train TRAINER=cpu` does."""
    yaml = exp if isinstance(exp, Path) else EXPERIMENTS / f"{exp}.yaml"
    configs = [yaml, EXPERIMENTS / "trainer" / f"{trainer}.yaml"]
    configs += [named_schedule(configs[0])] if cpu_schedule else []
    configs += [EXPERIMENTS / o for o in overlays] + [CONF / tiny]
    return [
        command,
        *[a for path in configs for a in ("--config", str(path))],
        *extra,
        "--data.init_args.root", str(data),
        "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out),
    ]  # fmt: skip


def short_train(test_batches: int = 2, train_batches: int = 2) -> list[str]:
    """One epoch of 2 training batches, 1 validation batch, no sanity check: the whole `train`
    path (fit, test, report) in seconds."""
    return [
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", str(train_batches),
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", str(test_batches),
        "--trainer.num_sanity_val_steps", "0",
    ]  # fmt: skip


def wsiseg_command() -> list[str]:
    """The installed console script (as users run it), else `python -m` the CLI entry."""
    script = Path(sys.executable).with_name("wsiseg")
    if script.is_file():
        return [str(script)]
    found = shutil.which("wsiseg")
    return [found] if found else [sys.executable, "-m", "lightning_modules.cli.main"]
