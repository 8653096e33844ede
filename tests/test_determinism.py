"""Determinism: the CLI's seed reaches the training order, the augmentation and DataLoader workers.

The same `seed_everything` gives the same patches in the same order and the same losses, run
after run (in a DataLoader worker, augmentation on); another seed gives another order. The
synthetic generator's bit-for-bit reproducibility is in test_synthetic.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.sampling.train_order import EpochSampler, epoch_order, resume_offset
from lightning_modules.cli.lightning_cli import run_lightning
from tests.cli_args import experiment_args

ROOT = Path(__file__).resolve().parents[1]


class Recorder(pl.Callback):
    """Writes every training batch's patches (slide, x, y) and loss to `path` (JSON)."""

    def __init__(self, path: str) -> None:
        self.path, self.batches = Path(path), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        meta = batch["meta"]
        patches = [
            [s, float(x), float(y)]
            for s, x, y in zip(meta["slide"], meta["x"], meta["y"], strict=True)
        ]
        self.batches.append({"patches": patches, "loss": float(outputs["loss"])})

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.write_text(json.dumps(self.batches))


def fit_once(data: Path, out: Path, seed: int) -> list[dict]:
    """One epoch of 3 batches of dmmn_s2 (tiny) in a DataLoader worker; the batches it saw."""
    record = out / "batches.json"
    overlay = out / "overlay.yaml"
    out.mkdir(parents=True)
    overlay.write_text(
        "data:\n  init_args:\n    max_patches: [6, 2, 2]\n    balance_deform: false\n"
        "    num_workers: 1\n    augment: true\n"
        "trainer:\n  max_epochs: 1\n  limit_val_batches: 0\n  num_sanity_val_steps: 0\n"
        "  callbacks:\n    - class_path: tests.test_determinism.Recorder\n"
        f"      init_args: {{path: '{record}'}}\n"
    )
    extra = ("--config", str(overlay), "--seed_everything", str(seed))  # after tiny.yaml
    run_lightning(experiment_args("fit", "dmmn_s2", data, out, tiny="tiny.yaml", extra=extra))
    return json.loads(record.read_text())


def test_same_seed_same_patches_and_losses(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `tests.test_determinism.Recorder` by class path
    monkeypatch.chdir(tmp_path)
    first = fit_once(synthetic_root, tmp_path / "a", seed=3)
    again = fit_once(synthetic_root, tmp_path / "b", seed=3)
    other = fit_once(synthetic_root, tmp_path / "c", seed=4)
    assert len(first) == 3
    assert [b["patches"] for b in again] == [b["patches"] for b in first]
    assert [b["loss"] for b in again] == [b["loss"] for b in first]  # bit for bit
    assert [b["patches"] for b in other] != [b["patches"] for b in first]


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert epoch_order(50, 50, [0, 7], 2) == epoch_order(50, 50, [0, 7], 2)
    assert sorted(epoch_order(50, 50, [0, 7], 2)) == list(range(50))
    assert epoch_order(50, 50, [0, 7], 2) != epoch_order(50, 50, [0, 7], 3)
    assert epoch_order(50, 50, [0, 7], 2) != epoch_order(50, 50, [0, 8], 2)
    capped = epoch_order(50, 10, 0, 1)
    assert len(set(capped)) == 10 and capped == epoch_order(50, 50, 0, 1)[:10]


def test_sampler_ranks_share_an_epoch_and_resume_skips_done_batches():
    data = list(range(21))
    single = EpochSampler(data, num_samples=10, seed=5)
    single.set_epoch(4)
    order = list(single)
    assert len(order) == len(single) == 10 and order == epoch_order(21, 10, 5, 4)
    ranks = [EpochSampler(data, 10, 5, num_replicas=3, rank=r) for r in range(3)]
    for s in ranks:
        s.set_epoch(4)
    shares = [list(s) for s in ranks]
    assert all(len(s) == 4 for s in shares)  # 10 padded to 12
    assert set().union(*shares) == set(order)
    # Resumed after 2 batches of 2 in epoch 4: the rest of that epoch's order, whatever set_epoch
    # said (Lightning may start the iterator before it calls set_epoch).
    resumed = EpochSampler(data, 10, 5, batch_size=2, resume_offset=lambda: (4, 2))
    assert list(resumed) == order[4:]


class _Progress:
    def __init__(self, ready: int, last: bool) -> None:
        self.current = type("Counts", (), {"ready": ready})()
        self.is_last_batch = last


def _trainer(epoch: int, ready: int, last: bool):
    epoch_loop = type("EpochLoop", (), {"batch_progress": _Progress(ready, last)})()
    fit_loop = type("FitLoop", (), {"epoch_loop": epoch_loop})()
    return type("Trainer", (), {"fit_loop": fit_loop, "current_epoch": epoch})()


@pytest.mark.parametrize(
    "epoch, ready, last, expected",
    [
        (0, 0, False, (0, 0)),  # a fresh run
        (2, 3, False, (2, 3)),  # resumed after 3 batches of epoch 2
        (2, 6, True, (3, 0)),  # a checkpoint from epoch 2's last batch: epoch 3 next
    ],
)
def test_resume_offset(epoch, ready, last, expected):
    assert resume_offset(_trainer(epoch, ready, last)) == expected


def test_augmentation_follows_torch_seed(synthetic_root):
    """albumentations draws from OS entropy unless seeded: PatchDataset seeds it from torch."""
    from datamodules.wsi import WSIDataModule

    dm = WSIDataModule(root=str(synthetic_root), max_patches=(4, 2, 2), balance_rates=None)
    dm.setup()
    train = dm.datasets["train"]
    torch.manual_seed(11)
    a = [train[i]["image"] for i in range(3)]
    torch.manual_seed(11)
    b = [train[i]["image"] for i in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
