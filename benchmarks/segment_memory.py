"""Peak memory of `wsiseg segment` against slide area (issue 7, part 2).

For each slide size, a synthetic slide is generated (once) and segmented by `wsiseg segment` in a
child process while this script samples, every 0.1 s, the resident memory of that process and
all its descendants (the DataLoader workers) from /proc. Reported: peak RSS of the main process
(the kernel's high-water mark) and of the whole process tree (sampled: summed RSS, which counts
pages the forked workers share with it once per process, and summed PSS, which splits them), time,
tiles and tiles/s. If memory does not grow with area, the peaks stay flat while the slide grows
16-fold.

    python -m benchmarks.segment_memory --ckpt RUN.ckpt --sizes 8192 32768 --work /tmp/segbench
    python -m benchmarks.segment_memory --trivial --sizes 8192 16384 32768

Without --ckpt a one-step DMMN-M3 (width 1/16, the test configuration) is trained first;
``--magnification 5 --arch s2`` trains DSMN-S2 at 5x instead: 16x fewer targets (and one U-Net)
for the same full-resolution mask, so large slides take minutes on a CPU. ``--trivial`` uses
`benchmarks.bench_segment`'s 1x1-convolution model at DMMN's 20x geometry: every tile of the
full-resolution grid, with no model compute, so the pipeline's own memory is what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _status_kb(pid: int, key: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kb(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) in KiB of `pid` and all its descendants."""
    todo, rss, pss = [pid], 0, 0
    while todo:
        p = todo.pop()
        rss += _status_kb(p)
        pss += _pss_kb(p)
        todo += _children(p)
    return rss, pss


def run_measured(cmd: list[str], env: dict, trace: Path | None = None) -> dict:
    """Run `cmd`, sampling the process tree's RSS; return peaks (MiB) and wall time. With
    `trace`, every sample goes there as CSV (seconds, main RSS, tree RSS, tree PSS in MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_tree = peak_pss = peak_main = 0
    peak_at = 0.0
    samples = []
    while proc.poll() is None:
        rss, pss = tree_kb(proc.pid)
        samples.append((time.perf_counter() - start, _status_kb(proc.pid), rss, pss))
        if pss > peak_pss:
            peak_pss, peak_at = pss, time.perf_counter() - start
        peak_tree = max(peak_tree, rss)
        peak_main = max(peak_main, _status_kb(proc.pid, "VmHWM"))  # the kernel's high-water mark
        time.sleep(0.1)
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode()[-3000:]}")
    seconds = time.perf_counter() - start
    if trace is not None:
        lines = ["seconds,main_rss_mib,tree_rss_mib,tree_pss_mib"]
        lines += [f"{t:.1f},{m / 1024:.0f},{r / 1024:.0f},{q / 1024:.0f}" for t, m, r, q in samples]
        trace.write_text("\n".join(lines) + "\n")
    return {
        "seconds": seconds,
        "peak_tree_mib": peak_tree / 1024,
        "peak_tree_pss_mib": peak_pss / 1024,
        "peak_pss_at": peak_at / seconds,  # share of the wall time
        "peak_single_mib": peak_main / 1024,
    }


def train_checkpoint(work: Path, magnification: float, arch: str) -> Path:
    from datamodules.synthetic.generator import ensure_dataset
    from lightning_modules.cli.main import main

    data = work / "train_set"
    ensure_dataset(data, progress=False, n_slides=3, size=2048, splits=(1, 1, 1))
    out = work / f"ckpt_{arch}_{magnification:g}x"
    ckpt = out / "dmmn_m3" / "version_0" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        exp = ROOT / "experiments"
        rc = main([
            "fit", "--config", str(exp / "dmmn_m3.yaml"), "--config", str(exp / "trainer/cpu.yaml"),
            "--config", str(ROOT / "tests/conf/tiny.yaml"),
            "--data.init_args.root", str(data), "--trainer.default_root_dir", str(out),
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--trainer.num_sanity_val_steps", "0", "--model.init_args.width", "0.0625",
            "--data.init_args.view.init_args.magnification", str(magnification),
            "--model.init_args.arch", arch,
        ])  # fmt: skip
        if rc:
            raise SystemExit("training the benchmark checkpoint failed")
    return ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="checkpoint (default: train a tiny DMMN-M3)")
    p.add_argument("--trivial", action="store_true", help="the 1x1-conv model (see above)")
    p.add_argument("--magnification", type=float, default=20.0, help="of the trained default")
    p.add_argument("--arch", default="m3", help="DMMN arch of the trained default (m3, s2, ...)")
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--work", default="/tmp/segbench")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from datamodules.synthetic.generator import generate

    if args.trivial:
        from benchmarks.bench_segment import checkpoints

        ckpt = next(iter(checkpoints(work / "checkpoints").values()))
        label = "trivial"
    else:
        ckpt = Path(args.ckpt or train_checkpoint(work, args.magnification, args.arch))
        run_layout = ckpt.stem == "last" and len(ckpt.parents) > 3  # RUN/NAME/version_N/...
        label = ckpt.parents[3].name if run_layout else ckpt.stem
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = Path(sys.executable).with_name("wsiseg")
    rows = []
    for size in args.sizes:
        folder = work / f"s{size}"
        slide = folder / "slide_00.tiff"
        if not slide.is_file():
            generate(folder, n_slides=1, size=size, splits=(0, 0, 1), progress=False, workers=1)
        out = work / f"out_{size}_{label}"
        cmd = [str(script), "segment", "--ckpt", str(ckpt), str(slide), "--out", str(out),
               "--overwrite", "--no-progress", "--num-workers", str(args.num_workers),
               "--batch-size", str(args.batch_size)]  # fmt: skip
        measured = run_measured(cmd, env, work / f"trace_{size}_{label}.csv")
        info = json.loads((out / "slide_00.json").read_text())
        row = {"size": size, "tiles": info["tiles"], "tiles_per_second": info["tiles_per_second"],
               "decode_amplification": info["decode_amplification"], **measured}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| slide | tiles | peak RSS, main process | with workers: RSS / PSS | wall | tiles/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']}² | {r['tiles']} | {r['peak_single_mib']:.0f} MiB | "
              f"{r['peak_tree_mib']:.0f} / {r['peak_tree_pss_mib']:.0f} MiB | "
              f"{r['seconds']:.0f} s | {r['tiles_per_second']:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
