"""The study bootstrap and verdicts on hand-made per-tile confusion counts (exact values), the
per-tile counts of the test hook, and the claim parser. No training: milliseconds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.errors import InputError
from lightning_modules.cli.study.bootstrap import (
    CONTRADICTED,
    SUPPORTED,
    UNDECIDED,
    Bootstrap,
    Estimate,
    RunEvidence,
    seeds_to_decide,
    verdict,
)
from lightning_modules.cli.study.plan import parse_claims
from lightning_modules.metrics import ConfusionMatrix, TileConfusions, per_sample_confusion

NAMES = ["a", "b"]
PERFECT = np.array([[10, 0], [0, 10]])
HALF = np.array([[5, 5], [0, 10]])  # IoU a = 5/10, IoU b = 10/15: mIoU 7/12


def runs_of(exp: str, tiles_per_run: list[list[np.ndarray]], times=None) -> list[RunEvidence]:
    return [
        RunEvidence(exp, seed, np.stack(t), {} if times is None else {"t": times[seed]})
        for seed, t in enumerate(tiles_per_run)
    ]


def boot(runs: dict, levels="both", n=400, seed=0, extras=()) -> Bootstrap:
    return Bootstrap(runs, ["miou", "iou/a", "accuracy"], extras, NAMES, False, n, seed, levels)


def test_identical_runs_give_a_zero_width_run_level_interval():
    tiles = [HALF, PERFECT, HALF]
    b = boot({"m": runs_of("m", [tiles, tiles, tiles])}, levels="runs")
    e = b.estimates["m"]["miou"]
    total = HALF * 2 + PERFECT  # [[20, 10], [0, 30]]: IoU a = 20/30, IoU b = 30/40
    expected = (20 / 30 + 30 / 40) / 2
    assert e.mean == pytest.approx(expected, abs=1e-12)
    assert e.lo == pytest.approx(expected, abs=1e-12) and e.hi == pytest.approx(expected, abs=1e-12)
    assert e.per_run == pytest.approx([expected] * 3)
    assert b.estimates["m"]["accuracy"].mean == pytest.approx(np.trace(total) / total.sum())
    # the tiles still vary: the two-level interval is wider than zero
    both = boot({"m": runs_of("m", [tiles, tiles, tiles])}).estimates["m"]["miou"]
    assert both.hi - both.lo > 0.05 and both.lo < expected < both.hi


def test_two_runs_span_their_scores_at_run_level():
    """Replicates of two runs are s1, (s1+s2)/2 or s2 (a quarter each at the ends): the 2.5 and
    97.5 percentiles are the two runs' own scores."""
    b = boot({"m": runs_of("m", [[HALF], [PERFECT]])}, levels="runs")
    e = b.estimates["m"]["miou"]
    assert (e.lo, e.hi) == (pytest.approx(7 / 12), pytest.approx(1.0))
    assert e.mean == pytest.approx((7 / 12 + 1.0) / 2)


def test_extras_are_resampled_over_runs_only():
    runs = {"m": runs_of("m", [[HALF], [HALF]], times=[0.5, 0.7])}
    e = boot(runs, extras=["t"]).estimates["m"]["t"]
    assert (e.mean, e.lo, e.hi) == (pytest.approx(0.6), pytest.approx(0.5), pytest.approx(0.7))


def test_clearly_better_method_is_supported_and_swapped_pair_contradicted():
    good = runs_of("good", [[PERFECT, PERFECT, PERFECT]] * 3)
    bad = runs_of("bad", [[HALF, HALF, HALF]] * 3)
    b = boot({"good": good, "bad": bad})
    d = b.difference("good", "bad", "miou")
    assert d.mean == pytest.approx(1 - 7 / 12)
    assert (d.lo, d.hi) == (pytest.approx(5 / 12), pytest.approx(5 / 12))  # paired, same tiles
    assert verdict(d, ">") == SUPPORTED
    assert verdict(b.difference("bad", "good", "miou"), ">") == CONTRADICTED
    assert verdict(b.difference("bad", "good", "miou"), ">=", 0.01) == CONTRADICTED


