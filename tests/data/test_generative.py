import pytest
import torch
from PIL import Image

from normapps.data import load_domain
from normapps.data.generative import GenerativeDataModule


def test_digits_batches_are_the_domain_images_scaled_to_minus_one_one():
    dm = GenerativeDataModule("digits", image_size=16, batch_size=8, count=20, val_count=12)
    dm.setup("fit")
    images, labels = load_domain("digits", "train", 16, 0, 20).tensors
    torch.testing.assert_close(dm.splits["train"].tensors[0], images * 2 - 1)
    assert torch.equal(dm.splits["train"].tensors[1], labels)
    train = list(dm.train_dataloader())
    assert len(train) == 2 and all(x.shape == (8, 3, 16, 16) and y.dtype == torch.int64 for x, y in train)  # 20 // 8, last dropped
    val = list(dm.val_dataloader())
    assert [len(y) for _, y in val] == [8, 4]
    assert dm.num_classes == 10
    assert dm.hparams["domain"] == "digits" and dm.hparams["count"] == 20


def test_syndigits_has_ten_classes_and_symmetric_range(tmp_path):
    dm = GenerativeDataModule("syndigits", image_size=16, batch_size=4, count=8, val_count=4, cache_dir=str(tmp_path))
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert dm.num_classes == 10 and x.min() >= -1 and x.max() <= 1 and x.min() < 0


def _folder(root, classes, per_class=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10, 10), (40 * i, 100, 200)).save(root / c / f"{i}.png")
    return root


def test_labelled_image_folder_counts_its_classes_and_serves_all_images(tmp_path):
    dm = GenerativeDataModule(str(_folder(tmp_path / "imgs", ["cat", "dog", "owl"])), image_size=8, batch_size=4)
    assert dm.num_classes == 3
    dm.setup()
    assert len(dm.splits["train"]) == len(dm.splits["val"]) == 9
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and x.min() >= -1 and x.max() <= 1 and set(y.tolist()) <= {0, 1, 2}


def test_flat_image_folder_is_one_unlabelled_class(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(4):
        Image.new("RGB", (10, 10), (50 * i, 0, 0)).save(root / f"{i}.png")
    dm = GenerativeDataModule(str(root), image_size=8, batch_size=2)
    assert dm.num_classes == 1


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        GenerativeDataModule(batch_size=0)
    with pytest.raises(ValueError, match="corrupted test set"):
        GenerativeDataModule("digits_c")
    with pytest.raises(ValueError, match="unknown domain 'mnst'"):
        GenerativeDataModule("mnst").setup()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GenerativeDataModule(str(tmp_path / "missing")).setup()
    dm = GenerativeDataModule("digits", image_size=16, batch_size=64, count=10)
    with pytest.raises(RuntimeError, match="call setup"):
        dm.train_dataloader()
    dm.setup()
    with pytest.raises(ValueError, match="fewer than batch_size=64"):
        dm.train_dataloader()
