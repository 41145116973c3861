"""NNPACK in the VGG inference path: the same outputs as the plain layers, the thread count restored, a fallback."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normapps.models import VGGDecoder, VGGEncoder, nnpack
from normapps.models import vgg as vgg_module

pytestmark = pytest.mark.skipif(nnpack.pool_threads() is None, reason="this torch has no NNPACK for this CPU")


@pytest.fixture
def counted(monkeypatch):
    """NNPACK forced on (whatever the size of its pool), its convolutions counted."""
    calls = []
    original = nnpack.conv2d

    def conv2d(x, weight, bias):
        calls.append(tuple(weight.shape))
        return original(x, weight, bias)

    monkeypatch.setattr(nnpack, "ENABLED", True)
    monkeypatch.setattr(nnpack, "usable", lambda: True)
    monkeypatch.setattr(nnpack, "conv2d", conv2d)
    return calls


@pytest.mark.parametrize(("c_in", "c_out", "size"), [(64, 64, (9, 13)), (128, 64, (20, 6)), (64, 96, (3, 3))])
def test_conv_equals_torch_conv2d(c_in, c_out, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3)
    x = torch.randn(2, c_in, *size)
    assert nnpack.eligible(conv)
    with torch.no_grad():
        expected = F.conv2d(x.double(), conv.weight.double(), conv.bias.double())
        got = nnpack.conv2d(x.contiguous(memory_format=torch.channels_last), conv.weight, conv.bias)
    assert got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4 * float(expected.abs().max()))  # Winograd rounding


@pytest.mark.parametrize("conv", [nn.Conv2d(64, 63, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3, stride=2),
                                  nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, dilation=2),
                                  nn.Conv2d(64, 64, 3, groups=2), nn.Conv2d(64, 64, 1), nn.ReLU()])
def test_only_plain_wide_3x3_convolutions_are_eligible(conv):
    assert not nnpack.eligible(conv)


@pytest.mark.parametrize(("size", "ceil_mode"), [((66, 70), True), ((67, 65), True), ((67, 65), False)])
def test_encoder_and_decoder_equal_the_plain_layers_with_nnpack(counted, size, ceil_mode):
    torch.manual_seed(0)
    encoder = VGGEncoder.random(width=1.0, seed=0, last="relu3_1")
    for layer in encoder.modules():
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = ceil_mode
    decoder = VGGDecoder(width=1.0, level="relu3_1")
    x = torch.rand(1, 3, *size)
    threads = torch.get_num_threads()
    plain = encoder.features(x)  # autograd on: the plain layers
    plain_image = decoder(plain["relu3_1"])
    assert not counted
    with torch.inference_mode():
        fast = encoder.features(x)
        image = decoder(fast["relu3_1"])
    # conv1_2, conv2_1, conv2_2, conv3_1; the decoder's 256 -> 128, 128 -> 64 and its two phase convolutions (not 64 -> 3)
    assert len(counted) == 8 and (4 * 64, 64, 2, 2) in counted
    assert torch.get_num_threads() == threads
    for name, value in fast.items():
        assert value.is_contiguous()
        torch.testing.assert_close(value, plain[name], rtol=0, atol=1e-4 * float(plain[name].abs().max()))
    torch.testing.assert_close(image, plain_image, rtol=0, atol=1e-4 * float(plain_image.abs().max()))


def test_switched_off_it_is_not_used(counted, monkeypatch):
    monkeypatch.setattr(nnpack, "ENABLED", False)
    monkeypatch.setattr(nnpack, "usable", lambda: nnpack.ENABLED)
    with torch.inference_mode():
        VGGEncoder.random(width=1.0, last="relu2_1")(torch.rand(1, 3, 64, 64))
    assert not counted


def test_thread_count_is_restored_when_the_pass_fails(counted, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("broken layer")
        yield

    seen = []
    original = nnpack.inference

    @contextlib.contextmanager
    def watched(layers):
        with original(layers) as used:
            seen.append((used, torch.get_num_threads()))
            yield used

    monkeypatch.setattr(vgg_module, "_fast_layers", broken)
    monkeypatch.setattr(nnpack, "inference", watched)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode(), pytest.raises(RuntimeError, match="broken layer"):
            VGGEncoder.random(width=1.0, last="relu2_1")(torch.rand(1, 3, 64, 64))
        assert seen == [(True, 1)] and torch.get_num_threads() == 2  # lowered inside the pass, restored after
    finally:
        torch.set_num_threads(threads)


def test_not_usable_at_another_thread_count_than_its_pool():
    pool = nnpack.pool_threads()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(pool + 1)
        assert not nnpack.usable()
        torch.set_num_threads(pool)
        assert nnpack.usable() == nnpack.ENABLED
    finally:
        torch.set_num_threads(threads)


def test_narrow_networks_keep_onednn(counted):
    encoder, decoder = VGGEncoder.random(width=0.25), VGGDecoder(width=0.25)
    assert nnpack.share(list(encoder.children())) < nnpack.MIN_SHARE <= nnpack.share(list(VGGEncoder.random(width=1.0).children()))
    with torch.inference_mode():
        decoder(encoder(torch.rand(1, 3, 64, 64)))
    assert not counted  # half their work is in convolutions of fewer than 64 channels: one thread for those would cost more


def test_share_counts_each_convolution_at_its_resolution():
    layers = [nn.Conv2d(3, 64, 3), nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.Upsample(scale_factor=2), nn.Conv2d(64, 64, 1)]
    full, quarter, pointwise = 3 * 64 * 9, 64 * 64 * 9 / 4, 64 * 64
    assert nnpack.share(layers) == pytest.approx(quarter / (full + quarter + pointwise))
    assert nnpack.share([nn.ReLU()]) == 0.0
