"""`wsiseg study STUDY.yaml`: run every (experiment, seed) of a study, then report on it.

See docs/studies.md: the study YAML, run folders, skip / resume, the two-level bootstrap,
verdicts on the paper's claims, wandb and the SLURM launcher.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from lightning_modules.cli.study.plan import load_study
from lightning_modules.cli.study.runner import has_checkpoint, is_finished, progress, run_study


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsiseg study",
        description="Run a study (experiments x seeds, experiments/studies/*.yaml) one run at a "
        "time, skipping finished runs and resuming killed ones, then write its report: mean and "
        "95 % interval of every score (two-level bootstrap) and a verdict on each claim.",
    )
    p.add_argument("study", help="study YAML, e.g. experiments/studies/dmmn.yaml")
    p.add_argument(
        "--out", help="folder of the study folders (default: the YAML's out, else runs/studies)"
    )
    p.add_argument("--report", action="store_true", help="only (re)write the report")
    p.add_argument("--list", action="store_true", help="list the runs, their state and commands")
    p.add_argument(
        "--task",
        type=int,
        action="append",
        help="run only run TASK (0-based; repeatable): what a SLURM array task runs",
    )
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="slurm: write an sbatch array script + run list instead of running",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="copy the finished runs' summaries (results.json, per_tile.npz, study_run.json; no "
        "checkpoints) to DIR/<study>/<experiment>/seed_<N>, then write the report there: what "
        "to commit, so `--out DIR --report` rebuilds it and `--out DIR` adds missing seeds",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing sbatch script")
    p.add_argument("--bootstrap", type=int, help="replicates (default 2000)")
    p.add_argument("--bootstrap-seed", type=int, help="the bootstrap's seed (default 0)")
    p.add_argument(
        "--levels",
        choices=("both", "runs", "tiles"),
        help="resample runs and tiles (default), or one level only",
    )
    p.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log the report to wandb (default: when the study's logger is wandb)",
    )
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    study = load_study(args.study, args.out)
    if args.list:
        for r in study.runs:
            state = "finished" if is_finished(r) else "resumable" if has_checkpoint(r) else "to run"
            print(f"{r.index}\t{r.label}\t{state}\t{r.run_dir}\n\twsiseg {shlex.join(r.args)}")
        print(progress(study))
        return 0
    if args.launcher == "slurm":
        from lightning_modules.cli.study.slurm import write_slurm

        path = write_slurm(study, Path(args.study), overwrite=args.overwrite)
        print(f"wrote {path} ({len(study.runs)} array tasks) and {path.with_name('runs.tsv')}")
        print(f"submit: sbatch {path}; afterwards: wsiseg study {args.study} --report")
        return 0
    if args.export:
        n = export_summaries(study, Path(args.export))
        print(f"exported {n} finished run(s) of study {study.name} to {args.export}")
        report(load_study(args.study, args.export), args)
        return 0
    rc = 0
    if not args.report:
        only = None if args.task is None else set(args.task)
        if only is not None and not only <= {r.index for r in study.runs}:
            from datamodules.errors import InputError

            raise InputError(
                study.path, f"--task {sorted(only)}: runs are 0..{len(study.runs) - 1}"
            )
        rc = run_study(study, only)
        if only is not None or rc in (130, 143):
            return rc
        if not any(is_finished(r) for r in study.runs):
            return rc or 1
    report(study, args)
    return rc


def report(study, args) -> None:
    from lightning_modules.cli.study.report import build_report

    options = {"n": args.bootstrap, "seed": args.bootstrap_seed, "levels": args.levels}
    result = build_report(study, {k: v for k, v in options.items() if v is not None})
    print("\n" + result.markdown)
    print(
        f"report: {result.folder}/report.md (+ scores.csv, claims.csv, runs.csv, "
        f"{', '.join(p.name for p in result.plots)})"
    )
    if args.wandb or (args.wandb is None and study.wandb):
        from lightning_modules.cli.study.wandb_report import log_report

        log_report(study, result)


SUMMARIES = ("results.json", "per_tile.npz", "study_run.json")


def export_summaries(study, dest: Path) -> int:
    """Copy each finished run's summaries to ``dest/<study>/<experiment>/seed_<N>``; a file
    already there with other content is an error (a summary is never silently replaced)."""
    import shutil

    from datamodules.errors import InputError

    done = [r for r in study.runs if is_finished(r)]
    for run in done:
        target = dest / run.run_dir.relative_to(study.out)
        target.mkdir(parents=True, exist_ok=True)
        for name in SUMMARIES:
            src, dst = run.run_dir / name, target / name
            if not src.is_file():
                continue
            if dst.is_file() and dst.read_bytes() != src.read_bytes():
                raise InputError(dst, f"exists with other content than {src}; not replaced")
            shutil.copy2(src, dst)
    return len(done)