def test_equal_methods_not_worse_but_not_better():
    same = [[HALF, PERFECT]] * 2
    b = boot({"x": runs_of("x", same), "y": runs_of("y", same)})
    d = b.difference("x", "y", "miou")
    assert (d.mean, d.lo, d.hi) == (0.0, 0.0, 0.0)
    assert verdict(d, ">") == UNDECIDED
    assert verdict(d, ">=", 0.01) == SUPPORTED


def test_verdict_rules():
    assert verdict(Estimate(0.02, 0.001, 0.04), ">") == SUPPORTED
    assert verdict(Estimate(0.02, -0.001, 0.04), ">") == UNDECIDED
    assert verdict(Estimate(-0.02, -0.04, -0.001), ">") == CONTRADICTED
    assert verdict(Estimate(-0.002, -0.009, 0.004), ">=", 0.01) == SUPPORTED
    assert verdict(Estimate(-0.01, -0.02, 0.004), ">=", 0.01) == UNDECIDED
    assert verdict(Estimate(-0.03, -0.05, -0.011), ">=", 0.01) == CONTRADICTED
    assert verdict(Estimate(float("nan"), float("nan"), float("nan")), ">") == UNDECIDED


def test_seeded_and_reproducible():
    runs = {"m": runs_of("m", [[HALF, PERFECT, HALF], [PERFECT, HALF, HALF]])}
    first = boot(runs, seed=3).replicates["m"]["miou"]
    again = boot(runs, seed=3).replicates["m"]["miou"]
    other = boot(runs, seed=4).replicates["m"]["miou"]
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_per_tile_counts_sum_to_the_batch_confusion():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 8, 8), generator=g)
    target[0, :2] = 255  # ignored pixels
    preds = torch.randint(0, 3, (4, 8, 8), generator=g)
    per = per_sample_confusion(preds, target, 3, 255)
    cm = ConfusionMatrix(3, 255)
    cm.update(preds, target)
    assert per.shape == (4, 3, 3) and torch.equal(per.sum(0), cm.compute())
    assert int(per[0].sum()) == 64 - 16 and int(per[1].sum()) == 64
    tiles = TileConfusions()
    meta = {"slide": ["s1", "s0", "s1", "s0"], "x": torch.tensor([5.0, 1.0, 0.0, 2.0]),
            "y": torch.zeros(4)}  # fmt: skip
    tiles.update(preds, target, 3, 255, meta)
    counts, ids = tiles.gather()
    assert ids == [("s0", 1.0, 0.0), ("s0", 2.0, 0.0), ("s1", 0.0, 0.0), ("s1", 5.0, 0.0)]
    assert np.array_equal(counts[0], per[1].numpy()) and np.array_equal(counts[3], per[0].numpy())


def test_claim_chains_and_directions():
    exps = ["m3", "m2s", "ms", "s2"]
    claims = parse_claims(["m3 > m2s > ms >= s2"], exps, {}, Path("s.yaml"))
    got = {(c.high, c.op, c.low, c.stated) for c in claims}
    assert got == {
        ("m3", ">", "m2s", True), ("m2s", ">", "ms", True), ("ms", ">=", "s2", True),
        ("m3", ">", "ms", False), ("m3", ">", "s2", False), ("m2s", ">", "s2", False),
    }  # fmt: skip
    (faster,) = parse_claims(
        [{"claim": "ms < m3", "score": "t", "margin": 0.2}], exps, {}, Path("s.yaml")
    )
    assert (faster.high, faster.op, faster.low, faster.score) == ("m3", ">", "ms", "t")
    assert faster.text == "ms < m3" and faster.margin == 0.2
    with pytest.raises(InputError, match="needs the study's experiments"):
        parse_claims(["m3 > nope"], exps, {}, Path("s.yaml"))
    with pytest.raises(InputError, match="mixes"):
        parse_claims(["m3 > ms < s2"], exps, {}, Path("s.yaml"))


