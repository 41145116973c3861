"""``normapps stylize``: outputs, controls passed to the stylizer, folders, refusals and bad input.

Most tests run a small stand-in for the style checkpoints (:class:`FakeStylizer`: AdaIN on the pixels,
recording every call); one runs the shipped AdaIN checkpoint end to end.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import normapps.cli.stylize as stylize
from normapps.cli import main
from normapps.data.images import load_image
from normapps.data.style import content_paths, style_image

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
#: Mean colour of each trained style of the fake cin / fast stylizers.
TRAINED = {"ink": (0.1, 0.1, 0.3), "sun": (0.9, 0.7, 0.1)}


def moments(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``(N, 3, H, W)``, shaped ``(N, 3, 1, 1)``."""
    return image.mean((2, 3), keepdim=True), image.std((2, 3), keepdim=True) + 1e-5


class FakeStylizer(nn.Module):
    """The checkpoints' Stylizer interface with AdaIN on the pixels in place of encoder and decoder.

    ``encoded`` holds the style images of every ``encode_style`` call; ``calls`` the arguments of every
    forward pass. cin / fast styles have the mean colours of :data:`TRAINED`.
    """

    def __init__(self, method: str = "adain") -> None:
        super().__init__()
        self.method = method
        self.styles = {"adain": [], "wct": [], "cin": list(TRAINED), "fast": ["sun"]}[method]
        self.gain = nn.Parameter(torch.ones(()))
        self.encoded: list[list[torch.Tensor]] = []
        self.calls: list[dict] = []

    def encode_style(self, style_images):
        self.encoded.append([image.clone() for image in style_images])
        return [moments(image) for image in style_images]

    def forward(self, content, styles=None, *, style_features=None, style_names=None, weights=None, alpha=1.0, mask=None):
        self.calls.append({"content": content.clone(), "style_features": style_features, "style_names": style_names,
                           "weights": weights, "alpha": alpha, "mask": None if mask is None else mask.clone()})
        if self.method in ("cin", "fast"):
            names = style_names or self.styles
            style_features = [(torch.tensor(TRAINED[n]).view(1, 3, 1, 1), torch.full((1, 3, 1, 1), 0.1)) for n in names]
        mean, std = moments(content)
        transferred = [(content - mean) / std * s_std + s_mean for s_mean, s_std in style_features]
        if mask is not None:
            target = sum(mask[:, k:k + 1] * t for k, t in enumerate(transferred))
        else:
            target = sum(w * t for w, t in zip(weights or [1.0], transferred))
        return torch.lerp(content, target, alpha).clamp(0.0, 1.0) * self.gain


class Loaded(list):
    """The stylizers the fake loader made, in order; ``loaded`` holds the loader's arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[tuple] = []


@pytest.fixture
def fake(monkeypatch) -> Loaded:
    """Replace the checkpoint loader with one that returns a :class:`FakeStylizer`."""
    made = Loaded()

    def load(method, checkpoint=None, *, encoder_weights=None, decoder_weights=None):
        made.loaded.append((method, checkpoint, encoder_weights, decoder_weights))
        made.append(FakeStylizer(method))
        return made[-1]

    monkeypatch.setattr(stylize, "load_stylizer", load)
    return made


def write_image(path: Path, colour=(200, 60, 40), size=(40, 30), mode="RGB", noise=40, seed=0) -> Path:
    """A noisy image of ``size`` (width, height) around ``colour``."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-noise, noise + 1, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.convert(mode) if mode != "RGB" else image).save(path, format="PNG" if path.suffix in ("", ".png") else None)
    return path


@pytest.fixture
def files(tmp_path):
    """A content photo (40x30), two style images of different colours and a folder of three contents."""
    folder = tmp_path / "photos"
    write_image(folder / "a.png", (200, 60, 40), (40, 30), seed=1)
    write_image(folder / "b.jpg", (40, 160, 60), (24, 36), seed=2)
    write_image(folder / "c.webp", (90, 90, 200), (32, 32), seed=3)
    return {
        "content": write_image(tmp_path / "photo.png", (120, 120, 120), (40, 30), noise=60),
        "red": write_image(tmp_path / "red.png", (220, 30, 30), (20, 20), noise=20, seed=4),
        "blue": write_image(tmp_path / "blue.png", (30, 30, 220), (20, 20), noise=20, seed=5),
        "folder": folder,
    }


