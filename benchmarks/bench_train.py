"""Training throughput per family: the loader's samples/s per worker and the model's samples/s.

Each family is built from its experiment YAML (the paper's views, augmentation, balancing and
width) by the project's own CLI, on a given data root. `loader_rate` reads training samples in
this process with one torch thread, as one DataLoader worker does (one worker = one process);
`train_rate` fits a fixed number of batches with Lightning (no validation, logging or
checkpoints) and times them with `StepClock`. Both are used by `make bench` (on the CPU) and by
`benchmarks.gpu_check` (on a GPU).
"""

from __future__ import annotations

import logging
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

#: family -> (experiment YAML, data root: "dmmn" for the BACH synthetic set, "tiger" for TIGER's)
FAMILIES = {
    "DMMN-M3": ("experiments/dmmn_m3.yaml", "dmmn"),
    "DA-RefineNet": ("experiments/da_refinenet_r50_attention.yaml", "dmmn"),
    "RAZN": ("experiments/razn.yaml", "dmmn"),
    "smp U-Net": ("experiments/smp_unet_r34.yaml", "tiger"),
}


def training_sets(folder: Path, small: bool = False, workers: int = 1) -> dict[str, Path]:
    """The BACH-style ("dmmn") and TIGER-style ("tiger") synthetic training sets, 3 slides each
    (made once, reused): 4096² and 2048², or 1024² both when `small`."""
    from datamodules.synthetic.generator import ensure_dataset

    size, tiger = (1024, 1024) if small else (4096, 2048)
    common = {"workers": workers, "progress": False, "seed": 0, "splits": (1, 1, 1)}
    roots = {"dmmn": folder / "train", "tiger": folder / "train_tiger"}
    ensure_dataset(roots["dmmn"], n_slides=3, size=size, **common)
    ensure_dataset(roots["tiger"], n_slides=3, size=tiger, layout="tiger", **common)
    return roots


def quiet() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|sync_dist).*")


def build(family: str, root: Path, args: list[str] = ()) -> tuple[pl.LightningModule, object]:
    """(model, datamodule) of `family` from its YAML, data from `root`, extra CLI `args`."""
    from lightning_modules.cli.lightning_cli import _make_cli

    yaml, _ = FAMILIES[family]
    cli = _make_cli(
        ["--config", yaml, "--data.init_args.root", str(root), "--trainer.logger", "false", *args],
        run=False,
    )
    return cli.model, cli.datamodule


def loader_rate(data, n: int, seed: int = 0) -> tuple[float, float]:
    """(samples/s, share of deformed copies) of `n` random training samples read in this
    process with one torch thread (what one DataLoader worker delivers)."""
    data.setup("fit")
    dataset = data.datasets["train"]
    order = np.random.default_rng(seed).permutation(len(dataset))[: n + 1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[int(order[0])]  # opens the slides
        start = time.perf_counter()
        for i in order[1:]:
            dataset[int(i)]
        took = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    deformed = np.mean([bool(dataset.entries[int(i)][3]) for i in order[1:]])
    return len(order[1:]) / took, float(deformed)


class StepClock(pl.Callback):
    """Times training batches: steady samples/s after `warm` batches, and the share of the
    steady time spent waiting for the next batch (loader + transfer, outside the step)."""

    def __init__(self, warm: int = 1):
        self.warm = warm
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())
        image = batch["image"]
        self.sizes.append(len(image))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def result(self) -> dict:
        w = self.warm
        if len(self.ends) <= w:
            raise RuntimeError(f"only {len(self.ends)} batches ran, need more than {w}")
        total = self.ends[-1] - self.ends[w - 1] if w else self.ends[-1] - self.starts[0]
        waits = [s - e for s, e in zip(self.starts[w + 1 :], self.ends[w:], strict=False)]
        if w == 0:
            waits = [0.0, *waits]
        return {
            "samples_per_second": sum(self.sizes[w:]) / total,
            "step_seconds": total / len(self.sizes[w:]),
            "loader_wait_share": sum(waits) / total,
        }


