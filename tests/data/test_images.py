import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from normapps.data import list_images, load_image, load_mask, save_image
from normapps.data.images import bundled_image_paths


def _write_png16(path, array):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): ``array`` (H, W) or (H, W, 3|4) uint16."""
    array = array if array.ndim == 3 else array[..., None]
    height, width, channels = array.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_greyscale_image_loads_as_three_equal_channels(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert image.shape == (3, 4, 5) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(grey / 255.0).float().expand(3, -1, -1))


def test_rgba_is_composited_over_white_with_one_warning(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0, 128], [255, 255, 255]]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="rgba.png' has transparent pixels; composited over white") as record:
        image = load_image(tmp_path / "rgba.png")
    assert len(record) == 1
    assert image.shape == (3, 2, 3)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))  # opaque: its own colour
    torch.testing.assert_close(image[:, 0, 1], torch.ones(3))  # fully transparent: white
    alpha = 128 / 255
    torch.testing.assert_close(image[:, 0, 2], torch.tensor([200 / 255 * alpha + 1 - alpha, 1 - alpha, 1 - alpha]))


def test_opaque_alpha_is_dropped_silently(tmp_path):
    Image.new("LA", (3, 2), (90, 255)).save(tmp_path / "la.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(tmp_path / "la.png")
    torch.testing.assert_close(image, torch.full((3, 2, 3), 90 / 255))


def test_palette_image_with_transparent_colour_loads_as_rgb_over_white(tmp_path):
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    palette_image.save(tmp_path / "palette.png", transparency=1)
    with pytest.warns(UserWarning, match="composited over white"):
        image = load_image(tmp_path / "palette.png")
    assert image.shape == (3, 2, 4)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(image[:, 0, 1], torch.ones(3))


def test_16bit_greyscale_png_and_tiff_scale_from_65535(tmp_path):
    grey = np.array([[65535, 32768], [0, 1000]], dtype=np.uint16)
    _write_png16(tmp_path / "grey16.png", grey)
    Image.fromarray(grey).save(tmp_path / "grey16.tif")
    for name in ("grey16.png", "grey16.tif"):
        image = load_image(tmp_path / name)
        assert image.shape == (3, 2, 2)
        torch.testing.assert_close(image[0], torch.tensor([[1.0, 32768 / 65535], [0.0, 1000 / 65535]]))
        assert abs(float(image[0, 0, 1]) - 0.5) < 1e-4 and 0 < float(image[0, 1, 1]) < 0.02  # not clipped at 255


def test_16bit_colour_png_keeps_its_scale(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb[..., 0], rgb[..., 1] = 65535, 32768
    _write_png16(tmp_path / "rgb16.png", rgb)
    image = load_image(tmp_path / "rgb16.png")
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, 0.5, 0.0]), atol=1 / 255, rtol=0)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # a white top-left pixel in a 4 x 2 (width x height) image
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.png", exif=exif)
    image = load_image(tmp_path / "rotated.png")
    assert image.shape == (3, 4, 2)
    assert image[:, 0, 1].min() == 1.0 and image.sum() == 3.0


def test_large_image_is_downscaled_with_a_warning_naming_both_sizes(tmp_path):
    Image.new("RGB", (400, 100), (10, 200, 30)).save(tmp_path / "wide.jpg")
    with pytest.warns(UserWarning, match=r"wide.jpg' is 400x100 pixels .* downscaled to 64x16 \(max_side=64\)"):
        image = load_image(tmp_path / "wide.jpg", max_side=64)
    assert image.shape == (3, 16, 64)
    torch.testing.assert_close(image.mean((1, 2)), torch.tensor([10, 200, 30]) / 255.0, atol=0.03, rtol=0)


def test_size_sets_the_shorter_side_or_the_exact_size(tmp_path):
    Image.new("RGB", (60, 40)).save(tmp_path / "small.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "small.png", size=20, max_side=64).shape == (3, 20, 30)
        assert load_image(tmp_path / "small.png", size=(8, 9)).shape == (3, 8, 9)
    with pytest.raises(ValueError, match="size must be a positive int"):
        load_image(tmp_path / "small.png", size=0)


def test_missing_and_non_image_files_name_the_path_and_the_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot read '.*nothing.png': no such file"):
        load_image(tmp_path / "nothing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read '.*notes.png': not an image file \(cannot identify image file\)"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        load_image(tmp_path)


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read '.*cut.png': corrupt or truncated image"):
        load_image(tmp_path / "cut.png")


def test_mask_thresholds_luminance_and_rejects_another_size(tmp_path):
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8).repeat(2, 0)
    Image.fromarray(grey).save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", (2, 4))
    assert mask.shape == (1, 2, 4)
    assert mask[0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"mask '.*mask.png' is 4x2 pixels \(width x height\) but the image is 8x6"):
        load_mask(tmp_path / "mask.png", (6, 8))
    resized = load_mask(tmp_path / "mask.png", (6, 8), resize=True)
    assert resized.shape == (1, 6, 8) and set(resized.unique().tolist()) == {0.0, 1.0}


def test_save_then_load_round_trips_and_refuses_to_overwrite(tmp_path):
    image = torch.rand(3, 5, 7)
    path = save_image(image, tmp_path / "out" / "image.png")
    torch.testing.assert_close(load_image(path), (image * 255).round() / 255)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        save_image(torch.zeros(3, 5, 7), path)
    torch.testing.assert_close(load_image(path), (image * 255).round() / 255)
    save_image(torch.zeros(3, 5, 7), path, overwrite=True)
    assert load_image(path).max() == 0
    jpeg = save_image(torch.full((1, 8, 8), 0.5), tmp_path / "grey.jpg")
    with Image.open(jpeg) as written:
        assert written.format == "JPEG" and written.size == (8, 8)


def test_failed_save_leaves_no_partial_file_and_the_old_one_intact(tmp_path, monkeypatch):
    path = tmp_path / "image.png"
    save_image(torch.ones(3, 4, 4), path)
    before = path.read_bytes()

    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.zeros(3, 4, 4), path, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "new.png")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]


def test_save_rejects_bad_suffix_shape_and_values(tmp_path):
    with pytest.raises(ValueError, match="unsupported suffix '.gif'"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "x.gif")
    with pytest.raises(ValueError, match=r"expected a tensor \(3, H, W\).*got shape \(2, 3, 4, 4\)"):
        save_image(torch.zeros(2, 3, 4, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_image(torch.full((3, 4, 4), float("nan")), tmp_path / "x.png")
    assert not any(tmp_path.iterdir())


def test_list_images_is_sorted_by_suffix_and_rejects_an_empty_folder(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.tif", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [path.name for path in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tif"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no image files in '.*empty' \(looked for names ending in .jpg"):
        list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="is a file"):
        list_images(tmp_path / "a.jpg")


def test_bundled_images_resolve_inside_installed_packages():
    path, = bundled_image_paths(["matplotlib/grace_hopper.jpg"])
    assert path.is_file() and path.name == "grace_hopper.jpg"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        bundled_image_paths(["skimage/missing.png"])
    with pytest.raises(ValueError, match="package skimage, sklearn or matplotlib"):
        bundled_image_paths(["torchvision/x.png"])
