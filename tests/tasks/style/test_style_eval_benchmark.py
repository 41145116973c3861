"""Smoke test of benchmarks/style_eval.py: the quick run writes every table and grid, and refuses to overwrite."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from normapps.tasks.style.checkpoints import checkpoint_path

STYLIZERS = ("adain", "wct", "cin", "fast", "fast_bn")
MISSING = [name for name in STYLIZERS if not checkpoint_path(name).is_file()]


def load_benchmark(monkeypatch):
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "style_eval.py"
    monkeypatch.syspath_prepend(str(path.parent))  # its sibling common
    spec = importlib.util.spec_from_file_location("style_eval_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # dataclasses look their module up there
    spec.loader.exec_module(benchmark)
    return benchmark


@pytest.mark.skipif(bool(MISSING), reason=f"shipped stylizers missing: {', '.join(f'checkpoints/style_{n}.pt' for n in MISSING)}")
def test_style_eval_quick_run_writes_every_table_and_grid_and_refuses_to_overwrite(tmp_path, monkeypatch):
    benchmark = load_benchmark(monkeypatch)
    out = tmp_path / "style_eval"
    threads = torch.get_num_threads()
    try:
        benchmark.main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    text = out.with_suffix(".md").read_text()
    for heading in (
        "Training styles",
        "Held-out styles",
        "Stylization strength over alpha",
        "Style weights (1, 0)",
        "Colour preservation",
        "Instance norm against batch norm",
        "Neither VGG is an ImageNet-trained VGG",
        "Command:",
    ):
        assert heading in text
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["torch"] == torch.__version__ and report["settings"]["size"] == 64
    rows = report["main"]["train"]["rows"]
    assert {"content image", "colour transfer", "adain", "wct", "cin"} <= set(rows)
    assert all(value == 0 for value in rows["content image"]["content"])
    assert set(report["alpha"]) == {"adain", "wct"} and report["in_vs_bn"]["rows"]["fast_bn"]
    assert report["weights"]["adain"]["max_abs_difference"] < 1e-5
    for name in benchmark.GRIDS:
        assert benchmark.grid_path(out, name).read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):
        benchmark.main(["--quick", "--out", str(out)])  # the files exist and --overwrite is not given
