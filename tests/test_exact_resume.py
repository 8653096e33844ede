"""Bit-exact resume on CPU: a run SIGKILLed mid-run and resumed with ``--ckpt_path last`` ends
with exactly the weights of the run that was never interrupted.

Checkpoints carry the random-number state (lightning_modules/callbacks/rng.py), augmentation
seeds travel with the sample indices, and loaders seed their workers from their own generator,
so neither a fresh set of DataLoader workers nor a restarted main process changes what is drawn.
One automatic-optimisation method (DMMN) and one manual (RAZN: three optimizers, sampled zooms),
each with 2 DataLoader workers, 2 epochs of 3 batches, killed after batch `kill_after`.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from datamodules.sampling.train_order import EpochSampler
from lightning_modules.callbacks import rng
from tests.test_resume import run_wsiseg, wsiseg_args

ROOT = Path(__file__).resolve().parents[1]


class KillOnce(pl.Callback):
    """SIGKILL this process at the start of training batch `after` + 1 (the step checkpoint of
    batch `after` is written by then), unless `marker` exists: the resumed run is left alone."""

    def __init__(self, after: int, marker: str) -> None:
        self.after, self.marker, self.seen = int(after), Path(marker), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.after + 1 and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


def overlay(path: Path, kill: str = "") -> Path:
    path.write_text(
        f"""
data:
  init_args: {{max_patches: [6, 2, 2], num_workers: 2}}
trainer:
  max_epochs: 2
  num_sanity_val_steps: 0
  log_every_n_steps: 1
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{monitor: val/miou, mode: max, save_last: true}}
    - class_path: lightning_modules.callbacks.resume.ResumeCheckpoint
      init_args: {{every_n_batches: 1, every_minutes: null}}
{kill}"""
    )
    return path


def final_weights(out: Path, exp: str) -> dict:
    ckpt = out / exp / "version_0" / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "exp,tiny,kill_after",
    [("dmmn_s2", "tiny.yaml", 4), ("razn", "razn_tiny.yaml", 2)],
    ids=["dmmn-automatic", "razn-manual"],
)
def test_killed_and_resumed_run_is_bit_identical(exp, tiny, kill_after, synthetic_root, tmp_path):
    tiny = ROOT / "tests" / "conf" / tiny
    plain = overlay(tmp_path / "plain.yaml")
    rc, _, err = run_wsiseg(wsiseg_args("fit", exp, tiny, synthetic_root, tmp_path / "a", plain),
                            tmp_path, timeout=600)  # fmt: skip
    assert rc == 0, err[-3000:]

    marker = tmp_path / "killed"
    kill = (
        "    - class_path: tests.test_exact_resume.KillOnce\n"
        f"      init_args: {{after: {kill_after}, marker: {marker}}}\n"
    )
    killing = overlay(tmp_path / "kill.yaml", kill)
    argv = wsiseg_args("fit", exp, tiny, synthetic_root, tmp_path / "b", killing)
    rc, _, err = run_wsiseg(argv, tmp_path, timeout=600)
    assert rc == -signal.SIGKILL and marker.exists(), err[-3000:]
    assert not (tmp_path / "b" / exp / "version_0" / "checkpoints" / "last.ckpt").exists() or (
        kill_after > 3  # killed in the second epoch: the first epoch's last.ckpt is there
    )
    rc, out, err = run_wsiseg([*argv, "--ckpt_path", "last"], tmp_path, timeout=600)
    assert rc == 0 and "resuming from" in out and "last-step.ckpt" in out, err[-3000:]

    a, b = final_weights(tmp_path / "a", exp), final_weights(tmp_path / "b", exp)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


def test_rng_state_round_trip():
    state = rng.capture()
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    rng.restore(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], again[0]) and np.array_equal(drawn[1], again[1])
    assert drawn[2] == again[2]


def test_sample_seeds_follow_the_sample_not_the_process():
    data = list(range(20))
    sampler = EpochSampler(data, num_samples=10, seed=[3, 0], batch_size=2, tag_seeds=True)
    sampler.set_epoch(2)
    pairs = list(sampler)
    assert [i for i, _ in pairs] == sampler.indices(2) and len({s for _, s in pairs}) == 10
    resumed = EpochSampler(data, 10, [3, 0], batch_size=2, tag_seeds=True,
                           resume_offset=lambda: (2, 3))  # fmt: skip
    assert list(resumed) == pairs[6:]  # the same (index, seed) pairs, after 3 batches
    sampler.set_epoch(3)
    assert {s for _, s in sampler} != {s for _, s in pairs}  # a new epoch, new seeds


def test_augmentation_follows_the_sample_seed(synthetic_root):
    from datamodules.wsi import WSIDataModule

    dm = WSIDataModule(root=str(synthetic_root), max_patches=(4, 2, 2), balance_rates=None)
    dm.setup()
    train = dm.datasets["train"]
    torch.manual_seed(1)
    a = train[(0, 12345)]["image"]
    torch.manual_seed(2)  # torch's stream no longer matters
    assert torch.equal(a, train[(0, 12345)]["image"])
    assert any(not torch.equal(a, train[(0, s)]["image"]) for s in (1, 2, 3))
