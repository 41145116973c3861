"""Style-transfer data without downloads: bundled colour photos as content, generated style images.

Content
    the colour photographs that ship inside scikit-image, scikit-learn and matplotlib, split once
    and for all (:data:`CONTENT_PHOTOS`) so that evaluation uses photos no model saw in training.
    The split keeps the two views of the stereo motorcycle pair together.
Styles
    nine strongly textured, colourful images the project generates from a seed
    (:data:`STYLES`): six drawn procedurally (stripes, mosaic, waves, brush, dots, cracks) and
    three that colourize the greyscale textures bundled with scikit-image (brick, grass, gravel)
    with a palette. Each style has a fixed palette; the seed draws its geometry (angles, cell
    sites, strokes, the crop of the texture), so every seed gives a different image of the same
    style. Patterns are defined on the unit square, so one seed gives the same picture at every
    size. Six styles are for training and three are held out (:func:`style_names`).

:class:`StyleDataModule` serves random ``(content, style)`` crops from these, or from folders of
the user's images (e.g. COCO as content and WikiArt as styles).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pytorch_lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import bundled_image_paths, list_images, load_image

__all__ = [
    "CONTENT_PHOTOS",
    "STYLES",
    "StyleDataModule",
    "content_images",
    "content_names",
    "content_paths",
    "style_image",
    "style_names",
]

#: The bundled colour photographs of each split, by name, with the package file they come from.
CONTENT_PHOTOS: dict[str, dict[str, str]] = {
    "train": {
        "astronaut": "skimage/astronaut.png",
        "rocket": "skimage/rocket.jpg",
        "motorcycle_left": "skimage/motorcycle_left.png",
        "motorcycle_right": "skimage/motorcycle_right.png",
        "hubble_deep_field": "skimage/hubble_deep_field.jpg",
        "ihc": "skimage/ihc.png",
        "china": "sklearn/china.jpg",
    },
    "test": {
        "chelsea": "skimage/chelsea.png",
        "coffee": "skimage/coffee.png",
        "flower": "sklearn/flower.jpg",
        "grace_hopper": "matplotlib/grace_hopper.jpg",
    },
}

#: The generated styles of each split: ``train`` for training, ``held_out`` never seen in training.
STYLES: dict[str, tuple[str, ...]] = {
    "train": ("stripes", "mosaic", "waves", "brush", "brick", "grass"),
    "held_out": ("dots", "cracks", "gravel"),
}

_CONTENT_SPLITS = tuple(CONTENT_PHOTOS)
_STYLE_SPLITS = tuple(STYLES)


def _check_split(split: object, splits: Sequence[str], what: str) -> None:
    if split is not None and split not in splits:
        raise ValueError(f"{what} split must be one of {', '.join(map(repr, splits))} or None (all), got {split!r}")


# --------------------------------------------------------------------------------------------- content


def content_names(split: str | None = None) -> tuple[str, ...]:
    """Names of the bundled content photos of ``split`` (``"train"`` or ``"test"``; None: all, train first)."""
    _check_split(split, _CONTENT_SPLITS, "content")
    return tuple(name for part in ((split,) if split else _CONTENT_SPLITS) for name in CONTENT_PHOTOS[part])


def content_paths(split: str | None = None) -> dict[str, Path]:
    """The files of the bundled content photos of ``split``, by name (nothing is fetched).

    Raises:
        FileNotFoundError: if an installed package lacks one of them.
    """
    names = content_names(split)
    files = {name: file for part in _CONTENT_SPLITS for name, file in CONTENT_PHOTOS[part].items()}
    return dict(zip(names, bundled_image_paths(files[name] for name in names)))


@functools.lru_cache(maxsize=8)
def _content_tensors(split: str, size: int | None) -> tuple[Tensor, ...]:
    return tuple(load_image(path, size=size) for path in content_paths(split).values())


def content_images(split: str = "train", size: int | None = None) -> list[Tensor]:
    """The bundled colour photos of one split as float tensors ``(3, H, W)`` in [0, 1].

    The split is fixed (it does not depend on any seed) and disjoint:

    * ``train`` (7): astronaut, rocket, motorcycle_left, motorcycle_right, hubble_deep_field, ihc
      (scikit-image) and china (scikit-learn);
    * ``test`` (4): chelsea, coffee (scikit-image), flower (scikit-learn) and grace_hopper
      (matplotlib).

    Args:
        split: ``"train"`` or ``"test"``.
        size: if given, each photo is resized so that its shorter side is ``size``.

    Returns:
        One tensor per photo, in the order of :func:`content_names`; the photos are 300 to 872
        pixels high and 451 to 1000 wide at full size. Decoded once per process (then copied).
    """
    if split not in _CONTENT_SPLITS:
        raise ValueError(f"content split must be 'train' or 'test', got {split!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    return [image.clone() for image in _content_tensors(split, size)]


# ---------------------------------------------------------------------------------------------- styles


def _palette(*colours: str) -> Tensor:
    """Hex colours ``"#rrggbb"`` as a float tensor ``(K, 3)`` in [0, 1]."""
    return torch.tensor([[int(colour[i : i + 2], 16) / 255.0 for i in (1, 3, 5)] for colour in colours])


_PALETTES = {
    "stripes": _palette("#e63946", "#f1c40f", "#2a9d8f", "#1d3557", "#f4a261", "#8e44ad"),
    "mosaic": _palette("#0b3d91", "#d62828", "#f77f00", "#fcbf49", "#2a9d8f", "#6a4c93", "#1982c4", "#8ac926"),
    "waves": _palette("#ff006e", "#fb5607", "#ffbe0b", "#3a86ff", "#8338ec", "#ff006e"),
    "brush": _palette("#0d1b4c", "#1f4e9c", "#4f8fc0", "#9cc5e0", "#f2c14e", "#f5e6a8"),
    "brick": _palette("#2b0510", "#8c0c1e", "#e0460b", "#ffb347", "#fff1c9"),
    "grass": _palette("#14002e", "#5a189a", "#d6249f", "#ff9e00", "#f7ff85"),
    "dots": _palette("#fdf0d5", "#c1121f", "#003049", "#2a9df4", "#f4a300"),
    "cracks": _palette("#143642", "#0f8b8d", "#a8dadc", "#ec9a29", "#a8201a"),
    "gravel": _palette("#03045e", "#0077b6", "#00b4d8", "#90e0ef", "#e9ff70"),
}
_GROUT = _palette("#161616")[0]
_TEXTURES = {"brick": "skimage/brick.png", "grass": "skimage/grass.png", "gravel": "skimage/gravel.png"}


def _unit_grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``x, y`` in (0, 1), each ``(size, size)``."""
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(t, t, indexing="ij")
    return x, y