def run(*args) -> int:
    return main(["stylize", *map(str, args)])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("normapps stylize: error: "), err
    return lines[0]


def digest(*paths: Path) -> dict[str, str]:
    found = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in found if p.is_file()}


def mean_colour(path: Path) -> torch.Tensor:
    return load_image(path).mean((1, 2))


# ------------------------------------------------------------------------------------------ one image


def test_one_image_is_stylized_at_size_and_the_inputs_are_unchanged(fake, files, tmp_path, capsys):
    before = digest(files["content"], files["red"])
    out = tmp_path / "out" / "styled.png"
    assert run("--content", files["content"], "--style", files["red"], "--size", 32, "--out", out) == 0
    assert digest(files["content"], files["red"]) == before
    assert load_image(out).shape == (3, 24, 32)  # 40x30 with its longer side at 32
    assert mean_colour(out)[0] > 0.7 and mean_colour(out)[2] < 0.3  # the red style's colour
    (stylizer,) = fake
    assert fake.loaded == [("adain", None, None, None)]
    assert len(stylizer.encoded) == 1 and stylizer.encoded[0][0].shape == (1, 3, 32, 32)  # shorter side at --size
    call = stylizer.calls[0]
    assert call["content"].shape == (1, 3, 24, 32) and call["weights"] is None and call["alpha"] == 1.0
    assert call["mask"] is None
    err = capsys.readouterr().err
    assert f"normapps stylize: wrote {out} (32x24) in " in err and "style encoded in" in err


def test_model_files_reach_the_loader(fake, files, tmp_path):
    weights = [tmp_path / name for name in ("style.pt", "vgg_normalised.pth", "decoder.pth")]
    for path in weights:
        path.write_bytes(b"weights")
    assert run("--content", files["content"], "--style", files["red"], "--method", "wct", "--checkpoint", weights[0],
               "--size", 16, "--out", tmp_path / "wct.png") == 0
    assert run("--content", files["content"], "--style", files["red"], "--encoder-weights", weights[1],
               "--decoder-weights", weights[2], "--size", 16, "--out", tmp_path / "adain.png") == 0
    assert fake.loaded == [("wct", str(weights[0]), None, None), ("adain", None, str(weights[1]), str(weights[2]))]


def test_a_missing_checkpoint_is_one_line(monkeypatch, files, tmp_path, capsys):
    def missing(method, checkpoint=None, **kwargs):
        raise FileNotFoundError(f"no shipped checkpoint checkpoints/style_{method}.pt;\n pass --checkpoint FILE")

    monkeypatch.setattr(stylize, "load_stylizer", missing)
    assert run("--content", files["content"], "--style", files["red"], "--out", tmp_path / "o.png") == 2
    assert "no shipped checkpoint checkpoints/style_adain.pt; pass --checkpoint FILE" in error_line(capsys)
    assert not (tmp_path / "o.png").exists()


def test_an_embedded_style_and_a_bundled_photo_by_name(fake, tmp_path, capsys):
    assert run("--content", "chelsea", "--style", "mosaic", "--size", 48, "--out", tmp_path) == 0
    assert "warning" not in capsys.readouterr().err  # the bundled photo's size is not the user's concern
    written = tmp_path / f"chelsea{content_paths()['chelsea'].suffix}"
    assert written.is_file() and max(load_image(written).shape[1:]) == 48
    torch.testing.assert_close(fake[0].encoded[0][0], style_image("mosaic", 48)[None])


def test_a_style_file_wins_over_an_embedded_name(fake, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "mosaic", (10, 200, 10), (20, 20), noise=0)
    assert run("--content", files["content"], "--style", "mosaic", "--size", 16, "--out", "o.png") == 0
    assert fake[0].encoded[0][0][0, 1].mean() > 0.7


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grey_transparent_and_16bit_contents(fake, tmp_path, mode):
    path = tmp_path / f"content_{mode.replace(';', '')}.png"
    if mode == "I;16":
        ramp = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
        Image.fromarray(ramp).save(path)
    else:
        write_image(path, (100, 150, 200), (40, 30), mode=mode)
        if mode == "RGBA":
            image = Image.open(path)
            image.putalpha(128)
            image.save(path)
    out = tmp_path / "out.png"
    assert run("--content", path, "--style", "waves", "--size", 40, "--alpha", 0, "--out", out) == 0
    content = fake[0].calls[0]["content"]
    assert content.shape == (1, 3, 30, 40) and 0.0 <= content.min() and content.max() <= 1.0
    if mode == "I;16":  # all 16 bits count: the ramp runs from 0 to 1, not clipped at 255 / 65535
        assert content.max() > 0.99 and content[0, 0, 15, 20] == pytest.approx(ramp[15, 20] / 65535, abs=0.01)
    assert load_image(out).shape == (3, 30, 40)


