"""Smoke test of benchmarks/fold_speed.py: the quick run folds every BatchNorm, writes both files with equal
outputs folded and unfolded, restores the thread count, and refuses to overwrite."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch


def _load_benchmark(monkeypatch):
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "fold_speed.py"
    monkeypatch.syspath_prepend(str(path.parent))  # its siblings common and speed_common
    spec = importlib.util.spec_from_file_location("fold_speed_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_fold_speed_quick_run_writes_the_table_and_refuses_to_overwrite(tmp_path, monkeypatch):
    benchmark = _load_benchmark(monkeypatch)
    threads = torch.get_num_threads()
    report = benchmark.main(["--quick", "--out", str(tmp_path / "fold_speed")])
    assert torch.get_num_threads() == threads
    saved = json.loads((tmp_path / "fold_speed.json").read_text())
    assert saved["command"] == report["command"] == "python benchmarks/fold_speed.py --quick"
    assert saved["folded_layers"] == saved["bn_layers"] == 20
    assert [(row["batch"], row["size"]) for row in saved["cases"]] == [(1, 32), (2, 32)]
    for row in saved["cases"]:
        assert max(row["max_relative_difference"].values()) < 1e-5  # folding is exact up to float rounding
        assert all(value[0] > 0 for value in row["ratio"].values())
    text = (tmp_path / "fold_speed.md").read_text()
    assert "| 1 | 32 | channels-last |" in text and "Target 1.1x met in" in text
    with pytest.raises(SystemExit):  # existing results are not replaced without --overwrite
        benchmark.main(["--quick", "--out", str(tmp_path / "fold_speed")])
    assert json.loads((tmp_path / "fold_speed.json").read_text()) == saved


@pytest.mark.parametrize("case", ["64", "0x32", "1x16", "ax32"])
def test_fold_speed_refuses_a_bad_case(case, tmp_path, monkeypatch):
    benchmark = _load_benchmark(monkeypatch)
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--cases", case, "--out", str(tmp_path / "x")])
