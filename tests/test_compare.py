"""`wsiseg compare`: runs' results.json -> one markdown/CSV table and a bar plot."""

import csv
import json

from lightning_modules.cli.main import main


def _run(tmp_path, name, miou, rel=None):
    run = tmp_path / "runs" / name / "version_0"
    run.mkdir(parents=True)
    result = {
        "experiment": name,
        "method": "DMMN",
        "arch": name.split("_")[-1],
        "data": "data/synthetic",
        "parameters": 1234,
        "scores": {
            "iou/normal": 0.9,
            "iou/invasive": miou * 2 - 0.9,
            "miou": miou,
            "weighted_iou": miou - 0.1,
            "bach_score": 0.8,
        },
    }
    if rel is not None:
        result["relative_inference_time"] = rel
    (run / "results.json").write_text(json.dumps(result))
    return run


def test_compare_table_and_plot(tmp_path, capsys):
    _run(tmp_path, "dmmn_m3", 0.7, rel=3.1)
    _run(tmp_path, "dmmn_s2", 0.6)
    out = tmp_path / "cmp" / "comparison"
    assert main(["compare", str(tmp_path / "runs"), "--out", str(out)]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| dmmn_m3 | DMMN-m3 | synthetic | 0.5000 | 0.9000 | 0.7000 |" in table
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert [r["experiment"] for r in rows] == ["dmmn_m3", "dmmn_s2"]
    assert rows[0]["relative_inference_time"] == "3.1" and rows[1]["relative_inference_time"] == ""
    png = (tmp_path / "cmp" / "comparison.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 5000
    # refuses to overwrite without --overwrite
    assert main(["compare", str(tmp_path / "runs"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_compare_bad_input(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{}")
    assert main(["compare", str(bad.parent)]) == 2
    err = capsys.readouterr().err
    assert "no such run folder" in err and "holds no results.json" in err and "not a wsiseg" in err