def test_a_large_content_is_downscaled_with_one_warning(fake, files, tmp_path, capsys):
    big = write_image(tmp_path / "big.png", size=(120, 90))
    assert run("--content", big, "--style", files["red"], "--size", 32, "--out", tmp_path / "o.png") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"normapps stylize: warning: '{big}' is 120x90 pixels (width x height); "
                        "stylized and written at 32x24 (--size 32)"]


# -------------------------------------------------------------------------------------------- folders


def test_a_folder_is_stylized_with_one_style_encoding_and_a_progress_bar(fake, files, tmp_path, capsys):
    before = digest(files["folder"])
    out = tmp_path / "styled"
    assert run("--content", files["folder"], "--style", files["blue"], "--size", 40, "--out", out) == 0
    assert digest(files["folder"]) == before
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "c.png"]  # webp cannot be written: png
    assert load_image(out / "b.jpg").shape == (3, 40, 27)  # 24x36, upscaled to its longer side at 40
    (stylizer,) = fake
    assert len(stylizer.encoded) == 1 and len(stylizer.calls) == 3
    assert all(call["style_features"] is stylizer.calls[0]["style_features"] for call in stylizer.calls)
    err = capsys.readouterr().err
    assert "stylize: 100%" in err and "3/3" in err
    assert f"normapps stylize: wrote 3 images to {out} in " in err and "s per image; style encoded once in" in err
    assert "warning" not in err


def test_preserve_color_matches_each_style_image_to_its_content(fake, files, tmp_path, capsys):
    assert run("--content", files["folder"], "--style", files["red"], "--style", files["blue"], "--preserve-color",
               "--size", 32, "--out", tmp_path / "styled") == 0
    (stylizer,) = fake
    assert len(stylizer.encoded) == 3  # per content: the styles depend on it
    for styles, call in zip(stylizer.encoded, stylizer.calls):
        content = call["content"].flatten(2)[0].double()
        for style in styles:
            pixels = style.flatten(2)[0].double()
            torch.testing.assert_close(pixels.mean(1), content.mean(1), atol=1e-4, rtol=0)
            torch.testing.assert_close(torch.cov(pixels), torch.cov(content), atol=1e-4, rtol=1e-3)
    assert "styles encoded for every image (--preserve-color)" in capsys.readouterr().err


def test_the_folder_summary_warns_once_about_downscaled_images(fake, files, tmp_path, capsys):
    assert run("--content", files["folder"], "--style", "dots", "--size", 16, "--out", tmp_path / "o") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["normapps stylize: warning: 3 of 3 content images are larger than --size 16 and are downscaled "
                        "(the largest, 'a.png', from 40x30 to 16x12); the outputs have the downscaled sizes"]


# ------------------------------------------------------------------------------------------- controls


def test_style_weights_are_normalized_and_alpha_is_passed(fake, files, tmp_path):
    assert run("--content", files["content"], "--style", files["red"], "--style", files["blue"], "--style-weights", 3, 1,
               "--alpha", 0.4, "--size", 16, "--out", tmp_path / "o.png") == 0
    call = fake[0].calls[0]
    assert call["weights"] == pytest.approx([0.75, 0.25]) and call["alpha"] == 0.4
    assert len(fake[0].encoded[0]) == 2


def test_several_styles_default_to_equal_weights(fake, files, tmp_path):
    assert run("--content", files["content"], "--style", files["red"], "--style", "mosaic", "--style", files["blue"],
               "--size", 16, "--out", tmp_path / "o.png") == 0
    assert fake[0].calls[0]["weights"] == pytest.approx([1 / 3] * 3)