def train_rate(
    model, data, batches: int, warm: int = 1, work: Path = Path("data/bench/work"), **trainer
) -> dict:
    """Fit `warm + batches` training batches; StepClock's figures plus peak memory (GiB): on a
    GPU the allocator's peak, on the CPU this process's peak RSS."""
    quiet()
    clock = StepClock(warm)
    cuda = trainer.get("accelerator") in ("gpu", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    fit = pl.Trainer(
        max_epochs=1,
        limit_train_batches=warm + batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(work),
        callbacks=[clock],
        **trainer,
    )
    fit.fit(model, datamodule=data)
    out = clock.result()
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def gflops_per_sample(model, data) -> float:
    """Forward GFLOPs of one training sample (torch's FLOP counter on `batch_logits`);
    a training step costs about 3x that (forward + backward)."""
    from torch.utils.data import default_collate
    from torch.utils.flop_counter import FlopCounterMode

    data.setup("fit")
    batch = default_collate([data.datasets["train"][0]])
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.batch_logits(batch)
    return counter.get_total_flops() / 1e9


#: assumed sustained bf16 rate of one current GPU for the FLOP-based estimate (an H100/H200's
#: dense bf16 peak is ~990 TFLOP/s; convolutional training typically sustains 30-40 % of it)
GPU_TFLOPS = 300.0
CPU_ARGS = ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
            "--data.init_args.synthesize", "false"]  # fmt: skip


def _loader_only(family: str, root: Path, args: list[str], n: int) -> tuple[float, float]:
    _, data = build(family, root, [*CPU_ARGS, *args])
    return loader_rate(data, n)


def run(
    roots: dict[str, Path], n: int = 24, train: bool = True
) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """Rows of the loader table: per family, the loader's samples/s per worker, the training
    samples/s at paper width on this CPU (batch 2, one timed batch after one), and the workers a
    GPU would need at its FLOP-estimated training rate. DMMN's loader also with the old
    elasticdeform warp (the baseline) and with the copies left to the device. Also returns the
    training samples/s per family."""
    import datamodules.datasets as datasets
    from datamodules.sampling.balancing import elastic_deform

    quiet()
    rows, rates = [], {}
    saved = datasets.deform_field
    try:
        datasets.deform_field = elastic_deform  # the path before elastic_torch
        old, _ = _loader_only("DMMN-M3", roots["dmmn"], [], n)
    finally:
        datasets.deform_field = saved
    rows.append(("DMMN-M3 loader, elasticdeform copies (baseline)", f"{old:.1f} samples/s = 1.00"))
    dev, _ = _loader_only(
        "DMMN-M3", roots["dmmn"], ["--data.init_args.deform_on_device", "true"], n
    )
    for family, (_, kind) in FAMILIES.items():
        model, data = build(family, roots[kind], CPU_ARGS)
        per_worker, deformed = loader_rate(data, n)
        name = f"{family} loader" + (f" ({deformed:.0%} deformed copies)" if deformed else "")
        ratio = f" = {per_worker / old:.2f}" if family == "DMMN-M3" else ""
        rows.append((f"{name}, per worker", f"{per_worker:.1f} samples/s{ratio}"))
        if family == "DMMN-M3":
            rows.append(("DMMN-M3 loader, copies deformed on the device, per worker",
                         f"{dev:.1f} samples/s = {dev / old:.2f}"))  # fmt: skip
        flops = gflops_per_sample(model, data)
        gpu = GPU_TFLOPS * 1e3 / (3 * flops)
        rows.append(
            (
                f"{family} GPU training (estimate: 3 x {flops:.0f} GFLOP/sample at "
                f"{GPU_TFLOPS:.0f} TFLOP/s)",
                f"{gpu:.0f} samples/s -> {gpu / per_worker:.0f} loader workers"
                + (f" ({gpu / dev:.0f} deforming on the device)" if family == "DMMN-M3" else ""),
            )
        )
        if train:
            rate = train_rate(model, data, 1, warm=1, accelerator="cpu", devices=1)
            rates[family] = rate["samples_per_second"]
            rows.append(
                (
                    f"{family} training at paper width, this CPU (batch 2)",
                    f"{rate['samples_per_second']:.3f} samples/s "
                    f"(one loader worker is {per_worker / rate['samples_per_second']:.0f}x that)",
                )
            )
    return rows, rates
