"""A study's report on wandb: one run of job type ``study-report`` in the study's group (the
group every run of the study logs to), holding the per-run, per-experiment and claim tables
and the plots; offline (under the study folder, or WANDB_DIR) when no API key is configured."""

from __future__ import annotations

import math
import os

from lightning_modules.cli.loggers import has_api_key
from lightning_modules.cli.study.plan import Study
from lightning_modules.cli.study.report import StudyReport


def _cell(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v if isinstance(v, int | float | str | bool) or v is None else str(v)


def _table(wandb, rows: list[dict]):
    columns = list(rows[0]) if rows else ["none"]
    return wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows])


def log_report(study: Study, report: StudyReport, project: str = "wsiseg") -> str:
    """Log `report`; returns the wandb run's folder."""
    import wandb

    offline = os.environ.get("WANDB_MODE") == "offline" or not has_api_key()
    kwargs = {} if os.environ.get("WANDB_DIR") else {"dir": str(study.folder)}
    run = wandb.init(
        project=project,
        group=study.name,
        job_type="study-report",
        name=f"{study.name}/report",
        tags=[f"study:{study.name}", "report"],
        mode="offline" if offline else "online",
        config={"study": study.name, "experiments": study.experiments, "seeds": study.seeds},
        reinit=True,
        **kwargs,
    )
    try:
        run.log(
            {
                "study/runs": _table(wandb, report.runs),
                "study/scores": _table(wandb, report.scores),
                "study/claims": _table(wandb, report.claims),
                **{f"study/{p.stem}": wandb.Image(str(p)) for p in report.plots},
            }
        )
        for c in report.claims:
            run.summary[f"verdict/{c['claim']} ({c['score']})"] = c["verdict"]
        folder = run.dir
    finally:
        run.finish()
    where = "offline: upload with `wandb sync` of" if offline else "logged:"
    print(f"wandb: study report {where} {os.path.dirname(folder)}", flush=True)
    return folder
