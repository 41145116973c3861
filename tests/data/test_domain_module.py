"""Tests of DomainDataModule: source and target data sets by name, plain and paired."""

import pytest
import torch

from normapps.data import load_domain
from normapps.tasks.adaptation import DomainDataModule


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMAPPS_CACHE", str(tmp_path))


def test_train_and_val_are_labelled_source_and_test_is_the_target_test_split():
    dm = DomainDataModule("digits", "digits_c", image_size=16, batch_size=8, target_corruption="fog", target_severity=5, count=24)
    assert dm.num_classes == 10
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and y.shape == (8,) and y.dtype == torch.long
    assert len(dm.train_dataloader()) == 3  # 24 images, last incomplete batch dropped (none here)
    val_x, _ = load_domain("digits", "val", image_size=16, count=24).tensors
    assert torch.equal(torch.cat([b[0] for b in dm.val_dataloader()]), val_x)
    dm.setup("test")
    test_x, test_y = load_domain("digits_c", "test", image_size=16, count=24, corruption="fog", severity=5).tensors
    assert torch.equal(torch.cat([b[0] for b in dm.test_dataloader()]), test_x)
    assert torch.equal(torch.cat([b[1] for b in dm.predict_dataloader()]), test_y)


def test_count_above_a_split_size_keeps_the_whole_split():
    dm = DomainDataModule("digits", "digits", image_size=8, count=500)
    dm.setup("test")
    assert len(dm.splits["test"]) == 360  # digits has 360 test images


def test_paired_zips_labelled_source_with_target_train_and_validates_on_the_target():
    dm = DomainDataModule("digits", "digits_m", image_size=16, batch_size=8, count=16, paired=True)
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    source_x, source_y = batch["source"]
    target_x = batch["target"][0]
    assert source_x.shape == target_x.shape == (8, 3, 16, 16) and source_y.shape == (8,)
    target_val, _ = load_domain("digits_m", "val", image_size=16, count=16).tensors
    assert torch.equal(torch.cat([b[0] for b in dm.val_dataloader()]), target_val)
    assert len(dm.test_dataloader()) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "digits_c"}, "needs target_corruption and target_severity"),
        ({"target": "digits_m", "target_corruption": "fog"}, "apply to a digits_c or cifar10_c target"),
        ({"target": "digits_c", "target_corruption": "sunburn", "target_severity": 5}, "unknown corruption"),
        ({"source": "digits_c"}, "corrupted test domain"),
        ({"count": 0}, "count must be a positive int"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_arguments_are_refused_before_loading(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DomainDataModule(**kwargs)


def test_dataloader_before_setup_says_to_call_setup():
    with pytest.raises(RuntimeError, match="call setup"):
        DomainDataModule().test_dataloader()
