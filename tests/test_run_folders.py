"""Runs of one experiment started at the same time get their own run folder.

Lightning's CSVLogger picks ``max(version) + 1`` and makes the folder only when it first
writes, so two `wsiseg train` processes started together used to share ``version_0`` (and one
then refused to write its config.yaml). `claim_new_run` makes the folder with an atomic mkdir.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
from pathlib import Path

import pytest

from lightning_modules.cli.resume import RUN_ENV, claim_new_run
from tests.cli_args import experiment_args, short_train, wsiseg_command

ROOT = Path(__file__).resolve().parents[1]


def _config(save_dir: Path, version=None) -> dict:
    args = {"save_dir": str(save_dir), "name": "exp", "version": version}
    return {"logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": args}}


def _claim(save_dir: str, start, queue) -> None:
    start.wait()
    config = _config(Path(save_dir))
    claim_new_run(config, rank=0)
    queue.put(config["logger"]["init_args"]["version"])


def test_simultaneous_claims_are_distinct(tmp_path):
    (tmp_path / "exp" / "version_3").mkdir(parents=True)  # an earlier run
    ctx = mp.get_context("fork")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), start, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()  # all eight race for version_4 at once
    got = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
    assert got == sorted(f"version_{n}" for n in range(4, 12))
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == sorted(got + ["version_3"])


def test_lightning_alone_gives_both_runs_one_folder(tmp_path):
    """The race itself: two runs that both ask before either has written get one version;
    with claims made first, each gets its own."""
    from pytorch_lightning.loggers import CSVLogger

    first, second = (CSVLogger(str(tmp_path), name="exp") for _ in range(2))
    assert first.log_dir == second.log_dir == str(tmp_path / "exp" / "version_0")
    configs = [_config(tmp_path) for _ in range(2)]
    for config in configs:
        claim_new_run(config, rank=0)
    dirs = [CSVLogger(**c["logger"]["init_args"]).log_dir for c in configs]
    assert dirs == [str(tmp_path / "exp" / f"version_{n}") for n in (0, 1)]


def test_other_ranks_take_rank_zeros_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_ENV, "version_7")
    config = _config(tmp_path)
    assert claim_new_run(config, rank=1) is None
    assert config["logger"]["init_args"]["version"] == "version_7"
    assert not (tmp_path / "exp").exists()  # only rank 0 makes folders
    given = _config(tmp_path, version="mine")
    assert claim_new_run(given, rank=0) is None  # an explicit version is left alone
    assert given["logger"]["init_args"]["version"] == "mine"


@pytest.mark.slow
def test_two_trains_at_once(synthetic_root, tmp_path):
    """End to end (the race window is milliseconds, so this passes without the fix too, mostly:
    the test above pins the race)."""
    out = tmp_path / "runs"
    argv = experiment_args("train", "dmmn_s2", synthetic_root, out, tiny="tiny.yaml",
                           extra=tuple(short_train()))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(RUN_ENV, None)
    procs = [
        subprocess.Popen(
            [*wsiseg_command(), *argv], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )  # fmt: skip
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    runs = sorted(p.name for p in (out / "dmmn_s2").iterdir())
    assert runs == ["version_0", "version_1"]
    for run in runs:
        folder = out / "dmmn_s2" / run
        assert (folder / "config.yaml").is_file() and (folder / "metrics.csv").is_file()
        assert (folder / "checkpoints" / "last.ckpt").is_file()
