"""Faults during long work: a DataLoader worker that dies or reads a slide cut off mid-run, a NaN
loss, and a disk that fills up while a mask is written.

Each must end in one line on stderr and a non-zero exit, and leave nothing behind that looks
complete: no checkpoint of diverged weights (the last good one stays), no half-written mask
under its final name. Training faults run a real `wsiseg fit` subprocess with a fault callback
(tests/fault_callbacks.py); the disk-full cases patch tifffile's writes in-process.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from lightning_modules.callbacks.divergence import TrainingDiverged
from lightning_modules.outputs import mask_writer
from lightning_modules.outputs.mask_writer import MaskTiffWriter
from tests.cli_args import experiment_args, wsiseg_command

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def fit(exp: str, tiny: str, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    limits = ("--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "1")
    argv = experiment_args("fit", exp, data, out, tiny=tiny, extra=(*limits, *map(str, extra)))
    return subprocess.run(
        [*wsiseg_command(), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=out.parent,
    )


def one_error_line(r: subprocess.CompletedProcess, kind: str) -> str:
    """The run's error: the last stderr line, the only `wsiseg fit: KIND:` line, no traceback."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("wsiseg fit: ")]
    assert len(lines) == 1 and r.stderr.strip().splitlines()[-1] == lines[0], r.stderr[-3000:]
    assert lines[0].startswith(f"wsiseg fit: {kind}: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------------- DataLoader workers
def test_slide_cut_off_mid_run(synthetic_root, tmp_path):
    """The slides are truncated after setup checked them: the worker's decode error comes back
    as the usual one-line input error naming the slide (not a worker traceback)."""
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(synthetic_root, data)
    r = fit(
        "dmmn_s2", "tiny.yaml", data, out,
        *("--data.init_args.num_workers", "1", "--trainer.max_epochs", "1"),
        "--trainer.callbacks+=tests.fault_callbacks.TruncateSlides",
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r, "error")
    assert ".tiff" in line and "DataLoader worker" in line, line
    assert not list(out.rglob("*.ckpt"))


@pytest.mark.slow  # racy by nature (where the kill lands); every outcome must read well
def test_worker_killed(synthetic_root, tmp_path):
    """SIGKILL (as the OOM killer) lands mid-batch or between batches: either way one line
    that says a worker died and what to try."""
    r = fit(
        "dmmn_s2", "tiny.yaml", synthetic_root, tmp_path / "out",
        *("--data.init_args.num_workers", "1", "--data.init_args.max_patches", "[16, 2, 2]"),
        *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "8"),
        "--trainer.callbacks+=tests.fault_callbacks.KillWorker",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]
    line = one_error_line(r, "failed")
    assert "DataLoader worker" in line and "num_workers" in line, line


def test_worker_errors_become_one_line():
    """What a DataLoader hands the main process when a worker fails, as `wsiseg` prints it."""
    from torch._utils import ExceptionWrapper

    from datamodules.errors import InputError
    from lightning_modules.cli.main import _describe

    def rereaised(exc: Exception) -> Exception:
        try:
            raise exc
        except Exception:
            wrapper = ExceptionWrapper(where="in DataLoader worker process 3")
        with pytest.raises(Exception) as caught:
            wrapper.reraise()
        return caught.value

    err = rereaised(InputError("/d/s.svs", "cannot decode level 0 at (0, 0): truncated"))
    assert isinstance(err, InputError)  # still an input error: exit 2, "error:"
    assert str(err) == "/d/s.svs: cannot decode level 0 at (0, 0): truncated (read in " \
        "DataLoader worker process 3)"  # fmt: skip
    text = _describe(rereaised(ValueError("bad\nvalue")))
    assert "\n" not in text and "Traceback" not in text and "worker process 3" in text
    try:  # a worker killed mid-transfer: a bare EOFError out of the DataLoader's iterator
        exec(compile("raise EOFError()", "/x/torch/utils/data/dataloader.py", "exec"))
    except EOFError as eof:
        assert "DataLoader worker died" in _describe(eof) and "num_workers" in _describe(eof)


# ---------------------------------------------------------------------- NaN loss
@pytest.mark.parametrize(
    "exp,tiny",
    [("dmmn_s2", "tiny.yaml"), ("razn", "razn_tiny.yaml")],
    ids=["automatic-dmmn", "manual-razn"],
)
def test_nan_loss_keeps_last_good_checkpoint(exp, tiny, synthetic_root, tmp_path):
    out = tmp_path / "out"
    r = fit(
        exp, tiny, synthetic_root, out,
        *("--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2"),
        "--trainer.callbacks+=tests.fault_callbacks.PoisonLoss",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]
    line = one_error_line(r, "failed")
    assert "TrainingDiverged: training loss is nan at epoch 1" in line, line
    (last,) = out.rglob("last.ckpt")
    assert str(last) in line
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0  # saved after the good epoch, not overwritten after the bad one
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v).all() for v in weights)


