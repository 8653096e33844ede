"""The `wsiseg` command: help, info, and one-line errors without tracebacks."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.cli_args import wsiseg_command

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present")


def wsiseg(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*wsiseg_command(), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env,
    )


def test_help_lists_all_commands():
    r = wsiseg("--help")
    assert r.returncode == 0
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")}
    assert {"fit", "validate", "test", "predict", "train", "synth", "info"} <= listed


def test_unknown_command():
    r = wsiseg("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr


@needs_real
def test_info_small_he():
    r = wsiseg("info", REAL / "small_HE.svs")
    assert r.returncode == 0, r.stderr
    assert "2220x2967" in r.stdout
    assert "levels      1" in r.stdout
    assert "mpp         0.499" in r.stdout


@needs_real
@pytest.mark.parametrize(
    "name,problem",
    [
        ("CropBreastSlide.tiff", "implausible resolution"),
        ("tcga-cr-7395-01a-01-ts1.svs", "no resolution"),
    ],
)
def test_info_without_mpp_is_one_line(name, problem):
    r = wsiseg("info", REAL / name)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and problem in lines[0]
    assert "Traceback" not in r.stderr
    ok = wsiseg("info", REAL / name, "--mpp", "0.5")
    assert ok.returncode == 0 and "given with --mpp" in ok.stdout


def test_bad_files_are_one_line(tmp_path):
    fake = tmp_path / "notes.svs"
    fake.write_text("not a slide")
    for path in (fake, tmp_path / "missing.svs"):
        r = wsiseg("info", path)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and path.name in r.stderr
        assert "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = wsiseg("--debug", "info", tmp_path / "missing.svs")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_info_with_annotations(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((400, 400, 3), np.uint8), photometric="rgb")
    xml = tmp_path / "s.xml"
    xml.write_text(
        '<Annotations><Annotation><Regions><Region Text="Invasive carcinoma"><Vertices>'
        '<Vertex X="0" Y="0"/><Vertex X="200" Y="0"/><Vertex X="200" Y="200"/>'
        '<Vertex X="0" Y="200"/></Vertices></Region></Regions></Annotation></Annotations>'
    )
    r = wsiseg("info", tmp_path / "s.tif", "--mpp", "0.5", "--annotations", xml)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "invasive" in line)
    # 200 x 200 px at 0.5 um/px = 100 um x 100 um = 0.01 mm2
    assert row.split()[-2:] == ["1", "0.0100"]
    bad = tmp_path / "bad.xml"
    bad.write_text(
        '<Annotations><Annotation><Regions><Region Text="Tumour"><Vertices>'
        '<Vertex X="0" Y="0"/><Vertex X="9" Y="0"/><Vertex X="9" Y="9"/>'
        "</Vertices></Region></Regions></Annotation></Annotations>"
    )
    r = wsiseg("info", tmp_path / "s.tif", "--mpp", "0.5", "--annotations", bad)
    assert r.returncode == 2 and "bad.xml" in r.stderr and "Tumour" in r.stderr
    assert "Traceback" not in r.stderr
