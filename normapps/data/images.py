"""Reading and writing single image files: the user's photos, styles and masks, and the images bundled with installed packages.

:func:`load_image` turns any image file Pillow can decode into a float tensor ``(3, H, W)`` in
[0, 1], whatever its mode:

* greyscale is repeated over the three channels; 16-bit values are divided by 65535 (so
  65535 -> 1.0 and 32768 -> 0.50), never clipped at 255 (so are those of Pillow's 32-bit integer
  mode, which older Pillow versions use for 16-bit PNG files); floating-point images are taken as
  [0, 1] and clipped there, with a warning if they exceed it;
* colour 16-bit PNG and TIFF files keep their 8 most significant bits (Pillow decodes them to
  8-bit RGB), scaled the same way;
* transparency (RGBA, LA, palette images with a transparent colour) is *composited over white*,
  which is what an image viewer shows; dropping the alpha channel instead would reveal whatever
  colour the writer left under transparent pixels (often black or garbage). A file with any
  non-opaque pixel gets one warning; fully opaque alpha is dropped silently;
* CMYK, YCbCr and other colour modes are converted to RGB by Pillow;
* the EXIF orientation tag is applied (a portrait photo from a phone comes out upright);
* multi-frame files (GIF, TIFF) give their first frame.

Errors name the file and the reason (``FileNotFoundError``, ``IsADirectoryError``,
``PermissionError``, or ``ValueError`` for a file that is not a readable image). Files are
written atomically through :mod:`normapps.io`, and never over an existing file unasked.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS

from normapps.io import atomic_path

__all__ = ["IMAGE_SUFFIXES", "SAVE_FORMATS", "bundled_image_paths", "list_images", "load_image", "load_mask", "save_image"]

#: Suffixes (lower case) of the files :func:`list_images` takes for images: torchvision's list.
IMAGE_SUFFIXES: tuple[str, ...] = tuple(IMG_EXTENSIONS)

#: Pillow format written by :func:`save_image` for each suffix.
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}

#: JPEG quality of :func:`save_image`.
JPEG_QUALITY = 95

_GREY_16BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
# EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def bundled_image_paths(names: Iterable[str]) -> tuple[Path, ...]:
    """Paths of image files that ship inside installed packages; nothing is fetched.

    Args:
        names: ``"<package>/<file>"`` with package ``skimage`` (``skimage/data``), ``sklearn``
            (``sklearn/datasets/images``) or ``matplotlib`` (``mpl-data/sample_data``), e.g.
            ``"skimage/astronaut.png"``.

    Raises:
        ValueError: for an unknown package.
        FileNotFoundError: naming every missing file, if an installed package lacks one.
    """
    paths = []
    for name in names:
        package, _, file = name.partition("/")
        if package == "skimage":
            import skimage.data

            folder = Path(skimage.data.__file__).parent
        elif package == "sklearn":
            import sklearn.datasets

            folder = Path(sklearn.datasets.__file__).parent / "images"
        elif package == "matplotlib":
            import matplotlib

            folder = Path(matplotlib.get_data_path()) / "sample_data"
        else:
            raise ValueError(f"bundled image {name!r}: expected '<package>/<file>' with package skimage, sklearn or matplotlib")
        paths.append(folder / file)
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"bundled image files not found (is an installed package incomplete?): {', '.join(missing)}")
    return tuple(paths)


def _check_side(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _resized(width: int, height: int, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """``(width, height)`` after :func:`load_image`'s ``size`` (shorter side, or exact ``(height, width)``)."""
    if size is None:
        return width, height
    if isinstance(size, int):
        scale = size / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    return size[1], size[0]


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    """A decoded Pillow image as a float32 array ``(H, W, 3)`` in [0, 1] (see the module docstring)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _GREY_16BIT:
        grey = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2)
    if image.mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        if grey.size and (grey.min() < 0.0 or grey.max() > 1.0):
            warnings.warn(f"'{path}' is a floating-point image with values outside [0, 1]; clipped to [0, 1]", stacklevel=3)
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2)
    if image.mode in _WITH_ALPHA:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        if alpha.size and alpha.min() < 1.0:
            warnings.warn(f"'{path}' has transparent pixels; composited over white", stacklevel=3)
        return rgba[..., :3] * alpha + (1.0 - alpha)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_image(
    path: str | os.PathLike[str], max_side: int | None = None, size: int | tuple[int, int] | None = None
) -> Tensor:
    """Read an image file as a float tensor ``(3, H, W)`` in [0, 1], RGB.

    Args:
        path: any file Pillow decodes (PNG, JPEG, TIFF, BMP, GIF, WebP, ...); see the module
            docstring for how greyscale, 16-bit, transparent and rotated images are handled.
        max_side: if given, an image whose longer side (after ``size``) exceeds it is downscaled
            to that longer side, keeping its aspect ratio, with a warning naming both sizes.
            JPEG files are then decoded at a reduced scale, which is much faster for large photos.
        size: if given, resize to this: an int is the shorter side (aspect ratio kept, like
            :class:`torchvision.transforms.Resize`), a pair is the exact ``(height, width)``.

    Resizing is bilinear with antialiasing, in floating point (no 8-bit rounding of 16-bit data).

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be opened.
        ValueError: the file is not an image, is corrupt or truncated, or exceeds Pillow's
            decompression-bomb limit; or an argument is invalid.

    >>> load_image(bundled_image_paths(["skimage/chelsea.png"])[0], size=64).shape
    torch.Size([3, 64, 96])
    """
    path = Path(path)
    _check_side("max_side", max_side)
    if size is not None and not isinstance(size, int):
        if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) and s >= 1 for s in size)):
            raise ValueError(f"size must be a positive int (shorter side), a pair (height, width) or None, got {size!r}")
        size = (int(size[0]), int(size[1]))
    _check_side("size", size if isinstance(size, int) else None)
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot read '{path}': no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"cannot read '{path}': it is a folder, not an image file") from None
    except PermissionError:
        raise PermissionError(f"cannot read '{path}': permission denied") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"cannot read '{path}': not an image file (cannot identify image file)") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read '{path}': too many pixels ({err})") from None
    except OSError as err:
        raise ValueError(f"cannot read '{path}': {err.strerror or err}") from None
    with image:
        try:
            stored_width, stored_height = image.size
            transposed = image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS
            width, height = (stored_height, stored_width) if transposed else (stored_width, stored_height)
            target = _resized(width, height, size)
            if max_side is not None and max(target) > max_side:
                scale = max_side / max(target)
                capped = (max(1, round(target[0] * scale)), max(1, round(target[1] * scale)))
                warnings.warn(
                    f"'{path}' is {width}x{height} pixels (width x height); downscaled to {capped[0]}x{capped[1]} (max_side={max_side})",
                    stacklevel=2,
                )
                target = capped
            if image.format == "JPEG" and target != (width, height):
                image.draft(image.mode, (target[1], target[0]) if transposed else target)
            image.load()
            array = _to_rgb(ImageOps.exif_transpose(image), path)
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ValueError(f"cannot read '{path}': corrupt or truncated image ({err})") from None
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if (tensor.shape[2], tensor.shape[1]) != target:
        tensor = F.interpolate(tensor[None], size=(target[1], target[0]), mode="bilinear", antialias=True, align_corners=False)[0]
        tensor = tensor.clamp_(0.0, 1.0)
    return tensor.contiguous()


def load_mask(path: str | os.PathLike[str], size: tuple[int, int], resize: bool = False) -> Tensor:
    """Read a mask as a float tensor ``(1, H, W)`` of zeros and ones, for an image of ``size``.

    A pixel is 1 where the luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, after
    :func:`load_image`, so transparent pixels count as white) is at least 0.5, else 0.

    Args:
        path: the mask image.
        size: ``(height, width)`` of the image it masks, e.g. ``content.shape[-2:]``.
        resize: resize a mask of another size to ``size`` (bilinear on the luminance, then the
            threshold) instead of raising.

    Raises:
        ValueError: if the mask's size differs from ``size`` and ``resize`` is false (naming both
            sizes), or the file is not an image; the errors of :func:`load_image` otherwise.
    """
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) and s >= 1 for s in size)):
        raise ValueError(f"size must be the (height, width) of the masked image, got {size!r}")
    height, width = int(size[0]), int(size[1])
    rgb = load_image(path)
    luminance = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    if tuple(luminance.shape[-2:]) != (height, width):
        if not resize:
            raise ValueError(
                f"mask '{path}' is {luminance.shape[-1]}x{luminance.shape[-2]} pixels (width x height) but the image is "
                f"{width}x{height}; give a mask of the image's size, or ask to resize it"
            )
        luminance = F.interpolate(luminance[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    return (luminance >= 0.5).float()


def save_image(tensor: Tensor, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write an image tensor to ``path`` atomically, in the format its suffix names; return the path.

    Args:
        tensor: ``(3, H, W)`` RGB or ``(1, H, W)`` / ``(H, W)`` greyscale, float in [0, 1]
            (values outside are clipped; quantized to 8 bits by rounding). Any device and dtype.
        path: the file; suffix one of :data:`SAVE_FORMATS` (``.png``, ``.jpg``, ...). Its folder
            is created if missing.
        overwrite: replace an existing file; otherwise :class:`FileExistsError` is raised and the
            file is left untouched.

    The file is written to a temporary name in the same folder and moved into place only when
    complete, so a failed save leaves no partial file (and the old file, if any, intact).

    Raises:
        ValueError: for an unsupported suffix, a tensor of another shape, or non-finite values.
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    image_format = SAVE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"cannot save '{path}': unsupported suffix {path.suffix!r}; expected one of {', '.join(SAVE_FORMATS)}")
    if not isinstance(tensor, Tensor):
        raise ValueError(f"cannot save '{path}': expected a tensor, got {type(tensor).__name__}")
    image = tensor.detach()
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] not in (1, 3) or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"cannot save '{path}': expected a tensor (3, H, W), (1, H, W) or (H, W), got shape {tuple(tensor.shape)}")
    image = image.float().cpu()
    if not torch.isfinite(image).all():
        raise ValueError(f"cannot save '{path}': the tensor holds NaN or infinite values")
    array = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
    with atomic_path(path, overwrite=overwrite) as tmp:
        pil.save(tmp, format=image_format, **options)
    return path


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, any case: :data:`IMAGE_SUFFIXES`), sorted by name.

    Hidden files (names starting with ``.``) and subfolders are skipped. Files are not decoded
    here: a file that is not an image fails when :func:`load_image` reads it, naming it.

    Raises:
        FileNotFoundError: if the folder does not exist or holds no image file.
        NotADirectoryError: if ``folder`` is a file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"'{folder}' is a file, not a folder of images")
    files = sorted(
        entry for entry in folder.iterdir()
        if not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file()
    )
    if not files:
        raise FileNotFoundError(f"no image files in '{folder}' (looked for names ending in {' '.join(IMAGE_SUFFIXES)})")
    return files
