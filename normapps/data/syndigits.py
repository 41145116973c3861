"""Synthetic digits rendered from the TrueType fonts that ship with matplotlib (SynDigits).

After Ganin & Lempitsky 2015 ("Unsupervised domain adaptation by backpropagation"), who rendered
digits from Windows fonts with random text, position, orientation, stroke and background colours
and blur, as a synthetic source domain for street-view house numbers. Here each image shows one
label digit, with random neighbours cut by the frame on either side as in a house-number crop,
rendered with :mod:`PIL.ImageFont` from a font of matplotlib's ``fonts/ttf`` folder.

The fonts are split by family into a training set and a held-out set (see :func:`font_split`), so
that a test digit is never drawn in a family seen in training.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path

import kornia
import matplotlib
import numpy as np
import torch
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["digit_fonts", "font_split", "render_syndigits"]

#: Glyph names a font gives the digits 0-9 (old-style figures, e.g. in cmmi10, are digits too).
_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _font_folder() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _has_digits(font: FT2Font) -> bool:
    """True if the characters 0-9 map to glyphs named as digits (symbol fonts map them to other glyphs)."""
    charmap = font.get_charmap()
    for digit, name in enumerate(_DIGIT_NAMES):
        index = charmap.get(ord(str(digit)), 0)
        if index == 0 or not font.get_glyph_name(index).startswith(name):
            return False
    return True


@functools.lru_cache(maxsize=1)
def digit_fonts() -> dict[str, tuple[Path, ...]]:
    """matplotlib's bundled fonts that draw the digits 0-9, grouped by family name.

    Symbol fonts (cmsy10, cmex10, the STIX size variants) and fonts without digits are left out.

    Raises:
        FileNotFoundError: if the folder holds no font with digits.
    """
    folder = _font_folder()
    families: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.ttf")):
        font = FT2Font(os.fspath(path))
        if _has_digits(font):
            families.setdefault(font.family_name, []).append(path)
    if not families:
        raise FileNotFoundError(f"no TrueType font with the digits 0-9 in matplotlib's font folder {folder}")
    return {family: tuple(paths) for family, paths in sorted(families.items())}


@functools.lru_cache(maxsize=1)
def font_split() -> dict[str, tuple[Path, ...]]:
    """Fonts for training (``"train"``) and held out for testing (``"held_out"``), split by family.

    Families are ordered by the SHA-256 digest of their names and the first quarter (rounded up,
    at least one family) is held out: a fixed rule that does not depend on the seed, mixes the
    families, and keeps every font of one family on the same side.

    Raises:
        ValueError: if fewer than two font families draw digits (nothing to hold out).
    """
    families = digit_fonts()
    if len(families) < 2:
        raise ValueError(f"need at least two font families with digits to hold one out, found {sorted(families)}")
    order = sorted(families, key=lambda name: hashlib.sha256(name.encode("utf-8")).hexdigest())
    held_out = set(order[: math.ceil(len(order) / 4)])
    return {
        "train": tuple(path for family in families if family not in held_out for path in families[family]),
        "held_out": tuple(path for family in families if family in held_out for path in families[family]),
    }


@functools.lru_cache(maxsize=256)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(os.fspath(path), size)


def _glyph_mask(
    font: ImageFont.FreeTypeFont, label: str, left: str, right: str, stroke: int, angle: float, shift: tuple[int, int], size: int
) -> np.ndarray:
    """A ``size`` x ``size`` coverage mask in [0, 1]: ``left + label + right`` with ``label`` centred, rotated, shifted."""
    canvas = 3 * size
    image = Image.new("L", (canvas, canvas), 0)
    x0, y0, x1, y1 = font.getbbox(label, stroke_width=stroke)
    x = canvas / 2 - font.getlength(left) - (x0 + x1) / 2
    y = canvas / 2 - (y0 + y1) / 2
    ImageDraw.Draw(image).text((x, y), left + label + right, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, center=(canvas / 2, canvas / 2))
    top = (canvas - size) // 2 + shift[1]
    left_edge = (canvas - size) // 2 + shift[0]
    image = image.crop((left_edge, top, left_edge + size, top + size))
    return np.asarray(image, dtype=np.float32) / 255.0


def _contrasting_colours(rng: np.random.Generator, count: int, min_difference: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Stroke and background RGB colours whose luminances differ by at least ``min_difference``."""
    luma = np.array([0.299, 0.587, 0.114])
    stroke, background = rng.random((count, 3)), rng.random((count, 3))
    while True:
        low = np.abs((stroke - background) @ luma) < min_difference
        if not low.any():
            return stroke, background
        stroke[low], background[low] = rng.random((int(low.sum()), 3)), rng.random((int(low.sum()), 3))


