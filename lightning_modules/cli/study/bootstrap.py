"""Two-level bootstrap of a study's scores: resample runs (seeds), then test tiles.

One replicate draws the test tiles with replacement (one draw shared by every run: all runs
score the same test split, so a difference between methods is paired over tiles), rescores
each run from the sum of its drawn tiles' confusion counts, then draws each experiment's runs
with replacement and averages their scores. Scores without per-tile counts (e.g. relative
inference time) are resampled over runs only. The interval is the 2.5-97.5 percentile range
of the replicates; the generator is seeded, so a report is reproducible. Verdicts: see
`verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lightning_modules.metrics import scores

LEVELS = ("both", "runs", "tiles")


@dataclass
class RunEvidence:
    """One finished run: per-tile confusion counts ``(N, C, C)`` and scalar scores
    (``extras``, e.g. ``relative_inference_time``) that have no per-tile form."""

    experiment: str
    seed: int | None
    tiles: np.ndarray
    extras: dict[str, float] = field(default_factory=dict)
    name: str = ""


@dataclass
class Estimate:
    mean: float
    lo: float
    hi: float
    per_run: list[float] = field(default_factory=list)


def run_scores(tiles, weights, keys, class_names, ordinal, groups=None) -> dict:
    """key -> ``(B,)``: the run's scores on each of the B tile draws (``weights (B, N)``)."""
    c = tiles.shape[-1]
    cms = weights @ tiles.reshape(tiles.shape[0], c * c).astype(np.float64)
    out = {k: np.empty(len(cms)) for k in keys}
    for b, cm in enumerate(cms):
        s = scores(cm.reshape(c, c), class_names, ordinal, groups)
        for k in keys:
            out[k][b] = s.get(k, math.nan)
    return out


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(a)
    total = np.where(finite, a, 0.0).sum(axis=axis)
    count = finite.sum(axis=axis)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _interval(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


class Bootstrap:
    """Replicates of every score of every experiment, from one seeded generator.

    Args:
        runs: experiment -> its runs (every run the same tiles, in the same order).
        keys: scores recomputed from confusion counts (``miou``, ``iou/<class>``, ...).
        extras: scalar scores taken from each run as they are.
        n: number of replicates; seed: the generator's seed; levels: ``both``, or ``runs`` /
            ``tiles`` alone (to see each source of uncertainty).
        groups: the class map's groups (name -> class indices), for ``group_iou/<name>`` and
            ``within_group/<name>`` keys.
    """

    def __init__(
        self, runs, keys, extras, class_names, ordinal, n=2000, seed=0, levels="both", groups=None
    ):
        if levels not in LEVELS:
            raise ValueError(f"levels must be one of {LEVELS}, got {levels!r}")
        self.runs = runs
        self.keys = list(keys)
        self.extras = list(extras)
        rng = np.random.default_rng(seed)
        n_tiles = next(iter(runs.values()))[0].tiles.shape[0]
        if levels == "runs":
            weights = np.ones((n, n_tiles))
        else:
            weights = rng.multinomial(n_tiles, np.full(n_tiles, 1.0 / n_tiles), size=n)
        full = np.ones((1, n_tiles))
        self.replicates: dict[str, dict[str, np.ndarray]] = {}
        self.estimates: dict[str, dict[str, Estimate]] = {}
        for exp, items in runs.items():  # in the study's order: the draws are reproducible
            picks = np.tile(np.arange(len(items)), (n, 1))
            if levels != "tiles":
                picks = rng.integers(0, len(items), size=(n, len(items)))
            args = (self.keys, class_names, ordinal, groups)
            per_run = [run_scores(r.tiles, weights, *args) for r in items]
            point = [run_scores(r.tiles, full, *args) for r in items]
            reps, ests = {}, {}
            for k in self.keys + self.extras:
                if k in self.extras:
                    values = np.array([r.extras.get(k, math.nan) for r in items], float)
                    matrix = np.tile(values, (n, 1))
                else:
                    values = np.array([p[k][0] for p in point])
                    matrix = np.stack([s[k] for s in per_run], axis=1)  # (n, runs)
                reps[k] = _nanmean(np.take_along_axis(matrix, picks, axis=1), axis=1)
                mean = _nanmean(values[None, :], axis=1)[0]
                ests[k] = Estimate(float(mean), *_interval(reps[k]), per_run=values.tolist())
            self.replicates[exp], self.estimates[exp] = reps, ests

    def difference(self, a: str, b: str, key: str) -> Estimate:
        """``a − b`` on `key`: mean difference and the interval of the paired replicates."""
        mean = self.estimates[a][key].mean - self.estimates[b][key].mean
        return Estimate(float(mean), *_interval(self.replicates[a][key] - self.replicates[b][key]))


def seeds_to_decide(diff: Estimate, tiles_only: Estimate, runs: int, op: str, margin=0.0):
    """About how many seeds per experiment would make `verdict` decide, if the mean gap held.

    The interval's half-width h has a part from the test tiles, h_t (the ``tiles``-only
    bootstrap), that more seeds do not shrink, and a part from the runs that shrinks as
    1/sqrt(seeds): h(n)^2 = h_t^2 + (h^2 - h_t^2) * runs / n. Returns the n where h(n) falls
    below the gap's distance from the verdict's edge (0, or -margin for ``>=``); ``inf`` when
    the tiles alone already cover the gap (more test tiles would decide it, more seeds not).
    A normal approximation for planning, not a result; NaN with fewer than 2 runs a side (no
    run-to-run spread to extrapolate from).
    """
    edge = 0.0 if op == ">" else -abs(margin)
    gap = abs(diff.mean - edge)
    h, ht = (diff.hi - diff.lo) / 2, (tiles_only.hi - tiles_only.lo) / 2
    if not all(map(math.isfinite, (gap, h, ht))) or runs < 2:
        return math.nan
    if gap <= ht:
        return math.inf
    return max(1, math.ceil(runs * max(h * h - ht * ht, 0.0) / (gap * gap - ht * ht)))


SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "undecided"


def verdict(diff: Estimate, op: str, margin: float = 0.0) -> str:
    """Judge ``high op low`` from the interval of high − low.

    ``>``: supported when the interval lies above 0, contradicted when below 0.
    ``>=`` (high is not worse than low by more than `margin`, a non-inferiority claim):
    supported when the interval lies above −margin, contradicted when it lies below −margin.
    Anything else, or no interval, is undecided.
    """
    if not (math.isfinite(diff.lo) and math.isfinite(diff.hi)):
        return UNDECIDED
    edge = 0.0 if op == ">" else -abs(margin)
    if diff.lo > edge:
        return SUPPORTED
    if diff.hi < edge:
        return CONTRADICTED
    return UNDECIDED