def test_a_mask_puts_the_first_style_inside_and_the_second_outside(fake, files, tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    mask[:, :20] = 255  # left half white
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "o.png"
    assert run("--content", files["content"], "--style", files["red"], "--style", files["blue"], "--mask",
               tmp_path / "mask.png", "--size", 20, "--out", out) == 0
    regions = fake[0].calls[0]["mask"]
    assert regions.shape == (1, 2, 15, 20) and fake[0].calls[0]["weights"] is None
    assert torch.equal(regions[0, 0, :, :10], torch.ones(15, 10)) and torch.equal(regions[0, 0, :, 10:], torch.zeros(15, 10))
    assert torch.equal(regions[0, 1], 1 - regions[0, 0])
    styled = load_image(out)
    assert styled[0, :, :10].mean() > 0.7 and styled[2, :, :10].mean() < 0.3  # red inside
    assert styled[2, :, 10:].mean() > 0.7 and styled[0, :, 10:].mean() < 0.3  # blue outside


def test_a_mask_of_another_size_is_refused_unless_resized(fake, files, tmp_path, capsys):
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "mask.png")
    common = ["--content", files["content"], "--style", files["red"], "--style", files["blue"], "--mask", tmp_path / "mask.png",
              "--size", 20]
    assert run(*common, "--out", tmp_path / "o.png") == 2
    line = error_line(capsys)
    assert f"--mask '{tmp_path / 'mask.png'}' is 10x10 pixels (width x height) but the content '{files['content']}' is 40x30; " \
           "give a mask of the content's size, or pass --mask-resize to resize it" in line
    assert not fake and not (tmp_path / "o.png").exists()
    assert run(*common, "--mask-resize", "--out", tmp_path / "o.png") == 0
    assert torch.equal(fake[0].calls[0]["mask"][0, 0], torch.ones(15, 20))


def test_cin_takes_trained_style_names_and_fast_its_one_style(fake, files, tmp_path):
    assert run("--content", files["content"], "--method", "cin", "--style", "ink", "--style", "sun", "--style-weights", 1, 3,
               "--size", 16, "--out", tmp_path / "cin.png") == 0
    assert fake[0].calls[0]["style_names"] == ["ink", "sun"] and fake[0].calls[0]["weights"] == pytest.approx([0.25, 0.75])
    assert not fake[0].encoded
    assert run("--content", files["content"], "--method", "fast", "--size", 16, "--out", tmp_path / "fast.png") == 0
    assert run("--content", files["content"], "--method", "fast", "--style", "sun", "--size", 16,
               "--out", tmp_path / "fast2.png") == 0
    assert mean_colour(tmp_path / "fast.png")[0] > 0.7


# ---------------------------------------------------------------------------------- refusals, bad input


def test_an_existing_output_file_is_not_replaced_without_overwrite(fake, files, tmp_path, capsys):
    out = tmp_path / "o.png"
    out.write_bytes(b"keep")
    assert run("--content", files["content"], "--style", files["red"], "--out", out) == 2
    assert f"{out} already exists; pass --overwrite to replace it" in error_line(capsys)
    assert out.read_bytes() == b"keep" and not fake
    assert run("--content", files["content"], "--style", files["red"], "--size", 16, "--out", out, "--overwrite") == 0
    assert load_image(out).shape == (3, 12, 16)


def test_a_folder_run_writes_nothing_if_one_output_exists(fake, files, tmp_path, capsys):
    out = tmp_path / "styled"
    out.mkdir()
    (out / "b.jpg").write_bytes(b"keep")
    assert run("--content", files["folder"], "--style", files["red"], "--out", out) == 2
    assert f"{out / 'b.jpg'} already exists; pass --overwrite to replace it" in error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["b.jpg"] and (out / "b.jpg").read_bytes() == b"keep" and not fake


