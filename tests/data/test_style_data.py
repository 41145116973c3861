import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from normapps.data import StyleDataModule, content_images, content_names, content_paths, style_image, style_names
from normapps.data import style as style_module


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the embedded style data tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_content_split_is_fixed_disjoint_and_documented():
    train, test = content_names("train"), content_names("test")
    assert set(train).isdisjoint(test)
    assert content_names() == train + test
    assert {"motorcycle_left", "motorcycle_right"} <= set(train)  # the stereo pair stays on one side
    for name in train + test:
        assert name in content_images.__doc__
    assert list(content_paths("test")) == list(test)


def test_content_images_are_bundled_colour_photos(no_network):
    images = content_images("test")
    assert len(images) == len(content_names("test"))
    for image, path in zip(images, content_paths("test").values()):
        assert path.is_file()
        assert image.dim() == 3 and image.shape[0] == 3 and min(image.shape[1:]) >= 256
        assert image.min() >= 0 and image.max() <= 1
        assert (image - image.mean(0, keepdim=True)).abs().mean() > 0.02  # colour, not grey
    resized = content_images("test", size=64)
    assert [min(image.shape[1:]) for image in resized] == [64] * len(resized)
    torch.testing.assert_close(content_images("test", size=64), resized)
    resized[0].zero_()
    assert content_images("test", size=64)[0].max() > 0  # callers get copies
    with pytest.raises(ValueError, match="content split must be 'train' or 'test'"):
        content_images("val")


def test_style_splits_are_disjoint_and_cover_every_style():
    train, held_out = style_names("train"), style_names("held_out")
    assert set(train).isdisjoint(held_out) and style_names() == train + held_out
    assert len(style_names()) >= 8 and len(held_out) >= 2
    assert {"brick", "grass", "gravel"} <= set(style_names())  # from scikit-image's textures
    with pytest.raises(ValueError, match="style split must be one of 'train', 'held_out'"):
        style_names("test")


def test_style_images_are_colourful_textured_and_deterministic_per_seed(no_network, one_thread):
    images = {name: style_image(name, size=64) for name in style_names()}
    for name, image in images.items():
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        assert image.std() > 0.15, name  # strongly textured
        assert (image - image.mean(0, keepdim=True)).abs().mean() > 0.05, name  # colourful
        style_module._style_image.cache_clear()
        torch.testing.assert_close(style_image(name, size=64), image, rtol=0, atol=0)
        assert (style_image(name, size=64, seed=1) - image).abs().mean() > 0.1, name
    names = list(images)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert (images[first] - images[second]).abs().mean() > 0.1, (first, second)


def test_style_image_is_the_same_picture_at_every_size(one_thread):
    for name in style_names():
        small = style_image(name, size=64)
        large = F.interpolate(style_image(name, size=128)[None], size=64, mode="bilinear", antialias=True)[0]
        other_seed = style_image(name, size=64, seed=1)
        assert (small - large).abs().mean() < 0.5 * (small - other_seed).abs().mean(), name


def test_style_image_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown style 'monet'; expected one of stripes, mosaic"):
        style_image("monet")
    with pytest.raises(ValueError, match="size must be an int >= 16"):
        style_image("dots", size=8)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        style_image("dots", seed=-1)


def _small_module(**kwargs):
    options = dict(image_size=32, resize=48, batch_size=4, steps_per_epoch=3)
    options.update(kwargs)
    module = StyleDataModule(**options)
    module.setup("fit")
    return module


