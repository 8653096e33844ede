"""A study YAML -> the list of its runs: one `wsiseg train` command line per (experiment, seed).

Every run gets a deterministic folder ``<out>/<study>/<experiment>/seed_<N>`` (a CSV logger
with that ``version``), the study's overlays in a fixed order (experiment, data, trainer,
schedule, logger, further configs) and ``--ckpt_path last``, which continues that folder's own
run (lightning_modules/cli/resume.py) or starts afresh. docs/studies.md describes the keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from datamodules.errors import InputError

KEYS = {
    "name", "description", "experiments", "seeds", "trainer", "schedule", "data", "root",
    "logger", "configs", "args", "out", "experiments_dir", "claims", "score", "margin",
    "bootstrap", "slurm",
}  # fmt: skip
PAPER = "paper"  # schedule: none (the experiment YAML's own settings)
CHAIN = re.compile(r"\s*(>=|<=|>|<|≥|≤)\s*")


@dataclass(frozen=True)
class Claim:
    """``high op low`` on ``score``: op ">" (strictly better) or ">=" (not worse by more than
    ``margin``); a stated "<" is stored swapped, ``text`` keeps the paper's wording."""

    high: str
    low: str
    op: str
    score: str
    margin: float
    text: str
    source: str = ""
    stated: bool = True  # False: implied by a chain (A > B > C implies A > C)


@dataclass(frozen=True)
class Run:
    index: int
    experiment: str
    seed: int
    run_dir: Path
    args: tuple[str, ...]  # the `wsiseg` arguments, "train" first

    @property
    def label(self) -> str:
        return f"{self.experiment} seed {self.seed}"


@dataclass
class Study:
    name: str
    path: Path
    experiments: list[str]
    seeds: list[int]
    out: Path
    claims: list[Claim]
    runs: list[Run] = field(default_factory=list)
    trainer: Path | None = None
    logger: Path | None = None
    bootstrap: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)
    description: str = ""

    @property
    def folder(self) -> Path:
        return self.out / self.name

    @property
    def wandb(self) -> bool:
        return self.logger is not None and "wandb" in self.logger.name


