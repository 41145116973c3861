"""The CIFAR-10-C image corruptions, for batches of RGB tensors.

Hendrycks & Dietterich 2019 ("Benchmarking neural network robustness to common corruptions and
perturbations") define 15 corruptions in four groups (noise, blur, weather, digital) at five
severities, plus four more (speckle noise, Gaussian blur, spatter, saturate) held out for tuning.
This module re-implements them for float images ``(N, 3, H, W)`` in [0, 1] with kornia's filters,
colour conversions and warps, torch's random numbers (one seeded :class:`torch.Generator`, so the
result is reproducible) and torchvision's JPEG codec. The severity constants follow the CIFAR-10-C
settings for 32x32 images; spatial quantities (blur radii, kernel sizes, displacements) scale with
the image side divided by 32, so a 64-pixel image is corrupted like a 32-pixel one upsampled.

What each corruption uses, and where it departs from the original:

=================  ==========================================================================
gaussian_noise     ``x + N(0, c)``, c = 0.04 ... 0.10 (as CIFAR-10-C).
shot_noise         ``Poisson(c x) / c``, c = 500 ... 50 (as CIFAR-10-C).
impulse_noise      salt-and-pepper on each value with probability 0.01 ... 0.07 (as CIFAR-10-C).
defocus_blur       a disk kernel smoothed by a small Gaussian (``kornia.filters.filter2d``).
glass_blur         Gaussian blur, local pixel displacement, Gaussian blur (``kornia.filters``); each
                   pixel takes a random neighbour's value, where the original swaps neighbours in a
                   sequential loop (so a value can be duplicated here).
motion_blur        ``kornia.filters.motion_blur`` with a one-sided ramp kernel of 3 ... 11 pixels at
                   a random angle in [-45, 45] degrees; the original's one-sided Gaussian kernel
                   (ImageMagick) blurs somewhat less at severities 4 and 5.
zoom_blur          the mean of the image zoomed about its centre by 1.00 ... 1.25
                   (``kornia.geometry.transform.scale``).
snow               a thresholded, zoomed, motion-blurred noise layer added twice (once rotated by
                   180 degrees) over a brightened image (kornia filters and grey conversion).
frost              the original blends crops of six frost photographs; those are not bundled, so a
                   procedural layer stands in: bright veins from two ridged plasma fractals
                   (``kornia.contrib.diamond_square``) tinted blue-white, blended with the
                   CIFAR-10-C weights.
fog                a plasma fractal added with the CIFAR-10-C weight and decay
                   (``kornia.contrib.diamond_square``, roughness = 1 / decay), then rescaled.
brightness         HSV value + 0.1 ... 0.5 (``kornia.color`` HSV conversions).
contrast           ``kornia.enhance.adjust_contrast_with_mean_subtraction`` with factors 0.75 ...
                   0.15; the mean is that of the grey image, where the original takes one mean per
                   channel (the same for grey images).
elastic_transform  ``kornia.geometry.transform.elastic_transform2d`` with a displacement that grows
                   with severity; the original also applies a random affine warp, omitted here.
pixelate           area downsampling to 95% ... 65% of the side and nearest upsampling
                   (``kornia.geometry.transform.resize``).
jpeg_compression   torchvision's JPEG encoder and decoder at quality 80 ... 40 (as CIFAR-10-C).
=================  ==========================================================================

Held out: ``speckle_noise`` (``x + x N(0, c)``), ``gaussian_blur`` (``kornia.filters.gaussian_blur2d``),
``saturate`` (HSV saturation scaled and shifted; it leaves grey images unchanged at severities 1-3)
and ``spatter`` (a simplified version: thresholded smoothed noise as blobs of water, severities
1-3, or mud, 4-5, blended over the image; the original also draws water edges).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import kornia
import torch
import torchvision
from kornia.contrib import diamond_square
from torch import Tensor

__all__ = ["CORRUPTIONS", "HELD_OUT_CORRUPTIONS", "SEVERITIES", "check_corruption", "corrupt"]

#: The 15 corruptions of the CIFAR-10-C benchmark, in the paper's order.
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
#: The four extra corruptions that CIFAR-10-C provides for choosing hyper-parameters.
HELD_OUT_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
#: Valid severities.
SEVERITIES = (1, 2, 3, 4, 5)

_Corruption = Callable[[Tensor, int, torch.Generator], Tensor]


def _scale(x: Tensor) -> float:
    """Image side relative to CIFAR's 32 pixels, the unit of every spatial constant."""
    return min(x.shape[-2:]) / 32


def _odd(size: float) -> int:
    """The nearest odd kernel size, at least 3."""
    return max(3, 2 * round((size - 1) / 2) + 1)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    kernel = _odd(2 * math.ceil(3 * sigma) + 1)
    return kornia.filters.gaussian_blur2d(x, (kernel, kernel), (sigma, sigma), border_type="reflect")


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def _plasma(n: int, h: int, w: int, roughness: float, g: torch.Generator) -> Tensor:
    """One plasma fractal per image, ``(n, 1, h, w)``, each min-max normalized to [0, 1]."""
    draw = functools.partial(torch.rand, generator=g)
    return diamond_square((n, 1, h, w), roughness=roughness, random_fn=draw, normalize_range=(0.0, 1.0))


