"""Handwritten digits blended over patches of bundled colour photographs (MNIST-M).

After Ganin et al. 2016 ("Domain-adversarial training of neural networks"), who built MNIST-M by
blending MNIST digits over random patches of the BSDS500 photographs: each output pixel is the
absolute difference ``|patch - digit|`` per channel, so the stroke shows the inverted photo and
the background the photo itself. Here the photographs are the ones that ship with scikit-image
and scikit-learn, read straight from their package folders (nothing is fetched).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import roi_align

from .images import bundled_image_paths

__all__ = ["blend_over_photos", "photo_paths"]

_PHOTOS = (
    "skimage/astronaut.png",
    "skimage/chelsea.png",
    "skimage/coffee.png",
    "skimage/rocket.jpg",
    "skimage/motorcycle_left.png",
    "skimage/hubble_deep_field.jpg",
    "skimage/ihc.png",
    "sklearn/china.jpg",
    "sklearn/flower.jpg",
)


def photo_paths() -> tuple[Path, ...]:
    """The colour photographs used as backgrounds: seven from scikit-image, two from scikit-learn.

    Raises:
        FileNotFoundError: naming the missing files if an installed package lacks one.
    """
    return bundled_image_paths(_PHOTOS)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[Tensor, ...]:
    """Each photograph as a float tensor ``(1, 3, H, W)`` in [0, 1]."""
    photos = []
    for path in photo_paths():
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        photos.append(torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous())
    return tuple(photos)


def blend_over_photos(digits: Tensor, rng: np.random.Generator) -> Tensor:
    """Blend grey digits over random photo patches: ``|patch - digit|`` per channel.

    Each digit gets a photograph drawn uniformly and a square patch whose side is drawn between
    1/16 and 1/4 of the photograph's shorter side, at a uniform position; the patch is resampled
    to the digit's size by averaging (``torchvision.ops.roi_align``).

    Args:
        digits: ``(N, 1, H, W)`` in [0, 1], bright strokes on a dark background.
        rng: source of the photo choices and patch boxes.

    Returns:
        ``(N, 3, H, W)`` in [0, 1].
    """
    photos = _photos()
    count, _, height, width = digits.shape
    choice = rng.integers(len(photos), size=count)
    fraction = rng.uniform(1 / 16, 1 / 4, count)
    corner = rng.random((count, 2))
    patches = torch.empty(count, 3, height, width)
    for index, photo in enumerate(photos):
        rows = np.flatnonzero(choice == index)
        if rows.size == 0:
            continue
        photo_height, photo_width = photo.shape[-2:]
        side = fraction[rows] * min(photo_height, photo_width)
        x0 = corner[rows, 0] * (photo_width - side)
        y0 = corner[rows, 1] * (photo_height - side)
        boxes = torch.from_numpy(np.stack([np.zeros_like(side), x0, y0, x0 + side, y0 + side], 1)).float()
        patches[torch.from_numpy(rows)] = roi_align(photo, boxes, (height, width), aligned=True)
    return (patches - digits).abs().clamp_(0.0, 1.0)