def test_plots_of_a_timed_family(tmp_path):
    from lightning_modules.cli.study.plots import iou_plot, timing_plot

    runs = {
        "razn": runs_of("razn", [[PERFECT, HALF]] * 2, times=[0.4, 0.5]),
        "razn_ms": runs_of("razn_ms", [[HALF, HALF]] * 2, times=[1.0, 1.0]),
    }
    runs = {k: [RunEvidence(r.experiment, r.seed, r.tiles, {"relative_inference_time":
            r.extras["t"]}) for r in v] for k, v in runs.items()}  # fmt: skip
    b = boot(runs, extras=["relative_inference_time"])
    t = b.estimates["razn"]["relative_inference_time"]
    assert (t.mean, t.lo, t.hi) == (pytest.approx(0.45), pytest.approx(0.4), pytest.approx(0.5))
    for path in (iou_plot(b, ["miou", "iou/a"], tmp_path / "iou.png", "razn"),
                 timing_plot(b, tmp_path / "timing.png", "razn")):  # fmt: skip
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_seeds_to_decide_separates_the_part_seeds_cannot_shrink():
    # half-width 0.04 of which the tiles alone give 0.01; gap 0.05 from the edge 0:
    # n = ceil(3 * (0.04² - 0.01²) / (0.05² - 0.01²)) = ceil(1.875) = 2
    diff, tiles = Estimate(0.05, 0.01, 0.09), Estimate(0.05, 0.04, 0.06)
    assert seeds_to_decide(diff, tiles, 3, ">") == 2
    assert math.isnan(seeds_to_decide(diff, tiles, 1, ">"))  # one run: no spread to go on
    # a gap of 0.025: ceil(3 * 0.0015 / 0.000525) = ceil(8.57) = 9 seeds
    assert seeds_to_decide(Estimate(0.025, -0.015, 0.065), tiles, 3, ">") == 9
    # the tiles alone cover a gap of 0.005: no number of seeds decides it
    assert seeds_to_decide(Estimate(0.005, -0.035, 0.045), tiles, 3, ">") == float("inf")
    # ">=" with margin 0.01 measures the gap from -0.01: mean 0.002 -> gap 0.012;
    # ceil(3 * (0.04² - 0.005²) / (0.012² - 0.005²)) = ceil(39.7) = 40
    tight = Estimate(0.002, -0.003, 0.007)
    assert seeds_to_decide(Estimate(0.002, -0.038, 0.042), tight, 3, ">=", 0.01) == 40


@pytest.mark.parametrize(
    "name", ["dmmn", "da_refinenet", "razn", "tiger", "tiger_power", "da_refinenet_long"]
)
def test_shipped_studies_load_with_three_seeds_fixed_epochs_and_claims(name):
    from lightning_modules.cli.study.plan import load_study

    root = Path(__file__).resolve().parents[1]
    study = load_study(root / "experiments" / "studies" / f"{name}.yaml")
    assert len(study.seeds) >= 3 and len(study.runs) == len(study.seeds) * len(study.experiments)
    for run in study.runs:  # no wall-clock cap: a run's result must not depend on the load
        args = list(run.args)
        assert args[args.index("--trainer.max_time") + 1] == "null"
    first = study.claims[0]
    expected = {
        "dmmn": ("dmmn_m3", "dmmn_m2s", "miou"),
        "da_refinenet": ("da_refinenet_r50_attention", "refinenet_r50_single", "miou"),
        "razn": ("razn", "razn_scale1", "miou"),
        "tiger": ("smp_fpn_r34", "smp_unet_r34", "iou/stroma"),
        "tiger_power": ("smp_fpn_r34", "smp_unet_r34", "iou/stroma"),
        "da_refinenet_long": ("da_refinenet_r50_attention", "refinenet_r50_single", "miou"),
    }[name]
    assert (first.high, first.low, first.score) == expected and first.stated
