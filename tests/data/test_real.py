from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from normapps.data import load_domain, real


def _write_images(folder, classes=("cat", "dog"), per_class=3):
    modes = ("RGB", "L", "RGBA")
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            size = (10 + 3 * i, 14)
            Image.new(modes[i % 3], size, color=40 * (label + 1) if modes[i % 3] == "L" else (40 * (label + 1),) * len(modes[i % 3])).save(
                folder / name / f"{i}.png"
            )


def test_image_folder_is_the_test_split_as_rgb_floats_of_one_size(tmp_path):
    _write_images(tmp_path / "target")
    data = load_domain(tmp_path / "target", split="test", image_size=16)
    images, labels = next(iter(DataLoader(data, batch_size=6)))
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(load_domain(str(tmp_path / "target"), split="test", count=4)) == 4


def test_image_folder_with_split_folders(tmp_path):
    _write_images(tmp_path / "data" / "train", per_class=2)
    _write_images(tmp_path / "data" / "test", per_class=1)
    assert len(load_domain(tmp_path / "data", split="train")) == 4
    assert len(load_domain(tmp_path / "data", split="test")) == 2
    with pytest.raises(FileNotFoundError, match=r"split folders \['train', 'test'\] but no 'val'"):
        load_domain(tmp_path / "data", split="val")


def test_image_folder_without_split_folders_is_only_a_test_set(tmp_path):
    _write_images(tmp_path / "target")
    with pytest.raises(ValueError, match="no train/val/test subfolders, so it is one data set served as split='test'"):
        load_domain(tmp_path / "target")


def test_image_folder_takes_no_root(tmp_path):
    _write_images(tmp_path / "target")
    with pytest.raises(ValueError, match="root= applies only to .*, not to an image folder"):
        load_domain(tmp_path / "target", split="test", root=tmp_path)


def test_image_folder_without_images_names_the_layout(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no images found in .*empty: expected .*empty/<class>/<image> or .*empty/<image>"):
        load_domain(tmp_path / "empty", split="test")


def test_flat_image_folder_is_unlabelled(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), color=(10 * i, 0, 0)).save(tmp_path / "flat" / f"{i}.png")
    (tmp_path / "flat" / "readme.txt").write_text("ignored: not an image extension")
    data = load_domain(tmp_path / "flat", split="test", image_size=8)
    assert len(data) == 3 and data.classes == []
    assert [label for _, label in data] == [real.UNLABELLED] * 3
    assert torch.allclose(data[2][0][0], torch.full((8, 8), 20 / 255))


def test_corrupt_image_files_are_skipped_with_a_count(tmp_path):
    _write_images(tmp_path / "target")
    (tmp_path / "target" / "cat" / "junk.png").write_bytes(b"not a png")
    whole = (tmp_path / "target" / "dog" / "0.png").read_bytes()
    (tmp_path / "target" / "dog" / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.warns(UserWarning, match=r"skipped 2 of 8 image files in .*target that could not be read: junk.png \(Unidentified"):
        data = load_domain(tmp_path / "target", split="test")
    assert len(data) == 6 and [Path(path).name for path, _ in data.skipped] == ["junk.png", "cut.png"]
    assert [label for _, label in data] == [0, 0, 0, 1, 1, 1]


def test_a_folder_of_only_corrupt_images_is_an_error(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"none of the 1 image files in .*target could be read as an image \(e.g. .*a.jpg: "):
        load_domain(tmp_path / "target", split="test")


def test_an_unreadable_folder_is_a_clear_error(tmp_path, monkeypatch):
    _write_images(tmp_path / "target")

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(real.os, "scandir", refuse)
    with pytest.raises(OSError, match="cannot read image folder .*target: Permission denied"):
        load_domain(tmp_path / "target", split="test")


def _write_cifar10_c(folder, corruption="fog", per_severity=4):
    folder.mkdir(parents=True, exist_ok=True)
    images = np.arange(5 * per_severity, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), dtype=np.uint8)
    np.save(folder / f"{corruption}.npy", images)
    np.save(folder / "labels.npy", np.arange(5 * per_severity) % 10)


def test_cifar10_c_files_give_one_severity_block(tmp_path):
    _write_cifar10_c(tmp_path / "CIFAR-10-C")
    data = load_domain("cifar10_c", split="test", corruption="fog", severity=3, root=tmp_path / "CIFAR-10-C")
    assert len(data) == 4
    image, label = data[1]
    assert image.shape == (3, 32, 32) and torch.allclose(image, torch.full_like(image, 9 / 255))
    assert label == 9
    small = load_domain("cifar10_c", split="test", corruption="fog", severity=1, image_size=16, root=tmp_path / "CIFAR-10-C")
    assert small[0][0].shape == (3, 16, 16)


def test_cifar10_c_default_root_is_in_the_cache_folder(tmp_path):
    _write_cifar10_c(tmp_path / "data" / "CIFAR-10-C", corruption="saturate")
    data = load_domain("cifar10_c", split="test", corruption="saturate", severity=5, cache_dir=tmp_path, count=2)
    assert len(data) == 2


def test_cifar10_c_missing_file_lists_what_was_found(tmp_path):
    _write_cifar10_c(tmp_path, corruption="fog")
    with pytest.raises(FileNotFoundError, match=r"snow.npy not in .* \(found \['fog.npy', 'labels.npy'\]\); expected .*snow.npy"):
        load_domain("cifar10_c", split="test", corruption="snow", severity=1, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="CIFAR-10-C folder .*nowhere does not exist"):
        load_domain("cifar10_c", split="test", corruption="snow", severity=1, root=tmp_path / "nowhere")


def test_cifar10_c_wrong_layout_and_split(tmp_path):
    np.save(tmp_path / "fog.npy", np.zeros((7, 32, 32), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(7))
    with pytest.raises(ValueError, match=r"holds uint8 \(7, 32, 32\)"):
        load_domain("cifar10_c", split="test", corruption="fog", severity=1, root=tmp_path)
    with pytest.raises(ValueError, match="only split='test'"):
        load_domain("cifar10_c", split="train", corruption="fog", severity=1, root=tmp_path)


def _write_idx(path, array):
    kind = {3: 0x0803, 1: 0x0801}[array.ndim]
    header = np.array([kind, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_a_local_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 20), ("t10k", 5)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", np.full((count, 28, 28), 255))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    test = load_domain("mnist", split="test", root=tmp_path)
    image, label = test[3]
    assert len(test) == 5 and image.shape == (3, 32, 32) and label == 3
    assert torch.allclose(image, torch.ones_like(image))
    train, val = (load_domain("mnist", split=s, root=tmp_path) for s in ("train", "val"))
    assert (len(train), len(val)) == (18, 2)
    assert not set(train.indices) & set(val.indices)


@pytest.mark.parametrize(
    ("name", "layout"),
    [("mnist", "MNIST/raw/"), ("usps", "usps.bz2"), ("svhn", "train_32x32.mat"), ("cifar10", "cifar-10-batches-py/")],
)
def test_missing_torchvision_data_names_the_layout_and_does_not_download(name, layout, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{name} not found under .*: expected <root>/{layout}.*pass download=True"):
        load_domain(name, split="test", root=tmp_path)
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "MNIST"])  # nothing fetched
