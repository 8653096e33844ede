"""The fuzzed annotation corpus (tests/fuzz_annotations.py) through every reader a user reaches.

Each case goes through `wsiseg info --annotations`, `wsiseg evaluate --truth` (in-process, as
the CLI runs them: exit 0, or exit 2 with one line naming the file; exit 1 would be an
unexpected exception, i.e. a traceback without --debug) and the training label path
(`open_labels` + `check_values` + reads at two resolutions, as `WSIDataModule` does): an
`InputError` naming the file, or labels in the class map. "same" cases must give exactly the
intact file's labels. Bounds: each case finishes all three paths within `SECONDS` (the
10⁶-vertex polygons within `HUGE_SECONDS`), and the training path's peak traced allocation stays
under `PEAK_MB` (the 10⁶-vertex polygons: `HUGE_PEAK_MB`).
"""

from __future__ import annotations

import contextlib
import io
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from fuzz_annotations import HUGE, MPP, SIZE, all_cases, labels, write_case

from datamodules.errors import InputError
from datamodules.labels.classmaps import IGNORE
from datamodules.labels.sources import open_labels
from datamodules.slides.slide import Slide
from datamodules.synthetic.files import write_pyramid
from lightning_modules.cli.main import main

SECONDS, HUGE_SECONDS = 10.0, 150.0
PEAK_MB, HUGE_PEAK_MB = 200, 1000
CASES = all_cases(seed=0)
FAST = [c for c in CASES if c.fast]
SLOW = [c for c in CASES if not c.fast]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("fuzz")
    slide, pred = folder / "slide.tiff", folder / "pred_mask.tiff"
    rgb = np.full((SIZE, SIZE, 3), 245, np.uint8)
    rgb[64:448, 64:448] = (200, 120, 170)
    write_pyramid(slide, rgb, MPP, "fuzz slide")
    write_pyramid(pred, labels(), MPP, "fuzz prediction")
    run_cli(["evaluate", "--pred", str(pred), "--truth", str(pred), "--json",
             str(folder / "warm.json")])  # imports once, outside the time bounds  # fmt: skip
    return {"folder": folder, "slide": slide, "pred": pred, "reference": {}}


def training_labels(path: Path, slide: Path) -> tuple[np.ndarray, np.ndarray]:
    source = open_labels(path, "bach", Slide(slide))
    if hasattr(source, "check_values"):
        source.check_values()
    full = source.read((0, 0), (SIZE, SIZE))
    coarse = source.read((0, 0), (SIZE // 4, SIZE // 4), mpp=MPP * 4)
    return full, coarse


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def reference(corpus, kind: str) -> np.ndarray:
    """Labels of the intact file of `kind` (the masks' reference is the intact mask)."""
    ref = corpus["reference"]
    if kind not in ref:
        case = next(c for c in CASES if c.name == f"{kind}-intact")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref[kind] = training_labels(write_case(case, corpus["folder"]), corpus["slide"])
    return ref[kind]


def check_case(case, corpus) -> None:
    path = write_case(case, corpus["folder"])
    limit = HUGE_SECONDS if str(HUGE) in case.name else SECONDS
    peak_limit = HUGE_PEAK_MB if str(HUGE) in case.name else PEAK_MB
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracemalloc.start()
        try:
            result, error = training_labels(path, corpus["slide"]), None
        except InputError as err:
            result, error = None, err
        finally:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        for argv in (
            ["info", corpus["slide"], "--annotations", path],
            ["evaluate", "--pred", corpus["pred"], "--truth", path, "--json",
             corpus["folder"] / f"{case.name}_eval.json"],
        ):  # fmt: skip
            rc, err = run_cli([str(a) for a in argv])
            assert rc in (0, 2), f"{argv[0]}: unexpected failure (exit {rc}): {err}"
            if rc == 2:
                lines = err.strip().splitlines()
                assert len(lines) == 1 and path.name in lines[0], f"{argv[0]}: {err}"
    seconds = time.perf_counter() - start
    assert seconds < limit, f"{seconds:.1f} s"
    assert peak < peak_limit, f"training path peak {peak:.0f} MB"
    if error is not None:
        assert str(path) in str(error) and "\n" not in str(error), str(error)
        assert case.expect in ("any", "error"), f"refused, but should read as intact: {error}"
        return
    assert case.expect != "error", "read without an error; only an error is right"
    full, coarse = result
    assert full.shape == (SIZE, SIZE) and coarse.shape == (SIZE // 4, SIZE // 4)
    assert set(np.unique(full)) <= {0, 1, 2, 3, IGNORE}
    if case.expect in ("same", "warn-same"):
        ref_full, ref_coarse = reference(corpus, case.kind)
        assert np.array_equal(full, ref_full) and np.array_equal(coarse, ref_coarse)
        ours = [str(w.message) for w in caught
                if issubclass(w.category, UserWarning) and str(path) in str(w.message)]  # fmt: skip
        assert bool(ours) == (case.expect == "warn-same"), ours


def test_corpus_size():
    kinds = {c.kind for c in CASES}
    assert len(CASES) >= 200 and kinds == {"aperio", "asap", "geojson", "mask"}
    assert 20 <= len(FAST) <= 100


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_fuzz_fast(case, corpus):
    check_case(case, corpus)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=[c.name for c in SLOW])
def test_fuzz_slow(case, corpus):
    check_case(case, corpus)
