"""VGG encoder / decoder: the published AdaIN layout, torchvision's VGG-19, widths, random weights, errors."""

import pytest
import torch
import torchvision
from torch import nn

from normapps.models import VGG19_LAYERS, VGGDecoder, VGGEncoder, find_torchvision_weights
from normapps.models.vgg import DECODER_LEVELS, IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: a second thread only adds contention

# VGG-19 convolutions (in, out) through relu5_4, as in vgg_normalised.pth after its 1x1 input conv.
VGG19_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256)] + [(256, 256)] * 3 + [(256, 512)] + [(512, 512)] * 7
POOL_BEFORE = {2, 4, 8, 12}  # conv positions (0-based) preceded by a max-pool
DECODER_CONVS = [(512, 256), "up", (256, 256), (256, 256), (256, 256), (256, 128), "up", (128, 128), (128, 64), "up", (64, 64), (64, 3)]


def port_vgg() -> nn.Sequential:
    """The AdaIN port's ``vgg`` (1x1 conv, reflection pads, ceil-mode pools) through relu5_4, on the meta
    device (no initialization cost): load weights with ``load_state_dict(..., assign=True)``."""
    layers = [nn.Conv2d(3, 3, (1, 1), device="meta")]
    for i, (c_in, c_out) in enumerate(VGG19_CONVS):
        if i in POOL_BEFORE:
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
        layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(c_in, c_out, (3, 3), device="meta"), nn.ReLU()]
    return nn.Sequential(*layers)


def port_decoder() -> nn.Sequential:
    """The AdaIN port's ``decoder`` from relu4_1, on the meta device."""
    layers = []
    for step in DECODER_CONVS:
        if step == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(*step, (3, 3), device="meta"), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def random_state(module: nn.Module, keep: int | None = None) -> dict[str, torch.Tensor]:
    """Random values for ``module``'s state dict keys and shapes; only the first ``keep`` convolutions
    get random values (deeper ones zeros: cheaper, and never used by an encoder to relu4_1)."""
    state = module.state_dict()
    indices = sorted({int(k.split(".")[0]) for k in state})
    random = set(indices[:keep])
    return {k: torch.randn(v.shape) * 0.05 if int(k.split(".")[0]) in random else torch.zeros(v.shape) for k, v in state.items()}


def random_published(convs: int) -> dict[str, torch.Tensor]:
    """A state dict with vgg_normalised.pth's keys and shapes for its first ``convs`` convolutions (1x1 included)."""
    state = random_state(port_vgg(), keep=10)
    kept = sorted({int(k.split(".")[0]) for k in state})[:convs]
    return {k: v for k, v in state.items() if int(k.split(".")[0]) in kept}


@pytest.fixture(scope="module")
def published():
    return random_published(17)


@pytest.fixture(scope="module")
def torchvision_features():
    """torchvision's own ``vgg19(weights=None).features`` with default-initialized convolutions
    (built on the meta device: initializing the 100M-parameter classifier costs seconds)."""
    with torch.device("meta"):
        model = torchvision.models.vgg19(weights=None)
    features = model.features.to_empty(device="cpu")
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            layer.reset_parameters()
    return features.eval()


def test_published_vgg_has_seventeen_convolutions_through_relu5_4(published):
    assert len(published) == 34 and published["51.weight"].shape == (512, 512, 3, 3)


@pytest.mark.parametrize("convs", [17, 10])  # the published file (relu5_4) and one that stops at relu4_1
def test_from_published_computes_what_the_port_computes(published, convs):
    state = {k: v for k, v in published.items() if int(k.split(".")[0]) <= 29} if convs == 10 else published
    assert len(state) == 2 * convs
    encoder = VGGEncoder.from_published(state)
    port = port_vgg()
    port.load_state_dict(published, assign=True)
    x = torch.rand(2, 3, 21, 19)  # odd sides: ceil-mode pools
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), port[:31](x))
    assert encoder(x).shape == (2, 512, 3, 3)


def test_encoder_state_dict_keys_are_the_ports(published):
    encoder = VGGEncoder()
    port = port_vgg()[:31]
    assert list(encoder.state_dict()) == list(port.state_dict())
    port.load_state_dict(VGGEncoder.from_published(published).state_dict(), assign=True)  # strict, both ways
    encoder.load_state_dict(port.state_dict())