def load_study(path: str | Path, out: str | Path | None = None) -> Study:
    """Read and check a study YAML; `out` replaces its ``out`` (where run folders go)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such study file (see experiments/studies/)")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML: {err}") from err
    if not isinstance(spec, dict):
        raise InputError(path, "a study file is a mapping (experiments:, seeds:, claims: ...)")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise InputError(path, f"unknown key(s) {unknown}; known: {sorted(KEYS)}")
    exps_dir = _dir(spec.get("experiments_dir"), _near(path.absolute().parent.parent), path)
    experiments = _names(spec.get("experiments"), "experiments", path)
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise InputError(path, f"seeds must be a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise InputError(path, f"seeds repeat: {seeds}")
    for exp in experiments:
        if not (exps_dir / f"{exp}.yaml").is_file():
            raise InputError(path, f"experiment {exp!r}: no {exps_dir / (exp + '.yaml')}")
    study = Study(
        name=str(spec.get("name") or path.stem),
        path=path,
        experiments=experiments,
        seeds=list(seeds),
        out=Path(out if out is not None else spec.get("out") or "runs/studies"),
        claims=parse_claims(spec.get("claims") or [], experiments, spec, path),
        trainer=_overlay(spec.get("trainer", "cpu"), exps_dir / "trainer", path),
        logger=_overlay(spec.get("logger"), exps_dir / "logger", path),
        bootstrap=dict(spec.get("bootstrap") or {}),
        slurm=dict(spec.get("slurm") or {}),
        description=str(spec.get("description") or ""),
    )
    study.runs = _runs(study, spec, exps_dir, path)
    return study


def _runs(study: Study, spec: dict, exps_dir: Path, path: Path) -> list[Run]:
    data = _overlay(spec.get("data"), exps_dir / "data", path)
    configs = [_overlay(c, Path("."), path) for c in spec.get("configs") or []]
    extra = [str(a) for a in spec.get("args") or []]
    schedule = spec.get("schedule", PAPER)
    runs = []
    for exp in study.experiments:
        sched = schedule
        if isinstance(schedule, dict):  # per experiment, with an optional "default"
            sched = schedule.get(exp, schedule.get("default", PAPER))
        sched_cfg = None if sched in (None, PAPER) else _overlay(sched, exps_dir / "schedule", path)
        for seed in study.seeds:
            run_dir = study.folder / exp / f"seed_{seed}"
            cfgs = [exps_dir / f"{exp}.yaml", data, study.trainer, sched_cfg, study.logger]
            args = ["train"] + [a for c in [*cfgs, *configs] if c for a in ("--config", str(c))]
            logger = {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": str(study.folder), "name": exp, "version": run_dir.name},
            }
            args += ["--seed_everything", str(seed), "--trainer.logger", json.dumps(logger)]
            args += ["--trainer.default_root_dir", str(study.folder)]
            if spec.get("root") is not None:
                args += ["--data.init_args.root", str(spec["root"])]
            tags = [exp, f"seed:{seed}", f"study:{study.name}"]
            args += ["--wandb.group", study.name, "--wandb.tags", json.dumps(tags)]
            args += ["--wandb.name", f"{exp}/seed_{seed}", *extra, "--ckpt_path", "last"]
            runs.append(Run(len(runs), exp, seed, run_dir, tuple(args)))
    return runs


def parse_claims(items, experiments: list[str], spec: dict, path: Path) -> list[Claim]:
    """Claims as ``"A > B"`` or chains ``"A > B > C >= D"`` (each adjacent pair is stated,
    the rest implied), bare or as ``{claim:, score:, margin:, source:}``."""
    out: list[Claim] = []
    for item in items:
        item = {"claim": item} if isinstance(item, str) else dict(item)
        text = str(item.get("claim", ""))
        tokens = CHAIN.split(text.strip())
        names, ops = tokens[0::2], [o.replace("≥", ">=").replace("≤", "<=") for o in tokens[1::2]]
        if len(names) < 2 or any(n not in experiments for n in names):
            raise InputError(path, f"claim {text!r}: needs the study's experiments joined by >, >=")
        if len({o[0] for o in ops}) > 1:
            raise InputError(path, f"claim {text!r}: mixes > and < in one chain")
        score = str(item.get("score", spec.get("score", "miou")))
        margin = float(item.get("margin", spec.get("margin", 0.01)))
        source = str(item.get("source", ""))
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                between = ops[i:j]
                strict = any(o in (">", "<") for o in between)
                op = ">" if strict else ">="
                a, b = (names[i], names[j]) if between[0][0] == ">" else (names[j], names[i])
                sym = between[0][0] + ("" if strict else "=")
                stated = j == i + 1
                phrase = f"{names[i]} {sym} {names[j]}"
                out.append(Claim(a, b, op, score, margin, phrase, source, stated))
    return out


def _near(p: Path) -> Path:
    """`p` relative to the working directory when inside it (shorter command lines)."""
    try:
        return p.relative_to(Path.cwd())
    except ValueError:
        return p


def _names(value, key: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InputError(path, f"{key} must be a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise InputError(path, f"{key} repeat: {value}")
    return list(value)


def _dir(value, default: Path, path: Path) -> Path:
    found = Path(value) if value else default
    if not found.is_dir():
        raise InputError(path, f"experiments_dir {found} is not a folder")
    return found


def _overlay(value, folder: Path, path: Path) -> Path | None:
    """A name in `folder` (``cpu`` -> folder/cpu.yaml) or a YAML path; None stays None."""
    if value in (None, "", False):
        return None
    value = str(value)
    candidate = Path(value) if value.endswith((".yaml", ".yml")) else folder / f"{value}.yaml"
    if not candidate.is_file():
        raise InputError(path, f"overlay {value!r}: no {candidate}")
    return candidate