def render_syndigits(count: int, image_size: int, fonts: tuple[Path, ...], rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Render ``count`` digit images of ``image_size`` pixels from ``fonts``.

    Each image draws, from ``rng``: a label (the ten classes equally often, in random order), a
    font, a glyph height of about 45-75% of the image, a rotation of up to 15 degrees, a shift of
    up to 12% of the side, a stroke outline of 0 to ``image_size // 32`` pixels, a neighbouring
    digit on each side with probability 1/2, stroke and background colours of different
    luminance (the background a gentle linear gradient), a Gaussian blur of standard deviation
    0.2-1.2 pixels at 32 pixels (scaled with the side) and Gaussian noise of standard deviation
    up to 0.06.

    Returns:
        Images ``(count, 3, image_size, image_size)`` in [0, 1] and labels ``(count,)`` (int64).
    """
    size = image_size
    labels = rng.permutation(np.arange(count) % 10)
    font_index = rng.integers(len(fonts), size=count)
    font_size = np.maximum(6, np.rint(rng.uniform(0.6, 1.0, count) * size)).astype(int)
    angle = rng.uniform(-15.0, 15.0, count)
    reach = round(0.12 * size)
    shift = rng.integers(-reach, reach + 1, size=(count, 2))
    stroke = rng.integers(0, size // 32 + 1, size=count)
    neighbours = np.where(rng.random((count, 2)) < 0.5, rng.integers(0, 10, size=(count, 2)), -1)
    foreground, background = _contrasting_colours(rng, count)
    background_end = np.clip(background + rng.uniform(-0.15, 0.15, (count, 3)), 0.0, 1.0)
    gradient_angle = rng.uniform(0.0, 2 * math.pi, count)
    sigma = rng.uniform(0.2, 1.2, count) * size / 32
    noise_std = rng.uniform(0.0, 0.06, count)
    noise_seed = int(rng.integers(2**62))

    masks = np.stack(
        [
            _glyph_mask(
                _font(fonts[font_index[i]], int(font_size[i])),
                str(labels[i]),
                "" if neighbours[i, 0] < 0 else str(neighbours[i, 0]),
                "" if neighbours[i, 1] < 0 else str(neighbours[i, 1]),
                int(stroke[i]),
                float(angle[i]),
                (int(shift[i, 0]), int(shift[i, 1])),
                size,
            )
            for i in range(count)
        ]
    )
    mask = torch.from_numpy(masks).unsqueeze(1)
    coords = torch.linspace(0.0, 1.0, size)
    direction = torch.from_numpy(np.stack([np.cos(gradient_angle), np.sin(gradient_angle)], 1)).float()
    ramp = direction[:, 0, None, None] * coords[None, None, :] + direction[:, 1, None, None] * coords[None, :, None]
    ramp = (ramp - ramp.amin((1, 2), keepdim=True)) / (ramp.amax((1, 2), keepdim=True) - ramp.amin((1, 2), keepdim=True))
    start = torch.from_numpy(background).float()[:, :, None, None]
    end = torch.from_numpy(background_end).float()[:, :, None, None]
    backdrop = start + (end - start) * ramp.unsqueeze(1)
    images = backdrop * (1 - mask) + torch.from_numpy(foreground).float()[:, :, None, None] * mask
    kernel = 2 * math.ceil(3 * float(sigma.max())) + 1
    sigmas = torch.from_numpy(np.stack([sigma, sigma], 1)).float()
    images = kornia.filters.gaussian_blur2d(images, (kernel, kernel), sigmas, border_type="replicate")
    generator = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn(images.shape, generator=generator) * torch.from_numpy(noise_std).float()[:, None, None, None]
    return (images + noise).clamp_(0.0, 1.0), torch.from_numpy(labels).long()
