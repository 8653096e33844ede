"""Shared fixtures: a tiny synthetic slide set made once per session with the project's generator.

Generating costs ~2 s, so every data-pipeline and training test shares one set instead of
shipping fixtures in the repo; tests that modify data copy or link files into their own folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.synthetic.generator import ensure_dataset

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real"

#: 3 slides of 2048² at 0.5 um/px (8x8 targets of 256² each), one per split.
SYNTH = {"n_slides": 3, "size": 2048, "seed": 0, "splits": (1, 1, 1)}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Folder with manifest.json and slide_0{0,1,2}{.tiff,_mask.tiff,.xml} (train, val, test)."""
    out = tmp_path_factory.mktemp("synthetic")
    ensure_dataset(out, progress=False, workers=1, **SYNTH)
    return out


@pytest.fixture(scope="session")
def synthetic_band_root(tmp_path_factory) -> Path:
    """The same slides with a 16-px unlabeled band (mask 0) on every class boundary."""
    out = tmp_path_factory.mktemp("synthetic_band")
    ensure_dataset(out, progress=False, workers=1, unlabeled_band=16, **SYNTH)
    return out


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real (the real slides); tests using it are skipped where it is absent."""
    if not REAL.is_dir():
        pytest.skip("../shared/data/real not present")
    return REAL


@pytest.fixture
def out(tmp_path, monkeypatch):
    """The run folder; the test runs in an empty working directory that must stay empty.

    The experiments say ``runs`` (relative): had an override not taken, output would land in
    the working directory. No cached ImageNet files either (TORCH_HOME is empty).
    """
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield tmp_path / "out"
    assert sorted(p.name for p in cwd.iterdir()) == []
