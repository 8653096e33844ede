"""Resume: `--ckpt_path last` continues a killed run in its own run folder.

Slow tests kill a real `wsiseg fit` mid-epoch (SIGTERM: DMMN, automatic optimisation; SIGKILL:
RAZN, manual optimisation with three Adams and three StepLRs) as soon as its first step
checkpoint exists, resume it, and check: the global step continues from the checkpoint's, the
optimizer and scheduler state the resumed run starts with is the checkpoint's, the run folder,
config.yaml and metrics.csv are the same ones, and the run ends where an uninterrupted one would.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.errors import InputError
from lightning_modules.callbacks.resume import ResumeCheckpoint
from lightning_modules.cli.lightning_cli import _pop_option
from lightning_modules.cli.main import main
from lightning_modules.cli.resume import (
    AppendingCSVLogger,
    plan_resume,
    point_logger_at,
    wandb_run_id,
)
from tests.cli_args import experiment_args, wsiseg_command

ROOT = Path(__file__).resolve().parents[1]
BATCHES = 6  # per epoch: max_patches 12, batch 2
EPOCHS = 2


def state_digest(optimizer_states: list[dict], scheduler_states: list[dict]) -> dict:
    """Optimizer state (a hash of every state tensor's bytes, learning rates) and scheduler
    counters: equal only if the state is bit for bit the same."""

    def digest(t: torch.Tensor) -> str:
        return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    tensors = [
        [digest(t) for s in o["state"].values() for t in s.values() if t.dim()]
        for o in optimizer_states
    ]
    lrs = [[g["lr"] for g in o["param_groups"]] for o in optimizer_states]
    schedulers = [s.get("last_epoch") for s in scheduler_states]
    return {"tensors": tensors, "lrs": lrs, "schedulers": schedulers}


class Probe(pl.Callback):
    """Writes ``start_<n>.json`` into `folder` when training starts (after a checkpoint was
    restored): global step, batches done, run folder and the optimizer/scheduler digest."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_start(self, trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a broadcast from rank 0: every rank must ask
        if not trainer.is_global_zero:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        optimizers = [o.state_dict() for o in trainer.optimizers]
        schedulers = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
        record = {
            "global_step": trainer.global_step,
            "batches": trainer.fit_loop.total_batch_idx + 1,
            "log_dir": log_dir,
            "digest": state_digest(optimizers, schedulers),
        }
        n = len(list(self.folder.glob("start_*.json")))
        (self.folder / f"start_{n}.json").write_text(json.dumps(record))

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        end = {"global_step": trainer.global_step, "batches": trainer.fit_loop.total_batch_idx + 1}
        (self.folder / "end.json").write_text(json.dumps(end))


def overlay(path: Path, probe: Path) -> Path:
    """Epochs of 6 batches, a step checkpoint every 2 batches, the probe."""
    path.write_text(
        f"""
data:
  init_args: {{max_patches: [12, 2, 2], balance_deform: false}}
trainer:
  max_epochs: {EPOCHS}
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  limit_test_batches: 1
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{monitor: val/miou, mode: max, save_last: true}}
    - class_path: lightning_modules.callbacks.resume.ResumeCheckpoint
      init_args: {{every_n_batches: 2, every_minutes: null}}
    - class_path: tests.test_resume.Probe
      init_args: {{folder: {probe}}}
"""
    )
    return path


def wsiseg_args(command, exp, tiny, data, out, extra, trainer="cpu") -> list[str]:
    """As the CLI tests build it, with the `extra` overlay after the tiny one."""
    return experiment_args(
        command, exp, data, out, tiny=tiny, trainer=trainer, extra=("--config", str(extra))
    )


def run_wsiseg(argv, cwd, kill=None, watch=None, timeout=300, group=False):
    """`wsiseg ARGV` in a fresh process; with `kill`, send that signal once `watch` exists (to
    its whole process group with `group`, as `kill -- -PGID` or a batch scheduler does)."""
    cmd = wsiseg_command()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: a hung run is killed with its ranks
    )  # fmt: skip
    try:
        return _wait(proc, kill, watch, timeout, group)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait(proc, kill, watch, timeout, group=False):
    """(returncode, stdout, stderr), after sending `kill` once `watch` exists."""
    if kill is not None:
        deadline = time.monotonic() + timeout
        while not watch.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-3000:]}")
        os.killpg(proc.pid, kill) if group else proc.send_signal(kill)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def metrics_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def kill_and_resume(tmp_path, data, exp, tiny, sig, resume_command, trainer="cpu", group=False):
    """Kill a fit with `sig` at its first step checkpoint, resume; (ckpt, starts, end, run, log).
    `group`: the signal goes to the whole process group, with two DataLoader workers in it."""
    out, probe = tmp_path / "out", tmp_path / "probe"
    extra = overlay(tmp_path / "overlay.yaml", probe)
    run = out / exp / "version_0"
    step_ckpt = run / "checkpoints" / "last-step.ckpt"
    workers = ["--data.init_args.num_workers", "2"] if group else []
    argv = [*wsiseg_args("fit", exp, tiny, data, out, extra, trainer), *workers]
    rc, _, err = run_wsiseg(argv, tmp_path, kill=sig, watch=step_ckpt, group=group)
    assert rc == (143 if sig == signal.SIGTERM else -signal.SIGKILL), err[-3000:]
    if sig == signal.SIGTERM:
        assert "stopped by SIGTERM" in err and "Traceback" not in err
    ckpt = torch.load(step_ckpt, map_location="cpu", weights_only=False)
    assert 0 < ckpt["global_step"] and not (probe / "end.json").exists()  # killed mid-run
    argv = [
        *wsiseg_args(resume_command, exp, tiny, data, out, extra, trainer),
        "--ckpt_path",
        "last",
    ]
    rc, stdout, err = run_wsiseg(argv, tmp_path)
    assert rc == 0, err[-3000:]
    assert f"resuming from {step_ckpt}" in stdout
    starts = [json.loads((probe / f"start_{i}.json").read_text()) for i in range(2)]
    end = json.loads((probe / "end.json").read_text())
    return ckpt, starts, end, run


