"""The bad-input corpus through the `wsiseg` commands that read each file, as a user runs them.

Each case must end with exit status 2, one line on stderr that names the bad file, no traceback,
and nothing in the output folder that looks like a finished result. The corpus is generated
once per session by tests/make_bad_corpus.py (no committed binaries). Commands are real
subprocesses, so what is checked is exactly what a user sees.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from make_bad_corpus import CASES, make_corpus

from lightning_modules.cli.config_errors import explain
from lightning_modules.cli.main import main
from tests.cli_args import experiment_args, wsiseg_command

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
TINY = ROOT / "tests" / "conf" / "tiny.yaml"
#: Files a finished command leaves behind; none may exist after a refused input.
RESULTS = {".ckpt", ".tiff", ".json", ".geojson", ".png", ".part", ".md", ".csv"}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("bad"))


def wsiseg(*args, cwd) -> subprocess.CompletedProcess:
    cmd = wsiseg_command()
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def expand(argv, corpus, out: Path) -> list[str]:
    """``@name`` -> that corpus file, ``@out`` -> the per-test output folder."""
    return [str(out) if a == "@out" else str(corpus[a[1:]]) if a[:1] == "@" else a for a in argv]


def check_refused(r: subprocess.CompletedProcess, name: str, out: Path, command: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"wsiseg {command}: error: ") and name in lines[0], lines[0]
    done = [p for p in out.rglob("*") if p.is_file() and p.suffix in RESULTS]
    assert not done, f"left behind: {done}"


# name of the bad file (must be named in the message), command line
FAST = [
    ("truncated.tiff", ["info", "@truncated.tiff"]),
    ("truncated.tiff", ["segment", "--ckpt", "@out/none.ckpt", "@truncated.tiff", "--out", "@out"]),
    ("truncated.tiff", ["evaluate", "--pred", "@truncated.tiff", "--truth", "@good_annotations.xml",
                        "--json", "@out/eval.json"]),
    ("empty.svs", ["info", "@empty.svs"]),
    ("notes.svs", ["info", "@notes.svs"]),
    ("no_pages.tiff", ["info", "@no_pages.tiff"]),
    ("zero_size.tiff", ["info", "@zero_size.tiff"]),
    ("no_tiles.tiff", ["info", "@no_tiles.tiff"]),
    ("malformed.xml", ["info", "@good_slide.tiff", "--annotations", "@malformed.xml"]),
    ("unknown_label.xml", ["info", "@good_slide.tiff", "--annotations", "@unknown_label.xml"]),
    ("off_slide.xml", ["info", "@good_slide.tiff", "--annotations", "@off_slide.xml"]),
    ("point.geojson", ["info", "@good_slide.tiff", "--annotations", "@point.geojson"]),
    ("misspelt_classmap.yaml", ["info", "@good_slide.tiff", "--annotations",
                                "@good_annotations.xml", "--classes", "@misspelt_classmap.yaml"]),
    ("misspelt_config.yaml", ["fit", "--config", str(EXPERIMENTS / "dmmn_s2.yaml"), "--config",
                              "@misspelt_config.yaml", "--trainer.default_root_dir", "@out"]),
] + [
    (truth, ["evaluate", "--pred", "@good_pred_mask.tiff", "--truth", f"@{truth}", "--json",
             "@out/eval.json"])
    for truth in ("malformed.xml", "unknown_label.xml", "off_slide.xml", "point.geojson",
                  "wrong_size_mask.tiff", "bad_values_mask.tiff")
]  # fmt: skip


def _id(case) -> str:
    return f"{case[1][0]}-{case[0]}"


@pytest.mark.parametrize("name,argv", FAST, ids=[_id(c) for c in FAST])
def test_refused_in_one_line(name, argv, corpus, tmp_path):
    out = tmp_path / "out"
    corpus = {**corpus, "out/none.ckpt": out / "none.ckpt", "out/eval.json": out / "eval.json"}
    r = wsiseg(*expand(argv, corpus, out), cwd=tmp_path)
    check_refused(r, name, out, argv[0])


def test_every_case_is_exercised():
    assert {name for name, _ in FAST} | {name for name, *_ in TRAIN} == set(CASES)


def test_good_partners_pass(corpus, tmp_path):
    """The bad files differ from these in one thing only, so it is that thing being refused."""
    r = wsiseg("info", corpus["good_slide.tiff"], "--annotations", corpus["good_annotations.xml"],
               "--classes", corpus["good_classmap.yaml"], cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and "tumour" in r.stdout, r.stderr
    pred, out = corpus["good_pred_mask.tiff"], tmp_path / "e.json"
    r = wsiseg("evaluate", "--pred", pred, "--truth", pred, "--json", out, cwd=tmp_path)
    assert r.returncode == 0 and out.is_file(), r.stderr


# ---------------------------------------------------------------------- through training
# name of the bad file, the data folder's slide and label files, label suffix
TRAIN = [
    ("truncated.tiff", "truncated.tiff", "good_pred_mask.tiff", "_mask.tiff"),
    ("wrong_size_mask.tiff", "good_slide.tiff", "wrong_size_mask.tiff", "_mask.tiff"),
    ("bad_values_mask.tiff", "good_slide.tiff", "bad_values_mask.tiff", "_mask.tiff"),
    ("unknown_label.xml", "good_slide.tiff", "unknown_label.xml", ".xml"),
    ("off_slide.xml", "good_slide.tiff", "off_slide.xml", ".xml"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,slide,labels,suffix", TRAIN, ids=[t[0] for t in TRAIN])
def test_refused_by_fit(name, slide, labels, suffix, corpus, tmp_path):
    """A data folder (slide + label file) with one bad file: `wsiseg fit` stops before training
    and leaves no checkpoint."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    shutil.copy(corpus[slide], data / "s.svs")  # the folder's default slide glob
    shutil.copy(corpus[labels], data / f"s{suffix}")
    extra = (
        *("--data.init_args.label_suffix", suffix, "--data.init_args.labels", "annotations"),
        *("--data.init_args.val_fraction", "0", "--data.init_args.test_fraction", "0"),
        *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"),
    )
    r = wsiseg(*experiment_args("fit", "dmmn_s2", data, out, tiny="tiny.yaml", extra=extra),
               cwd=tmp_path)  # fmt: skip
    # Lightning may log its setup lines first; the error is the last line and the only one
    last = r.stderr.strip().splitlines()[-1:] or [""]
    named = "s.svs" if name == slide else f"s{suffix}"  # the copy, named as the folder wants
    check_refused(
        subprocess.CompletedProcess(r.args, r.returncode, r.stdout, last[0]), named, out, "fit"
    )
    assert "Traceback" not in r.stderr and r.stderr.count("error:") == 1, r.stderr[-3000:]


