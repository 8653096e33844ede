"""Run a study's runs one after another, each a `wsiseg train` subprocess (a crash, an
out-of-memory kill or a bad config ends that run only).

A run is finished when its folder holds results.json (written last); one with a ``last*.ckpt``
is resumed (``--ckpt_path last`` continues that folder); a folder with neither, left by a run
that died before its first checkpoint, is moved aside to ``seed_N.failed-K`` (kept, not
overwritten) and the run starts afresh. Progress (done / left / ETA) comes from the folders, so
a killed study picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lightning_modules.cli.study.plan import Run, Study

RESULTS = "results.json"
RUN_INFO = "study_run.json"  # wall time and command of a finished run


def python_command() -> list[str]:
    """How to start `wsiseg` with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "lightning_modules.cli.main"]


def is_finished(run: Run) -> bool:
    return (run.run_dir / RESULTS).is_file()


def has_checkpoint(run: Run) -> bool:
    return any(p.is_file() for p in (run.run_dir / "checkpoints").glob("last*.ckpt"))


def wall_time(run: Run) -> float | None:
    try:
        return float(json.loads((run.run_dir / RUN_INFO).read_text())["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _eta(study: Study, left: int) -> str:
    times = [t for t in (wall_time(r) for r in study.runs if is_finished(r)) if t is not None]
    if not times or not left:
        return "ETA unknown" if left else "nothing left"
    seconds = sum(times) / len(times) * left
    return f"ETA {seconds / 60:.1f} min ({sum(times) / len(times) / 60:.1f} min per run)"


def progress(study: Study) -> str:
    done = sum(is_finished(r) for r in study.runs)
    left = len(study.runs) - done
    return f"{done}/{len(study.runs)} runs done, {left} left, {_eta(study, left)}"


def move_aside(run: Run) -> Path | None:
    """Keep a dead run's folder that holds no checkpoint under another name."""
    if not run.run_dir.exists() or has_checkpoint(run) or is_finished(run):
        return None
    k = 1
    while (target := run.run_dir.with_name(f"{run.run_dir.name}.failed-{k}")).exists():
        k += 1
    run.run_dir.rename(target)
    return target


def log_path(study: Study, run: Run) -> Path:
    return study.folder / "logs" / f"{run.experiment}-seed_{run.seed}.log"


def run_one(study: Study, run: Run, prefix: list[str] | None = None) -> int:
    """One run in a subprocess, its output shown and appended to the study's log of it."""
    moved = move_aside(run)
    if moved is not None:
        print(f"study: {run.run_dir} held no checkpoint and no results; kept as {moved}")
    if has_checkpoint(run):
        print(f"study: resuming {run.label} from its last checkpoint", flush=True)
    cmd = [*(prefix or []), *python_command(), *run.args]
    log = log_path(study, run)
    log.parent.mkdir(parents=True, exist_ok=True)
    start, cpu = time.monotonic(), _children_cpu()
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        child = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        previous = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        try:
            for line in child.stdout:
                sys.stdout.write(line)
                out.write(line)
            rc = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the child too: let it save and stop
            rc = child.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    if rc == 0 and is_finished(run):
        info = {
            "wall_s": round(time.monotonic() - start, 1),
            "cpu_s": round(_children_cpu() - cpu, 1),  # user + system, its workers included
            "command": cmd,
        }
        (run.run_dir / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    elif rc == 0:
        rc = 1  # exited cleanly but wrote no results: count as failed
    return rc


def run_study(study: Study, only: list[int] | None = None) -> int:
    """Every unfinished run (or the runs of `only`); 0 when all of them are finished."""
    chosen = [r for r in study.runs if only is None or r.index in only]
    failed: list[tuple[Run, int]] = []
    prefix = _srun_prefix()
    for run in chosen:
        if is_finished(run):
            print(f"study {study.name}: [{run.index + 1}/{len(study.runs)}] {run.label}: "
                  f"finished, skipped ({run.run_dir})", flush=True)  # fmt: skip
            continue
        print(f"\nstudy {study.name}: [{run.index + 1}/{len(study.runs)}] {run.label} -> "
              f"{run.run_dir}; {progress(study)}", flush=True)  # fmt: skip
        rc = run_one(study, run, prefix)
        if rc in (130, 143):  # interrupted (Ctrl-C, SIGTERM): stop here, resume later
            print(f"study {study.name}: stopped during {run.label}; rerun to resume", flush=True)
            return rc
        if rc != 0:
            failed.append((run, rc))
            print(f"study {study.name}: {run.label} FAILED (exit {rc}); log: "
                  f"{log_path(study, run)}; going on", flush=True)  # fmt: skip
    print(f"\nstudy {study.name}: {progress(study)}", flush=True)
    for run, rc in failed:
        print(f"  failed: {run.label} (exit {rc}), log {log_path(study, run)}", file=sys.stderr)
    return 1 if failed else 0


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and their children."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _srun_prefix() -> list[str]:
    """Inside a SLURM allocation of several tasks, DDP ranks are started by srun (Lightning's
    SLURMEnvironment then reads their rank from SLURM_PROCID)."""
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return ["srun"]
    return []
