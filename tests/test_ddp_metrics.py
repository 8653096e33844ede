"""DDP evaluation scores every validation patch exactly once, for one experiment per family.

Per family: a one-batch `wsiseg fit` under experiments/trainer/ddp_cpu.yaml (2 gloo ranks) with
a full validation epoch, then `wsiseg validate` of the `last.ckpt` it saved, in one process.
No optimizer step happens between that validation epoch and the checkpoint, so both runs score
the same weights on the same patches: any difference comes from how the split was shared
between ranks. The validation split is capped at 5 patches in batches of 2, so Lightning's
default DistributedSampler (which pads 5 to 6 by repeating patch 0) would show.

The `DumpVal` callback writes, per rank, the logged ``val/*`` values, how many patches the rank
scored and a checksum of every parameter and buffer: both ranks must evaluate the model that was
saved (BatchNorm statistics included) and log the same values, and the counts must sum to the
split.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from datamodules.errors import InputError
from datamodules.sampling.eval_sampler import EvalShardSampler
from datamodules.synthetic.generator import ensure_dataset
from tests.cli_args import experiment_args, wsiseg_command

ROOT = Path(__file__).resolve().parents[1]
N_VAL = 5  # odd: two ranks cannot share it evenly without padding
REFINENET_SHRINK = ["--model.init_args.width", "0.125", "--model.init_args.rcu_blocks", "1"]
#: experiment -> (tiny overlay, extra options, data fixture); one experiment per family
FAMILIES = {
    "dmmn_m3": ("tiny.yaml", [], "synthetic_root"),
    "refinenet_r50_single": ("tiny_refinenet.yaml", REFINENET_SHRINK, "synthetic_root"),
    "razn": ("razn_tiny.yaml", [], "synthetic_root"),
    "smp_unet_r34": ("smp_tiny.yaml", [], "tiger_root"),
}
TINY_TIGER = {"n_slides": 3, "size": 1024, "seed": 0, "splits": (1, 1, 1), "layout": "tiger"}


@pytest.mark.parametrize(("n", "batch", "world"), [(5, 2, 2), (7, 3, 2), (2, 2, 2), (9, 2, 3)])
def test_shards_partition_the_split_in_single_process_batches(n, batch, world):
    data = list(range(n))
    shards = [
        [
            b.tolist()
            for b in DataLoader(data, batch, sampler=EvalShardSampler(data, world, r, batch))
        ]
        for r in range(world)
    ]
    flat = sorted(i for shard in shards for b in shard for i in b)
    assert flat == data  # every patch once: no padding, nothing dropped
    assert all(shards)  # every rank has work
    single = [b.tolist() for b in DataLoader(data, batch)]
    if len(single) >= world:  # then each rank runs some of the single-process batches
        assert sorted(b for shard in shards for b in shard) == single


def test_fewer_patches_than_ranks_is_a_clean_error():
    with pytest.raises(InputError, match="1 patch.* for 2 processes"):
        EvalShardSampler([0], 2, 0, 2)


class DumpVal(pl.Callback):
    """Writes ``$DDP_DUMP/rank<r>.json``: this rank's ``val/*`` metrics, patch count, state sums."""

    def __init__(self) -> None:
        self.seen = 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.seen = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        self.seen += int(batch["label"].shape[0])

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        folder = Path(os.environ["DDP_DUMP"])
        folder.mkdir(parents=True, exist_ok=True)
        state = pl_module.state_dict()  # parameters and buffers (BatchNorm statistics)
        checksum = {k: float(v.double().sum()) for k, v in state.items() if v.is_floating_point()}
        payload = {"metrics": metrics, "seen": self.seen, "state": checksum}
        (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(payload))


@pytest.fixture(scope="module")
def tiger_root(tmp_path_factory) -> Path:
    """The tiny synthetic TIGER set of test_tiger.py / test_smp_cli.py (same path: made once)."""
    out = tmp_path_factory.getbasetemp() / "synthetic_tiger"
    ensure_dataset(out, progress=False, workers=1, **TINY_TIGER)
    return out


def wsiseg(argv: list[str], dump: Path, cwd: Path) -> subprocess.CompletedProcess:
    """The console script in a fresh process (DDP's launcher re-runs it for rank 1)."""
    cmd = wsiseg_command()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        "DDP_DUMP": str(dump),
        "OMP_NUM_THREADS": "1",  # same threading in both runs: same float sums
    }
    return subprocess.run(
        [*cmd, *argv], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )


def run_args(command: str, exp: str, trainer: str, data: Path, out: Path) -> list[str]:
    tiny, extra, _ = FAMILIES[exp]
    extra = (
        *extra,
        "--data.init_args.max_patches", f"[4, {N_VAL}, 2]",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.callbacks+=tests.test_ddp_metrics.DumpVal",
    )  # fmt: skip
    return experiment_args(command, exp, data, out, tiny=tiny, trainer=trainer, extra=extra)


def read_ranks(dump: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(dump.glob("rank*.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("exp", list(FAMILIES))
def test_ddp_validation_equals_single_process(exp, request, tmp_path):
    data = request.getfixturevalue(FAMILIES[exp][2])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    fit_out, fit_dump = tmp_path / "fit", tmp_path / "dump_fit"
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    r = wsiseg([*run_args("fit", exp, "ddp_cpu", data, fit_out), *limits], fit_dump, cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEMBER: 2/2" in r.stderr + r.stdout  # both ranks joined
    ranks = read_ranks(fit_dump)
    assert len(ranks) == 2
    assert sum(rk["seen"] for rk in ranks) == N_VAL  # each patch on exactly one rank
    assert all(rk["seen"] > 0 for rk in ranks)
    ddp, other = ranks[0]["metrics"], ranks[1]["metrics"]
    assert "val/miou" in ddp and "val/loss" in ddp
    assert ddp == pytest.approx(other, rel=1e-6, abs=1e-7)  # both ranks log the same values
    assert ranks[1]["state"] == pytest.approx(ranks[0]["state"], rel=1e-9)  # the same model

    (ckpt,) = fit_out.rglob("last.ckpt")
    val_out, val_dump = tmp_path / "validate", tmp_path / "dump_validate"
    argv = [*run_args("validate", exp, "cpu", data, val_out), "--ckpt_path", str(ckpt)]
    r = wsiseg(argv, val_dump, cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    (single,) = read_ranks(val_dump)
    assert single["seen"] == N_VAL
    assert single["state"] == pytest.approx(ranks[0]["state"], rel=1e-9)  # what DDP evaluated
    assert single["metrics"].keys() == ddp.keys()
    for key, value in single["metrics"].items():
        assert ddp[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert sorted(p.name for p in cwd.iterdir()) == []  # nothing written outside the run folders