def _noise(rng: np.random.Generator, size: int, cells: int, octaves: int = 1) -> Tensor:
    """Smooth random field ``(size, size)`` of unit-order amplitude: value noise on a ``cells`` grid, bicubic.

    Octaves double the grid and halve the amplitude. The field is a function on the unit square,
    so it does not depend on ``size`` beyond sampling.
    """
    total = torch.zeros(size, size)
    for octave in range(octaves):
        lattice = torch.from_numpy(rng.standard_normal((cells << octave,) * 2).astype(np.float32))
        total += F.interpolate(lattice[None, None], size=(size, size), mode="bicubic", align_corners=False)[0, 0] / 2**octave
    return total


def _gradient_map(values: Tensor, palette: Tensor) -> Tensor:
    """Map values in [0, 1] ``(H, W)`` to colours ``(3, H, W)`` linearly between the palette's colours."""
    position = values.clamp(0.0, 1.0) * (len(palette) - 1)
    low = position.floor().long().clamp_(max=len(palette) - 2)
    fraction = (position - low).unsqueeze(-1)
    return (palette[low] * (1 - fraction) + palette[low + 1] * fraction).permute(2, 0, 1)


def _smoothstep(edge0: float, edge1: float | Tensor, x: Tensor) -> Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def _jittered_sites(rng: np.random.Generator, per_side: int) -> Tensor:
    """``per_side**2`` points in the unit square, one at a random place in the middle of each grid cell (no near-duplicates)."""
    corners = torch.stack(torch.meshgrid(torch.arange(per_side), torch.arange(per_side), indexing="xy"), -1).reshape(-1, 2)
    return (corners + torch.from_numpy(rng.uniform(0.1, 0.9, (per_side**2, 2)).astype(np.float32))) / per_side


