import os

import numpy as np
import pytest
import torch
from matplotlib.ft2font import FT2Font

from normapps.data import domains as domains_module
from normapps.data import font_split, load_domain
from normapps.data.syndigits import digit_fonts, render_syndigits


def _family(path):
    return FT2Font(os.fspath(path)).family_name


def test_train_and_held_out_fonts_are_disjoint_down_to_the_family():
    split = font_split()
    assert split["train"] and split["held_out"]
    assert not set(split["train"]) & set(split["held_out"])
    assert not {_family(p) for p in split["train"]} & {_family(p) for p in split["held_out"]}
    every_font = {path for paths in digit_fonts().values() for path in paths}
    assert set(split["train"]) | set(split["held_out"]) == every_font


def test_symbol_fonts_without_digits_are_left_out():
    names = {path.name for paths in digit_fonts().values() for path in paths}
    assert "DejaVuSans.ttf" in names
    assert not names & {"cmsy10.ttf", "cmex10.ttf", "STIXSizOneSymReg.ttf", "LastResortHE-Regular.ttf"}


def test_split_rule_is_fixed():
    assert font_split.__wrapped__() == font_split()


@pytest.mark.parametrize(("count", "size"), [(7, 20), (20, 48)])
def test_any_count_and_size(count, size):
    images, labels = render_syndigits(count, size, font_split()["train"], np.random.default_rng(0))
    assert images.shape == (count, 3, size, size) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.shape == (count,) and labels.dtype == torch.int64


def test_classes_are_balanced():
    _, labels = render_syndigits(30, 16, font_split()["train"], np.random.default_rng(0))
    assert torch.bincount(labels, minlength=10).tolist() == [3] * 10


def test_rendering_is_fixed_by_the_generator_seed():
    fonts = font_split()["train"]
    first, again, other = (render_syndigits(10, 16, fonts, np.random.default_rng(s)) for s in (1, 1, 2))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_test_split_draws_only_held_out_fonts(monkeypatch, tmp_path):
    used = {}

    def recording(count, image_size, fonts, rng):
        used[len(used)] = fonts
        return render_syndigits(count, image_size, fonts, rng)

    monkeypatch.setattr(domains_module, "render_syndigits", recording)
    for split in ("train", "val", "test"):
        load_domain("syndigits", split=split, image_size=16, count=4, cache_dir=tmp_path)
    assert used == {0: font_split()["train"], 1: font_split()["train"], 2: font_split()["held_out"]}
