"""`--launcher slurm`: an sbatch array script, one array task per (experiment, seed), instead
of running. Each task runs ``wsiseg study STUDY.yaml --task I``, which skips a finished run,
resumes a killed one, and starts the ranks of a multi-GPU / multi-node run with srun.

Resources come from the trainer overlay: ``devices`` GPUs (or ``slurm.gpus_per_node`` when it
says -1 / "auto") as tasks per node, ``num_nodes`` nodes; ``slurm:`` in the study YAML adds
partition, time, cpus_per_task, mem and extra ``#SBATCH`` lines. The report is made afterwards
from the run folders (``wsiseg study STUDY.yaml --report``).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

from datamodules.errors import InputError
from lightning_modules.cli.study.plan import Study
from lightning_modules.cli.study.runner import python_command


def resources(study: Study) -> dict:
    """nodes, tasks (= GPUs) per node, gpu (bool) from the trainer overlay and `slurm:`."""
    trainer = {}
    if study.trainer is not None:
        trainer = (yaml.safe_load(study.trainer.read_text()) or {}).get("trainer") or {}
    gpu = str(trainer.get("accelerator", "cpu")) in ("gpu", "cuda", "auto")
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int) or devices < 1:
        devices = int(study.slurm.get("gpus_per_node", 1))
    return {"nodes": int(trainer.get("num_nodes", 1)), "tasks": devices, "gpu": gpu}


def script(study: Study, study_file: Path) -> str:
    res, opts = resources(study), study.slurm
    logs = (study.folder / "logs").resolve()
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=wsiseg-{study.name}",
        f"#SBATCH --array=0-{len(study.runs) - 1}",
        f"#SBATCH --nodes={res['nodes']}",
        f"#SBATCH --ntasks-per-node={res['tasks']}",
        f"#SBATCH --cpus-per-task={int(opts.get('cpus_per_task', 4))}",
        f"#SBATCH --output={logs}/slurm-%A_%a.log",
    ]
    if res["gpu"]:
        lines.append(f"#SBATCH --gpus-per-node={res['tasks']}")
    for key in ("partition", "time", "mem", "account"):
        if opts.get(key):
            lines.append(f"#SBATCH --{key}={opts[key]}")
    lines += [f"#SBATCH {x}" for x in opts.get("extra", [])]
    command = [*python_command(), "study", str(study_file.resolve()), "--out",
               str(study.out.resolve()), "--task"]  # fmt: skip
    lines += [
        f"# {len(study.runs)} runs, one per array task: {study.folder}/slurm/runs.tsv",
        "# afterwards: wsiseg study " + shlex.quote(str(study_file)) + " --report",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        'TASK="${SLURM_ARRAY_TASK_ID:?submit with sbatch (or set SLURM_ARRAY_TASK_ID)}"',
        f'exec {shlex.join(command)} "$TASK"',
        "",
    ]
    return "\n".join(lines)


def write_slurm(study: Study, study_file: Path, overwrite: bool = False) -> Path:
    """Write ``<study>/slurm/study.sbatch`` and ``runs.tsv`` (task, experiment, seed, folder,
    the `wsiseg` command line of the run)."""
    folder = study.folder / "slurm"
    path, table = folder / "study.sbatch", folder / "runs.tsv"
    if path.exists() and not overwrite:
        raise InputError(path, "exists; pass --overwrite to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    (study.folder / "logs").mkdir(parents=True, exist_ok=True)
    path.write_text(script(study, study_file))
    path.chmod(0o755)
    rows = ["task\texperiment\tseed\trun_dir\tcommand"]
    rows += [
        f"{r.index}\t{r.experiment}\t{r.seed}\t{r.run_dir}\twsiseg {shlex.join(r.args)}"
        for r in study.runs
    ]
    table.write_text("\n".join(rows) + "\n")
    return path
