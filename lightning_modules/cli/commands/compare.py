"""`wsiseg compare RUN_DIR...`: one table of runs (markdown + CSV) and a bar plot of their IoUs."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from datamodules.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsiseg compare",
        description="Collect results.json of finished runs (written by `wsiseg train`) into one "
        "table: method, data, per-class IoU, mIoU, weighted IoU, BACH score, relative inference "
        "time and parameters; plus a bar plot. Folders are searched recursively.",
    )
    p.add_argument("runs", nargs="+", help="run folders (or folders holding runs, e.g. runs/)")
    p.add_argument("--out", default="comparison", help="output prefix (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def find_results(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(path, "no such run folder")
        hits = [path] if path.is_file() else sorted(path.rglob("results.json"))
        if not hits:
            raise InputError(path, "holds no results.json (run `wsiseg train` first)")
        found += hits
    return found


def load_row(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
        scores = result["scores"]
    except (ValueError, KeyError) as err:
        raise InputError(path, f"not a wsiseg results file: {err}") from err
    arch = result.get("arch") or result.get("hparams", {}).get("arch")
    row = {
        "run": str(path.parent),
        "experiment": result.get("experiment") or path.parent.parent.name,
        "method": result.get("method", "?") + (f"-{arch}" if arch else ""),
        "data": Path(result["data"]).name if result.get("data") else "",
        "miou": scores.get("miou"),
        "weighted_iou": scores.get("weighted_iou"),
        "bach_score": scores.get("bach_score"),
        "relative_inference_time": result.get("relative_inference_time"),
        "parameters": result.get("parameters"),
    }
    for key, value in scores.items():
        if key.startswith("iou/"):
            row[key] = value
    return row


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def columns(rows: list[dict]) -> list[str]:
    classes = sorted({k for r in rows for k in r if k.startswith("iou/")}, key=lambda k: k[4:])
    head = ["experiment", "method", "data"]
    tail = ["miou", "weighted_iou", "bach_score", "relative_inference_time", "parameters", "run"]
    return head + classes + tail


def markdown(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def bar_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in columns(rows) if k.startswith("iou/")] + ["miou"]
    labels = [r["experiment"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * max(1, len(rows)) / 2), 4))
    width = 0.8 / max(1, len(rows))
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        values = [row.get(k) if row.get(k) is not None else 0.0 for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], values, width, label=label)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels([k.replace("iou/", "") for k in keys], rotation=20)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("test IoU per class and mIoU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    rows = sorted((load_row(p) for p in find_results(args.runs)), key=lambda r: r["experiment"])
    out = {ext: Path(f"{args.out}.{ext}") for ext in ("md", "csv", "png")}
    existing = [str(p) for p in out.values() if p.exists()]
    if existing and not args.overwrite:
        raise InputError(existing[0], "exists; pass --overwrite or another --out")
    cols = columns(rows)
    table = markdown(rows, cols)
    out["md"].parent.mkdir(parents=True, exist_ok=True)
    out["md"].write_text(table)
    with out["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    bar_plot(rows, out["png"])
    print(table)
    print(f"{len(rows)} runs -> {out['md']}, {out['csv']}, {out['png']}")
    return 0