def test_decoder_matches_the_port_and_shares_its_keys(one_thread):
    port = port_decoder()
    assert list(VGGDecoder().state_dict()) == list(port.state_dict())
    port.load_state_dict(VGGDecoder().state_dict(), assign=True)  # strict, both ways
    decoder = VGGDecoder.from_published(port.state_dict())
    features = torch.rand(1, 512, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(decoder(features), port(features))


@pytest.mark.parametrize("size", [(32, 40), (37, 29)])  # even and odd sides: torchvision pools round down
def test_from_torchvision_equals_torchvision_features_on_imagenet_normalized_input(torchvision_features, size):
    state = {f"features.{k}": v for k, v in torchvision_features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 8)  # a full vgg19 state dict also holds the classifier: ignored
    encoder = VGGEncoder.from_torchvision(state)
    x = torch.rand(2, 3, *size)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torchvision_features[:21]((x - mean) / std)  # features[20] is relu4_1
        ours = encoder(x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    relu2_1 = VGGEncoder.from_torchvision(torchvision_features.state_dict(), last="relu2_1")  # features alone load too
    with torch.no_grad():
        torch.testing.assert_close(relu2_1(x), torchvision_features[:7]((x - mean) / std), rtol=1e-5, atol=1e-6)


def test_find_torchvision_weights_looks_only_at_vgg19_files_in_the_hub_cache(tmp_path, torchvision_features, monkeypatch):
    assert find_torchvision_weights(hub_dir=tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vgg19_bn-c79401a0.pth").write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no torchvision vgg19 weights in .*checkpoints"):
        VGGEncoder.from_torchvision()
    path = tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth"
    state = {f"features.{k}": v for k, v in torchvision_features[:3].state_dict().items()}
    torch.save(state, path)
    assert find_torchvision_weights() == path
    encoder = VGGEncoder.from_torchvision(last="relu1_1")
    torch.testing.assert_close(encoder.state_dict()["2.weight"], state["features.0.weight"])


def test_features_are_one_pass_that_stops_at_the_deepest_level_asked_for():
    encoder = VGGEncoder(width=0.25, last="relu5_1")
    ran = []
    for index, layer in encoder.named_children():
        layer.register_forward_hook(lambda *_, index=index: ran.append(int(index)))
    x = torch.rand(1, 3, 32, 32)
    feats = encoder.features(x, ["relu2_1", "relu1_1"])
    assert list(feats) == ["relu1_1", "relu2_1"] and max(ran) == 10 and len(ran) == 11
    assert list(encoder.features(x)) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert list(VGGEncoder(width=0.25, last="relu3_1").features(x)) == ["relu1_1", "relu2_1", "relu3_1"]
    torch.testing.assert_close(encoder.features(x)["relu5_1"], encoder(x))
    with pytest.raises(ValueError, match="stops at relu2_2: it cannot give relu3_1"):
        VGGEncoder(width=0.25, last="relu2_2").features(x, ["relu3_1"])


@pytest.mark.parametrize(("width", "channels"), [(1.0, (64, 128, 256, 512)), (0.5, (32, 64, 128, 256)), (0.25, (16, 32, 64, 128))])
def test_width_scales_the_channels_of_every_level(width, channels):
    encoder = VGGEncoder(width=width)
    feats = encoder.features(torch.rand(1, 3, 16, 16))
    assert tuple(encoder.channels(level) for level in encoder.levels) == channels
    assert tuple(f.shape[1] for f in feats.values()) == channels
    assert VGGDecoder(width=width).in_channels == channels[-1]


@pytest.mark.parametrize("level", list(DECODER_LEVELS))
def test_decoder_from_each_level_gives_back_the_image_shape(level):
    encoder, decoder = VGGEncoder(width=0.25, last=level), VGGDecoder(width=0.25, level=level)
    x = torch.rand(2, 3, 24, 40)
    assert decoder(encoder(x)).shape == x.shape
    convs = [m for m in decoder.children() if isinstance(m, nn.Conv2d)]
    assert len(convs) == DECODER_LEVELS[level] and convs[-1].out_channels == 3
    assert not isinstance(list(decoder.children())[-1], nn.ReLU)


def test_shallow_decoders_keep_the_published_indices_and_load_renumbered_state_dicts():
    keys = list(VGGDecoder(level="relu3_1").state_dict())
    assert keys[0] == "14.weight" and set(keys) <= set(VGGDecoder().state_dict())
    state = VGGDecoder(level="relu2_1", width=0.5).state_dict()  # keys 21, 25, 28
    renumbered = {f"{i // 2}.{k.split('.')[1]}": v for i, (k, v) in enumerate(state.items())}  # keys 0, 1, 2
    decoder = VGGDecoder.from_published(renumbered)
    assert decoder.level == "relu2_1" and decoder.width == 0.5


def test_decoder_crops_ceil_mode_sizes_back_to_the_image():
    encoder, decoder = VGGEncoder(width=0.25), VGGDecoder(width=0.25)
    x = torch.rand(1, 3, 37, 30)
    assert decoder(encoder(x)).shape == (1, 3, 40, 32)
    assert decoder(encoder(x), size=x.shape[-2:]).shape == x.shape


def test_narrow_weights_round_trip_through_a_file(tmp_path):
    encoder, decoder = VGGEncoder.random(width=0.25, seed=3), VGGDecoder(width=0.25)
    torch.save(encoder.state_dict(), tmp_path / "vgg.pth")
    torch.save({"state_dict": decoder.state_dict()}, tmp_path / "decoder.pth")
    loaded = VGGEncoder.from_published(tmp_path / "vgg.pth")
    assert loaded.width == 0.25
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), encoder.state_dict().values()))
    assert VGGDecoder.from_published(tmp_path / "decoder.pth").width == 0.25


