"""normapps.tasks.style.transfer: AdaIN / WCT targets and their controls (alpha, style weights, masks),
colour preservation, the colour-transfer baseline and the stylizers, on tiny stand-in encoders."""

import pytest
import torch
from kornia.color import rgb_to_lab
from torch import nn

from normapps.norm.whitening import whiten_color_transform
from normapps.tasks.style.transfer import (
    AdaINStylizer,
    WCTStylizer,
    adain_target,
    color_transfer,
    preserve_color,
    wct_target,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second thread only adds contention

F64 = torch.float64
LEVELS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
TARGETS = {"adain": adain_target, "wct": wct_target}


class TinyEncoder(nn.Module):
    """A conv/pool stack with the VGG encoder's interface: ``features(x, levels)`` and ``forward(x)`` -> relu4_1."""

    def __init__(self, widths=(4, 6, 8, 8)) -> None:
        super().__init__()
        stages, c_in = {}, 3
        for i, (level, c) in enumerate(zip(LEVELS, widths)):
            stages[level] = nn.Sequential(*([nn.AvgPool2d(2)] if i else []), nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU())
            c_in = c
        self.stages = nn.ModuleDict(stages)

    def features(self, x, levels):
        wanted, out = set(levels), {}
        for level, stage in self.stages.items():
            if wanted <= out.keys():
                break
            x = stage(x)
            if level in wanted:
                out[level] = x
        return out

    def forward(self, x):
        return self.features(x, ("relu4_1",))["relu4_1"]


def tiny_decoders(widths=(4, 6, 8, 8)) -> dict[str, nn.Module]:
    return {level: nn.Sequential(nn.Conv2d(c, 3, 3, padding=1), nn.Upsample(scale_factor=2**i), nn.Sigmoid())
            for i, (level, c) in enumerate(zip(LEVELS, widths))}


def features(n: int, c: int, h: int, w: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=F64) + torch.eye(c, dtype=F64)
    x = torch.randn(n, h, w, c, generator=g, dtype=F64) @ mix.T
    return (scale * x + shift + torch.randn(c, generator=g, dtype=F64)).permute(0, 3, 1, 2).contiguous()


def images(n: int, h: int, w: int, seed: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 3, h, w, generator=g, dtype=F64)


def mean_and_covariance(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean ``(N, C, 1)`` and biased covariance ``(N, C, C)`` of ``(N, C, L)`` rows."""
    mean = rows.mean(-1, keepdim=True)
    centred = rows - mean
    return mean, centred @ centred.mT / rows.shape[-1]


def test_adain_target_has_the_style_mean_and_std_per_channel():
    style = features(1, 5, 4, 9, seed=1, scale=2.0, shift=3.0)
    t = adain_target(features(3, 5, 6, 6, seed=0), style)
    torch.testing.assert_close(t.mean((2, 3)), style.mean((2, 3)).expand(3, -1), atol=1e-10, rtol=0)
    torch.testing.assert_close(t.var((2, 3), correction=0), style.var((2, 3), correction=0).expand(3, -1), rtol=1e-4, atol=0)


def test_wct_target_has_the_style_mean_and_covariance():
    style = features(2, 4, 3, 7, seed=3, shift=-1.0)
    t = wct_target(features(2, 4, 6, 6, seed=2), style, eps=1e-12)
    for got, want in zip(mean_and_covariance(t.flatten(2)), mean_and_covariance(style.flatten(2))):
        torch.testing.assert_close(got, want, atol=1e-8, rtol=0)


@pytest.mark.parametrize("method", TARGETS)
def test_style_weights_one_zero_reproduce_the_single_style_output_exactly(method):
    content, a, b = features(2, 4, 5, 5, seed=4), features(1, 4, 4, 4, seed=5), features(1, 4, 6, 3, seed=6)
    target = TARGETS[method]
    assert torch.equal(target(content, [a, b], weights=(1.0, 0.0), alpha=0.6), target(content, a, alpha=0.6))
    assert torch.equal(target(content, [a, b], weights=torch.tensor([0.0, 1.0])), target(content, b))


@pytest.mark.parametrize("method", TARGETS)
def test_style_weights_interpolate_linearly(method):
    content, a, b = features(2, 4, 5, 5, seed=7), features(1, 4, 4, 4, seed=8), features(2, 4, 5, 5, seed=9)
    target = TARGETS[method]
    ta, tb = target(content, a), target(content, b)
    for w in (0.25, 0.5, 0.9):
        torch.testing.assert_close(target(content, [a, b], weights=(w, 1 - w)), w * ta + (1 - w) * tb)
    torch.testing.assert_close(target(content, [a, b]), 0.5 * ta + 0.5 * tb)  # no weights: equal weights


@pytest.mark.parametrize("method", TARGETS)
def test_alpha_blends_the_target_with_the_content(method):
    content, style = features(2, 4, 5, 5, seed=10), features(1, 4, 5, 5, seed=11)
    target = TARGETS[method]
    full = target(content, style)
    torch.testing.assert_close(target(content, style, alpha=0.3), 0.3 * full + 0.7 * content)
    assert torch.equal(target(content, style, alpha=0.0), content)


def region_statistics(t: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return mean_and_covariance(t.flatten(2)[:, :, region.flatten()])


@pytest.mark.parametrize("method", TARGETS)
def test_mask_gives_each_region_its_own_style_statistics(method):
    content = features(2, 4, 8, 8, seed=12)
    a, b = features(1, 4, 5, 5, seed=13, shift=2.0), features(1, 4, 7, 4, seed=14, scale=3.0, shift=-1.0)
    inside = torch.zeros(32, 32, dtype=torch.bool)  # image-sized: 4x the feature size
    inside[4:20, 8:28] = True
    t = TARGETS[method](content, [a, b], mask=torch.stack([inside, ~inside]).float(), eps=1e-12)
    small = inside[::4, ::4]
    for region, style in ((small, a), (~small, b)):
        mean, cov = region_statistics(t, region)
        style_mean, style_cov = mean_and_covariance(style.flatten(2))
        torch.testing.assert_close(mean, style_mean.expand_as(mean), atol=1e-8, rtol=0)
        if method == "wct":
            torch.testing.assert_close(cov, style_cov.expand_as(cov), atol=1e-8, rtol=0)
        else:
            torch.testing.assert_close(cov.diagonal(dim1=-2, dim2=-1), style_cov.diagonal(dim1=-2, dim2=-1).expand(2, -1))


def test_masks_per_content_sample_and_alpha():
    content = features(2, 3, 4, 4, seed=15)
    a, b = features(2, 3, 4, 4, seed=16), features(1, 3, 4, 4, seed=17)
    masks = torch.zeros(2, 2, 4, 4)
    masks[0, 0, :2], masks[1, 0, :, :1] = 1, 1
    masks[:, 1] = 1 - masks[:, 0]
    t = adain_target(content, [a, b], mask=masks, alpha=0.5)
    for i in range(2):
        alone = adain_target(content[i:i + 1], [a[i:i + 1], b], mask=masks[i], alpha=0.5)
        torch.testing.assert_close(t[i:i + 1], alone)
    region = masks[1, 0].bool().flatten()
    full = adain_target(content[1:], [a[1:], b], mask=masks[1])
    torch.testing.assert_close(region_statistics(full, region)[0], a[1:].mean((2, 3)).unsqueeze(-1))


def test_preserve_color_gives_the_style_image_the_content_colour_statistics():
    style, content = images(1, 12, 10, seed=18), images(2, 8, 8, seed=19, low=0.2, high=0.6)
    content[:, 0] = 0.5 * content[:, 0] + 0.5 * content[:, 1]  # correlated colours
    out = preserve_color(style, content)
    assert out.shape == (2, 3, 12, 10)
    for got, want in zip(mean_and_covariance(out.flatten(2)), mean_and_covariance(content.flatten(2))):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_color_transfer_matches_the_lab_mean_and_std():
    content, style = images(2, 8, 8, seed=20, low=0.3, high=0.7), images(1, 6, 9, seed=21, low=0.35, high=0.6)
    out = color_transfer(content, style)
    assert out.shape == content.shape and out.min() >= 0 and out.max() <= 1
    lab_out, lab_style = rgb_to_lab(out), rgb_to_lab(style)
    torch.testing.assert_close(lab_out.mean((2, 3)), lab_style.mean((2, 3)).expand(2, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(lab_out.std((2, 3), correction=0), lab_style.std((2, 3), correction=0).expand(2, -1),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", TARGETS)
@pytest.mark.parametrize("case", ["constant channels", "1x1 feature maps", "2x2 maps, more channels"])
def test_rank_deficient_statistics_stay_finite(method, case):
    content, style = features(2, 6, 4, 4, seed=22), features(1, 6, 4, 4, seed=23)
    if case == "constant channels":
        content[:, :3], style[:, 2:] = 0.0, 1.0
    elif case == "1x1 feature maps":
        content, style = content[:, :, :1, :1], style[:, :, :1, :1]
    else:
        content, style = content[:, :, :2, :2], style[:, :, 2:, 2:]
    mask = torch.zeros(2, 4, 4)
    mask[0, :1, :1] = 1
    mask[1] = 1 - mask[0]
    assert torch.isfinite(TARGETS[method](content, style, alpha=0.7)).all()
    assert torch.isfinite(TARGETS[method](content, [style, style.flip(1)], mask=mask)).all()
    flat = torch.full((1, 3, 4, 4), 0.5, dtype=F64)
    assert torch.isfinite(preserve_color(flat, images(1, 4, 4, seed=24))).all()
    assert torch.isfinite(preserve_color(images(1, 4, 4, seed=24), flat)).all()
    assert torch.isfinite(color_transfer(flat, flat)).all()


def test_bad_target_inputs_raise_value_errors_naming_expected_and_found():
    content, style = torch.randn(2, 4, 6, 6), torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match="must have 4 channels, got 5"):
        adain_target(content, torch.randn(1, 5, 6, 6))
    with pytest.raises(ValueError, match="style features 1 must have 1 or 2 samples.*got 3"):
        wct_target(content, [style, torch.randn(3, 4, 6, 6)])
    with pytest.raises(ValueError, match="sum to 1"):
        adain_target(content, [style, style], weights=(0.5, 0.6))
    with pytest.raises(ValueError, match="expected 2 style weights.*got 3"):
        adain_target(content, [style, style], weights=(0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match="expected 1 style weights.*sequence of tensors.*got 2"):
        adain_target(content, style, weights=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\), got shape \(4, 6, 6\)"):
        adain_target(content[0], style)
    with pytest.raises(ValueError, match=r"4-D.*got shape \(1, 4, 6, 6, 1\)"):
        wct_target(content, style.unsqueeze(-1))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got -0.1"):
        adain_target(content, style, alpha=-0.1)
    half = torch.zeros(2, 6, 6)
    half[0, :3], half[1, 3:] = 1, 1
    with pytest.raises(ValueError, match="expected 3 masks.*got 2"):
        adain_target(content, [style, style, style], mask=half)
    with pytest.raises(ValueError, match="1 or 2 samples.*got 3"):
        adain_target(content, [style, style], mask=half.expand(3, -1, -1, -1))
    with pytest.raises(ValueError, match="either style weights.*or masks"):
        adain_target(content, [style, style], weights=(0.5, 0.5), mask=half)
    with pytest.raises(ValueError, match="0 or 1"):
        adain_target(content, [style, style], mask=half * 0.5)
    with pytest.raises(ValueError, match="exactly one style.*36 positions have \\[2\\] styles"):
        adain_target(content, [style, style], mask=torch.ones(2, 6, 6))
    with pytest.raises(ValueError, match="style image and content image must have the same number.*2 and 3"):
        preserve_color(torch.rand(2, 3, 4, 4), torch.rand(3, 3, 4, 4))
    with pytest.raises(ValueError, match="content image must have 3 channels, got 1"):
        color_transfer(torch.rand(1, 1, 4, 4), torch.rand(1, 3, 4, 4))


@pytest.fixture
def adain_stylizer():
    return AdaINStylizer(TinyEncoder(), tiny_decoders()["relu4_1"]).eval()


def test_adain_stylizer_decodes_the_adain_target(adain_stylizer):
    content, style = torch.rand(2, 3, 16, 16), torch.rand(1, 3, 24, 20)
    out = adain_stylizer(content, style, alpha=0.8)
    assert out.shape == content.shape and out.min() >= 0 and out.max() <= 1
    encoder, decoder = adain_stylizer.encoder, adain_stylizer.decoder
    torch.testing.assert_close(out, decoder(adain_target(encoder(content), encoder(style), alpha=0.8)).clamp(0, 1))


def test_adain_stylizer_encodes_a_style_once_for_many_contents(adain_stylizer):
    contents, style = torch.rand(3, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        features = adain_stylizer.encode_style(style)
        outs = [adain_stylizer(c[None], style_features=features, alpha=0.5) for c in contents]
        torch.testing.assert_close(torch.cat(outs), adain_stylizer(contents, style, alpha=0.5))


def test_adain_stylizer_weights_and_mask(adain_stylizer):
    content, a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 24)
    with torch.inference_mode():
        assert torch.equal(adain_stylizer(content, [a, b], weights=(1.0, 0.0)), adain_stylizer(content, a))
        mask = torch.zeros(2, 16, 16)
        mask[0, :, :8] = 1
        mask[1] = 1 - mask[0]
        assert adain_stylizer(content, [a, b], mask=mask).shape == content.shape


def test_adain_stylizer_bad_inputs(adain_stylizer):
    content, style = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="exactly one of style"):
        adain_stylizer(content)
    with pytest.raises(ValueError, match="exactly one of style"):
        adain_stylizer(content, style, style_features=adain_stylizer.encode_style(style))
    with pytest.raises(ValueError, match=r"mask must have the content image's size \(16, 16\), got \(8, 8\)"):
        adain_stylizer(content, [style, style], mask=torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="content image must have 3 channels, got 4"):
        adain_stylizer(torch.rand(1, 4, 16, 16), style)
    with pytest.raises(ValueError, match=r"style image must be 4-D.*got shape \(3, 16, 16\)"):
        adain_stylizer(content, style[0])


@pytest.fixture
def wct_stylizer():
    return WCTStylizer(TinyEncoder(), tiny_decoders()).eval()


def test_wct_stylizer_goes_coarse_to_fine_over_the_levels(wct_stylizer):
    content, style = torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 24)
    out = wct_stylizer(content, style, alpha=0.6)
    assert out.shape == content.shape and out.min() >= 0 and out.max() <= 1
    encoder, image = wct_stylizer.encoder, content
    for level in ("relu4_1", "relu3_1", "relu2_1", "relu1_1"):
        target = wct_target(encoder.features(image, [level])[level], encoder.features(style, [level])[level], alpha=0.6)
        image = wct_stylizer.decoders[level](target)
    torch.testing.assert_close(out, image.clamp(0, 1))


def test_wct_stylizer_with_alpha_zero_and_identity_maps_returns_the_content():
    class Identity(nn.Module):
        def features(self, x, levels):
            return {level: x for level in levels}

    stylizer = WCTStylizer(Identity(), {"a": nn.Identity(), "b": nn.Identity()}, levels=("a", "b"))
    content = torch.rand(2, 3, 8, 8)
    assert torch.equal(stylizer(content, torch.rand(1, 3, 8, 8), alpha=0.0), content)


def test_wct_stylizer_style_features_weights_and_mask(wct_stylizer):
    content, a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 24, 16)
    with torch.inference_mode():
        features = wct_stylizer.encode_style([a, b])
        single = wct_stylizer(content, a, alpha=0.7)
        assert torch.equal(wct_stylizer(content, style_features=features, weights=(1.0, 0.0), alpha=0.7), single)
        assert torch.equal(wct_stylizer(content, style_features=features[0], alpha=0.7), single)
        mask = torch.zeros(2, 16, 16)
        mask[0, :8] = 1
        mask[1] = 1 - mask[0]
        assert torch.isfinite(wct_stylizer(content, style_features=features, mask=mask)).all()


def test_wct_stylizer_bad_inputs(wct_stylizer):
    with pytest.raises(ValueError, match=r"decoder for every level.*missing \['relu1_1'\]"):
        WCTStylizer(TinyEncoder(), {k: v for k, v in tiny_decoders().items() if k != "relu1_1"})
    content = torch.rand(1, 3, 16, 16)
    features = wct_stylizer.encode_style(content)
    del features["relu2_1"]
    with pytest.raises(ValueError, match="lack level 'relu2_1'"):
        wct_stylizer(content, style_features=features)


def test_wct_target_uses_whiten_color_transform_per_style():
    content, style = features(1, 3, 4, 4, seed=25), features(1, 3, 4, 4, seed=26)
    torch.testing.assert_close(wct_target(content, style, alpha=0.4), whiten_color_transform(content, style, alpha=0.4))