@pytest.mark.slow
def test_nan_on_one_ddp_rank_stops_all(synthetic_root, tmp_path):
    """Only rank 1's loss goes NaN: both ranks stop at the same step (no rank left waiting in
    an all-reduce) and the last good checkpoint stays."""
    out = tmp_path / "out"
    r = fit(
        "dmmn_s2", "tiny.yaml", synthetic_root, out,
        *("--config", EXPERIMENTS / "trainer/ddp_cpu.yaml", "--trainer.max_epochs", "2"),
        *("--trainer.limit_train_batches", "2"),
        *("--trainer.callbacks+=tests.fault_callbacks.PoisonLoss", "--trainer.callbacks.rank", "1"),
    )  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("wsiseg fit: ")]
    # rank 0 prints it; rank 1 too unless Lightning's launcher killed it first
    assert 1 <= len(lines) <= 2 and all("TrainingDiverged" in x for x in lines), r.stderr[-3000:]
    (last,) = out.rglob("last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0


def test_nonfinite_weights_are_not_saved(tmp_path):
    """Weights that went NaN through a finite loss (an overflowing gradient) are not written
    over the last good checkpoint either."""
    from test_base_task import RandomData, TinyTask, trainer

    task, run = TinyTask(), trainer(tmp_path, logger=False)
    run.fit(task, datamodule=RandomData(4))
    run.save_checkpoint(tmp_path / "good.ckpt")
    with torch.no_grad():
        next(task.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="not finite.*not saving"):
        run.save_checkpoint(tmp_path / "bad.ckpt")
    assert (tmp_path / "good.ckpt").is_file() and not (tmp_path / "bad.ckpt").exists()


def test_nan_loss_stops_before_the_step(tmp_path):
    """In-process: the loss check raises before backward, so the weights are the pre-NaN ones."""
    from test_base_task import RandomData, TinyTask, trainer

    task, run = TinyTask(), trainer(tmp_path, logger=False)
    task.norm_std = 0.0  # inputs ±inf: NaN logits and loss
    before = [p.detach().clone() for p in task.parameters()]
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 0, global step 0"):
        run.fit(task, datamodule=RandomData(4))
    assert all(torch.equal(a, b) for a, b in zip(before, task.parameters(), strict=True))


# ---------------------------------------------------------------------- disk full
def disk_fills_after(monkeypatch, budget: int) -> None:
    """tifffile's writes fail with ENOSPC once `budget` bytes are written (a full disk)."""
    original, written = tifffile.FileHandle.write, [0]

    def write(self, data):
        written[0] += len(data)
        if written[0] > budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, data)

    monkeypatch.setattr(tifffile.FileHandle, "write", write)


def test_disk_full_leaves_no_mask(tmp_path, monkeypatch):
    disk_fills_after(monkeypatch, 20_000)
    writer = MaskTiffWriter(tmp_path / "s_mask.tiff", (3000, 2000), 0.5)
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError, match=r"s_mask.tiff failed: \[Errno 28\] No space left"):
        for _ in range(8):  # random labels: compression cannot hide the bytes
            writer.write(rng.integers(0, 5, (250, 3000), dtype=np.uint8))
        writer.close()
    writer.abort()  # what SlideWriter does on any exception
    assert list(tmp_path.iterdir()) == []


def test_disk_full_in_the_spool(tmp_path, monkeypatch):
    def full(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mask_writer._Spool, "append", full)
    writer = MaskTiffWriter(tmp_path / "s_mask.tiff", (3000, 2000), 0.5)
    with pytest.raises(RuntimeError, match=r"s_mask.tiff failed: .*No space left"):
        writer.write(np.ones((600, 3000), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_segment_disk_full(synthetic_root, tmp_path, monkeypatch, capsys, tmp_path_factory):
    """`wsiseg segment` on a disk that fills up: exit 1, one line naming the mask, and no
    mask, overlay or summary of that slide under its final name (so --resume redoes it)."""
    from ckpt_fixtures import DMMN_5X, tiny_checkpoint

    from lightning_modules.cli.main import main

    ckpt = tiny_checkpoint(tmp_path_factory.getbasetemp(), synthetic_root, DMMN_5X)
    capsys.readouterr()
    disk_fills_after(monkeypatch, 3000)
    out = tmp_path / "seg"
    slide = synthetic_root / "slide_02.tiff"
    rc = main(["segment", "--ckpt", str(ckpt), str(slide), "--out", str(out), "--no-progress",
               "--num-workers", "0", "--accelerator", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("wsiseg segment: failed: "), err[-5:]
    assert "slide_02_mask.tiff failed" in err[-1] and "No space left on device" in err[-1]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == []
