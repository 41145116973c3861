"""The GAN speed benchmark's smoke run and refusal to overwrite; the three discriminator variants it times start
from the same weights and normalize to the same spectral norm."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "gan_speed.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("gan_speed_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(PATH.parent))  # its siblings common and speed_common
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        sys.path.remove(str(PATH.parent))


def test_quick_run_writes_both_tables_and_refuses_to_overwrite(benchmark, tmp_path):
    out = tmp_path / "gan_speed"
    threads = torch.get_num_threads()
    try:
        report = benchmark.main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["command"] == report["command"]
    assert [row["network"] for row in saved["spectral"]] == ["dcgan width 0.0625", "resnet width 0.0625"]
    for row in saved["spectral"]:
        assert set(row["ms"]) == {"none", "spectral", "torch"} and all(v > 0 for v in row["ms"].values())
        assert row["met"] == (row["spectral_ratio"][0] <= saved["target"])
        assert row["output_gap_spectral_vs_torch"] < 0.5  # same weights; sigma estimates differ while the iteration converges
        assert row["breakdown"]["spectral"]["weights"] == row["breakdown"]["torch"]["weights"] > 0
    assert {(r["generator"], r["conditional"], r["batch"]) for r in saved["sampling"]} == {
        (g, c, b) for g in ("dcgan", "resnet") for c in (False, True) for b in (1, 4)
    }
    assert all(r["images_per_s"] > 0 for r in saved["sampling"])
    text = out.with_suffix(".md").read_text()
    for heading in (
        "Spectral norm per discriminator training step",
        "Where the spectral step's extra time goes",
        "Generator sampling throughput",
    ):
        assert heading in text
    with pytest.raises(SystemExit):  # existing results are not replaced without --overwrite
        benchmark.main(["--quick", "--out", str(out)])


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_variants_share_weights_and_converge_to_the_same_sigma(benchmark, arch):
    nets = {v: benchmark.discriminator(arch, 0.0625, v) for v in benchmark.VARIANTS}
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    plain = dict(nets["none"].named_parameters())
    for variant in ("spectral", "torch"):
        layers = benchmark.spectral_modules(nets[variant])
        assert len(layers) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in nets["none"].modules())
        for name, p in nets[variant].named_parameters():
            torch.testing.assert_close(p, plain[name.replace("parametrizations.weight.original", "weight")])
        for _, parametrization in layers:  # both expose the power iterations of each training-mode forward
            parametrization.n_power_iterations = 500
        with torch.no_grad():
            nets[variant](x)
        for layer, _ in layers:  # converged: every normalized weight has spectral norm 1
            assert abs(float(torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)) - 1.0) < 0.02
    with torch.no_grad():
        torch.testing.assert_close(nets["spectral"].eval()(x), nets["torch"].eval()(x), rtol=1e-3, atol=1e-4)


def test_repeats_shrink_to_fit_the_group_time(benchmark):
    assert benchmark.fit_repeats(1.0, 3, 3, 100.0) == (3, 3)
    assert benchmark.fit_repeats(10.0, 3, 3, 40.0) == (2, 2)
    assert benchmark.fit_repeats(100.0, 3, 3, 40.0) == (1, 1)