def assert_continued(ckpt, starts, end, run, out, batches=EPOCHS * BATCHES):
    first, resumed = starts
    assert first["global_step"] == 0 and first["batches"] == 0
    assert resumed["global_step"] == ckpt["global_step"] > 0  # continued, not restarted
    done = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    assert resumed["batches"] in (done, done + 1)  # + the batch whose end saved it
    digest = state_digest(ckpt["optimizer_states"], ckpt["lr_schedulers"])
    assert resumed["digest"] == digest and any(digest["tensors"])  # the checkpoint's state
    assert end["batches"] == batches  # ends where an uninterrupted run ends
    assert Path(resumed["log_dir"]) == Path(first["log_dir"]) == run
    assert sorted(p.name for p in out.iterdir()) == ["version_0"]  # no second run folder
    assert (run / "config.yaml").is_file()  # rewritten by the resumed run, not refused
    rows = metrics_rows(run)
    keys = [(r["epoch"], r["step"], frozenset(k for k, v in r.items() if v)) for r in rows]
    assert len(keys) == len(set(keys))  # the rows re-logged after the checkpoint replaced
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps == list(range(batches))  # both processes' rows, one metrics.csv


@pytest.mark.slow
def test_dmmn_sigterm_then_train_resumes(synthetic_root, tmp_path):
    """Automatic optimisation: SIGTERM stops `wsiseg fit` after the running batch (checkpoint
    saved, exit 143); `wsiseg train --ckpt_path last` finishes the fit, tests, reports."""
    tiny = ROOT / "tests" / "conf" / "tiny.yaml"
    ckpt, starts, end, run = kill_and_resume(
        tmp_path, synthetic_root, "dmmn_s2", tiny, signal.SIGTERM, "train"
    )
    assert_continued(ckpt, starts, end, run, tmp_path / "out" / "dmmn_s2")
    assert len(ckpt["optimizer_states"]) == 1 and ckpt["optimizer_states"][0]["state"]
    assert (run / "results.json").is_file()  # the report of the resumed run, same folder
    assert json.loads((run / "results.json").read_text())["best_checkpoint"].startswith(str(run))


