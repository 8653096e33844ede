"""`wsiseg study STUDY.yaml --report`: intervals, claim verdicts, tables and plots of a study.

Written to ``<out>/<study>/report/``: report.md, scores.csv (per experiment and score: mean
and 95 % interval), claims.csv (difference interval and verdict per ordered pair), runs.csv
(every run's own scores) and the plots (lightning_modules/cli/study/plots.py). The report is
derived from the run folders alone and rewritten each time.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from lightning_modules.cli.study.bootstrap import Bootstrap, seeds_to_decide, verdict
from lightning_modules.cli.study.evidence import EXTRAS, load_study_runs
from lightning_modules.cli.study.plan import Study
from lightning_modules.cli.study.plots import iou_plot, timing_plot
from lightning_modules.metrics import class_key

DEFAULTS = {"n": 2000, "seed": 0, "levels": "both"}


@dataclass
class StudyReport:
    folder: Path
    keys: list[str]
    scores: list[dict]  # one row per experiment and score
    claims: list[dict]
    runs: list[dict]
    missing: list[str]
    markdown: str
    plots: list[Path]


def score_keys(class_names: list[str], ordinal: bool, groups: dict | None = None) -> list[str]:
    keys = ["miou"] + [f"iou/{class_key(n)}" for n in class_names] + ["accuracy"]
    keys += ["bach_score"] if ordinal else []
    for g in groups or {}:
        keys += [f"group_iou/{class_key(g)}", f"within_group/{class_key(g)}"]
    return keys


def class_groups(name) -> dict:
    """The groups of the runs' class map (``hparams.class_map``), {} when it has none or is
    not a built-in / readable map."""
    from datamodules.labels.classmaps import load_class_map

    if not name or not isinstance(name, str):
        return {}
    try:
        return dict(load_class_map(name).groups or {})
    except Exception:  # a class-map file that is gone: the scores without groups
        return {}


def build_report(study: Study, options: dict | None = None) -> StudyReport:
    opts = {**DEFAULTS, **study.bootstrap, **(options or {})}
    runs, info, missing = load_study_runs(study)
    groups = class_groups(info.get("class_map"))
    keys = score_keys(info["class_names"], info["ordinal"], groups)
    extras = [k for k in EXTRAS if any(k in r.extras for rs in runs.values() for r in rs)]
    common = (runs, keys, extras, info["class_names"], info["ordinal"])
    n, seed = int(opts["n"]), int(opts["seed"])
    boot = Bootstrap(*common, n=n, seed=seed, levels=str(opts["levels"]), groups=groups)
    tiles_only = boot if opts["levels"] != "both" else None
    score_rows = [
        {"experiment": exp, "score": k, "mean": e.mean, "lo": e.lo, "hi": e.hi,
         "runs": len(e.per_run), "per_run": " ".join(_f(v) for v in e.per_run)}
        for exp, ests in boot.estimates.items() for k, e in ests.items()
    ]  # fmt: skip
    claim_rows = []
    for c in study.claims:
        row = {"claim": c.text, "score": c.score, "op": c.op, "margin": c.margin,
               "stated": c.stated, "source": c.source, "high": c.high, "low": c.low}  # fmt: skip
        if c.high in runs and c.low in runs and c.score in boot.estimates[c.high]:
            d = boot.difference(c.high, c.low, c.score)
            row.update(diff=d.mean, lo=d.lo, hi=d.hi, verdict=verdict(d, c.op, c.margin))
            if tiles_only is None:  # one tiles-only bootstrap: the part seeds cannot shrink
                tiles_only = Bootstrap(*common, n=n, seed=seed, levels="tiles", groups=groups)
            have = min(len(runs[c.high]), len(runs[c.low]))
            t = tiles_only.difference(c.high, c.low, c.score)
            row["seeds_to_decide"] = seeds_to_decide(d, t, have, c.op, c.margin)
        else:
            row.update(diff=math.nan, lo=math.nan, hi=math.nan, verdict="no runs")
            row["seeds_to_decide"] = math.nan
        claim_rows.append(row)
    run_rows = [
        {"experiment": exp, "seed": r.seed, "run": r.name,
         **{k: boot.estimates[exp][k].per_run[i] for k in keys + extras}}
        for exp, items in runs.items() for i, r in enumerate(items)
    ]  # fmt: skip
    folder = study.folder / "report"
    folder.mkdir(parents=True, exist_ok=True)
    plots = [iou_plot(boot, keys, folder / "iou.png", study.name)]
    if "relative_inference_time" in extras:
        plots.append(timing_plot(boot, folder / "timing.png", study.name))
    missing_labels = [r.label for r in missing]
    md = _markdown(study, opts, info, keys + extras, boot, claim_rows, run_rows, missing_labels)
    report = StudyReport(folder, keys + extras, score_rows, claim_rows, run_rows,
                         missing_labels, md, plots)  # fmt: skip
    _write(report)
    return report


def _f(v, digits: int = 4) -> str:
    return (
        "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"
    )


def _times(study) -> str:
    """Summed wall and CPU time of the finished runs (their ``study_run.json``)."""
    import json

    from lightning_modules.cli.study.runner import RUN_INFO

    infos = []
    for run in study.runs:
        try:
            infos.append(json.loads((run.run_dir / RUN_INFO).read_text()))
        except (OSError, ValueError):
            continue
    if not infos:
        return "no run recorded its time"
    wall = sum(float(i.get("wall_s", 0)) for i in infos) / 60
    cpus = [float(i["cpu_s"]) for i in infos if "cpu_s" in i]
    text = f"wall {wall:.1f} min summed over {len(infos)} runs"
    if cpus:
        text += f", CPU (user + system) {sum(cpus) / 60:.1f} min over {len(cpus)}"
    return text


def _seeds(n) -> str:
    return "–" if not isinstance(n, int | float) or math.isnan(n) else (
        "∞" if math.isinf(n) else str(int(n)))  # fmt: skip


def _interval(mean, lo, hi) -> str:
    return f"{_f(mean)} [{_f(lo)}, {_f(hi)}]"


def _markdown(study, opts, info, keys, boot, claims, runs, missing) -> str:
    n_done = sum(len(v) for v in boot.runs.values())
    lines = [
        f"# Study `{study.name}`", "",
        *([study.description, ""] if study.description else []),
        f"- runs: {n_done} finished of {len(study.runs)} ({len(study.experiments)} experiments x "
        f"seeds {study.seeds}){'; missing: ' + ', '.join(missing) if missing else ''}",
        f"- data: `{info['data_hash']}`, {len(info['ids'])} test tiles (the same in every run)",
        f"- bootstrap: {opts['n']} replicates, seed {opts['seed']}, levels {opts['levels']} "
        "(runs, then test tiles; docs/studies.md)",
        f"- time: {_times(study)}",
        f"- rebuild: `wsiseg study {study.path} --out {study.out} --report`", "",
        "## Scores: mean over runs [95 % interval]", "",
        "| experiment | runs | " + " | ".join(keys) + " |",
        "|---|---:|" + "---|" * len(keys),
    ]  # fmt: skip
    for exp, ests in boot.estimates.items():
        cells = [_interval(ests[k].mean, ests[k].lo, ests[k].hi) for k in keys]
        lines.append(f"| {exp} | {len(boot.runs[exp])} | " + " | ".join(cells) + " |")
    lines += ["", "## Claims", "",
              "| claim | score | high − low [95 % interval] | verdict | | ≈ seeds to decide "
              "| source |",
              "|---|---|---|---|---|---:|---|"]  # fmt: skip
    for c in claims:
        kind = "stated" if c["stated"] else "implied"
        rule = f"margin {c['margin']:g}" if c["op"] == ">=" else ""
        lines.append(
            f"| {c['claim']} | {c['score']} | {_interval(c['diff'], c['lo'], c['hi'])} "
            f"| **{c['verdict']}** | {kind} {rule} | {_seeds(c['seeds_to_decide'])} "
            f"| {c['source']} |"
        )
    lines += [
        "",
        "*supported*: the interval of high − low lies above 0 (`>`) or above −margin (`>=`, "
        "not worse by more than the margin); *contradicted*: below it; else *undecided*. "
        "*≈ seeds to decide*: seeds per experiment at which the interval would exclude its "
        "edge if the mean gap held (normal approximation; ∞: the test tiles alone cover the "
        "gap; docs/studies.md).",
        "", "## Runs", "",
        "| experiment | seed | " + " | ".join(keys) + " |",
        "|---|---:|" + "---|" * len(keys),
    ]  # fmt: skip
    for r in runs:
        lines.append(
            f"| {r['experiment']} | {r['seed']} | " + " | ".join(_f(r[k]) for k in keys) + " |"
        )
    return "\n".join(lines) + "\n"


def _write(report: StudyReport) -> None:
    (report.folder / "report.md").write_text(report.markdown)
    for name, rows in (("scores", report.scores), ("claims", report.claims),
                       ("runs", report.runs)):  # fmt: skip
        with (report.folder / f"{name}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["none"])
            writer.writeheader()
            writer.writerows(rows)
