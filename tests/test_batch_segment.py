"""`wsiseg segment` over a batch: bad slides are listed and skipped, good ones written complete;
per-slide claims let processes share an output folder; a killed run leaves no final name.

Bad slides are made here from the synthetic ones: one cut off (fails when opened or planned) and
one whose lower tiles at the resolutions the model reads are zeroed, so it plans (the tissue
thumbnail is intact) and fails mid-run, after tiles of it have been segmented.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile
import tiffslide
from ckpt_fixtures import DMMN_5X, DMMN_20X, tiny_checkpoint

from datamodules.wholeslide import output_paths
from lightning_modules.outputs.claims import Claims
from tests.cli_args import wsiseg_command

ROOT = Path(__file__).resolve().parents[1]
GOOD = ("slide_00", "slide_02")


@pytest.fixture(scope="module")
def ckpt5(tmp_path_factory, synthetic_root) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp(), synthetic_root, DMMN_5X)


def corrupt_rows(path: Path, from_row: int, levels=(0, 1, 2)) -> None:
    """Zero the tile data of tile rows >= `from_row` (level 0; proportionally in the 2x, 4x
    levels): the decoder fails there; the coarse levels (tissue detection) stay intact."""
    with tifffile.TiffFile(path) as tf:
        spans = []
        for k in levels:
            page = tf.series[0].levels[k].pages[0]
            cols = -(-page.shape[1] // page.tilewidth)
            first = (from_row >> k) * cols
            spans += list(zip(page.dataoffsets[first:], page.databytecounts[first:], strict=True))
    with open(path, "r+b") as f:
        for offset, count in spans:
            f.seek(offset)
            f.write(b"\0" * count)


@pytest.fixture(scope="module")
def ckpt20(tmp_path_factory, synthetic_root) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp(), synthetic_root, DMMN_20X)


@pytest.fixture
def batch(synthetic_root, tmp_path) -> Path:
    """Two good slides, one truncated, one that fails mid-run (sorted: bad_rows first)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in GOOD:
        os.symlink(synthetic_root / f"{name}.tiff", folder / f"{name}.tiff")
    data = (synthetic_root / "slide_01.tiff").read_bytes()
    (folder / "truncated.tiff").write_bytes(data[: int(len(data) * 0.6)])
    shutil.copy(synthetic_root / "slide_01.tiff", folder / "bad_rows.tiff")
    corrupt_rows(folder / "bad_rows.tiff", 4)
    return folder


def wsiseg(*args, cwd, env=None, **kw):
    cmd = [*wsiseg_command(), "segment", "--no-progress", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600, **kw)


