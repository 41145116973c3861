"""Smoke test of benchmarks/efficient.py: the quick run writes its three files with consistent counts and
accuracies, restores the thread count, and refuses to overwrite; bad arguments are refused."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch


def _load_benchmark(monkeypatch):
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "efficient.py"
    monkeypatch.syspath_prepend(str(path.parent))  # its sibling common
    spec = importlib.util.spec_from_file_location("efficient_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_efficient_quick_run_writes_tables_figure_and_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMAPPS_CACHE", str(tmp_path / "cache"))
    benchmark = _load_benchmark(monkeypatch)
    threads = torch.get_num_threads()
    out = tmp_path / "efficient"
    report = benchmark.main(["--quick", "--archs", "cnn", "--out", str(out)])
    assert torch.get_num_threads() == threads
    saved = json.loads((tmp_path / "efficient.json").read_text())
    assert saved["command"] == report["command"] == f"python benchmarks/efficient.py --quick --archs cnn --out {out}"
    assert set(saved["slimming"]) == {"digits/cnn", "syndigits/cnn"}
    for block in saved["slimming"].values():
        assert block["lambda"] > 0 and set(block["tuning"]) == {"0", "0.02"}
        assert block["images"] == {"train": 64, "val": 64, "test": 64}
        for kind in ("sparse", "baseline"):
            (run,) = block[kind]
            assert [row["ratio"] for row in run["ratios"]] == [0.3, 0.5, 0.7]
            flops = [run["flops"]] + [row["flops"][1] for row in run["ratios"]]
            assert all(row["flops"][0] == run["flops"] and row["params"][0] == run["params"] for row in run["ratios"])
            assert flops == sorted(flops, reverse=True) and flops[-1] < flops[0]  # more pruning, fewer FLOPs
            for row in run["ratios"]:
                for variant in benchmark.VARIANTS:
                    assert 0 <= row[variant] <= 100
    switch = saved["switchable"]
    assert switch["widths"] == [0.25, 0.5, 0.75, 1.0]
    assert list(switch["flops"].values()) == sorted(switch["flops"].values())
    assert all(len(values) == 4 for values in switch["accuracy"].values())
    for net in saved["latency"]["networks"].values():
        assert net["max_relative_difference_folded"] < 1e-5  # folding changes no output beyond rounding
        assert [row["batch"] for row in net["rows"]] == [1, 2]
        assert net["flops"]["pruned 0.7"] < net["flops"]["pruned 0.3"] < net["flops"]["original"]
        assert net["flops"]["original, folded"] == net["flops"]["original"]
        for row in net["rows"]:
            assert row["median_seconds"].keys() == row["min_seconds"].keys() == net["flops"].keys()
            assert all(0 < row["min_seconds"][name] <= row["median_seconds"][name] for name in net["flops"])
    text = (tmp_path / "efficient.md").read_text()
    assert "## Network slimming: digits, SmallCNN" in text and "| sparse | 0.7" in text and "| no penalty | 0.5" in text
    assert "one seed (0)" in text and "20.04M → 2.25M" in text and "chosen on val" in text
    assert (tmp_path / "efficient_accuracy_flops.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):  # existing results are not replaced without --overwrite
        benchmark.main(["--archs", "cnn", "--out", str(out)])
    assert json.loads((tmp_path / "efficient.json").read_text()) == saved
    # rerunning syndigits alone replaces its block only and rebuilds the tables and figure from the merged report
    (tmp_path / "efficient_accuracy_flops.png").unlink()
    argv = ["--quick", "--archs", "cnn", "--datasets", "syndigits", "--seeds", "1", "--overwrite", "--out", str(out)]
    benchmark.main(argv)
    merged = json.loads((tmp_path / "efficient.json").read_text())
    assert list(merged["slimming"]) == list(saved["slimming"])
    for key in ("digits/cnn", "command", "switchable", "latency"):
        part = merged["slimming"].get(key, merged.get(key))
        assert part == saved["slimming"].get(key, saved.get(key))
    assert merged["slimming"]["syndigits/cnn"]["seeds"] == [1] and merged["slimming"]["digits/cnn"]["seeds"] == [0]
    assert [r["datasets"] for r in merged["reruns"]] == [["syndigits"]]
    assert merged["reruns"][0]["command"] == "python benchmarks/efficient.py " + " ".join(argv)
    text = (tmp_path / "efficient.md").read_text()
    assert "Rerun alone and merged into this report, syndigits (seeds [1])" in text and "Seeds [1] here" in text
    assert "## Network slimming: digits, SmallCNN" in text and "## Switchable BN" in text
    assert (tmp_path / "efficient_accuracy_flops.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "argv", [["--repeats", "0"], ["--threads", "0"], ["--archs", "vgg"], ["--datasets", "cifar"], ["--datasets", "syndigits"]]
)  # the last: no earlier report to merge into
def test_efficient_refuses_bad_arguments(argv, tmp_path, monkeypatch):
    benchmark = _load_benchmark(monkeypatch)
    with pytest.raises(SystemExit):
        benchmark.parse_args([*argv, "--out", str(tmp_path / "x")])


def test_near_chance_models_are_flagged_as_no_evidence(monkeypatch):
    benchmark = _load_benchmark(monkeypatch)
    block = {
        "dataset": "syndigits",
        "recipe": {"epochs": 3},
        "sparse": [{"test_original": 11.0}, {"test_original": 14.0}],
        "baseline": [{"test_original": 18.0}],
    }
    (warning, _) = benchmark.near_chance(block)
    assert "Not evidence" in warning and "14.3% mean test accuracy" in warning and "does not learn syndigits" in warning
    block["baseline"] = [{"test_original": 95.0}]
    assert benchmark.near_chance(block) == []  # mean 40% is above three times chance