@pytest.mark.slow
def test_sigterm_to_the_process_group_is_a_stop_not_a_crash(synthetic_root, tmp_path):
    """`kill -- -PGID` (or scancel) terminates the DataLoader workers too, so the loop fails on
    a dead worker before it can stop: still exit 143 and "stopped by SIGTERM" (a study stops
    there, rather than counting a failed run and going on), and the run resumes."""
    tiny = ROOT / "tests" / "conf" / "tiny.yaml"
    ckpt, starts, end, run = kill_and_resume(
        tmp_path, synthetic_root, "dmmn_s2", tiny, signal.SIGTERM, "train", group=True
    )
    assert_continued(ckpt, starts, end, run, tmp_path / "out" / "dmmn_s2")
    assert (run / "results.json").is_file()


@pytest.mark.slow
def test_razn_sigkill_then_fit_resumes(synthetic_root, tmp_path):
    """Manual optimisation: SIGKILL (no chance to save); `wsiseg fit --ckpt_path last` resumes
    from the last step checkpoint with RAZN's three Adams and three StepLRs restored."""
    tiny = ROOT / "tests" / "conf" / "razn_tiny.yaml"
    ckpt, starts, end, run = kill_and_resume(
        tmp_path, synthetic_root, "razn", tiny, signal.SIGKILL, "fit"
    )
    assert_continued(ckpt, starts, end, run, tmp_path / "out" / "razn")
    assert len(ckpt["optimizer_states"]) == len(ckpt["lr_schedulers"]) == 3
    done = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"]
    assert {s["last_epoch"] for s in ckpt["lr_schedulers"]} == {done}  # one step per batch


@pytest.mark.slow
def test_ddp_sigterm_stops_every_rank_and_resumes(synthetic_root, tmp_path):
    """Two gloo ranks: SIGTERM to the launcher stops both after the same batch with a checkpoint
    (Lightning's own handler can deadlock here: see ResumeCheckpoint), and the run resumes."""
    tiny = ROOT / "tests" / "conf" / "tiny.yaml"
    ckpt, starts, end, run = kill_and_resume(
        tmp_path, synthetic_root, "dmmn_s2", tiny, signal.SIGTERM, "fit", trainer="ddp_cpu"
    )
    per_rank = EPOCHS * BATCHES // 2
    assert_continued(ckpt, starts, end, run, tmp_path / "out" / "dmmn_s2", batches=per_rank)


