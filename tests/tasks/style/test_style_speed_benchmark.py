"""The style speed benchmark's smoke run, and the VGG fast inference path it measures: the same values as
the plain layers (channels-last memory; ReLU + reflection pad in one pass; nearest upsampling + pad + conv as
phase convolutions)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import normapps.models.vgg as vgg_module
from normapps.models import VGGDecoder, VGGEncoder
from normapps.models.vgg import DECODER_LEVELS, VGG19_LAYERS, _fast_layers


def test_style_speed_quick_run_writes_every_table_and_refuses_to_overwrite(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "style_speed.py"
    monkeypatch.syspath_prepend(str(path.parent))  # its sibling speed_common
    spec = importlib.util.spec_from_file_location("style_speed_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)
    spec.loader.exec_module(benchmark)
    threads = torch.get_num_threads()
    try:
        report = benchmark.main(["--quick", "--out", str(tmp_path / "style_speed")])
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    text = (tmp_path / "style_speed.md").read_text()
    for heading in ("ours against a plain PyTorch port", "Each step of our CPU inference path", "The stylizers, ms per image"):
        assert heading in text
    saved = json.loads((tmp_path / "style_speed.json").read_text())
    (row,) = saved["adain_vs_port"]
    assert row["max_abs_diff"]["single"] < 1e-3 and row["single_ratio"][0] > 0
    assert [r["method"] for r in saved["stylizers"]] == ["adain", "wct", "cin", "fast"]
    assert report["command"] == saved["command"]
    with pytest.raises(SystemExit):  # existing results are not replaced without --overwrite
        benchmark.main(["--quick", "--out", str(tmp_path / "style_speed")])
    try:  # the stylizer table alone, into the existing results
        benchmark.main(["--quick", "--stylizers-only", "--overwrite", "--out", str(tmp_path / "style_speed")])
    finally:
        torch.set_num_threads(threads)
    again = json.loads((tmp_path / "style_speed.json").read_text())
    assert again["adain_vs_port"] == saved["adain_vs_port"] and "--stylizers-only" in again["stylizers_run"]["command"]


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the passes that take the fast path (so the comparisons below cannot pass vacuously)."""
    calls = []
    original = vgg_module._fast_layers

    def counted(*args, **kwargs):
        calls.append(1)
        yield from original(*args, **kwargs)

    monkeypatch.setattr(vgg_module, "_fast_layers", counted)
    return calls


@pytest.mark.parametrize(("padding", "size"), [("reflect", (67, 65)), ("reflect", (33, 129)), ("zeros", (67, 65)),
                                              ("zeros", (2, 2048))])  # odd sides; zeros: maps down to 1 x 128
def test_encoder_inference_path_equals_the_plain_layers(one_thread, fast_calls, padding, size):
    encoder = VGGEncoder.random(width=0.25, seed=1, last="relu5_1", padding=padding)
    x = torch.rand(2, 3, *size)
    plain = encoder.features(x, VGG19_LAYERS[:13])  # autograd on: the plain layers
    assert not fast_calls
    with torch.inference_mode():
        fast = encoder.features(x, VGG19_LAYERS[:13])
    assert fast_calls and list(fast) == list(plain)
    for name, value in fast.items():
        assert value.is_contiguous()
        torch.testing.assert_close(value, plain[name], rtol=1e-4, atol=1e-5 * float(plain[name].abs().max()))  # float rounding


def test_encoder_inference_path_refuses_maps_too_small_to_reflect_as_the_plain_layers_do(one_thread, fast_calls):
    encoder = VGGEncoder.random(width=0.25, seed=1, last="relu5_1")
    x = torch.rand(1, 3, 2, 2048)  # 1 x 1024 after the first pool: reflection padding by 1 is undefined
    with pytest.raises(RuntimeError) as plain:
        encoder(x)
    with torch.inference_mode(), pytest.raises(RuntimeError) as fast:
        encoder(x)
    assert fast_calls and str(fast.value) == str(plain.value)


def test_small_images_take_the_plain_layers(fast_calls):
    encoder, decoder = VGGEncoder.random(width=0.25), VGGDecoder(width=0.25)
    with torch.inference_mode():
        decoder(encoder(torch.rand(1, 3, 48, 64)))
        assert not fast_calls
        decoder(encoder(torch.rand(1, 3, 64, 64)))
    assert len(fast_calls) == 2


@pytest.mark.parametrize("level", list(DECODER_LEVELS))
def test_decoder_inference_path_equals_the_plain_layers(one_thread, fast_calls, level):
    torch.manual_seed(0)
    decoder = VGGDecoder(width=0.25, level=level)
    u = decoder.upsamplings
    features = torch.rand(1, decoder.in_channels, 72 >> u, 66 >> u)
    size = (71, (66 >> u << u) - 1)  # cropped as for odd image sides
    plain = decoder(features, size=size)
    with torch.no_grad():
        fast = decoder(features, size=size)
    assert fast_calls and fast.shape == plain.shape == (1, 3, *size)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tail", [[], [nn.ReLU(inplace=True)], [nn.ReLU(inplace=True), nn.ReflectionPad2d(1)]])
def test_upsampling_pad_and_conv_run_as_phase_convolutions_with_what_follows(one_thread, tail):
    torch.manual_seed(0)
    layers = [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(6, 5, 3), *tail]
    x = torch.randn(2, 6, 3, 4)
    plain = nn.Sequential(*layers)(x)
    with torch.inference_mode():
        outputs = dict(_fast_layers(layers, x.contiguous(memory_format=torch.channels_last)))
    assert max(outputs) == len(layers) - 1
    torch.testing.assert_close(outputs[len(layers) - 1], plain, rtol=1e-5, atol=1e-5)