def test_embedded_batches_have_the_documented_keys_shapes_and_ranges(no_network):
    module = _small_module()
    batches = list(module.train_dataloader())
    assert len(batches) == 3
    batch = batches[0]
    assert set(batch) == {"content", "style", "style_index"}
    assert batch["content"].shape == batch["style"].shape == (4, 3, 32, 32)
    assert batch["content"].dtype == torch.float32 and batch["style_index"].dtype == torch.int64
    assert 0 <= batch["content"].min() and batch["content"].max() <= 1
    assert module.num_styles == len(style_names("train")) and module.style_labels == style_names("train")
    indices = torch.cat([b["style_index"] for b in batches])
    assert 0 <= indices.min() and indices.max() < module.num_styles
    # A style crop comes from the style its index names.
    crop, index = batch["style"][0], int(batch["style_index"][0])
    full = style_image(module.style_labels[index], size=48)
    windows = full.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 17, 17, 32, 32)
    assert (windows - crop[:, None, None]).abs().amax(dim=(0, 3, 4)).min() == 0


def test_training_draws_depend_only_on_the_seed_and_the_epoch():
    first = next(iter(_small_module(seed=3).train_dataloader()))
    again = next(iter(_small_module(seed=3).train_dataloader()))
    other = next(iter(_small_module(seed=4).train_dataloader()))
    for key in first:
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    assert not torch.equal(first["content"], other["content"])
    loader = _small_module(seed=3).train_dataloader()
    loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))["content"], first["content"])


def test_validation_pairs_held_out_photos_with_every_training_style_centre_cropped():
    module = _small_module(batch_size=8)
    batches = list(module.val_dataloader())
    pairs = len(content_names("test")) * module.num_styles
    assert sum(len(b["style_index"]) for b in batches) == pairs
    assert torch.cat([b["style_index"] for b in batches]).bincount().tolist() == [len(content_names("test"))] * module.num_styles
    again = next(iter(_small_module(batch_size=8, seed=5).val_dataloader()))
    torch.testing.assert_close(again["content"], batches[0]["content"], rtol=0, atol=0)
    assert len(_small_module(val_pairs=5).val_set) == 5


def _write_folder(folder, sizes, modes=("RGB", "L", "RGBA")):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(modes[i % len(modes)]).save(folder / f"{i:02d}.png")


def test_folder_sources_with_file_indices_as_style_index(tmp_path):
    _write_folder(tmp_path / "content", [(70, 50), (40, 90)], modes=("RGB", "L"))
    _write_folder(tmp_path / "styles", [(64, 64), (100, 40), (50, 50)], modes=("RGB",))
    _write_folder(tmp_path / "val", [(60, 60)], modes=("RGB",))
    module = _small_module(content=str(tmp_path / "content"), style=str(tmp_path / "styles"), val_content=str(tmp_path / "val"))
    assert module.num_styles == 3 and module.style_labels == ("00.png", "01.png", "02.png")
    batches = list(module.train_dataloader())
    assert batches[0]["content"].shape == (4, 3, 32, 32)
    assert torch.cat([b["style_index"] for b in batches]).max() < 3
    val = next(iter(module.val_dataloader()))
    assert val["content"].shape == (3, 3, 32, 32) and val["style_index"].tolist() == [0, 1, 2]
    assert module.hparams["style"] == str(tmp_path / "styles")


def test_datamodule_validates_its_arguments(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files in"):
        StyleDataModule(content=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StyleDataModule(style=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"resize \(64\) must be at least image_size \(128\)"):
        StyleDataModule(resize=64)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        StyleDataModule(batch_size=0)
    with pytest.raises(ValueError, match=r"unknown styles \['monet'\]"):
        StyleDataModule(styles=["dots", "monet"])
    with pytest.raises(ValueError, match="cannot be combined with a style folder"):
        StyleDataModule(styles=["dots"], style=str(tmp_path))
    with pytest.raises(RuntimeError, match="call setup"):
        StyleDataModule().train_dataloader()


def test_chosen_styles_and_recorded_settings():
    module = _small_module(styles=["dots", "gravel"])
    assert module.style_labels == ("dots", "gravel") and module.num_styles == 2
    assert module.hparams["_class_path"] == "normapps.data.style.StyleDataModule"
    assert module.hparams["image_size"] == 32 and module.hparams["styles"] == ["dots", "gravel"]
