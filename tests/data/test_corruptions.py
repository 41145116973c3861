import numpy as np
import pytest
import torch

from normapps.data import CORRUPTIONS, HELD_OUT_CORRUPTIONS, corrupt, load_domain
from normapps.data.syndigits import font_split, render_syndigits

ALL = CORRUPTIONS + HELD_OUT_CORRUPTIONS

# Mean absolute difference from the clean image grows strictly with severity for these; for the
# others the CIFAR-10-C constants trade one effect for another (frost darkens the image while
# adding frost, glass blur smooths away part of its own pixel shuffling, pixelate's resampling
# grid aligns better at some factors, spatter switches from water to mud, saturate's first
# severities reduce saturation), so only severity 5 versus 1 is checked for them.
MONOTONE = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "motion_blur",
    "zoom_blur",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
}


@pytest.fixture(scope="module")
def grey():
    return load_domain("digits", split="test", count=8).tensors[0]


@pytest.fixture(scope="module")
def colour():
    return render_syndigits(8, 32, font_split()["train"], np.random.default_rng(0))[0]


@pytest.fixture(scope="module")
def outputs(grey, colour):
    return {
        (name, severity): (corrupt(grey, name, severity, seed=1), corrupt(colour, name, severity, seed=1))
        for name in ALL
        for severity in range(1, 6)
    }


def test_the_fifteen_cifar10c_corruptions_and_the_four_held_out():
    assert len(CORRUPTIONS) == 15 and len(HELD_OUT_CORRUPTIONS) == 4
    assert {"gaussian_noise", "glass_blur", "frost", "elastic_transform", "jpeg_compression"} <= set(CORRUPTIONS)
    assert not set(CORRUPTIONS) & set(HELD_OUT_CORRUPTIONS)


@pytest.mark.parametrize("name", ALL)
def test_every_severity_keeps_shape_dtype_and_range_and_changes_the_image(name, outputs, colour):
    for severity in range(1, 6):
        _, out = outputs[name, severity]
        assert out.shape == colour.shape and out.dtype == colour.dtype
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert (out - colour).abs().mean() > 1e-3, f"{name} at severity {severity} leaves colour images unchanged"


@pytest.mark.parametrize("name", ALL)
def test_severity_five_departs_further_from_the_clean_image_than_severity_one(name, outputs, grey):
    first, last = ((outputs[name, s][0] - grey).abs().mean() for s in (1, 5))
    assert last > first


@pytest.mark.parametrize("name", sorted(MONOTONE))
def test_difference_from_the_clean_image_grows_with_severity(name, outputs, grey):
    distances = [(outputs[name, s][0] - grey).abs().mean().item() for s in range(1, 6)]
    assert distances == sorted(distances) and len(set(distances)) == 5, distances


@pytest.mark.parametrize("name", ["gaussian_noise", "glass_blur", "snow", "frost", "fog", "elastic_transform", "spatter"])
def test_random_corruptions_are_fixed_by_the_seed(name, colour):
    first, again, other = (corrupt(colour, name, 3, seed=s) for s in (5, 5, 6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_input_is_left_unchanged(colour):
    before = colour.clone()
    corrupt(colour, "glass_blur", 5)
    corrupt(colour, "brightness", 5)
    assert torch.equal(colour, before)


def test_any_image_size(colour):
    large = torch.nn.functional.interpolate(colour[:2], size=48, mode="bilinear")
    for name in ("defocus_blur", "motion_blur", "snow", "pixelate", "elastic_transform"):
        assert corrupt(large, name, 5).shape == (2, 3, 48, 48)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("haze", 1), "unknown corruption 'haze'; expected one of gaussian_noise"),
        (("fog", 0), "severity must be an int from 1 to 5, got 0"),
        (("fog", True), "severity must be an int from 1 to 5"),
    ],
)
def test_bad_corruption_or_severity_names_the_valid_choices(colour, args, message):
    with pytest.raises(ValueError, match=message):
        corrupt(colour, *args)


def test_images_must_be_float_rgb_batches():
    with pytest.raises(ValueError, match=r"float tensor \(N, 3, H, W\), got \(2, 1, 8, 8\)"):
        corrupt(torch.zeros(2, 1, 8, 8), "fog", 1)
    with pytest.raises(ValueError, match="torch.uint8"):
        corrupt(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "fog", 1)
