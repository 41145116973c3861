import pytest
import torch

from normapps.data import DigitsDataModule


def test_split_sizes_are_60_20_20_and_cover_the_data_set():
    indices = DigitsDataModule().split_indices()
    sizes = {name: len(index) for name, index in indices.items()}
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    assert torch.cat(list(indices.values())).sort().values.tolist() == list(range(DigitsDataModule.num_samples))


def test_splits_do_not_overlap():
    indices = {name: set(index.tolist()) for name, index in DigitsDataModule(seed=3).split_indices().items()}
    assert not indices["train"] & indices["val"]
    assert not indices["train"] & indices["test"]
    assert not indices["val"] & indices["test"]


def test_split_is_determined_by_seed():
    first, again, other = (DigitsDataModule(seed=s).split_indices() for s in (0, 0, 1))
    for name in first:
        assert torch.equal(first[name], again[name])
    assert not torch.equal(first["test"], other["test"])


def test_splits_are_stratified_by_class():
    dm = DigitsDataModule()
    dm.setup()
    for dataset in dm.splits.values():
        counts = torch.bincount(dataset.tensors[1], minlength=10).float()
        share = counts / counts.sum()
        assert torch.all((share - 0.1).abs() < 0.02)


@pytest.mark.parametrize("image_size", [16, 8, 32])
def test_training_images_are_standardized_at_the_chosen_size(image_size):
    dm = DigitsDataModule(image_size=image_size)  # 16 is the default size
    dm.setup()
    train = dm.splits["train"].tensors[0]
    assert train.shape == (1077, 1, image_size, image_size)
    assert train.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert train.std().item() == pytest.approx(1.0, abs=1e-3)
    held_out = torch.cat([dm.splits["val"].tensors[0], dm.splits["test"].tensors[0]])
    assert held_out.mean().item() != pytest.approx(0.0, abs=1e-4)  # only the training split sets the constants


def test_standardization_constants_depend_on_training_images_only():
    from normapps.data.digits import _load_images

    dm = DigitsDataModule()
    raw, _ = _load_images(dm.image_size)
    train = raw[dm.split_indices()["train"]]
    assert dm.mean == pytest.approx(train.mean().item(), rel=1e-5)
    assert dm.std == pytest.approx(train.std(correction=0).item(), rel=1e-5)
    assert dm.mean != pytest.approx(raw.mean().item(), rel=1e-4)
    # Changing test images does not move the constants: another split does.
    other = DigitsDataModule(seed=1)
    assert other.mean != dm.mean
    assert DigitsDataModule(batch_size=8).mean == dm.mean  # cached, independent of the loader settings
    assert DigitsDataModule(image_size=8).std != pytest.approx(dm.std, rel=1e-3)  # computed at the chosen size


def test_dataloaders_give_batches_of_upsampled_images():
    dm = DigitsDataModule(batch_size=32, image_size=32)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.long
    assert dm.num_classes == 10
    assert sum(len(b[1]) for b in dm.train_dataloader()) == 1077 // 32 * 32  # last partial batch dropped
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 360


def test_predict_dataloader_is_the_test_set_in_order():
    dm = DigitsDataModule(batch_size=100)
    dm.setup()
    predict = torch.cat([y for _, y in dm.predict_dataloader()])
    test = torch.cat([y for _, y in dm.test_dataloader()])
    assert torch.equal(predict, test)


def test_dataloader_before_setup_raises():
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"image_size": 4}, "image_size must be an int >= 8"),
        ({"val_fraction": 1.5}, "val_fraction must be in"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)