def _bad_cases(files, tmp_path):
    content, red, blue, folder = files["content"], files["red"], files["blue"], files["folder"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "clash").mkdir()
    write_image(tmp_path / "clash" / "x.png")
    write_image(tmp_path / "clash" / "x.webp")
    out = tmp_path / "o.png"
    return {
        "missing content": ([content.with_name("nope.png"), "--style", red, "--out", out],
                            "no such file or folder, and not a bundled photo"),
        "unreadable content": ([tmp_path / "text.png", "--style", red, "--out", out], "text.png': not an image file"),
        "empty folder": ([tmp_path / "empty", "--style", red, "--out", tmp_path / "o"], "no image files in"),
        "missing style": ([content, "--style", tmp_path / "nope.png", "--out", out],
                          "nope.png: no such file, and not an embedded style (stripes, mosaic"),
        "unreadable style": ([content, "--style", tmp_path / "text.png", "--out", out], "--style: cannot read"),
        "no style": ([content, "--out", out], "--method adain needs at least one --style"),
        "weights count": ([content, "--style", red, "--style", blue, "--style-weights", 1, "--out", out],
                          "--style-weights has 1 value but 2 styles were given"),
        "zero weights": ([content, "--style", red, "--style", blue, "--style-weights", 0, 0, "--out", out],
                         "--style-weights are all zero"),
        "negative weight": ([content, "--style", red, "--style", blue, "--style-weights", 1, -1, "--out", out],
                            "argument --style-weights: expected a finite number >= 0, got -1"),
        "alpha": ([content, "--style", red, "--alpha", 1.5, "--out", out], "argument --alpha: expected a number in [0, 1], got 1.5"),
        "mask with one style": ([content, "--style", red, "--mask", red, "--out", out], "--mask needs exactly two --style values"),
        "mask with weights": ([content, "--style", red, "--style", blue, "--mask", red, "--style-weights", 1, 1, "--out", out],
                              "--mask and --style-weights exclude each other"),
        "mask resize alone": ([content, "--style", red, "--mask-resize", "--out", out], "--mask-resize applies to --mask"),
        "missing mask": ([content, "--style", red, "--style", blue, "--mask", tmp_path / "nope.png", "--out", out],
                         "--mask: cannot read"),
        "cin unknown style": ([content, "--method", "cin", "--style", "mosaic", "--out", out],
                              "--method cin was trained on the styles ink, sun; --style mosaic is not one of them"),
        "cin style file": ([content, "--method", "cin", "--style", red, "--out", out], "not image files"),
        "cin without style": ([content, "--method", "cin", "--out", out], "--method cin needs --style NAME"),
        "fast other style": ([content, "--method", "fast", "--style", "ink", "--out", out],
                             "--method fast was trained on the style sun only; got --style ink"),
        "fast two styles": ([content, "--method", "fast", "--style", "sun", "--style", "sun", "--out", out],
                            "--method fast stylizes with its one trained style"),
        "alpha for cin": ([content, "--method", "cin", "--style", "ink", "--alpha", 0.5, "--out", out],
                          "--alpha blends content and style features of adain and wct; --method cin"),
        "encoder weights for wct": ([content, "--method", "wct", "--style", red, "--encoder-weights", red, "--decoder-weights",
                                     blue, "--out", out], "--encoder-weights and --decoder-weights are for --method adain"),
        "encoder weights alone": ([content, "--style", red, "--encoder-weights", red, "--out", out],
                                  "give --encoder-weights and --decoder-weights together"),
        "weights and checkpoint": ([content, "--style", red, "--encoder-weights", red, "--decoder-weights", blue,
                                    "--checkpoint", red, "--out", out], "give either --checkpoint or --encoder-weights"),
        "preserve color cin": ([content, "--method", "cin", "--style", "ink", "--preserve-color", "--out", out],
                               "--preserve-color matches style images to the content, but --method cin"),
        "unknown method": ([content, "--style", red, "--method", "gatys", "--out", out], "argument --method: invalid choice"),
        "missing out": ([content, "--style", red], "the following arguments are required: --out"),
        "out without suffix": ([content, "--style", red, "--out", tmp_path / "result"], "expected an image file name ending in .png"),
        "out is the content": ([content, "--style", red, "--out", content, "--overwrite"], "is the input"),
        "out is a style": ([content, "--style", red, "--out", red, "--overwrite"], "is the input"),
        "out is the content folder": ([folder, "--style", red, "--out", folder, "--overwrite"], "is the content folder"),
        "out folder is a file": ([folder, "--style", red, "--out", red], "is a file; with a folder of content images --out is a folder"),
        "colliding stems": ([tmp_path / "clash", "--style", red, "--out", tmp_path / "o"],
                            "x.png and x.webp would both be written to"),
        "tiny size": ([content, "--style", red, "--size", 8, "--out", out], "argument --size: expected an integer >= 16"),
    }


