"""Domain-shift data behind one entry point, :func:`load_domain`.

Embedded domains are generated from files that ship inside installed packages, never downloaded:

``syndigits``
    digits rendered from matplotlib's bundled TrueType fonts with random position, scale,
    rotation, colours, blur and noise (SynDigits, Ganin & Lempitsky 2015); ``train`` and ``val``
    use the training fonts, ``test`` the held-out font families (:func:`~normapps.data.syndigits.font_split`).
``digits``
    scikit-learn's handwritten digits (8x8), upsampled bilinearly and repeated over three channels.
``digits_m``
    those digits blended over patches of bundled colour photographs (MNIST-M, Ganin et al. 2016).
``digits_c``
    those digits under one of the CIFAR-10-C corruptions at one severity (Hendrycks & Dietterich
    2019); see :mod:`normapps.data.corruptions` for what each one uses.

``digits``, ``digits_m`` and ``digits_c`` share the split of :class:`~normapps.data.DigitsDataModule`
with its default fractions and seed (1077 / 360 / 360 images), whatever ``seed`` is given, so a
model trained on ``digits`` train never sees a ``digits_m`` or ``digits_c`` test digit.

Real data goes through the same call: ``mnist``, ``usps``, ``svhn`` and ``cifar10`` (torchvision,
under ``root``), ``cifar10_c`` (the published ``.npy`` files in ``root``), and any image folder
given by its path as the name (see :func:`~normapps.data.real.image_folder`).

Generated images are cached as uint8 files in ``cache_dir``, else ``$NORMAPPS_CACHE``, else
``~/.cache/normapps``, under ``domains/``. The file name carries a digest of every generation
parameter and :data:`CACHE_VERSION`; files are written atomically, and a file that cannot be read
is regenerated with a warning. A fresh generation is quantized to 8 bits exactly as a cached one,
so both give identical tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from normapps.io import atomic_path

from . import real
from .corruptions import check_corruption, corrupt
from .digits import _load_images, _split_indices
from .digits_m import blend_over_photos, photo_paths
from .syndigits import font_split, render_syndigits

__all__ = ["CACHE_VERSION", "SYNDIGITS_COUNTS", "available_domains", "default_cache_dir", "load_domain"]

#: Bumped whenever a change to the generators changes their output; part of every cache key.
CACHE_VERSION = 1
#: Images per split of ``syndigits`` when no ``count`` is given.
SYNDIGITS_COUNTS = {"train": 10000, "val": 2000, "test": 2000}

_EMBEDDED = ("syndigits", "digits", "digits_m", "digits_c")
_TORCHVISION = ("mnist", "usps", "svhn", "cifar10")
_CORRUPTED = ("digits_c", "cifar10_c")


def available_domains() -> tuple[str, ...]:
    """Names :func:`load_domain` accepts (besides an image folder's path): embedded first, then real."""
    return _EMBEDDED + _TORCHVISION + ("cifar10_c",)


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$NORMAPPS_CACHE`` if set, else ``~/.cache/normapps``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("NORMAPPS_CACHE"):
        return Path(os.environ["NORMAPPS_CACHE"])
    return Path.home() / ".cache" / "normapps"


def _derived_seed(*parts: object) -> int:
    """A 63-bit seed that depends on every part (so domains, splits and severities draw independently)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _subset_indices(size: int, count: int | None, seed: int, split: str, what: str) -> Tensor | None:
    """``count`` of ``size`` indices, seeded and sorted, or None for all; the same for every domain of one source."""
    if count is None:
        return None
    if count > size:
        raise ValueError(f"count={count} exceeds the {size} images of {what}")
    generator = torch.Generator().manual_seed(_derived_seed("subset", seed, split))
    return torch.randperm(size, generator=generator)[:count].sort().values


def _subset(dataset: Dataset, count: int | None, seed: int, split: str, what: str) -> Dataset:
    chosen = _subset_indices(len(dataset), count, seed, split, what)
    return dataset if chosen is None else Subset(dataset, chosen.tolist())


def _digits(split: str, image_size: int, seed: int, count: int | None) -> tuple[Tensor, Tensor]:
    """The grey ``digits`` of one split, ``(N, 1, S, S)``, with labels."""
    images, labels = _load_images(image_size)
    index = _split_indices(0.2, 0.2, 0)[split]
    chosen = _subset_indices(len(index), count, seed, split, f"digits {split}")
    if chosen is not None:
        index = index[chosen]
    return images[index], labels[index]


def _to_uint8(images: Tensor) -> Tensor:
    return (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _cached(key: dict[str, object], cache_dir: Path, build: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Images (float in [0, 1], on the 8-bit grid) and labels for ``key``: from the cache, else built and cached."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    path = cache_dir / "domains" / f"{key['domain']}-{key['split']}-{key['image_size']}px-{digest}.pt"
    if path.is_file():
        try:
            payload = torch.load(path, weights_only=True)
            if payload["key"] == key:
                return payload["images"].float() / 255.0, payload["labels"]
            warnings.warn(f"cache file {path} was written for other parameters; regenerating it", stacklevel=3)
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as err:
            warnings.warn(f"cache file {path} is unreadable ({err}); regenerating it", stacklevel=3)
    images, labels = build()
    images = _to_uint8(images)
    with atomic_path(path) as tmp:
        torch.save({"key": key, "images": images, "labels": labels}, tmp)
    return images.float() / 255.0, labels


def _generate(
    name: str, split: str, image_size: int, seed: int, count: int | None, corruption: str | None, severity: int | None
) -> tuple[dict[str, object], Callable[[], tuple[Tensor, Tensor]]]:
    """The cache key and the builder of one generated domain."""
    key: dict[str, object] = {
        "domain": name,
        "version": CACHE_VERSION,
        "split": split,
        "image_size": image_size,
        "seed": seed,
        "count": count,
        "corruption": corruption,
        "severity": severity,
    }
    rng_seed = _derived_seed(name, seed, split, corruption, severity)
    if name == "syndigits":
        fonts = font_split()["held_out" if split == "test" else "train"]
        total = SYNDIGITS_COUNTS[split] if count is None else count
        key.update(count=total, fonts=[font.name for font in fonts])

        def build() -> tuple[Tensor, Tensor]:
            return render_syndigits(total, image_size, fonts, np.random.default_rng(rng_seed))

    elif name == "digits_m":
        key["photos"] = [photo.name for photo in photo_paths()]

        def build() -> tuple[Tensor, Tensor]:
            images, labels = _digits(split, image_size, seed, count)
            return blend_over_photos(images, np.random.default_rng(rng_seed)), labels

    else:

        def build() -> tuple[Tensor, Tensor]:
            images, labels = _digits(split, image_size, seed, count)
            return corrupt(images.expand(-1, 3, -1, -1).contiguous(), corruption, severity, seed=rng_seed), labels

    return key, build


def _check_arguments(
    name: str, split: object, image_size: object, seed: object, count: object, corruption: object, severity: object, root: object
) -> None:
    if split not in real.SPLITS:
        raise ValueError(f"split must be one of {', '.join(real.SPLITS)}, got {split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive int or None (all images), got {count!r}")
    if name in _CORRUPTED:
        if corruption is None or severity is None:
            raise ValueError(f"{name} needs corruption= and severity= (1-5), got corruption={corruption!r}, severity={severity!r}")
        check_corruption(corruption, severity)
    elif corruption is not None or severity is not None:
        raise ValueError(f"corruption and severity apply only to {' and '.join(_CORRUPTED)}, not to {name}")
    if root is not None and name not in _TORCHVISION + ("cifar10_c",):
        raise ValueError(f"root= applies only to {', '.join(_TORCHVISION)} and cifar10_c, not to {name} (got root={root!r})")


def load_domain(
    name: str | os.PathLike[str],
    split: str = "train",
    image_size: int = 32,
    seed: int = 0,
    count: int | None = None,
    corruption: str | None = None,
    severity: int | None = None,
    root: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Dataset:
    """One split of one domain, as ``(image, label)`` pairs: images float ``(3, S, S)`` in [0, 1], int labels.

    Args:
        name: one of :func:`available_domains`, or the path of an image folder.
        split: ``"train"``, ``"val"`` or ``"test"``. ``digits_c`` corrupts any split (the benchmark
            uses ``test``); ``cifar10_c`` only has ``test``; torchvision's ``val`` is a fixed 10% of
            the official training set.
        image_size: side ``S`` of the square images (at least 8).
        seed: seed of the generation (same seed, same tensors) and of the ``count`` subset.
        count: number of images; None for the whole split (``syndigits``: :data:`SYNDIGITS_COUNTS`).
            ``syndigits`` renders any number; the others take a seeded subset of their split, the
            same images for ``digits``, ``digits_m`` and ``digits_c`` with the same seed.
        corruption: for ``digits_c`` and ``cifar10_c`` (required there): one of
            :data:`~normapps.data.corruptions.CORRUPTIONS` or the held-out four.
        severity: for ``digits_c`` and ``cifar10_c`` (required there): 1 to 5.
        root: the folder holding real data; default ``<cache dir>/data`` for torchvision's sets and
            ``<cache dir>/data/CIFAR-10-C`` for ``cifar10_c``. Not accepted by other domains.
        cache_dir: where generated images are cached (see :func:`default_cache_dir`).
        download: let torchvision fetch its data set into ``root`` if missing. Nothing is ever
            fetched otherwise; embedded domains have nothing to fetch and ignore it.

    Returns:
        A :class:`~torch.utils.data.TensorDataset` ``(images (N, 3, S, S) float32, labels (N,) int64)``
        for embedded domains; a lazily reading :class:`~torch.utils.data.Dataset` for real data.

    Raises:
        ValueError: for an unknown name (listing the valid ones) or an invalid argument.
        FileNotFoundError: when real data is missing, naming the layout that was expected.

    >>> data = load_domain("digits", split="test", image_size=16, count=8)
    >>> images, labels = data.tensors
    >>> images.shape, labels.dtype
    (torch.Size([8, 3, 16, 16]), torch.int64)
    """
    key_name = os.fspath(name)
    if key_name not in available_domains():
        path = Path(key_name)
        if path.is_dir():
            _check_arguments("an image folder", split, image_size, seed, count, corruption, severity, root)
            return _subset(real.image_folder(path, split, image_size), count, seed, split, f"image folder {path}")
        if isinstance(name, os.PathLike) or os.sep in key_name or "/" in key_name:
            raise FileNotFoundError(f"image folder {key_name} does not exist; expected {real.FOLDER_LAYOUT}")
        raise ValueError(f"unknown domain {key_name!r}; expected one of {', '.join(available_domains())}, or the path of an image folder")
    _check_arguments(key_name, split, image_size, seed, count, corruption, severity, root)
    if key_name == "digits":
        images, labels = _digits(split, image_size, seed, count)
        return TensorDataset(images.expand(-1, 3, -1, -1).contiguous(), labels)
    cache = default_cache_dir(cache_dir)
    if key_name in _EMBEDDED:
        key, build = _generate(key_name, split, image_size, seed, count, corruption, severity)
        return TensorDataset(*_cached(key, cache, build))
    if key_name == "cifar10_c":
        if split != "test":
            raise ValueError(f"cifar10_c is a corrupted test set and has only split='test', got {split!r}")
        folder = Path(root) if root is not None else cache / "data" / "CIFAR-10-C"
        return _subset(real.cifar10_c(folder, corruption, severity, image_size), count, seed, split, f"cifar10_c {corruption}-{severity}")
    folder = Path(root) if root is not None else cache / "data"
    return _subset(real.torchvision_dataset(key_name, split, folder, image_size, download), count, seed, split, f"{key_name} {split}")

