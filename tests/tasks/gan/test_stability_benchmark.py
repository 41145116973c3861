"""The GAN stability benchmark's smoke run, its refusal to overwrite, and how it classifies runs and picks the
number of generator updates."""

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "gan_stability.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("gan_stability_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(PATH.parent))  # its sibling common
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        sys.path.remove(str(PATH.parent))


def test_quick_run_writes_both_tables_with_counts_and_refuses_to_overwrite(benchmark, tmp_path):
    out = tmp_path / "gan_stability"
    threads = torch.get_num_threads()
    try:
        report = benchmark.main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["command"] == report["command"] == "python benchmarks/gan_stability.py --quick --out " + str(out)
    names = [r["name"] for r in saved["runs"]]
    assert names == ["none D", "bn D", "wn D", "spectral D", "wgan-gp A", "unconditional", "conditional"]
    for run in saved["runs"]:  # equal generator updates everywhere; n_dis discriminator updates per generator update
        assert run["g_updates"] == saved["g_updates"] == 1
        assert run["status"] in ("ok", "failed", "diverged")
        if run["status"] != "diverged":
            assert (run["g_updates_done"], run["d_updates_done"]) == (1, run["n_dis"])
            assert run["final"]["n_real"] == 360 and run["final"]["n_fake"] == 100 and math.isfinite(run["final"]["fd"])
    conditional = next(r for r in saved["runs"] if r["name"] == "conditional")
    assert conditional["final"]["class_acc_n"] == 100 and 0.0 <= conditional["final"]["class_acc"] <= 1.0
    floor, start = saved["floor"], saved["start"]["unconditional"]
    assert floor["val vs test"]["n_real"] == floor["val vs test"]["n_other"] == 360
    assert floor["val vs test"]["fd"] < 0.1 * start["fd"]  # real against real: far below an untrained generator
    text = out.with_suffix(".md").read_text()
    for line in (
        "| none |",
        "| bn |",
        "| wn |",
        "| spectral |",
        "WGAN-GP",
        "| conditional |",
        "| unconditional |",
        "360 real test / 100 generated, 64-d features",
    ):
        assert line in text
    assert out.with_suffix(".png").stat().st_size > 0
    before = out.with_suffix(".json").read_text()
    with pytest.raises(SystemExit):  # existing results are not replaced without --overwrite, before anything runs
        benchmark.main(["--quick", "--out", str(out)])
    assert out.with_suffix(".json").read_text() == before


def test_status_marks_divergence_and_no_progress(benchmark):
    start = {"unconditional": {"fd": 30.0}, "conditional": {"fd": 32.0}}

    def run(fd, diverged=False, conditional=False, mid=None):
        return {
            "diverged": diverged,
            "diverged_at": 7 if diverged else None,
            "conditional": conditional,
            "final": None if diverged else {"fd": fd, "kid": 0.5},
            "mid": mid,
        }

    assert benchmark.status(run(None, diverged=True), start) == "diverged"
    assert benchmark.status(run(30.5), start) == "failed"
    assert benchmark.status(run(31.0, conditional=True), start) == "ok"  # below the conditional start
    assert benchmark.status(run(3.0), start) == "ok"
    cell = run(9.0, mid={"fd": 4.0})
    cell["status"] = benchmark.status(cell, start)
    assert benchmark.cell_text(cell) == "9.00 (0.500) [worse than half-way: 4.00]"
    diverged = run(None, diverged=True)
    diverged["status"] = "diverged"
    assert benchmark.cell_text(diverged) == "**diverged** (update 7)"


def test_auto_generator_updates_fill_the_budget_from_the_probe(benchmark, monkeypatch):
    specs = [{"name": "a"}, {"name": "b"}]
    monkeypatch.setattr(benchmark, "run_all", lambda probes, jobs, log: [{"name": p["name"], "s_per_g_update": 0.5} for p in probes])
    args = argparse.Namespace(g_updates="auto", probe_updates=3, budget_minutes=2.0, jobs=2)
    g, probes = benchmark.choose_g_updates(specs, args, lambda message: None)
    assert g == int((2.0 * 60 * 2 - 20.0 * 2) / 1.0) and len(probes) == 2
    args.g_updates = "40"
    assert benchmark.choose_g_updates(specs, args, lambda message: None) == (40, [])


def test_bad_arguments_are_refused(benchmark, tmp_path):
    for argv in (["--g-updates", "0"], ["--g-updates", "many"], ["--jobs", "0"], ["--image-size", "24"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args([*argv, "--out", str(tmp_path / "x")])