def assert_complete(out: Path, name: str, slide: Path) -> None:
    paths = output_paths(out, name)
    ts = tiffslide.TiffSlide(paths["mask"])
    mask = ts.read_region((0, 0), 0, ts.dimensions, as_array=True)[..., 0]
    assert ts.dimensions == (2048, 2048) and (mask > 0).any(), name
    info = json.loads(paths["json"].read_text())
    assert info["slide"] == str(slide) and info["tiles"] > 0
    assert info["segmented_mm2"] == pytest.approx((mask > 0).sum() * 0.5e-3**2)
    assert json.loads(paths["geojson"].read_text())["type"] == "FeatureCollection"
    assert paths["overlay"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bad_slides_are_listed_and_skipped(ckpt5, batch, synthetic_root, tmp_path):
    out = tmp_path / "seg"
    r = wsiseg("--ckpt", ckpt5, batch, "--out", out, "--batch-size", "2", cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    for name in GOOD:
        assert_complete(out, name, batch / f"{name}.tiff")
    rows = {Path(row["slide"]).name: row for row in csv.DictReader(open(out / "failures.csv"))}
    assert set(rows) == {"truncated.tiff", "bad_rows.tiff"}
    assert rows["bad_rows.tiff"]["stage"] == "segment"
    assert "cannot decode level 2 at" in rows["bad_rows.tiff"]["reason"]  # a tile, mid-slide
    assert rows["truncated.tiff"]["stage"] in ("open", "plan") and rows["truncated.tiff"]["reason"]
    assert all("\n" not in row["reason"] for row in rows.values())
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("segmented 2 slide(s), 2 failed (listed in ") and str(out) in last
    for name in ("bad_rows", "truncated"):  # nothing of a failed slide under a final name
        assert not any(p.exists() for p in output_paths(out, name).values()), name
    assert not list(out.glob("*.part*"))

    # --resume retries only what is missing: the good slides stay, the bad ones fail again
    before = [output_paths(out, n)["mask"].stat().st_mtime_ns for n in GOOD]
    r = wsiseg("--ckpt", ckpt5, batch, "--out", out, "--resume", cwd=tmp_path)
    assert r.returncode == 1 and "2 already done (skipped), 2 failed" in r.stderr, r.stderr
    assert [output_paths(out, n)["mask"].stat().st_mtime_ns for n in GOOD] == before

    # once the bad slides are replaced by good scans, --resume does them and the list goes
    for name in ("truncated.tiff", "bad_rows.tiff"):
        shutil.copy(synthetic_root / "slide_01.tiff", batch / name)
    r = wsiseg("--ckpt", ckpt5, batch, "--out", out, "--resume", cwd=tmp_path)
    assert r.returncode == 0 and not (out / "failures.csv").exists(), r.stderr
    assert "segmented 2 slide(s), 2 already done (skipped); outputs in" in r.stderr
    assert_complete(out, "bad_rows", batch / "bad_rows.tiff")


def test_on_error_stop_fails_fast(ckpt5, batch, tmp_path):
    out = tmp_path / "seg"
    r = wsiseg("--ckpt", ckpt5, batch, "--out", out, "--on-error", "stop", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("wsiseg segment: error: ")
    assert "truncated.tiff" in r.stderr  # opened first, before any slide is segmented
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_claims_are_exclusive_and_die_with_their_holder(tmp_path):
    mine = Claims(tmp_path)
    assert mine.claim("a") and mine.claim("a")  # held: claiming again is a no-op
    code = (
        "from lightning_modules.outputs.claims import Claims; import sys, time\n"
        "c = Claims(sys.argv[1]); print(c.claim('a'), c.claim('b'), flush=True); time.sleep(60)"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        text=True,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert other.stdout.readline().split() == ["False", "True"]
        assert not mine.claim("b")
        other.send_signal(signal.SIGKILL)
        other.wait(10)
        assert mine.claim("b")  # the kernel dropped the dead process's lock
    finally:
        other.kill()
    mine.release_all()


@pytest.mark.slow
def test_two_processes_share_one_folder(ckpt5, synthetic_root, tmp_path):
    """Same slides, same --out, started together: each slide is written once, by one of them."""
    out, slides = tmp_path / "seg", [synthetic_root / f"slide_0{i}.tiff" for i in range(3)]
    cmd = [*wsiseg_command(), "segment", "--no-progress", "--ckpt", str(ckpt5), *map(str, slides),
           "--out", str(out), "--resume", "--num-workers", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for _ in range(2)]  # fmt: skip
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    writers = {}
    for i in range(3):
        info = json.loads((out / f"slide_0{i}.json").read_text())
        writers[i] = info["slide"]
    done = [int(e.split("segmented ")[-1].split(" ")[0]) for e in errs]
    assert sum(done) == 3, errs  # no slide segmented twice
    claimed = sum(int(e.split(" claimed by")[0].split(", ")[-1]) for e in errs if "claimed" in e)
    already = sum(int(e.split(" already done")[0].split(", ")[-1]) for e in errs if "already" in e)
    assert claimed + already == 3, errs  # what one did, the other left alone


@pytest.mark.slow
def test_sigkill_mid_slide_leaves_no_final_name(ckpt20, synthetic_root, tmp_path):
    """SIGKILL while the mask is being streamed (DMMN at 20x: dozens of one-tile batches)."""
    out, slide = tmp_path / "seg", synthetic_root / "slide_00.tiff"
    cmd = [*wsiseg_command(), "segment", "--no-progress", "--ckpt", str(ckpt20), str(slide),
           "--out", str(out), "--num-workers", "0", "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 300
    while not list(out.glob("*.part*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert list(out.glob("*_mask.tiff.part")), "killed before the mask was started"
    assert not any(p.exists() for p in output_paths(out, "slide_00").values())
    r = wsiseg("--ckpt", ckpt20, slide, "--out", out, "--resume", cwd=tmp_path)
    assert r.returncode == 0 and "segmented 1 slide(s)" in r.stderr, r.stderr
    assert_complete(out, "slide_00", slide)
    assert not list(out.glob("*.part*"))
