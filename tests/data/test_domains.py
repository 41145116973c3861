import warnings

import pytest
import torch

from normapps.data import DigitsDataModule, available_domains, default_cache_dir, load_domain
from normapps.data.domains import CACHE_VERSION

GENERATED = [
    ("syndigits", {}),
    ("digits_m", {}),
    ("digits_c", {"corruption": "gaussian_noise", "severity": 3}),
]
EMBEDDED = [("digits", {})] + GENERATED


def _cache_files(folder):
    return sorted(p.name for p in (folder / "domains").glob("*")) if (folder / "domains").is_dir() else []


def test_available_domains():
    assert available_domains() == ("syndigits", "digits", "digits_m", "digits_c", "mnist", "usps", "svhn", "cifar10", "cifar10_c")


@pytest.mark.parametrize(("name", "kwargs"), EMBEDDED)
def test_embedded_domains_are_rgb_floats_in_the_unit_range(name, kwargs, tmp_path):
    images, labels = load_domain(name, split="test", image_size=16, count=12, cache_dir=tmp_path, **kwargs).tensors
    assert images.shape == (12, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.shape == (12,) and labels.dtype == torch.int64
    assert set(labels.tolist()) <= set(range(10))


@pytest.mark.parametrize(("name", "kwargs"), GENERATED)
def test_generation_is_fixed_by_the_seed_and_a_cache_hit_equals_a_fresh_generation(name, kwargs, tmp_path):
    def load(seed, folder):
        return load_domain(name, split="val", image_size=16, count=10, seed=seed, cache_dir=tmp_path / folder, **kwargs).tensors

    fresh = load(0, "a")
    (path,) = (tmp_path / "a" / "domains").iterdir()
    written = path.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = load(0, "a")
    assert path.stat().st_mtime_ns == written  # read back, not regenerated
    fresh_elsewhere = load(0, "b")
    other = load(1, "a")
    for same in (hit, fresh_elsewhere):
        assert torch.equal(fresh[0], same[0]) and torch.equal(fresh[1], same[1])
    assert not torch.equal(fresh[0], other[0])
    assert len(_cache_files(tmp_path / "a")) == 2


def test_every_generation_parameter_gets_its_own_cache_file(tmp_path):
    base = {"split": "test", "image_size": 16, "count": 6, "corruption": "fog", "severity": 2, "cache_dir": tmp_path}
    variants = [{}, {"split": "val"}, {"image_size": 12}, {"count": 5}, {"corruption": "snow"}, {"severity": 3}, {"seed": 4}]
    for change in variants:
        load_domain("digits_c", **{**base, **change})
    files = _cache_files(tmp_path)
    assert len(files) == len(variants)
    assert all(name.startswith("digits_c-") and name.endswith(".pt") for name in files)  # no temporary files left
    payload = torch.load(tmp_path / "domains" / files[0], weights_only=True)
    assert payload["key"]["version"] == CACHE_VERSION and payload["images"].dtype == torch.uint8


def test_unreadable_cache_file_is_regenerated_with_a_warning(tmp_path):
    first = load_domain("digits_m", split="test", image_size=16, count=4, cache_dir=tmp_path).tensors[0]
    (path,) = (tmp_path / "domains").iterdir()
    path.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = load_domain("digits_m", split="test", image_size=16, count=4, cache_dir=tmp_path).tensors[0]
    assert torch.equal(first, again)
    assert torch.equal(load_domain("digits_m", split="test", image_size=16, count=4, cache_dir=tmp_path).tensors[0], first)


def test_cache_folder_comes_from_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMAPPS_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    load_domain("syndigits", image_size=16, count=3)
    assert len(_cache_files(tmp_path / "env")) == 1
    monkeypatch.delenv("NORMAPPS_CACHE")
    assert default_cache_dir() == default_cache_dir(None) and default_cache_dir().parts[-2:] == (".cache", "normapps")


def test_digits_share_the_datamodule_split_for_every_seed():
    module = DigitsDataModule()
    module.setup()
    for seed in (0, 3):
        images, labels = load_domain("digits", split="test", seed=seed).tensors
        assert torch.equal(labels, module.splits["test"].tensors[1])
    sizes = {split: len(load_domain("digits", split=split, image_size=8)) for split in ("train", "val", "test")}
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    assert torch.equal(images[:, 0], images[:, 2])  # grey repeated over the channels


def test_digits_m_and_digits_c_keep_the_digits_and_their_labels_but_change_the_images(tmp_path):
    clean, labels = load_domain("digits", split="test", count=20, seed=2).tensors
    blended, blended_labels = load_domain("digits_m", split="test", count=20, seed=2, cache_dir=tmp_path).tensors
    corrupted, corrupted_labels = load_domain(
        "digits_c", split="test", count=20, seed=2, corruption="contrast", severity=5, cache_dir=tmp_path
    ).tensors
    assert torch.equal(labels, blended_labels) and torch.equal(labels, corrupted_labels)
    assert (blended - clean).abs().mean() > 0.2
    assert not torch.equal(blended[:, 0], blended[:, 1])  # colour, not grey
    assert (corrupted - clean).abs().mean() > 0.05


def test_a_subset_is_seeded_and_smaller_than_the_split():
    first, again, other = (load_domain("digits", split="val", count=30, seed=s).tensors[1] for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(ValueError, match="count=400 exceeds the 360 images of digits val"):
        load_domain("digits", split="val", count=400)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "message"),
    [
        ("mnistm", {}, ValueError, "unknown domain 'mnistm'; expected one of syndigits, digits, digits_m, digits_c, mnist"),
        ("digits", {"split": "training"}, ValueError, "split must be one of train, val, test, got 'training'"),
        ("digits", {"image_size": 4}, ValueError, "image_size must be an int >= 8"),
        ("digits", {"count": 0}, ValueError, "count must be a positive int"),
        ("digits", {"seed": 1.5}, ValueError, "seed must be an int"),
        ("digits_c", {}, ValueError, "digits_c needs corruption= and severity="),
        ("digits_c", {"corruption": "haze", "severity": 1}, ValueError, "unknown corruption 'haze'"),
        ("digits_c", {"corruption": "fog", "severity": 6}, ValueError, "severity must be an int from 1 to 5"),
        ("digits", {"corruption": "fog", "severity": 1}, ValueError, "apply only to digits_c and cifar10_c, not to digits"),
        ("syndigits", {"root": "/data"}, ValueError, "root= applies only to mnist, usps, svhn, cifar10 and cifar10_c, not to syndigits"),
        ("./no/such/folder", {}, FileNotFoundError, "image folder ./no/such/folder does not exist; expected <folder>/<class>/<image>"),
    ],
)
def test_bad_arguments_raise_clear_errors(name, kwargs, error, message, tmp_path):
    with pytest.raises(error, match=message):
        load_domain(name, cache_dir=tmp_path, **kwargs)
    assert _cache_files(tmp_path) == []