CASES = ["missing content", "unreadable content", "empty folder", "missing style", "unreadable style", "no style",
         "weights count", "zero weights", "negative weight", "alpha", "mask with one style", "mask with weights",
         "mask resize alone", "missing mask", "cin unknown style", "cin style file", "cin without style", "fast other style",
         "fast two styles", "alpha for cin", "encoder weights for wct", "encoder weights alone", "weights and checkpoint",
         "preserve color cin", "unknown method", "missing out", "out without suffix", "out is the content",
         "out is a style", "out is the content folder", "out folder is a file", "colliding stems", "tiny size"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, fake, files, tmp_path, capsys):
    cases = _bad_cases(files, tmp_path)
    assert sorted(cases) == sorted(CASES)
    args, message = cases[case]
    before = digest(tmp_path)
    assert run("--content", *args) == 2
    assert message in error_line(capsys)
    assert digest(tmp_path) == before
    assert all(not stylizer.calls for stylizer in fake)


def test_a_truncated_image_in_a_folder_stops_the_run_saying_what_was_written(fake, tmp_path, capsys):
    write_image(tmp_path / "in" / "a.png")
    data = write_image(tmp_path / "in" / "b.jpg", size=(64, 64)).read_bytes()
    (tmp_path / "in" / "b.jpg").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    assert run("--content", tmp_path / "in", "--style", "mosaic", "--size", 16, "--out", tmp_path / "out") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("normapps stylize: error: ")
    assert "b.jpg': corrupt or truncated image" in line and "(1 of 2 outputs were written before it)" in line
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]


def test_a_content_too_thin_for_the_size_is_one_line(fake, tmp_path, capsys):
    thin = write_image(tmp_path / "thin.png", size=(200, 4))
    assert run("--content", thin, "--style", "mosaic", "--size", 32, "--out", tmp_path / "o.png") == 2
    assert "its shorter side would be 1 pixels, under the 8 the encoders need" in error_line(capsys)


def test_the_command_is_listed(capsys):
    assert main([]) == 0
    assert "stylize" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ real stylizers


def test_real_stylizers_with_random_weights_take_every_control(monkeypatch, files, tmp_path):
    """The command against the checkpoints' own Stylizer (small random networks): masks, weights, alpha,
    colour preservation and a folder for adain; trained names with a mask for cin."""
    checkpoints = pytest.importorskip("normapps.tasks.style.checkpoints", reason="the style checkpoints module is not in this tree")
    from normapps.models import TransformerNet, VGGDecoder, VGGEncoder

    stylizers = {
        "adain": checkpoints.Stylizer("adain", {"encoder": VGGEncoder.random(width=0.125), "decoder": VGGDecoder(width=0.125)}),
        "cin": checkpoints.Stylizer("cin", {"network": TransformerNet(width=0.25, norm="cin", num_styles=2, residual_blocks=1)},
                                    ["ink", "sun"]),
    }
    monkeypatch.setattr(stylize, "load_stylizer", lambda method, *args, **kwargs: stylizers[method].eval())
    mask = np.zeros((30, 40), np.uint8)
    mask[:, :20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    runs = {
        "masked.png": ["--style", files["red"], "--style", "mosaic", "--mask", tmp_path / "mask.png"],
        "mix.png": ["--style", files["red"], "--style", files["blue"], "--style-weights", 0.7, 0.3, "--alpha", 0.8,
                    "--preserve-color"],
        "cin.png": ["--method", "cin", "--style", "sun", "--style", "ink", "--mask", tmp_path / "mask.png"],
    }
    for name, options in runs.items():
        assert run("--content", files["content"], *options, "--size", 40, "--out", tmp_path / name) == 0, name
        styled = load_image(tmp_path / name)
        assert styled.shape == (3, 30, 40) and torch.isfinite(styled).all()
    assert run("--content", files["folder"], "--style", "waves", "--size", 24, "--out", tmp_path / "folder") == 0
    assert len(list((tmp_path / "folder").iterdir())) == 3


# ------------------------------------------------------------------------------------ shipped checkpoint


@pytest.mark.skipif(not (CHECKPOINTS / "style_adain.pt").is_file(),
                    reason="checkpoints/style_adain.pt is not shipped yet (trained by the style suite)")
def test_the_shipped_adain_checkpoint_stylizes_a_bundled_photo(tmp_path, capsys):
    out = tmp_path / "chelsea_mosaic.png"
    assert run("--content", "chelsea", "--style", "mosaic", "--size", 64, "--out", out) == 0
    styled = load_image(out)
    content = load_image(content_paths()["chelsea"], size=(styled.shape[1], styled.shape[2]))
    assert styled.shape[0] == 3 and max(styled.shape[1:]) == 64
    assert (styled - content).abs().mean() > 0.05  # visibly changed
    assert f"normapps stylize: wrote {out}" in capsys.readouterr().err
