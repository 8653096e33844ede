"""`--ckpt_path last` (or a checkpoint file) continues the same run, in the same run folder.

Lightning alone would not: a new process gives the CSV logger a new ``version_N`` folder, so
``last`` looks for checkpoints in that new, empty folder and training silently starts from
scratch; LightningCLI then also refuses to write config.yaml into an existing run folder, and the
CSV logger deletes an existing metrics.csv. Before the trainer is built, `plan_resume` finds the
run folder (the newest ``last*.ckpt`` under ``<save_dir>/<name>/``, or the folder of the given
file) and points the logger at it (``version``; a logger that pins its ``version`` resumes only
that folder); `AppendingCSVLogger` keeps metrics.csv and
`wandb_run_id` lets a wandb run resume under the same id.
"""

from __future__ import annotations

import csv
import glob
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from datamodules.errors import InputError

LIGHTNING_CSV = (
    "pytorch_lightning.loggers.CSVLogger",
    "pytorch_lightning.loggers.csv_logs.CSVLogger",
)
WANDB_ID_FILE = "wandb_run_id"
#: The run folder rank 0 claimed, for the DDP ranks it launches (they parse the config again).
RUN_ENV = "WSISEG_RUN_VERSION"


@dataclass
class ResumePlan:
    """What to resume: the checkpoint (None: nothing to resume, start afresh) and its run folder
    (None: the checkpoint belongs to no run folder of this experiment, so a new one is made)."""

    ckpt_path: str | None
    run_dir: Path | None


def _logger_configs(trainer_config) -> list:
    logger = trainer_config.get("logger") if trainer_config is not None else None
    items = logger if isinstance(logger, list) else [logger]
    return [lg for lg in items if hasattr(lg, "get") and lg.get("init_args") is not None]


def run_logger(trainer_config):
    """The config of the logger that owns the run folder (the first with save_dir and name)."""
    for lg in _logger_configs(trainer_config):
        args = lg["init_args"]
        if args.get("save_dir") is not None and args.get("name") is not None:
            return lg
    return None


def latest_last_checkpoint(experiment_dir: Path, version: str = "*") -> Path | None:
    """The newest ``last*.ckpt`` (``last.ckpt`` or `ResumeCheckpoint`'s ``last-step.ckpt``) of
    any run of the experiment, or of run folder `version` only."""
    found = [p for p in experiment_dir.glob(f"{version}/checkpoints/last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def plan_resume(ckpt_path: str, trainer_config) -> ResumePlan:
    """Where `ckpt_path` ("last" or a file) resumes; "last" with no checkpoint starts afresh."""
    logger = run_logger(trainer_config)
    experiment_dir, version = None, "*"
    if logger is not None:
        args = logger["init_args"]
        experiment_dir = Path(str(args["save_dir"])) / str(args["name"])
        pinned = args.get("version")  # a pinned run folder (a study's): resume only that one
        if isinstance(pinned, int) and not isinstance(pinned, bool):
            version = f"version_{pinned}"  # CSVLogger's folder name for an int version
        elif isinstance(pinned, str):
            version = glob.escape(pinned)
    if ckpt_path == "last":
        if experiment_dir is None:
            return ResumePlan("last", None)  # no run folders to search: Lightning's own lookup
        found = latest_last_checkpoint(experiment_dir, version)
        if found is None:
            return ResumePlan(None, None)
        return ResumePlan(str(found), found.parent.parent)
    path = Path(ckpt_path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    run_dir = path.resolve().parent.parent
    same_experiment = experiment_dir is not None and path.resolve().parent.name == "checkpoints"
    if same_experiment and run_dir.parent == experiment_dir.resolve():
        return ResumePlan(str(path), run_dir)
    return ResumePlan(str(path), None)


def point_logger_at(trainer_config, run_dir: Path) -> None:
    """Make the run logger write into `run_dir` again, appending to its metrics.csv."""
    logger = run_logger(trainer_config)
    logger["init_args"]["version"] = run_dir.name
    if logger.get("class_path") in LIGHTNING_CSV:
        logger["class_path"] = f"{__name__}.AppendingCSVLogger"


def claim_new_run(trainer_config, rank: int) -> Path | None:
    """Give a new run its own ``version_N`` folder, made with an atomic mkdir.

    Lightning's CSVLogger takes the highest existing version + 1 and creates the folder only
    when it first writes, so two runs of one experiment started together both pick the same
    folder. Rank 0 creates it here (retrying on a clash) and tells the ranks it launches.
    """
    logger = run_logger(trainer_config)
    if logger is None or logger["init_args"].get("version") is not None:
        return None
    args = logger["init_args"]
    if rank != 0:
        if os.environ.get(RUN_ENV):
            args["version"] = os.environ[RUN_ENV]
        return None
    experiment_dir = Path(str(args["save_dir"])) / str(args["name"])
    made = [d for d in (experiment_dir, *experiment_dir.parents) if not d.exists()]
    experiment_dir.mkdir(parents=True, exist_ok=True)
    taken = [p.name.split("_", 1)[1] for p in experiment_dir.glob("version_*")]
    n = max((int(t) for t in taken if t.isdigit()), default=-1) + 1
    while True:
        run_dir = experiment_dir / f"version_{n}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            n += 1
            continue
        args["version"] = run_dir.name
        os.environ[RUN_ENV] = run_dir.name
        _CLAIMED.append([run_dir, *made])
        return run_dir


#: folders `claim_new_run` made in this process (run folder first, then the parents it made)
_CLAIMED: list[list[Path]] = []


def release_unused_claims() -> None:
    """Remove claimed folders that stayed empty: a run refused before it wrote anything (a bad
    config or input) leaves nothing behind, as before run folders were claimed up front."""
    while _CLAIMED:
        for folder in _CLAIMED.pop():
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing metrics.csv (Lightning's writer deletes it) and appends under its header;
    a new metric key rewrites the file with the wider header, as Lightning's does. A row the
    interrupted run logged after its checkpoint is logged again by the resumed run: the old one
    (same epoch, step and keys) is dropped."""

    _old_rows = 0  # rows of the interrupted run still in the file

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        header, rows = self._read()
        self._old_rows = len(rows)
        self.metrics_keys = sorted(header)
        if header != self.metrics_keys:  # Lightning writes sorted headers; keep it that way
            self._rewrite_with_new_header(self.metrics_keys)

    def _read(self) -> tuple[list[str], list[dict]]:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            return list(reader.fieldnames or []), list(reader)

    def save(self) -> None:
        super().save()
        if not self._old_rows:
            return
        header, rows = self._read()
        old, new = rows[: self._old_rows], rows[self._old_rows :]

        def key(row: dict) -> tuple:
            return row.get("epoch"), row.get("step"), frozenset(k for k, v in row.items() if v)

        again = {key(r) for r in new}
        kept = [r for r in old if key(r) not in again]
        if len(kept) < len(old):
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept + new)
            self._old_rows = len(kept)


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSVLogger for a resumed run: metrics.csv continues instead of restarting."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_run_id(run_dir: str | Path, resuming: bool) -> str:
    """The wandb run id of a run folder: read back when resuming, else new (and remembered)."""
    path = Path(run_dir) / WANDB_ID_FILE
    if resuming and path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:8]
    os.makedirs(path.parent, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id
