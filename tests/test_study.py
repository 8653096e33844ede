"""`wsiseg study` on a tiny study: 2 DMMN experiments x 2 seeds of a few batches each
(tests/conf/tiny.yaml) on the session's synthetic slides, through the real CLI in subprocesses.

One module fixture runs the study once (~1 min on 2 idle cores); the tests after it read its run
folders, rerun it (finished runs are skipped) and refuse runs on other data; the slow ones
resume a run from its checkpoint, fail one and keep going, and run one task of the SLURM array
script locally.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from lightning_modules.cli.main import main
from lightning_modules.cli.report import data_fingerprint
from tests.cli_args import CONF, EXPERIMENTS, experiment_args, short_train, wsiseg_command

ROOT = Path(__file__).resolve().parents[1]
EXPS = ["dmmn_s2", "dmmn_ms"]


def study_spec(data: Path, out: Path, **more) -> dict:
    return {
        "name": "tiny",
        "experiments": EXPS,
        "seeds": [0, 1],
        "experiments_dir": str(EXPERIMENTS),
        "trainer": "cpu",
        "schedule": "cpu_budget",
        "root": str(data),
        "configs": [str(CONF / "tiny.yaml")],
        "args": short_train(test_batches=2),
        "out": str(out),
        "claims": [{"claim": "dmmn_ms > dmmn_s2", "source": "Table I"}],
        "bootstrap": {"n": 300},
        **more,
    }


def wsiseg(*argv, cwd: Path, env: dict | None = None, timeout: int = 600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*wsiseg_command(), *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory, synthetic_root):
    """(study YAML, study folder, the first `wsiseg study` result)."""
    base = tmp_path_factory.mktemp("study")
    path = base / "tiny.yaml"
    path.write_text(yaml.safe_dump(study_spec(synthetic_root, base / "runs")))
    first = wsiseg("study", path, cwd=base)
    return path, base / "runs" / "tiny", first


def run_dirs(folder: Path) -> list[Path]:
    return [folder / e / f"seed_{s}" for e in EXPS for s in (0, 1)]


def test_study_runs_every_run_then_reports(study, synthetic_root):
    path, folder, r = study
    assert r.returncode == 0, r.stderr[-3000:]
    for k in range(1, 5):
        assert f"study tiny: [{k}/4]" in r.stdout
    assert "1/4 runs done, 3 left, ETA" in r.stdout and "4/4 runs done, 0 left" in r.stdout
    expected_hash = data_fingerprint(synthetic_root)
    assert expected_hash.startswith("manifest:")
    own = {}
    for run in run_dirs(folder):
        result = json.loads((run / "results.json").read_text())
        assert result["experiment"] == run.parent.name and result["seed"] == int(run.name[5:])
        assert result["data_hash"] == expected_hash and result["per_tile"] == "per_tile.npz"
        with np.load(run / "per_tile.npz") as npz:
            tiles = npz["confusion"]
            assert tiles.shape == (2, 4, 4)  # 2 test patches, 4 classes
            assert np.array_equal(tiles.sum(0), np.array(result["confusion"]))
        assert (run / "checkpoints" / "last.ckpt").is_file()
        timing = json.loads((run / "study_run.json").read_text())
        assert 0 < timing["cpu_s"] and 0 < timing["wall_s"]  # the run's own CPU, its workers too
        own[(run.parent.name, run.name[5:])] = result["scores"]["miou"]
    # seeds differ: the two seeds of an experiment train different models
    assert own[("dmmn_s2", "0")] != own[("dmmn_s2", "1")]
    report = folder / "report"
    with (report / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # the bootstrap rescoring reproduces every run's own test mIoU
    for row in rows:
        assert float(row["miou"]) == pytest.approx(own[(row["experiment"], row["seed"])], abs=1e-9)
        # the class map's groups are rescored too (the bach map: carcinoma = in situ + invasive)
        result = json.loads((folder / row["experiment"] / f"seed_{row['seed']}" /
                             "results.json").read_text())  # fmt: skip
        want = result["scores"]["group_iou/carcinoma"]
        assert float(row["group_iou/carcinoma"]) == pytest.approx(want, abs=1e-9, nan_ok=True)
    with (report / "claims.csv").open() as f:
        (claim,) = list(csv.DictReader(f))
    assert claim["claim"] == "dmmn_ms > dmmn_s2" and claim["score"] == "miou"
    assert claim["verdict"] in ("supported", "contradicted", "undecided")
    lo, hi = float(claim["lo"]), float(claim["hi"])
    assert lo <= float(claim["diff"]) <= hi and lo < hi
    assert (
        claim["seeds_to_decide"] != "" and "≈ seeds to decide" in (report / "report.md").read_text()
    )
    md = (report / "report.md").read_text()
    assert "| dmmn_s2 | 2 |" in md and "| dmmn_ms | 2 |" in md and "bach_score" in md
    assert "summed over 4 runs, CPU (user + system)" in md and "over 4\n" in md
    assert (report / "iou.png").stat().st_size > 5000 and (report / "scores.csv").is_file()


def test_export_copies_summaries_only_and_rebuilds_the_same_report(study, tmp_path, capsys):
    path, folder, _ = study
    dest = tmp_path / "results"
    assert main(["study", str(path), "--export", str(dest), "--bootstrap", "300"]) == 0
    assert "exported 4 finished run(s) of study tiny" in capsys.readouterr().out
    for run in run_dirs(folder):
        copied = dest / "tiny" / run.parent.name / run.name
        names = sorted(p.name for p in copied.iterdir())
        assert names == ["per_tile.npz", "results.json", "study_run.json"]  # no checkpoints
        assert (copied / "results.json").read_bytes() == (run / "results.json").read_bytes()

    # the report rebuilt from the copies alone equals the study's own (same seeded bootstrap;
    # only the run folders' paths differ)
    def rows(report: Path, name: str) -> list[dict]:
        with (report / name).open() as f:
            return [{k: v for k, v in r.items() if k != "run"} for r in csv.DictReader(f)]

    for name in ("runs.csv", "claims.csv", "scores.csv"):
        assert rows(dest / "tiny" / "report", name) == rows(folder / "report", name)
    # a summary that differs is never replaced silently
    victim = dest / "tiny" / "dmmn_s2" / "seed_0" / "results.json"
    victim.write_text("{}")
    assert main(["study", str(path), "--export", str(dest)]) == 2
    assert "exists with other content" in capsys.readouterr().err and victim.read_text() == "{}"


def test_rerun_skips_finished_runs(study, capsys):
    path, folder, _ = study
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("results.json")}
    assert main(["study", str(path), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 4 and " -> " not in out and "| dmmn_ms | 2 |" in out
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("results.json")} == stamps


def test_runs_on_other_data_are_refused(study, capsys):
    path, folder, _ = study
    js = folder / "dmmn_ms" / "seed_1" / "results.json"
    original = js.read_text()
    js.write_text(json.dumps({**json.loads(original), "data_hash": "manifest:other"}))
    try:
        rc = main(["study", str(path), "--report"])
    finally:
        js.write_text(original)
    err = capsys.readouterr().err
    assert rc == 2 and str(js) in err and "runs on other data are not aggregated" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_resume_and_keep_going_past_a_failed_run(study):
    """Run 0 lost its results (killed after its checkpoint): resumed in its own folder. Run 1's
    checkpoint is garbage: that run fails, the study goes on, reports it and exits 1."""
    path, folder, _ = study
    run0, run1 = run_dirs(folder)[:2]
    (run0 / "results.json").unlink()
    (run1 / "results.json").unlink()
    (run1 / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    r = wsiseg("study", path, "--task", 1, "--task", 0, cwd=path.parent)
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"resuming from {run0}/checkpoints/last.ckpt in {run0}" in r.stdout
    assert "dmmn_s2 seed 1 FAILED" in r.stdout and "failed: dmmn_s2 seed 1" in r.stderr
    assert (run0 / "results.json").is_file() and not (run1 / "results.json").exists()
    assert sorted(p.name for p in run0.parent.iterdir()) == ["seed_0", "seed_1"]
    assert len(list(run0.glob("metrics.csv"))) == 1


@pytest.mark.slow
def test_slurm_array_script_and_one_task_locally(study):
    path, folder, _ = study
    run1 = run_dirs(folder)[1]
    shutil.rmtree(run1)  # left broken by the test above (or absent): task 1 makes it again
    r = wsiseg("study", path, "--launcher", "slurm", cwd=path.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    script = folder / "slurm" / "study.sbatch"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "#SBATCH --array=0-3" in text and "#SBATCH --ntasks-per-node=1" in text
    assert "--gpus-per-node" not in text  # the cpu trainer overlay asks for no GPU
    rows = (folder / "slurm" / "runs.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[:3] for row in rows] == [
        [str(i), e, str(s)] for i, (e, s) in enumerate((e, s) for e in EXPS for s in (0, 1))
    ]
    again = wsiseg("study", path, "--launcher", "slurm", cwd=path.parent)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    env = {"SLURM_ARRAY_TASK_ID": "1"}
    task = subprocess.run(["bash", str(script)], env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert task.returncode == 0, task.stderr[-2000:]
    assert "dmmn_s2 seed 1 -> " in task.stdout and f"written to {run1}/results.md" in task.stdout
    result = json.loads((run1 / "results.json").read_text())
    assert result["seed"] == 1 and result["experiment"] == "dmmn_s2"
    assert sorted(p.parent.name for p in folder.rglob("results.json")) == [
        "seed_0",
        "seed_0",
        "seed_1",
        "seed_1",
    ]


def test_bad_study_files_are_one_line_errors(tmp_path, capsys):
    cases = {
        "experiments: [nope]\n": "experiment 'nope': no",
        "experiments: [dmmn_s2]\nseeds: [0, 0]\n": "seeds repeat",
        "experiments: [dmmn_s2]\nsedes: [0]\n": "unknown key(s) ['sedes']",
        "experiments: [dmmn_s2]\ntrainer: tpu\n": "overlay 'tpu': no",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text + f"experiments_dir: {EXPERIMENTS}\n")
        assert main(["study", str(path), "--list"]) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err and len(err.strip().splitlines()) == 1


def test_slurm_resources_from_a_gpu_trainer_overlay(tmp_path):
    """experiments/trainer/gpu.yaml says devices: -1 (every visible GPU): the study's
    slurm.gpus_per_node sets the count, one DDP rank (task) per GPU."""
    spec = {"experiments": EXPS, "seeds": [0, 1, 2], "experiments_dir": str(EXPERIMENTS),
            "trainer": "gpu", "out": str(tmp_path / "runs"),
            "slurm": {"gpus_per_node": 4, "partition": "gpu", "time": "04:00:00"}}  # fmt: skip
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["study", str(path), "--launcher", "slurm"]) == 0
    text = (tmp_path / "runs" / "gpu" / "slurm" / "study.sbatch").read_text()
    for line in ("--array=0-5", "--nodes=1", "--ntasks-per-node=4", "--gpus-per-node=4",
                 "--partition=gpu", "--time=04:00:00"):  # fmt: skip
        assert f"#SBATCH {line}\n" in text
    assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
    tsv = (tmp_path / "runs" / "gpu" / "slurm" / "runs.tsv").read_text().splitlines()
    assert len(tsv) == 7 and "--config experiments/trainer/gpu.yaml" not in tsv[1]
    assert f"--config {EXPERIMENTS}/trainer/gpu.yaml" in tsv[1] and "--seed_everything 0" in tsv[1]


@pytest.mark.slow
def test_wandb_offline_group_tags_and_report_table(tmp_path, synthetic_root):
    """A study with the wandb logger overlay: every run in the study's group, tagged with its
    experiment and seed; the report is an offline run of the same group holding the tables."""
    spec = study_spec(synthetic_root, tmp_path / "runs", experiments=["dmmn_s2"], logger="wandb",
                      claims=[])  # fmt: skip
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {"HOME": str(tmp_path), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wdb"),
           "WANDB_SILENT": "true", "WANDB_API_KEY": ""}  # fmt: skip
    r = wsiseg("study", path, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted((tmp_path / "runs" / "tiny" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    for blob in (p.read_bytes() for p in runs):
        assert b"tiny" in blob and b"dmmn_s2" in blob and b"study:tiny" in blob
    assert [b"seed:0" in p.read_bytes() for p in runs].count(True) == 1
    (report,) = (tmp_path / "wdb" / "wandb").glob("offline-run-*")
    tables = {p.name.split("_")[0] for p in report.glob("files/media/table/study/*.table.json")}
    assert tables == {"runs", "scores", "claims"}
    scores = next(report.glob("files/media/table/study/scores_*.table.json"))
    table = json.loads(scores.read_text())
    assert table["columns"][:5] == ["experiment", "score", "mean", "lo", "hi"]
    assert ["dmmn_s2", "miou"] in [row[:2] for row in table["data"]]
    blob = next(report.glob("run-*.wandb")).read_bytes()
    assert b"study/scores" in blob and b"study-report" in blob
    assert list(report.glob("files/media/images/study/iou_*.png"))


@pytest.mark.slow
def test_per_tile_counts_under_ddp(tmp_path, synthetic_root):
    """2 gloo ranks share the test split: per_tile.npz holds every tile once, from both ranks,
    and its tiles sum to the synced confusion matrix."""
    args = experiment_args("train", "dmmn_s2", synthetic_root, tmp_path / "out", tiny="tiny.yaml",
                           trainer="ddp_cpu", extra=tuple(short_train(test_batches=1)))  # fmt: skip
    r = wsiseg(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "out" / "dmmn_s2" / "version_0"
    result = json.loads((run / "results.json").read_text())
    with np.load(run / "per_tile.npz") as npz:
        ids = list(zip(npz["slide"].tolist(), npz["x"].tolist(), npz["y"].tolist(), strict=True))
        assert len(ids) == 2 and len(set(ids)) == 2  # 1 batch of 1 patch on each of 2 ranks
        assert np.array_equal(npz["confusion"].sum(0), np.array(result["confusion"]))


def test_last_resumes_only_the_pinned_run_folder(tmp_path):
    """A study pins each run's folder (CSV logger `version`): `--ckpt_path last` must not pick
    another seed's newer checkpoint."""
    from lightning_modules.cli.resume import plan_resume

    for folder in ("seed_0", "seed_1", "version_3"):
        (tmp_path / "exp" / folder / "checkpoints").mkdir(parents=True)
        (tmp_path / "exp" / folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    os.utime(tmp_path / "exp" / "seed_1" / "checkpoints" / "last.ckpt", (2e9, 2e9))  # newest

    def config(version):
        args = {"save_dir": str(tmp_path), "name": "exp", "version": version}
        return {"logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": args}}

    assert plan_resume("last", config("seed_0")).run_dir == tmp_path / "exp" / "seed_0"
    assert plan_resume("last", config(3)).run_dir == tmp_path / "exp" / "version_3"
    assert plan_resume("last", config(None)).run_dir == tmp_path / "exp" / "seed_1"
    assert plan_resume("last", config("seed_9")).ckpt_path is None  # nothing there: a new run
