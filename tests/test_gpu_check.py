"""`make gpu-check` on the CPU (--dry-run): every family fits, DMMN-M3 segments, one table."""

from __future__ import annotations

import re

import pytest

from benchmarks import bench_train, gpu_check


@pytest.mark.slow
def test_dry_run_prints_one_row_per_family(tmp_path, capsys):
    argv = ["--dry-run", "--batches", "2", "--warm", "1", "--workers", "0", "--data", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| fit ")]
    cells_of = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    names = [re.sub(r" \(.*\)$", "", cells[0].removeprefix("fit ")) for cells in cells_of]
    assert names == list(bench_train.FAMILIES)
    for cells in cells_of:
        batch, rate, step_ms, peak, wait, per_worker, need = cells[1:]
        assert int(batch) == 2 and float(rate) > 0 and float(step_ms) > 0 and float(peak) > 0.1
        assert 0 <= float(wait.rstrip("%")) < 100 and float(per_worker) > 0
        assert float(need) == pytest.approx(float(rate) / float(per_worker), abs=0.06)
    assert "deformed copies" in rows[0]  # DMMN's balancing copies, deformed in the step
    seg = [line for line in out.splitlines() if line.startswith("| segment DMMN-M3")]
    assert len(seg) == 1 and "16 tiles" in seg[0]
    assert re.search(r"decode amplification 1\.\d\d", seg[0])