# ---------------------------------------------------------------------- config messages
@pytest.mark.parametrize(
    "message,args,want",
    [
        ("Subcommand 'fit' does not accept option 'trainer.max_epoch'",
         ["fit", "--config", "@a", "--config", "@b"], ("b", "did you mean 'trainer.max_epochs'")),
        ('Parser key "data":\n  Errors:\n    - Option \'batch_sizes\' is not accepted\n'
         "    - Expected a <class 'NoneType'>", ["fit", "--config", "@b"],
         ("b", "Option 'batch_sizes' is not accepted")),
        ('Parser key "trainer.max_epochs":\n  - Expected a <class \'int\'>\n  Given value: x',
         ["fit", "--config", "@a", "--trainer.max_epochs", "x"], (None, "Given value: x")),
        ("Parser key \"config\": File does not exist: 'nope.yaml'", ["fit"],
         ("nope.yaml", "config file not found")),
    ],
)  # fmt: skip
def test_config_error_names_the_file(message, args, want, tmp_path):
    (tmp_path / "a").write_text("trainer:\n  max_epochs: 3\n")
    (tmp_path / "b").write_text("trainer:\n  max_epoch: 1\ndata:\n  init_args: {batch_sizes: 2}\n")
    args = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in args]
    path, text = explain(message, args, ["trainer.max_epochs", "data"])
    assert "\n" not in text and want[1] in text
    assert (path.name if path else None) == want[0]


# ---------------------------------------------------------------------- optimizer names
@pytest.mark.parametrize(
    "exp,tiny,bad,allowed",
    [
        ("dmmn_s2", "tiny.yaml", "rmsprop", "'sgd', 'adam'"),
        ("refinenet_r50_single", "tiny_refinenet.yaml", "adamw", "'sgd', 'adam'"),
        ("razn", "razn_tiny.yaml", "sgd", "'adam'"),
        ("razn_scale1", "razn_tiny.yaml", "sgd", "'adam'"),
    ],
)
@pytest.mark.parametrize("where", ["command line", "overlay"])
def test_unknown_optimizer_is_a_config_error(exp, tiny, bad, allowed, where, tmp_path, capsys):
    """An optimizer the method does not train with fails while the config is read (the type is
    a Literal), in one line that names the value and, from a YAML, that file."""
    overlay = tmp_path / "bad_optimizer.yaml"
    overlay.write_text(f"model:\n  init_args:\n    optimizer: {bad}\n")
    on_line = where == "command line"
    argv = experiment_args(
        "fit", exp, tmp_path / "no_data", tmp_path / "out", tiny=tiny,
        overlays=() if on_line else (overlay,),
        extra=("--model.init_args.optimizer", bad) if on_line else (),
    )  # fmt: skip
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("wsiseg fit: error: ")
    assert f"Got value: {bad}" in err[0] and f"Literal[{allowed}]" in err[0]
    assert ("bad_optimizer.yaml" in err[0]) is not on_line
    assert not (tmp_path / "out").exists()  # nothing ran
