"""A study's plots: per-class IoU with interval bars and per-seed dots; relative inference time
against mIoU (the RAZN family, when runs measured timing)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def iou_plot(boot, keys: list[str], path: Path, title: str) -> Path:
    """Bars: mean IoU per class (and mIoU) per experiment, 95 % interval as error bars; dots:
    each run's own score."""
    plt = _pyplot()
    shown = [k for k in keys if k.startswith("iou/")] + ["miou"]
    exps = list(boot.estimates)
    width = 0.8 / max(1, len(exps))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(shown) * len(exps) + 2), 4.2))
    for i, exp in enumerate(exps):
        xs = [j + (i - (len(exps) - 1) / 2) * width for j in range(len(shown))]
        est = [boot.estimates[exp][k] for k in shown]
        means = [e.mean for e in est]
        err = [[max(0.0, e.mean - e.lo) for e in est], [max(0.0, e.hi - e.mean) for e in est]]
        ax.bar(xs, means, width, yerr=err, capsize=2, label=exp, alpha=0.8)
        for x, e in zip(xs, est, strict=True):
            ax.scatter([x] * len(e.per_run), e.per_run, s=14, c="white", edgecolors="black",
                       linewidths=0.8, zorder=3)  # fmt: skip
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels([k.replace("iou/", "") for k in shown], rotation=20)
    ax.set_ylabel("test IoU")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"study {title}: mean [95 % interval], dots = seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def timing_plot(boot, path: Path, title: str) -> Path:
    """Relative inference time (x) against mIoU (y), each with its interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for exp, ests in boot.estimates.items():
        t, m = ests.get("relative_inference_time"), ests["miou"]
        if t is None or t.mean != t.mean:  # no timing for this experiment
            continue
        ax.errorbar(
            t.mean, m.mean, xerr=[[t.mean - t.lo], [t.hi - t.mean]],
            yerr=[[m.mean - m.lo], [m.hi - m.mean]], fmt="o", capsize=3, label=exp,
        )  # fmt: skip
    ax.set_xlabel("relative inference time")
    ax.set_ylabel("test mIoU")
    ax.legend(fontsize=7)
    ax.set_title(f"study {title}: time vs accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