def _voronoi(points: Tensor, sites: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distance to the nearest and second-nearest site, and the nearest site's index, for points ``(P, 2)``.

    ``sites`` come from :func:`_jittered_sites` (``n * n`` of them, site ``y * n + x`` in grid
    cell ``(x, y)``), so both nearest sites lie in the 5 x 5 cells around a point's own cell.
    """
    per_side = math.isqrt(len(sites))
    # Pad the grid of sites with two rings of sites at infinity, so every neighbour cell exists.
    padded = torch.full((per_side + 4, per_side + 4, 2), math.inf)
    padded[2:-2, 2:-2] = sites.view(per_side, per_side, 2)
    site_x, site_y = padded[..., 0].flatten(), padded[..., 1].flatten()
    x, y = points[:, 0], points[:, 1]
    cell = (points * per_side).floor().long().clamp_(0, per_side - 1)
    own = (cell[:, 1] + 2) * (per_side + 4) + cell[:, 0] + 2
    nearest = torch.full((len(points),), math.inf)
    second = torch.full((len(points),), math.inf)
    index = torch.zeros(len(points), dtype=torch.long)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            candidate = own + (dy * (per_side + 4) + dx)
            squared = (x - site_x[candidate]).square_() + (y - site_y[candidate]).square_()
            closer = squared < nearest
            second = torch.where(closer, nearest, torch.minimum(second, squared))
            index = torch.where(closer, candidate, index)
            nearest = torch.where(closer, squared, nearest)
    row, column = index // (per_side + 4) - 2, index % (per_side + 4) - 2
    return nearest.sqrt(), second.sqrt(), row * per_side + column


def _stripes(size: int, rng: np.random.Generator) -> Tensor:
    """Bold bands of the palette's colours at a random angle, warped by smooth noise (op art)."""
    palette = _PALETTES["stripes"]
    x, y = _unit_grid(size)
    angle = rng.uniform(0.0, math.pi)
    bands = rng.uniform(9.0, 13.0)
    phase = bands * (x * math.cos(angle) + y * math.sin(angle)) + 1.2 * _noise(rng, size, 3) + 0.3 * _noise(rng, size, 8)
    index = phase.floor().long()
    edge = _smoothstep(0.0, 2.0 * bands / size, phase - phase.floor())
    colour = palette[index % len(palette)] * edge[..., None] + palette[(index - 1) % len(palette)] * (1 - edge[..., None])
    return colour.permute(2, 0, 1)


def _mosaic(size: int, rng: np.random.Generator) -> Tensor:
    """Stained glass: Voronoi cells of random palette colours, shaded towards their edges, in dark lead."""
    palette = _PALETTES["mosaic"]
    x, y = _unit_grid(size)
    sites = _jittered_sites(rng, 8)
    count = len(sites)
    colours = palette[torch.from_numpy(rng.integers(len(palette), size=count))]
    colours = colours * torch.from_numpy(rng.uniform(0.8, 1.1, (count, 1)).astype(np.float32))
    nearest, second, index = _voronoi(torch.stack([x.flatten(), y.flatten()], 1), sites)
    gap = (second - nearest).view(size, size)
    glass = colours[index].view(size, size, 3).permute(2, 0, 1) * (0.75 + 0.25 * _smoothstep(0.0, 0.06, gap))
    lead = _smoothstep(0.006, 0.006 + 1.5 / size, gap)
    return glass * lead + _GROUT.view(3, 1, 1) * (1 - lead)


def _waves(size: int, rng: np.random.Generator) -> Tensor:
    """Interference of four plane waves, warped, through a cyclic psychedelic palette."""
    x, y = _unit_grid(size)
    field = 0.8 * _noise(rng, size, 3)
    for _ in range(4):
        angle, frequency, phase = rng.uniform(0, math.pi), rng.uniform(2.0, 6.0), rng.uniform(0, 2 * math.pi)
        field = field + torch.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    return _gradient_map(torch.frac(field * 0.35 + 10.0), _PALETTES["waves"])


def _brush(size: int, rng: np.random.Generator) -> Tensor:
    """Impasto: 1500 short flat strokes that follow a swirling flow field, coloured by a smooth field."""
    palette = _PALETTES["brush"]
    scale = 2 * size  # drawn at twice the size, then averaged down (antialiasing)
    flow = _noise(rng, 64, 3, octaves=2)
    shade = _noise(rng, 64, 4, octaves=2)
    shade = (shade - shade.min()) / (shade.max() - shade.min())
    canvas = Image.new("RGB", (scale, scale), tuple(int(255 * c) for c in palette[1]))
    draw = ImageDraw.Draw(canvas)
    count = 1500
    centres = rng.random((count, 2))
    lengths = rng.uniform(0.03, 0.08, count)
    widths = rng.uniform(0.008, 0.02, count)
    jitter = rng.normal(0.0, 0.12, count)
    tint = rng.normal(0.0, 0.06, (count, 3))
    cells = np.minimum((centres * 64).astype(int), 63)
    angles = flow.numpy()[cells[:, 1], cells[:, 0]] * math.pi + rng.normal(0.0, 0.15, count)
    values = np.clip(shade.numpy()[cells[:, 1], cells[:, 0]] + jitter, 0.0, 1.0)
    colours = (_gradient_map(torch.from_numpy(values.astype(np.float32))[None], palette)[:, 0].T.numpy() + tint).clip(0.0, 1.0)
    for (cx, cy), length, width, angle, colour in zip(centres, lengths, widths, angles, colours):
        dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
        ends = [((cx - dx) * scale, (cy - dy) * scale), ((cx + dx) * scale, (cy + dy) * scale)]
        draw.line(ends, fill=tuple(int(round(255 * c)) for c in colour), width=max(1, round(width * scale)))
    image = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
    grain = 1.0 + 0.05 * _noise(rng, size, max(4, size // 4))
    return F.avg_pool2d(image[None], 2)[0] * grain


def _dots(size: int, rng: np.random.Generator) -> Tensor:
    """Ben-Day dots: two rotated grids of dots whose radius and colour follow smooth fields, on paper."""
    palette = _PALETTES["dots"]
    x, y = _unit_grid(size)
    image = palette[0].view(3, 1, 1).expand(3, size, size).clone()
    radius_field = _noise(rng, size, 3)
    colour_field = _noise(rng, size, 2)
    spacing = 1 / 22
    for layer in range(2):  # the second grid is offset by half a cell, with smaller dots coloured by the negated fields
        angle = rng.uniform(0, math.pi / 2)
        offset = 0.5 * layer
        u = (x * math.cos(angle) - y * math.sin(angle)) / spacing + offset
        v = (x * math.sin(angle) + y * math.cos(angle)) / spacing + offset
        distance = torch.hypot(u - u.round(), v - v.round())
        radius = (0.32 + 0.12 * radius_field * (1 - 2 * layer)).clamp(0.08, 0.48) * (1.0 - 0.35 * layer)
        inside = 1 - _smoothstep(0.0, 1.0 / (size * spacing), distance - radius + 0.5 / (size * spacing))
        choice = ((colour_field * (1 - 2 * layer) + 1.2) * 1.4).floor().long().clamp(0, len(palette) - 2) + 1
        image = image * (1 - inside) + palette[choice].permute(2, 0, 1) * inside
    return image


def _cracks(size: int, rng: np.random.Generator) -> Tensor:
    """Craquelure: a smooth colour field broken into small raised cells by thin, wandering dark cracks."""
    palette = _PALETTES["cracks"]
    x, y = _unit_grid(size)
    wx = x + 0.025 * _noise(rng, size, 6)
    wy = y + 0.025 * _noise(rng, size, 6)
    sites = _jittered_sites(rng, 16)
    count = len(sites)
    nearest, second, index = _voronoi(torch.stack([wx.flatten(), wy.flatten()], 1), sites)
    gap = (second - nearest).view(size, size)
    field = _noise(rng, size, 2, octaves=2)
    field = (field - field.min()) / (field.max() - field.min())
    paint = _gradient_map(field, palette)
    relief = torch.from_numpy(rng.uniform(0.85, 1.08, count).astype(np.float32))[index].view(size, size)
    paint = paint * relief * (0.8 + 0.2 * _smoothstep(0.0, 0.03, gap))
    crack = _smoothstep(0.002, 0.002 + 1.5 / size, gap)
    return paint * crack + torch.tensor([0.10, 0.07, 0.05]).view(3, 1, 1) * (1 - crack)


def _texture(name: str) -> Callable[[int, np.random.Generator], Tensor]:
    """A style that colourizes scikit-image's greyscale texture ``name`` with the style's palette."""

    def generate(size: int, rng: np.random.Generator) -> Tensor:
        grey = _bundled_texture(name)
        side = grey.shape[-1] * 3 // 4
        top, left = rng.integers(grey.shape[-2] - side + 1), rng.integers(grey.shape[-1] - side + 1)
        crop = grey[:, top : top + side, left : left + side]
        crop = torch.rot90(crop, int(rng.integers(4)), (1, 2))
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0]
        low, high = torch.quantile(crop.flatten(), torch.tensor([0.01, 0.99]))
        return _gradient_map((crop - low) / (high - low), _PALETTES[name])

    generate.__doc__ = f"scikit-image's {name} texture, a random crop and rotation, colourized with a palette."
    return generate


@functools.lru_cache(maxsize=None)
def _bundled_texture(name: str) -> Tensor:
    return load_image(bundled_image_paths([_TEXTURES[name]])[0])[:1]


_GENERATORS: dict[str, Callable[[int, np.random.Generator], Tensor]] = {
    "stripes": _stripes,
    "mosaic": _mosaic,
    "waves": _waves,
    "brush": _brush,
    "brick": _texture("brick"),
    "grass": _texture("grass"),
    "dots": _dots,
    "cracks": _cracks,
    "gravel": _texture("gravel"),
}


def style_names(split: str | None = None) -> tuple[str, ...]:
    """Names of the generated styles of ``split`` (``"train"`` or ``"held_out"``; None: all, train first).

    * ``train``: stripes, mosaic, waves, brush, brick, grass;
    * ``held_out``: dots, cracks, gravel.
    """
    _check_split(split, _STYLE_SPLITS, "style")
    return tuple(name for part in ((split,) if split else _STYLE_SPLITS) for name in STYLES[part])


@functools.lru_cache(maxsize=64)
def _style_image(name: str, size: int, seed: int) -> Tensor:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    return _GENERATORS[name](size, rng).clamp(0.0, 1.0).contiguous()


def style_image(name: str, size: int = 256, seed: int = 0) -> Tensor:
    """One generated style image, a float tensor ``(3, size, size)`` in [0, 1].

    The same ``(name, seed)`` always gives the same picture (at any ``size``, up to sampling);
    different seeds give different pictures of the same style (see the module docstring).
    Generation takes milliseconds to a few tens of milliseconds at 256 pixels; images are kept
    in memory per process.

    Args:
        name: one of :func:`style_names`.
        size: side of the square image (at least 16).
        seed: a non-negative int.

    Raises:
        ValueError: for an unknown name (listing the valid ones) or an invalid size or seed.

    >>> style_image("mosaic", size=64).shape
    torch.Size([3, 64, 64])
    """
    if name not in _GENERATORS:
        raise ValueError(f"unknown style {name!r}; expected one of {', '.join(style_names())}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return _style_image(name, size, seed).clone()


# ---------------------------------------------------------------------------------------- datamodule


class _Files:
    """Image files read on demand, each resized so that its shorter side is ``resize``."""

    def __init__(self, paths: Sequence[Path], resize: int) -> None:
        self.paths, self.resize = list(paths), resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return load_image(self.paths[index], size=self.resize)


def _crop(image: Tensor, size: int, top: int, left: int) -> Tensor:
    return image[:, top : top + size, left : left + size].contiguous()


class _RandomPairs(Dataset):
    """Draw ``k`` is a content image and a style image drawn with replacement, each randomly cropped, from seed ``(seed, k)``."""

    def __init__(self, content: Sequence[Tensor], style: Sequence[Tensor], image_size: int, seed: int, length: int) -> None:
        self.content, self.style, self.image_size, self.seed, self.length = content, style, image_size, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, draw: int) -> dict[str, Tensor | int]:
        rng = np.random.default_rng([self.seed, draw])
        content = self.content[int(rng.integers(len(self.content)))]
        style_index = int(rng.integers(len(self.style)))
        style = self.style[style_index]
        crops = []
        for image in (content, style):
            height, width = image.shape[-2:]
            top, left = int(rng.integers(height - self.image_size + 1)), int(rng.integers(width - self.image_size + 1))
            crops.append(_crop(image, self.image_size, top, left))
        return {"content": crops[0], "style": crops[1], "style_index": style_index}


class _FixedPairs(Dataset):
    """Given ``(content, style)`` index pairs, centre-cropped."""

    def __init__(self, content: Sequence[Tensor], style: Sequence[Tensor], pairs: list[tuple[int, int]], image_size: int) -> None:
        self.content, self.style, self.pairs, self.image_size = content, style, pairs, image_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        content_index, style_index = self.pairs[index]
        crops = []
        for image in (self.content[content_index], self.style[style_index]):
            height, width = image.shape[-2:]
            crops.append(_crop(image, self.image_size, (height - self.image_size) // 2, (width - self.image_size) // 2))
        return {"content": crops[0], "style": crops[1], "style_index": style_index}


class _EpochSampler(Sampler[int]):
    """Yields the draws ``epoch * n`` to ``(epoch + 1) * n - 1``: new samples every epoch, the same ones for the same epoch.

    Lightning calls :meth:`set_epoch` at the start of every training epoch.
    """

    def __init__(self, length: int) -> None:
        self.length, self.epoch = length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.length, (self.epoch + 1) * self.length))


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class StyleDataModule(LightningDataModule):
    """Pairs of content and style crops for training style-transfer networks.

    Sources: ``content`` is a folder of photos (e.g. COCO ``train2014``) or None for the bundled
    training photos (:func:`content_images`); ``style`` a folder of style images (e.g. WikiArt)
    or None for the generated styles named in ``styles`` (:func:`style_image` with seed 0, the
    training styles by default). Every image is resized so that its shorter side is ``resize``
    (bilinear, antialiased); folders are read lazily, one file per draw, the embedded images are
    decoded or generated once in :meth:`setup`.

    Training batches draw ``steps_per_epoch * batch_size`` (content, style) pairs with
    replacement per epoch, with a random ``image_size`` crop of each, all from ``(seed, epoch,
    draw)``: the same seed gives the same batches, every epoch new ones. Validation pairs every
    held-out content photo (``val_content`` folder, else the bundled test photos) with every
    training style, at most ``val_pairs`` pairs (a seeded choice beyond that), centre-cropped.

    Batches are ``{"content": (N, 3, S, S), "style": (N, 3, S, S), "style_index": (N,)}``,
    floats in [0, 1] and int64, ``style_index`` indexing :attr:`style_labels` (the style for a
    conditional-IN network; for a folder, the file in sorted order).

    >>> dm = StyleDataModule(batch_size=4, image_size=64, resize=96, steps_per_epoch=2)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> batch["content"].shape, batch["style"].shape, batch["style_index"].shape
    (torch.Size([4, 3, 64, 64]), torch.Size([4, 3, 64, 64]), torch.Size([4]))
    """

    def __init__(
        self,
        content: str | None = None,
        style: str | None = None,
        val_content: str | None = None,
        styles: list[str] | None = None,
        image_size: int = 128,
        resize: int = 160,
        batch_size: int = 8,
        steps_per_epoch: int = 200,
        val_pairs: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        """Initialize the datamodule.

        Args:
            content: folder of training content images (read with :func:`~normapps.data.images.load_image`),
                or None for the bundled training photos.
            style: folder of style images, or None for generated styles.
            val_content: folder of validation content images, or None for the bundled test photos.
            styles: names of the generated styles to use (default :func:`style_names` ``("train")``);
                only without ``style``.
            image_size: side ``S`` of the square crops (at least 16).
            resize: shorter side of every image before cropping (at least ``image_size``).
            batch_size: pairs per batch.
            steps_per_epoch: training batches per epoch.
            val_pairs: at most this many validation pairs.
            seed: seed of the training draws and of the validation pairs (a non-negative int).
            num_workers: subprocesses of each DataLoader (0 loads in the main process).

        Raises:
            ValueError: for an argument out of range or an unknown style name.
            FileNotFoundError, NotADirectoryError: for a folder that is missing, not a folder or
                holds no image file.
        """
        super().__init__()
        _check_int("image_size", image_size, 16)
        _check_int("resize", resize, 16)
        if resize < image_size:
            raise ValueError(f"resize ({resize}) must be at least image_size ({image_size}): the crops are cut from images resized to it")
        _check_int("batch_size", batch_size, 1)
        _check_int("steps_per_epoch", steps_per_epoch, 1)
        _check_int("val_pairs", val_pairs, 1)
        _check_int("seed", seed, 0)
        _check_int("num_workers", num_workers, 0)
        if styles is not None:
            if style is not None:
                raise ValueError(f"styles= names generated styles and cannot be combined with a style folder (style={style!r})")
            if isinstance(styles, str) or not styles:
                raise ValueError(f"styles must be a non-empty list of style names, got {styles!r}")
            unknown = [name for name in styles if name not in _GENERATORS]
            if unknown:
                raise ValueError(f"unknown styles {unknown}; expected names among {', '.join(style_names())}")
            if len(set(styles)) != len(styles):
                raise ValueError(f"styles lists a style twice: {styles}")
        self.content_files = list_images(content) if content is not None else None
        self.style_files = list_images(style) if style is not None else None
        self.val_content_files = list_images(val_content) if val_content is not None else None
        self.styles = tuple(styles) if styles is not None else style_names("train")
        self.image_size, self.resize, self.batch_size = image_size, resize, batch_size
        self.steps_per_epoch, self.val_pairs, self.seed, self.num_workers = steps_per_epoch, val_pairs, seed, num_workers
        self.train_set: _RandomPairs | None = None
        self.val_set: _FixedPairs | None = None
        self.save_hyperparameters()
        self.hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")

    @property
    def style_labels(self) -> tuple[str, ...]:
        """What each ``style_index`` stands for: the style names, or the style files' names."""
        return self.styles if self.style_files is None else tuple(path.name for path in self.style_files)

    @property
    def num_styles(self) -> int:
        """Number of training styles (the size of a conditional-IN network's style table)."""
        return len(self.style_labels)

    def _sources(self) -> tuple[Sequence[Tensor], Sequence[Tensor], Sequence[Tensor]]:
        if self.content_files is None:
            content: Sequence[Tensor] = content_images("train", size=self.resize)
        else:
            content = _Files(self.content_files, self.resize)
        if self.style_files is None:
            style: Sequence[Tensor] = [style_image(name, size=self.resize) for name in self.styles]
        else:
            style = _Files(self.style_files, self.resize)
        if self.val_content_files is None:
            val_content: Sequence[Tensor] = content_images("test", size=self.resize)
        else:
            val_content = _Files(self.val_content_files, self.resize)
        return content, style, val_content

    def setup(self, stage: str | None = None) -> None:
        """Read or generate the embedded images and build the training and validation pairs (once)."""
        if self.train_set is not None:
            return
        content, style, val_content = self._sources()
        self.train_set = _RandomPairs(content, style, self.image_size, self.seed, self.steps_per_epoch * self.batch_size)
        total = len(val_content) * len(style)
        if total <= self.val_pairs:
            pairs = [(c, s) for c in range(len(val_content)) for s in range(len(style))]
        else:
            rng = np.random.default_rng([self.seed, zlib.crc32(b"validation")])
            content_index = rng.integers(len(val_content), size=self.val_pairs).tolist()
            pairs = sorted(zip(content_index, rng.integers(len(style), size=self.val_pairs).tolist()))
        self.val_set = _FixedPairs(val_content, style, pairs, self.image_size)

    def _loader(self, dataset: Dataset | None, sampler: Sampler[int] | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """``steps_per_epoch`` batches of random pairs, new ones every epoch."""
        return self._loader(self.train_set, _EpochSampler(len(self.train_set)) if self.train_set is not None else None)

    def val_dataloader(self) -> DataLoader:
        """The fixed validation pairs (held-out content with the training styles), centre-cropped."""
        return self._loader(self.val_set)
