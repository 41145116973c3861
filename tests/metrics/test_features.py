"""The shipped digit classifier as a feature space: accuracy, FD sanity on real digits, file handling."""

import pytest
import torch

from normapps.data import load_domain
from normapps.metrics import DigitFeatures, DigitNet, frechet_distance, load_digit_features, save_digit_features
from normapps.metrics import train as train_module
from normapps.metrics.features import checkpoint_path

# Measured with the shipped file: 0.9389 on the 360 digits test images (python -m normapps.metrics.train); margin for thread counts.
DIGITS_TEST_ACCURACY_FLOOR = 0.92


@pytest.fixture(scope="module")
def shipped():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_digit_features()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_test():
    images, labels = load_domain("digits", "test", 32).tensors
    return images * 2 - 1, labels


def test_shipped_file_loads_with_its_metadata(shipped):
    assert checkpoint_path().is_file()
    assert shipped.info["input"] == {"size": 32, "channels": 3, "range": [-1.0, 1.0]}
    assert shipped.info["architecture"]["type"] == "DigitNet" and shipped.feature_dim == 4 * shipped.info["architecture"]["width"]
    assert {"digits", "syndigits"} <= set(shipped.info["training"]["data"])
    assert not shipped.training and not any(p.requires_grad for p in shipped.parameters())


def test_shipped_classifier_accuracy_on_digits_test_is_high_and_matches_the_file(shipped, digits_test):
    images, labels = digits_test
    accuracy = float((shipped.logits(images).argmax(1) == labels).double().mean())
    assert accuracy == pytest.approx(shipped.info["test_accuracy"]["digits"], abs=1.5 / len(labels))
    assert accuracy >= DIGITS_TEST_ACCURACY_FLOOR


def test_fd_of_real_halves_is_near_zero_and_grows_monotonically_with_image_noise(shipped, digits_test):
    images, _ = digits_test
    generator = torch.Generator().manual_seed(0)
    first, second = images[0::2], images[1::2]
    noise = torch.randn(second.shape, generator=generator)
    reference = shipped.features(first)
    values = [frechet_distance(reference, shipped.features((second + std * noise).clamp(-1, 1))) for std in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[0] < 0.2 * values[3], values  # real halves far below the halves with noise of std 0.4
    spread = float(torch.var(reference, dim=0).sum())
    assert values[0] < 0.1 * spread  # near 0 on the scale of the features' total variance


def test_features_are_batched_consistently_and_match_the_network(shipped, digits_test):
    images = digits_test[0][:20]
    small = DigitFeatures(shipped.network, batch_size=7)
    torch.testing.assert_close(small.features(images), shipped.features(images), rtol=1e-5, atol=1e-5)
    assert shipped.features(images).shape == (20, shipped.feature_dim)
    torch.testing.assert_close(shipped.logits(images), shipped.network.head(shipped.features(images)), rtol=1e-5, atol=1e-5)
    shipped.train()
    assert not shipped.training and not shipped.network.training


def test_bad_images_raise_clear_errors(shipped):
    with pytest.raises(ValueError, match=r"in \[-1, 1\].*2 \* x - 1"):
        shipped.features(torch.full((2, 3, 32, 32), 255.0))
    with pytest.raises(ValueError, match=r"expected images \(N, 3, 32, 32\).*got \(2, 3, 16, 16\)"):
        shipped.features(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        shipped.logits(torch.zeros(2, 1, 32, 32))


def test_save_load_round_trip_and_file_errors(tmp_path):
    network = DigitNet(width=4).eval()
    path = save_digit_features(tmp_path / "f.pt", network, {"command": "test"}, {"digits": 0.5})
    loaded = load_digit_features(path)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded.logits(images), network(images))
    assert loaded.info["test_accuracy"] == {"digits": 0.5} and loaded.info["path"] == str(path)
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_digit_features(path, network, {}, {})
    with pytest.raises(FileNotFoundError, match="not found"):
        load_digit_features(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a digit features file"):
        load_digit_features(tmp_path / "other.pt")


def test_train_script_writes_a_loadable_file_and_refuses_to_overwrite(tmp_path, capsys, one_thread):
    out = tmp_path / "digit_features.pt"
    args = ["--out", str(out), "--epochs", "1", "--syndigits-count", "64", "--digits-repeats", "1", "--width", "4", "--threads", "1"]
    assert train_module.main(args) == 0
    printed = capsys.readouterr().out
    assert "test accuracy digits" in printed and "sha256" in printed
    info = load_digit_features(out).info
    assert info["training"]["steps"] == 9 and set(info["test_accuracy"]) == {"digits", "syndigits"}
    before = out.read_bytes()
    assert train_module.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
