"""`make gpu-check`: the GPU path end to end in a few minutes, one markdown table.

On a machine with a GPU: each family (`bench_train.FAMILIES`, the paper YAMLs at paper width)
fits a fixed number of batches in bf16 (samples/s, peak memory, the share of the time spent
waiting for the loader), with the paper's batch size and DMMN's class-balancing copies deformed
on the device; the loader's samples/s per worker says how many workers the GPU needs. Then
DMMN-M3 at full width segments the 16384² synthetic slide of `make bench` (tiles/s, seconds
per gigapixel, decode amplification), and with two GPUs DMMN-M3 fits once more under DDP.
``--dry-run`` does all of it on the CPU with tiny widths, views and slide (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from datamodules.synthetic.generator import ensure_dataset

from . import bench_segment, bench_train

#: --dry-run: the smallest runs that still go through every layer (as tests/conf/*tiny*.yaml)
DRY = {
    "DMMN-M3": ["--model.init_args.width", "0.125"],
    "DA-RefineNet": [
        "--model.init_args.width",
        "0.125",
        "--data.init_args.view.init_args.size",
        "64",
    ],
    "RAZN": ["--model.init_args.width", "0.0625", "--data.init_args.view.init_args.size", "64"],
    "smp U-Net": ["--data.init_args.view.init_args.size", "64"],
}


def data_roots(args) -> dict[str, Path]:
    return bench_train.training_sets(args.data, small=args.dry_run, workers=args.workers)


def family_args(family: str, args) -> list[str]:
    out = [
        "--data.init_args.num_workers",
        str(args.workers),
        "--data.init_args.synthesize",
        "false",
    ]
    if family == "DMMN-M3":  # the copies deformed in the step (on the CPU in a dry run)
        out += ["--data.init_args.deform_on_device", "true"]
    if args.dry_run:
        out += [*DRY[family], "--data.init_args.batch_size", "2"]
    return out


def fit(family: str, root: Path, args, devices: int = 1) -> dict:
    model, data = bench_train.build(family, root, family_args(family, args))
    data.setup("fit")
    per_worker, deformed = bench_train.loader_rate(data, 4 if args.dry_run else 32)
    trainer = {"accelerator": "cpu", "precision": "32-true", "devices": 1}
    if not args.dry_run:
        trainer = {"accelerator": "gpu", "precision": "bf16-mixed", "devices": devices}
        if devices > 1:
            trainer["strategy"] = "ddp"
    rate = bench_train.train_rate(
        model, data, args.batches, warm=args.warm, work=args.data / "work", **trainer
    )
    batch = data.hparams.batch_size
    return {"family": family, "batch": batch, "devices": devices, "deformed": deformed,
            "loader_per_worker": per_worker, **rate}  # fmt: skip


def segment(args) -> dict:
    """DMMN-M3 (full width; --dry-run: width 0.125, a 2048² slide) segments the bench slide."""
    from lightning_modules.cli.checkpoints import load_method
    from lightning_modules.cli.commands.segment import build_parser, run
    from lightning_modules.dmmn import DMMN

    size = 2048 if args.dry_run else 16384
    folder = args.data if args.dry_run else Path(args.bench_data)
    manifest = ensure_dataset(folder / ("seg" if args.dry_run else ""), n_slides=1, size=size,
                              splits=(1, 0, 0), workers=args.workers, progress=False)  # fmt: skip
    slide = folder / ("seg" if args.dry_run else "") / manifest["slides"][0]["files"]["image"]
    torch.manual_seed(0)
    (args.data / "work").mkdir(parents=True, exist_ok=True)
    width = 0.125 if args.dry_run else 1.0
    ckpt = bench_segment.save_checkpoint(
        DMMN(arch="m3", width=width), args.data / "work" / f"dmmn_m3_w{width}.ckpt"
    )
    extra = ["--num-workers", str(args.workers), "--batch-size", "2" if args.dry_run else "64"]
    if not args.dry_run:
        extra += ["--accelerator", "gpu", "--precision", "bf16-mixed"]
    out = args.data / "work" / "segment"
    parsed = build_parser().parse_args(
        [str(slide), "--ckpt", str(ckpt), "--out", str(out), "--overwrite", "--no-progress", *extra]
    )
    clock = bench_segment.BatchClock()
    limit = {"limit_predict_batches": 8} if args.dry_run else {}
    start = time.perf_counter()
    run(parsed, [slide], load_method(ckpt), out, callbacks=[clock], **limit)
    wall = time.perf_counter() - start
    info = json.loads((out / f"{slide.stem}.json").read_text())
    gigapixels = info["tiles"] * (256 * 256) / 1e9  # the 20x area segmented
    return {"tiles": info["tiles"], "tiles_per_second": clock.tiles_per_second,
            "seconds_per_gigapixel": wall / gigapixels,
            "decode_amplification": info["decode_amplification"], "width": width}  # fmt: skip


def table(rows: list[dict], seg: dict | None, device: str) -> str:
    lines = [
        f"GPU check on {device}",
        "",
        "| run | batch | samples/s (tiles/s) | step ms | peak GiB | loader wait | "
        "loader samples/s per worker | workers needed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        need = r["samples_per_second"] / r["loader_per_worker"]
        name = r["family"] + (f", DDP x{r['devices']}" if r["devices"] > 1 else "")
        if r["deformed"]:
            name += f" ({r['deformed']:.0%} deformed copies)"
        lines.append(
            f"| fit {name} | {r['batch']} | {r['samples_per_second']:.1f} | "
            f"{1e3 * r['step_seconds']:.0f} | {r['peak_gib']:.2f} | "
            f"{r['loader_wait_share']:.0%} | {r['loader_per_worker']:.1f} | {need:.1f} |"
        )
    if seg is not None:
        lines.append(
            f"| segment DMMN-M3 (width {seg['width']}), {seg['tiles']} tiles | | "
            f"{seg['tiles_per_second']:.1f} | | | | "
            f"{seg['seconds_per_gigapixel']:.1f} s/Gpx | "
            f"decode amplification {seg['decode_amplification']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="on the CPU, tiny: tests the script")
    p.add_argument("--data", type=Path, default=Path("data/bench/gpu"), help="work folder")
    p.add_argument("--bench-data", default="data/bench", help="make bench's slide folder")
    p.add_argument("--batches", type=int, default=20, help="timed training batches per family")
    p.add_argument("--warm", type=int, default=5, help="untimed first batches")
    p.add_argument("--workers", type=int, default=max(1, min(15, (os.cpu_count() or 2) - 1)))
    p.add_argument("--families", nargs="+", default=list(bench_train.FAMILIES))
    p.add_argument("--ddp-child", help=argparse.SUPPRESS)  # one DDP fit, JSON on stdout
    args = p.parse_args(argv)
    bench_train.quiet()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: no GPU visible (torch.cuda.is_available() is False); "
              "--dry-run runs the same steps on the CPU", file=sys.stderr)  # fmt: skip
        return 2
    roots = data_roots(args)
    if args.ddp_child:
        row = fit(args.ddp_child, roots[bench_train.FAMILIES[args.ddp_child][1]], args, 2)
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            print("DDP-ROW " + json.dumps(row), flush=True)
        return 0
    start = time.perf_counter()
    rows = []
    for family in args.families:
        rows.append(fit(family, roots[bench_train.FAMILIES[family][1]], args))
        print(f"{family}: {rows[-1]['samples_per_second']:.1f} samples/s", flush=True)
    if not args.dry_run and torch.cuda.device_count() >= 2:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.gpu_check",
            "--ddp-child",
            "DMMN-M3",
            "--batches",
            str(args.batches),
            "--warm",
            str(args.warm),
            "--data",
            str(args.data),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # fmt: skip
        ddp = [ln for ln in done.stdout.splitlines() if ln.startswith("DDP-ROW ")]
        if ddp:
            rows.append(json.loads(ddp[-1][len("DDP-ROW ") :]))
        else:
            print(f"DDP run failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    seg = segment(args)
    device = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    print("\n" + table(rows, seg, device))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
