"""benchmarks/common.py: the random ResNet-18 differs between gamma ranges in gamma alone and is reproducible per
seed; results are written in each script's format, existing ones refused, and the command recorded as typed."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("benchmark_common", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bn_weight_names(model: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_gamma_range_changes_only_gamma_by_the_affine_map_of_the_ranges(common, one_thread):
    pruning, folding = (0.05, 1.0), (0.5, 1.5)
    a, b = common.random_resnet18(pruning, seed=3), common.random_resnet18(folding, seed=3)
    assert not a.training and not b.training
    gammas = bn_weight_names(a)
    assert len(gammas) == 20
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a.keys() - gammas:  # weights, beta, running statistics: the same draws
        assert torch.equal(state_a[name], state_b[name]), name
    for name in gammas:
        (low_a, high_a), (low_b, high_b) = pruning, folding
        assert low_a <= state_a[name].min() and state_a[name].max() < high_a
        assert low_b <= state_b[name].min() and state_b[name].max() < high_b
        unit_a = (state_a[name] - low_a) / (high_a - low_a)
        unit_b = (state_b[name] - low_b) / (high_b - low_b)
        torch.testing.assert_close(unit_a, unit_b, rtol=0, atol=1e-6)
    running_var = [m.running_var for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(0.5 <= v.min() and v.max() < 2.0 for v in running_var)


def test_random_resnet18_is_reproducible_per_seed(common, one_thread):
    first, again, other = (common.random_resnet18((0.5, 1.5), seed) for seed in (0, 0, 1))
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert not torch.equal(first.conv1.weight, other.conv1.weight)


@pytest.mark.parametrize("gamma_range", [(1.0, 0.5), (1.0, 1.0)])
def test_random_resnet18_refuses_an_empty_gamma_range(common, gamma_range):
    with pytest.raises(ValueError, match=r"low < high, got \(1.0, "):
        common.random_resnet18(gamma_range)


def test_write_results_keeps_each_scripts_format_and_refuses_to_overwrite_when_asked(common, tmp_path):
    report = {"command": "python benchmarks/x.py", "rows": [{"ms": 1.5, "ok": True}], "note": "µ"}
    text = "# Title\n\n| a |\n"
    common.write_results(tmp_path / "speed", report, text, overwrite=False)  # the speed benchmarks' format
    assert (tmp_path / "speed.md").read_text() == text
    assert (tmp_path / "speed.json").read_text() == json.dumps(report, indent=2)
    common.write_results(tmp_path / "study", report, text.rstrip("\n"), indent=1, end="\n")  # the training studies'
    assert (tmp_path / "study.md").read_text() == text
    assert (tmp_path / "study.json").read_text() == json.dumps(report, indent=1) + "\n"
    with pytest.raises(FileExistsError, match="speed.json already exists"):
        common.write_results(tmp_path / "speed", {"other": 1}, "other", overwrite=False)
    assert json.loads((tmp_path / "speed.json").read_text()) == report
    common.write_results(tmp_path / "speed", {"other": 1}, "other")
    assert (tmp_path / "speed.md").read_text() == "other"


def test_refuse_existing_exits_with_a_usage_error_naming_the_file(common, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="bench.py")
    paths = [tmp_path / "out.md", tmp_path / "out.json"]
    common.refuse_existing(parser, paths, overwrite=False)  # nothing there yet
    paths[1].write_text("{}")
    common.refuse_existing(parser, paths, overwrite=True)
    with pytest.raises(SystemExit) as exit_info:
        common.refuse_existing(parser, paths, overwrite=False)
    assert exit_info.value.code == 2
    assert f"bench.py: error: {paths[1]} already exists; pass --overwrite to replace it" in capsys.readouterr().err


def test_command_line_is_the_command_as_typed_from_the_repository_root(common, monkeypatch):
    script = "/anywhere/benchmarks/fold_speed.py"
    assert common.command_line(script, ["--quick", "--out", "/tmp/a b"]) == "python benchmarks/fold_speed.py --quick --out '/tmp/a b'"
    assert common.command_line(script, []) == "python benchmarks/fold_speed.py"
    monkeypatch.setattr(sys, "argv", [script, "--threads", "1"])
    assert common.command_line(script, None) == "python benchmarks/fold_speed.py --threads 1"
