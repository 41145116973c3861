"""Tests of ``normapps generate`` (normapps.cli.generate) on small generator files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning import Trainer

import normapps
from normapps.cli.generate import main
from normapps.data.generative import GenerativeDataModule
from normapps.metrics.features import checkpoint_path as features_path
from normapps.tasks.gan import GANTask
from normapps.tasks.gan.checkpoints import save_generator

SMALL = {"width": 0.0625, "image_size": 16, "z_dim": 16}
CELL = SMALL["image_size"] + 2  # make_grid's 2-pixel padding
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generators")
    torch.manual_seed(0)
    conditional = GANTask(conditional=True, num_classes=3, **SMALL)
    unconditional = GANTask(conditional=False, **SMALL)
    with torch.no_grad():  # untrained CBN has the same (gamma, beta) for every class, and the images are flat grey
        for p in [*conditional.generator.parameters(), *unconditional.generator.parameters()]:
            p.add_(0.5 * torch.randn_like(p))
    return {"cond": save_generator(folder / "cond.pt", conditional, precision="float32"),
            "uncond": save_generator(folder / "uncond.pt", unconditional, precision="float32")}


def _grid(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _cells(path, rows: int, columns: int) -> np.ndarray:
    """The images of a grid ``(rows, columns, S, S, 3)`` as uint8."""
    grid = _grid(path)
    assert grid.shape == (rows * CELL + 2, columns * CELL + 2, 3)
    s = SMALL["image_size"]
    return np.stack([np.stack([grid[2 + r * CELL: 2 + r * CELL + s, 2 + c * CELL: 2 + c * CELL + s] for c in range(columns)])
                     for r in range(rows)])


def _run(files, tmp_path, *args, name="grid.png", model="cond"):
    out = tmp_path / name
    return main(["--ckpt", str(files[model]), *map(str, args), "--out", str(out)]), out


def test_without_a_class_each_row_is_one_class(files, tmp_path, capsys):
    code, out = _run(files, tmp_path, "--n", 5)
    assert code == 0
    rows = _cells(out, 3, 2).astype(int)  # ceil(5 / 3) = 2 per class, 3 classes
    assert f"wrote {out}: 6 samples, 2 of each of the 3 classes" in capsys.readouterr().out
    # The same seed draws the same six latents; with --class 1 all six are of class 1: images 2 and 3 are row 1.
    code, single = _run(files, tmp_path, "--n", 6, "--class", 1, "--nrow", 6, name="one.png")
    assert code == 0
    ones = _cells(single, 1, 6)[0].astype(int)
    assert np.abs(ones[2:4] - rows[1]).max() <= 1
    assert np.abs(ones[0:2] - rows[0]).max() > 1  # same latents, another class: other images


def test_a_class_grid_has_nrow_columns_and_is_seeded(files, tmp_path):
    code, out = _run(files, tmp_path, "--n", 5, "--class", 2, "--nrow", 2, "--seed", 3)
    assert code == 0
    _cells(out, 3, 2)
    code, again = _run(files, tmp_path, "--n", 5, "--class", 2, "--nrow", 2, "--seed", 3, name="again.png")
    assert code == 0 and again.read_bytes() == out.read_bytes()
    code, other = _run(files, tmp_path, "--n", 5, "--class", 2, "--nrow", 2, "--seed", 4, name="other.png")
    assert code == 0 and other.read_bytes() != out.read_bytes()
    code, square = _run(files, tmp_path, "--n", 5, name="square.png", model="uncond")
    assert code == 0
    _cells(square, 2, 3)  # ceil(sqrt(5)) = 3 columns


def test_morph_rows_go_from_class_a_to_class_b(files, tmp_path):
    code, morph = _run(files, tmp_path, "--morph", 0, 2, "--n", 2, "--steps", 4)
    assert code == 0
    rows = _cells(morph, 2, 4).astype(int)
    # The same seed draws the same two latents: the ends of the rows are the class-0 and class-2 samples.
    for column, cls in ((0, 0), (3, 2)):
        code, ends = _run(files, tmp_path, "--class", cls, "--n", 2, "--nrow", 1, name=f"class{cls}.png")
        assert code == 0
        assert np.abs(rows[:, column] - _cells(ends, 2, 1)[:, 0].astype(int)).max() <= 1
    assert np.abs(rows[:, 1] - rows[:, 0]).max() > 0


def test_interpolation_rows_start_at_the_first_latent_and_keep_the_class(files, tmp_path):
    code, rows = _run(files, tmp_path, "--interpolate", "--class", 1, "--n", 2, "--steps", 3)
    assert code == 0
    cells = _cells(rows, 2, 3).astype(int)
    code, start = _run(files, tmp_path, "--class", 1, "--n", 2, "--nrow", 1, name="start.png")
    assert code == 0
    assert np.abs(cells[:, 0] - _cells(start, 2, 1)[:, 0].astype(int)).max() <= 1
    code, plain = _run(files, tmp_path, "--interpolate", "--n", 3, name="plain.png", model="uncond")
    assert code == 0
    _cells(plain, 3, 8)


def test_an_existing_output_is_not_replaced_without_overwrite(files, tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"mine")
    code, _ = _run(files, tmp_path, "--n", 4)
    assert code == 2 and out.read_bytes() == b"mine"
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["--ckpt", str(files["cond"]), "--n", "4", "--out", str(out), "--overwrite"]) == 0
    _cells(out, 3, 2)


@pytest.mark.parametrize(("model", "args", "message"), [
    ("uncond", ["--class", "1"], "needs a class-conditional generator"),
    ("uncond", ["--morph", "0", "1"], "needs a class-conditional generator"),
    ("cond", ["--class", "3"], "--class 3 is out of range: the generator has classes 0 to 2"),
    ("cond", ["--morph", "0", "-1"], "out of range"),
    ("cond", ["--n", "0"], "expected an integer >= 1, got 0"),
    ("cond", ["--morph", "0", "1", "--steps", "1"], "expected an integer >= 2"),
    ("cond", ["--morph", "0", "1", "--interpolate"], "exclude each other"),
    ("cond", ["--class", "0", "--morph", "0", "1"], "not allowed with"),
    ("cond", ["--steps", "4"], "--steps sets the columns"),
    ("cond", ["--n", "4", "--nrow", "2"], "--nrow sets the columns"),
])
def test_bad_options_are_one_line_and_write_nothing(files, tmp_path, capsys, model, args, message):
    code, out = _run(files, tmp_path, *args, model=model)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("normapps generate: error:") and err.count("\n") == 1
    assert not out.exists()


def test_bad_checkpoints_and_outputs_are_refused(files, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    cases = [(tmp_path / "missing.pt", "grid.png", "not found"),
             (text, "grid.png", "not a readable torch checkpoint"),
             (files["cond"], "grid.gif", "unsupported suffix"),
             (files["cond"], "notes.txt/grid.png", "is a file, not a folder")]
    if features_path().is_file():
        cases.append((features_path(), "grid.png", "not a normapps generator file"))
    for ckpt, out, message in cases:
        assert main(["--ckpt", str(ckpt), "--out", str(tmp_path / out)]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_lightning_checkpoint_of_gantask_is_accepted(tmp_path):
    dm = GenerativeDataModule("digits", image_size=16, batch_size=4, count=16, val_count=4)
    task = GANTask(conditional=True, num_classes=10, ema=0.9, n_dis=1, **SMALL)
    trainer = Trainer(default_root_dir=tmp_path, max_steps=2, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, datamodule=dm)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    assert main(["--ckpt", str(ckpt), "--n", "10", "--out", str(tmp_path / "grid.png")]) == 0
    _cells(tmp_path / "grid.png", 10, 1)


@pytest.mark.skipif(not (Path(normapps.__file__).resolve().parents[1] / "checkpoints" / "gan_digits.pt").is_file(),
                    reason="shipped checkpoints/gan_digits.pt missing")
def test_the_shipped_generator_is_the_default(tmp_path, capsys):
    out = tmp_path / "threes.png"
    assert main(["--class", "3", "--n", "4", "--out", str(out)]) == 0
    assert "4 samples of class 3, a 2 x 2 grid of 32x32 images" in capsys.readouterr().out
    assert Image.open(out).size == (2 * 34 + 2, 2 * 34 + 2)