# ----------------------------------------------------------------------------- fast checks
def test_resume_without_kill_reuses_run_folder(synthetic_root, tmp_path, monkeypatch):
    """In-process: fit 1 epoch, then `--ckpt_path last --trainer.max_epochs 2` continues in
    version_0 (config.yaml rewritten, metrics.csv appended), global step 2 -> 4."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(tmp_path)
    out, probe = tmp_path / "out", tmp_path / "probe"
    extra = overlay(tmp_path / "overlay.yaml", probe)
    extra.write_text(extra.read_text().replace("[12, 2, 2]", "[4, 2, 2]"))
    argv = wsiseg_args("fit", "dmmn_s2", ROOT / "tests/conf/tiny.yaml", synthetic_root, out, extra)
    assert main([*argv, "--trainer.max_epochs", "1", "--ckpt_path", "last"]) == 0  # nothing yet
    assert main([*argv, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    starts = [json.loads((probe / f"start_{i}.json").read_text()) for i in range(2)]
    assert [s["global_step"] for s in starts] == [0, 2]
    assert json.loads((probe / "end.json").read_text())["global_step"] == 4
    run = out / "dmmn_s2" / "version_0"
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    epochs = {r["epoch"] for r in metrics_rows(run) if r.get("train/loss")}
    assert epochs == {"0", "1"}


def _touch_ckpt(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_plan_resume_finds_the_newest_last_checkpoint(tmp_path):
    trainer = {"logger": {"class_path": "x.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}}
    trainer["logger"]["init_args"]["name"] = "exp"
    assert plan_resume("last", trainer).ckpt_path is None  # nothing yet: a new run
    _touch_ckpt(tmp_path / "exp/version_0/checkpoints/last.ckpt", 1000)
    newest = _touch_ckpt(tmp_path / "exp/version_1/checkpoints/last-step.ckpt", 3000)
    _touch_ckpt(tmp_path / "exp/version_1/checkpoints/last.ckpt", 2000)
    _touch_ckpt(tmp_path / "exp/version_1/checkpoints/epoch000-miou0.5.ckpt", 4000)
    plan = plan_resume("last", trainer)
    assert plan.ckpt_path == str(newest) and plan.run_dir == newest.parent.parent
    older = tmp_path / "exp/version_0/checkpoints/last.ckpt"
    assert plan_resume(str(older), trainer).run_dir == older.parent.parent.resolve()
    foreign = _touch_ckpt(tmp_path / "elsewhere" / "model.ckpt", 1000)
    assert plan_resume(str(foreign), trainer).run_dir is None  # resumes into a new folder
    with pytest.raises(InputError, match="checkpoint not found"):
        plan_resume(str(tmp_path / "missing.ckpt"), trainer)


def test_point_logger_at_reuses_the_version_and_appends():
    trainer = {
        "logger": {
            "class_path": "pytorch_lightning.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": "exp", "version": None},
        }
    }
    point_logger_at(trainer, Path("runs/exp/version_3"))
    assert trainer["logger"]["init_args"]["version"] == "version_3"
    assert trainer["logger"]["class_path"] == "lightning_modules.cli.resume.AppendingCSVLogger"


def test_appending_logger_keeps_rows_and_replaces_relogged_ones(tmp_path):
    first = AppendingCSVLogger(tmp_path, name="exp", version="version_0")
    for step in range(4):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    resumed = AppendingCSVLogger(tmp_path, name="exp", version="version_0")
    resumed.log_metrics({"train/loss": 20.0}, step=2)  # re-logged after a checkpoint at step 2
    resumed.log_metrics({"train/loss": 30.0, "val/miou": 0.5}, step=3)
    resumed.save()
    rows = metrics_rows(tmp_path / "exp" / "version_0")
    got = [(r["step"], r["train/loss"], r["val/miou"]) for r in rows]
    assert got == [("0", "0.0", ""), ("1", "1.0", ""), ("3", "3.0", ""), ("2", "20.0", "")] + [
        ("3", "30.0", "0.5")
    ]


def test_pop_option():
    assert _pop_option(["--a", "1", "--ckpt_path", "last", "--b"], "--ckpt_path") == (
        ["--a", "1", "--b"],
        "last",
    )
    assert _pop_option(["--ckpt_path=x.ckpt"], "--ckpt_path") == ([], "x.ckpt")
    assert _pop_option(["--x"], "--ckpt_path") == (["--x"], None)


@pytest.mark.parametrize("kwargs", [{"every_n_batches": 0}, {"every_minutes": -1}])
def test_resume_checkpoint_rejects_bad_intervals(kwargs):
    with pytest.raises(InputError):
        ResumeCheckpoint(**kwargs)


def test_wandb_run_id_is_remembered_per_run_folder(tmp_path):
    first = wandb_run_id(tmp_path / "version_0", resuming=False)
    assert wandb_run_id(tmp_path / "version_0", resuming=True) == first  # wandb resumes it
    assert wandb_run_id(tmp_path / "version_0", resuming=False) != first  # a new run, new id


def test_resume_checkpoint_saves_on_batch_and_time_intervals(monkeypatch):
    from types import SimpleNamespace

    from pytorch_lightning.trainer.states import TrainerFn

    def fake_trainer(batches: int):
        fit_loop = SimpleNamespace(total_batch_idx=batches - 1)
        strategy = SimpleNamespace()
        state = SimpleNamespace(fn=TrainerFn.FITTING)
        return SimpleNamespace(
            fit_loop=fit_loop, strategy=strategy, state=state, fast_dev_run=False,
            sanity_checking=False, global_step=batches, is_global_zero=True,
        )  # fmt: skip

    def saves(cb, batches) -> list[int]:
        saved = []
        monkeypatch.setattr(cb, "_monitor_candidates", lambda t: {})
        monkeypatch.setattr(cb, "_save_last_checkpoint", lambda t, m: saved.append(t.global_step))
        for n in batches:
            cb.on_train_batch_end(fake_trainer(n), None, None, None, n - 1)
        return saved

    assert saves(ResumeCheckpoint(every_n_batches=3, every_minutes=None), range(1, 8)) == [3, 6]
    timed = ResumeCheckpoint(every_n_batches=None, every_minutes=1)
    clock = iter([0.0, 10.0, 70.0, 70.0, 80.0, 200.0, 200.0])  # start, per batch, per save
    monkeypatch.setattr("lightning_modules.callbacks.resume.time.monotonic", lambda: next(clock))
    timed.on_train_start(None, None)
    assert saves(timed, range(1, 5)) == [2, 4]  # 70 s and 200 s after the start