def _motion_blur(x: Tensor, kernel: int, angle: Tensor, direction: float, border: str = "reflect") -> Tensor:
    return kornia.filters.motion_blur(x, kernel, angle, torch.full_like(angle, direction), border_type=border)


def _gaussian_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    return x + c * torch.randn(x.shape, generator=g)


def _shot_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (500.0, 250.0, 100.0, 75.0, 50.0)[severity - 1]
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    u = torch.rand(x.shape, generator=g)
    return torch.where(u < amount / 2, 1.0, torch.where(u < amount, 0.0, x))


def _speckle_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.06, 0.10, 0.12, 0.16, 0.20)[severity - 1]
    return x + x * c * torch.randn(x.shape, generator=g)


def _gaussian_blur_corruption(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    return _gaussian_blur(x, (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1] * _scale(x))


def _defocus_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    radius, alias = radius * _scale(x), alias * _scale(x)
    half = math.ceil(radius) + math.ceil(3 * alias) + 1
    coords = torch.arange(-half, half + 1, dtype=x.dtype)
    disk = ((coords[:, None] ** 2 + coords[None, :] ** 2) <= radius**2).to(x.dtype)
    kernel = _gaussian_blur(disk[None, None], alias)[0]
    return kornia.filters.filter2d(x, kernel / kernel.sum(), border_type="reflect")


def _glass_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[severity - 1]
    sigma, delta = sigma * _scale(x), max(1, round(delta * _scale(x)))
    n, c, h, w = x.shape
    x = _gaussian_blur(x, sigma)
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    for _ in range(iterations):
        dy = torch.randint(-delta, delta + 1, (n, h, w), generator=g)
        dx = torch.randint(-delta, delta + 1, (n, h, w), generator=g)
        source = (rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)
        x = x.flatten(2).gather(2, source.flatten(1)[:, None, :].expand(n, c, h * w)).view(n, c, h, w)
    return _gaussian_blur(x, sigma)


def _motion_blur_corruption(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    kernel = _odd((3, 5, 7, 9, 11)[severity - 1] * _scale(x))
    return _motion_blur(x, kernel, _uniform((x.shape[0],), -45.0, 45.0, g), 1.0)


def _zoom(x: Tensor, factor: float) -> Tensor:
    scale = torch.full((x.shape[0], 2), factor, dtype=x.dtype)
    return kornia.geometry.transform.scale(x, scale, padding_mode="reflection", align_corners=False)


def _zoom_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
    factors = torch.arange(1.0, top, 0.01).tolist()
    return (x + sum(_zoom(x, factor) for factor in factors)) / (len(factors) + 1)


def _snow(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    loc, spread, zoom, threshold, kernel, blend = (
        (0.1, 0.2, 1.0, 0.6, 7, 0.95),
        (0.1, 0.2, 1.0, 0.5, 9, 0.9),
        (0.15, 0.3, 1.75, 0.55, 9, 0.9),
        (0.25, 0.3, 2.25, 0.6, 13, 0.85),
        (0.3, 0.3, 1.25, 0.65, 15, 0.8),
    )[severity - 1]
    n, _, h, w = x.shape
    flakes = _zoom(loc + spread * torch.randn((n, 1, h, w), generator=g), zoom)
    flakes = torch.where(flakes < threshold, 0.0, flakes)
    flakes = _motion_blur(flakes, _odd(kernel * _scale(x)), _uniform((n,), -135.0, -45.0, g), 1.0, border="constant")
    grey = kornia.color.rgb_to_grayscale(x)
    x = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + flakes + flakes.flip(-1, -2)


def _frost_layer(n: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """A procedural frost texture ``(n, 3, h, w)`` in [0, 1]: two ridged plasma fractals (bright veins), blue-white."""
    veins = sum((1 - (2 * _plasma(n, h, w, 0.55, g) - 1).abs()) ** 4 for _ in range(2))
    layer = (0.2 + 0.5 * veins).clamp(0.0, 1.0)
    return layer * torch.tensor([0.85, 0.92, 1.0], dtype=layer.dtype)[None, :, None, None]


def _frost(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    image_weight, frost_weight = ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[severity - 1]
    n, _, h, w = x.shape
    return image_weight * x + frost_weight * _frost_layer(n, h, w, g)


def _fog(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    weight, decay = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))[severity - 1]
    n, _, h, w = x.shape
    peak = x.amax((1, 2, 3), keepdim=True)
    x = x + weight * _plasma(n, h, w, 1.0 / decay, g)
    return x * peak / (peak + weight)


def _brightness(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    hsv = kornia.color.rgb_to_hsv(x)
    hsv = torch.cat([hsv[:, :2], (hsv[:, 2:] + shift).clamp(0.0, 1.0)], 1)
    return kornia.color.hsv_to_rgb(hsv)


def _saturate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    factor, shift = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))[severity - 1]
    hsv = kornia.color.rgb_to_hsv(x)
    hsv = torch.cat([hsv[:, :1], (hsv[:, 1:2] * factor + shift).clamp(0.0, 1.0), hsv[:, 2:]], 1)
    return kornia.color.hsv_to_rgb(hsv)


def _contrast(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    return kornia.enhance.adjust_contrast_with_mean_subtraction(x, (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1])


def _elastic_transform(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    sigma, alpha = ((4.0, 1.2), (3.5, 1.6), (3.0, 2.0), (2.5, 2.4), (2.0, 2.8))[severity - 1]
    n, _, h, w = x.shape
    sigma = sigma * _scale(x)
    kernel = _odd(2 * math.ceil(3 * sigma) + 1)
    noise = _uniform((n, 2, h, w), -1.0, 1.0, g)
    # elastic_transform2d displaces in normalized coordinates (the side spans 2): alpha is in
    # units of the smoothed noise, whose spread falls as 1 / sigma; this keeps pixels moving by
    # about 0.4 ... 0.9 pixels (root mean square) at 32 pixels, whatever the image size.
    strength = alpha * sigma * 4 / min(h, w)
    return kornia.geometry.transform.elastic_transform2d(
        x, noise, (kernel, kernel), (sigma, sigma), (strength, strength), padding_mode="reflection"
    )


def _pixelate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    factor = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    h, w = x.shape[-2:]
    small = kornia.geometry.transform.resize(x, (max(1, round(h * factor)), max(1, round(w * factor))), interpolation="area")
    return kornia.geometry.transform.resize(small, (h, w), interpolation="nearest")


def _jpeg_compression(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    quality = (80, 65, 58, 50, 40)[severity - 1]
    encoded = torchvision.io.encode_jpeg(list(_to_uint8(x)), quality=quality)
    decoded = torchvision.io.decode_jpeg(encoded, mode=torchvision.io.ImageReadMode.RGB)
    return torch.stack(decoded).to(x.dtype) / 255.0


def _spatter(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    loc, spread, sigma, threshold, intensity, colour = (
        (0.62, 0.1, 0.7, 0.7, 0.5, (0.93, 0.93, 0.69)),
        (0.65, 0.1, 0.8, 0.7, 0.5, (0.93, 0.93, 0.69)),
        (0.65, 0.3, 1.0, 0.69, 0.5, (0.93, 0.93, 0.69)),
        (0.65, 0.1, 0.7, 0.69, 0.6, (0.25, 0.16, 0.08)),
        (0.65, 0.1, 0.5, 0.68, 0.6, (0.25, 0.16, 0.08)),
    )[severity - 1]
    n, _, h, w = x.shape
    liquid = _gaussian_blur(loc + spread * torch.randn((n, 1, h, w), generator=g), sigma * _scale(x))
    blobs = _gaussian_blur((liquid >= threshold).to(x.dtype), 0.5 * _scale(x)) * intensity
    return x * (1 - blobs) + blobs * torch.tensor(colour, dtype=x.dtype)[None, :, None, None]


_REGISTRY: dict[str, _Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur_corruption,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur_corruption,
    "spatter": _spatter,
    "saturate": _saturate,
}


def check_corruption(corruption: object, severity: object) -> None:
    """Raise :class:`ValueError` naming the valid choices if ``corruption`` or ``severity`` is not one."""
    if corruption not in _REGISTRY:
        raise ValueError(
            f"unknown corruption {corruption!r}; expected one of {', '.join(CORRUPTIONS)} "
            f"(or, held out for tuning, {', '.join(HELD_OUT_CORRUPTIONS)})"
        )
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an int from 1 to 5, got {severity!r}")


def corrupt(images: Tensor, corruption: str, severity: int, seed: int = 0) -> Tensor:
    """Apply one CIFAR-10-C corruption (Hendrycks & Dietterich 2019) to a batch of images.

    Args:
        images: float tensor ``(N, 3, H, W)`` with values in [0, 1]; not modified.
        corruption: one of :data:`CORRUPTIONS` or :data:`HELD_OUT_CORRUPTIONS`.
        severity: 1 (mildest) to 5.
        seed: seed of the random parts (noise, angles, textures); the same seed gives the same result.

    Returns:
        The corrupted images, same shape and dtype, clipped to [0, 1].

    Raises:
        ValueError: for an unknown corruption, a severity outside 1-5, or images that are not
            ``(N, 3, H, W)`` floats.
    """
    check_corruption(corruption, severity)
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, 3, H, W), got {tuple(images.shape)} of {images.dtype}")
    generator = torch.Generator().manual_seed(seed)
    out = _REGISTRY[corruption](images.detach().cpu(), severity, generator)
    return out.clamp(0.0, 1.0).to(images.device, images.dtype)