def test_encoder_is_frozen_but_passes_gradients_to_its_input():
    encoder = VGGEncoder(width=0.25)
    assert not any(p.requires_grad for p in encoder.parameters())
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    encoder(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in VGGEncoder.from_published(random_published(10)).parameters())


def test_random_encoder_is_fixed_per_seed_and_keeps_feature_magnitudes_across_depth():
    state = torch.random.get_rng_state()
    a, b, c = VGGEncoder.random(0.25, seed=1), VGGEncoder.random(0.25, seed=1), VGGEncoder.random(0.25, seed=2)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.state_dict()["29.weight"], c.state_dict()["29.weight"])
    image = nn.functional.interpolate(torch.rand(1, 3, 8, 8), size=64, mode="bilinear")  # smooth, like a photo
    with torch.no_grad():
        rms = [f.square().mean().sqrt().item() for f in a.features(image).values()]
    assert max(rms) / min(rms) < 4, rms


def test_published_loader_names_expected_and_found_convolution_counts(tmp_path):
    state = VGGDecoder(width=0.25).state_dict()
    state |= {f"{int(k.split('.')[0]) + 100}.{k.split('.')[1]}": v for k, v in state.items()}
    torch.save(state, tmp_path / "decoder.pth")
    with pytest.raises(ValueError, match=r"decoder.pth has 18 convolution weights, expected 9 \(relu4_1\) or 5"):
        VGGDecoder.from_published(tmp_path / "decoder.pth")
    with pytest.raises(ValueError, match="has 8 convolution weights, expected at least 10"):
        VGGEncoder.from_published(random_published(8))
    with pytest.raises(ValueError, match=r"has 5 convolution weights, expected 9 for a decoder from relu4_1"):
        VGGDecoder.from_published(VGGDecoder(level="relu3_1").state_dict(), level="relu4_1")


def test_loaders_name_wrong_shapes_and_keys(published):
    wrong = dict(published) | {"9.weight": torch.zeros(128, 32, 3, 3)}
    with pytest.raises(ValueError, match=r"'9.weight' / '9.bias' have shapes \(128, 32, 3, 3\) / \(128,\), expected \(128, 64, 3, 3\)"):
        VGGEncoder.from_published(wrong)
    with pytest.raises(ValueError, match="has keys 'decoder.1.weight'.*expected only the '<index>.weight'"):
        VGGDecoder.from_published({f"decoder.{k}": v for k, v in VGGDecoder().state_dict().items()})
    with pytest.raises(ValueError, match="has '2.weight' but no '2.bias'"):
        VGGEncoder.from_published({k: v for k, v in published.items() if k != "2.bias"})
    with pytest.raises(ValueError, match="use VGGEncoder.from_torchvision"):
        VGGEncoder.from_published({k: v for k, v in published.items() if not k.startswith("0.")})
    with pytest.raises(ValueError, match="use VGGEncoder.from_published"):
        VGGEncoder.from_torchvision(published)


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "vgg_normalised.pth"
    with pytest.raises(FileNotFoundError, match=str(path)):
        VGGEncoder.from_published(path)
    with pytest.raises(FileNotFoundError, match="decoder.pth"):
        VGGDecoder.from_published(str(tmp_path / "decoder.pth"))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="last must be one of"):
        VGGEncoder(last="relu6_1")
    with pytest.raises(ValueError, match="level must be one of"):
        VGGDecoder(level="relu5_1")
    with pytest.raises(ValueError, match="width must be"):
        VGGEncoder(width=0)
    with pytest.raises(ValueError, match="padding must be"):
        VGGEncoder(padding="circular")
    with pytest.raises(ValueError, match=r"expected RGB images of shape \(N, 3, H, W\)"):
        VGGEncoder(width=0.25)(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"takes features of shape \(N, 128, h, w\)"):
        VGGDecoder(width=0.25)(torch.rand(1, 64, 4, 4))
    assert VGG19_LAYERS[0] == "relu1_1" and VGG19_LAYERS[-1] == "relu5_4" and len(VGG19_LAYERS) == 16
