"""Real image data on disk, served like the embedded domains: RGB float images of one size.

Three sources: an image folder (class folders as torchvision's
:class:`~torchvision.datasets.ImageFolder` reads them, or a flat folder of unlabelled images), the
torchvision data sets MNIST, USPS, SVHN and CIFAR-10 under a local root (fetched only with
``download=True``), and the CIFAR-10-C ``.npy`` files (Hendrycks & Dietterich 2019) in a local
folder. Each item is ``(image, label)`` with ``image`` a float tensor ``(3, S, S)`` in [0, 1]
(grey images repeated over the channels, every image resized bilinearly to ``S``) and ``label``
an int (:data:`UNLABELLED` in a flat folder). Images are read lazily, one item at a time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

__all__ = [
    "FOLDER_LAYOUT", "SPLITS", "TORCHVISION_LAYOUTS", "UNLABELLED", "ImageFiles", "ToRGBTensor", "cifar10_c", "image_folder",
    "torchvision_dataset",
]

SPLITS = ("train", "val", "test")

#: What each torchvision data set expects under its root.
TORCHVISION_LAYOUTS = {
    "mnist": "<root>/MNIST/raw/ holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "usps": "<root>/usps.bz2 (train) and <root>/usps.t.bz2 (test)",
    "svhn": "<root>/train_32x32.mat and <root>/test_32x32.mat",
    "cifar10": "<root>/cifar-10-batches-py/ holding data_batch_1 ... data_batch_5, test_batch and batches.meta",
}

#: The layouts an image folder may have.
FOLDER_LAYOUT = "<folder>/<class>/<image>, <folder>/<split>/<class>/<image> or <folder>/<image> (unlabelled)"

#: The label of every image of a folder without class folders.
UNLABELLED = -1

#: Fraction of an official training set held out as the ``val`` split.
VAL_FRACTION = 0.1


class ToRGBTensor:
    """Convert a PIL image or an ``(H, W)`` / ``(H, W, 3)`` uint8 array to a float ``(3, S, S)`` tensor in [0, 1]."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, image: Image.Image | np.ndarray) -> Tensor:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = image.convert("RGB")
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def _val_split(dataset: Dataset, split: str) -> Dataset:
    """``train`` or ``val`` part of an official training set: a fixed 10% (seed 0, any user seed) is ``val``."""
    size = len(dataset)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    cut = int(size * VAL_FRACTION)
    chosen = order[:cut] if split == "val" else order[cut:]
    return Subset(dataset, chosen.sort().values.tolist())


def torchvision_dataset(name: str, split: str, root: Path, image_size: int, download: bool) -> Dataset:
    """MNIST, USPS, SVHN or CIFAR-10 from ``root``.

    ``test`` is the official test set; ``train`` and ``val`` split the official training set,
    ``val`` being a fixed 10% of it.

    Raises:
        FileNotFoundError: when the files are missing and ``download`` is false, with the layout
            expected under ``root``.
    """
    transform = ToRGBTensor(image_size)
    constructors: dict[str, Callable[[bool], Dataset]] = {
        "mnist": lambda train: datasets.MNIST(root, train=train, transform=transform, download=download),
        "usps": lambda train: datasets.USPS(root, train=train, transform=transform, download=download),
        "svhn": lambda train: datasets.SVHN(root, split="train" if train else "test", transform=transform, download=download),
        "cifar10": lambda train: datasets.CIFAR10(root, train=train, transform=transform, download=download),
    }
    try:
        dataset = constructors[name](split != "test")
    except (RuntimeError, OSError) as err:
        if download:
            raise
        raise FileNotFoundError(
            f"{name} not found under {root}: expected {TORCHVISION_LAYOUTS[name]}; "
            f"pass download=True to fetch it, or root= the folder that holds it ({err})"
        ) from err
    return dataset if split == "test" else _val_split(dataset, split)


class ImageFiles(Dataset):
    """``(image, label)`` pairs read lazily from image files that were checked to decode.

    Attributes:
        samples: ``(path, label)`` of every readable image, in sorted order.
        classes: the class folder names in sorted order (``label`` indexes them); empty for a flat
            folder, whose labels are all :data:`UNLABELLED`.
        skipped: ``(path, reason)`` of every file with an image extension that did not decode.
    """

    def __init__(
        self, samples: list[tuple[str, int]], classes: list[str], skipped: list[tuple[str, str]], transform: ToRGBTensor
    ) -> None:
        self.samples, self.classes, self.skipped, self.transform = samples, classes, skipped, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return self.transform(image), label
        except OSError as err:
            raise OSError(f"cannot read image {path} (it decoded when the folder was scanned): {err}") from err


def _decode_error(path: str) -> str | None:
    """None if the file at ``path`` decodes as an image, else the reason it does not."""
    try:
        with Image.open(path) as image:
            image.draft(image.mode, (1, 1))  # JPEG: decode at 1/8 scale, which still reads every byte
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def image_folder(path: Path, split: str, image_size: int) -> ImageFiles:
    """Images in ``<path>/<class>/<image>``, ``<path>/<split>/<class>/<image>`` with split folders,
    or ``<path>/<image>`` (a flat folder: unlabelled images).

    A folder with ``train``, ``val`` or ``test`` subfolders serves each split from its subfolder;
    a folder without them is a single data set, served as the ``test`` split (for example the
    unlabelled target of an adaptation, with any class folder names). Labels are the indices of
    the class folder names in sorted order; images in class folders are found at any depth, as
    :class:`~torchvision.datasets.ImageFolder` finds them. A folder without class folders serves
    the image files directly in it, labelled :data:`UNLABELLED`. Files are images by their
    extension (``.jpg``, ``.png``, ... as ImageFolder's); each one is decoded once here, and the
    files that do not decode are skipped with a warning that counts them
    (:attr:`ImageFiles.skipped` lists them).

    Raises:
        FileNotFoundError: if the folder or the asked split's subfolder is missing, or holds no image file.
        ValueError: if a folder without split subfolders is asked for ``train`` or ``val``, or no
            image file decodes.
        OSError: if the folder cannot be read.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {path} does not exist; expected {FOLDER_LAYOUT}")
    present = [name for name in SPLITS if (path / name).is_dir()]
    if present and split not in present:
        raise FileNotFoundError(f"{path} has split folders {present} but no {split!r}: expected {path / split}/<class>/<image>")
    if not present and split != "test":
        raise ValueError(
            f"{path} has no train/val/test subfolders, so it is one data set served as split='test'; "
            f"ask for split='test', or arrange it as {path}/{split}/<class>/<image>"
        )
    folder = path / split if present else path
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        classes = [entry.name for entry in entries if entry.is_dir()]
        if classes:
            found = make_dataset(folder, {name: i for i, name in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True)
        else:
            found = [(entry.path, UNLABELLED) for entry in entries
                     if entry.is_file() and has_file_allowed_extension(entry.name, IMG_EXTENSIONS)]
    except OSError as err:
        raise OSError(f"cannot read image folder {folder}: {err.strerror or err}") from err
    if not found:
        raise FileNotFoundError(
            f"no images found in {folder}: expected {folder}/<class>/<image> or {folder}/<image>, "
            f"image files ending in {' '.join(IMG_EXTENSIONS)}"
        )
    samples, skipped = [], []
    for file, label in found:
        reason = _decode_error(file)
        if reason is None:
            samples.append((file, label))
        else:
            skipped.append((file, reason))
    if not samples:
        file, reason = skipped[0]
        raise ValueError(f"none of the {len(found)} image files in {folder} could be read as an image (e.g. {file}: {reason})")
    if skipped:
        first = ", ".join(f"{Path(file).name} ({reason})" for file, reason in skipped[:3])
        warnings.warn(
            f"skipped {len(skipped)} of {len(found)} image files in {folder} that could not be read: "
            f"{first}{', ...' if len(skipped) > 3 else ''}",
            stacklevel=2,
        )
    return ImageFiles(samples, classes, skipped, ToRGBTensor(image_size))


class _ArrayImages(Dataset):
    """``(image, label)`` pairs from an ``(N, H, W, 3)`` uint8 array (possibly memory-mapped) and labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: ToRGBTensor) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(np.asarray(self.images[index])), int(self.labels[index])


def cifar10_c(root: Path, corruption: str, severity: int, image_size: int) -> Dataset:
    """One corruption at one severity from the CIFAR-10-C files in ``root``.

    The layout of the published data: ``<root>/<corruption>.npy``, uint8 images ``(5 n, 32, 32, 3)``
    holding severities 1 to 5 in blocks of ``n`` (10000), and ``<root>/labels.npy`` with the
    ``5 n`` labels. The images are memory-mapped, not loaded whole.

    Raises:
        FileNotFoundError: if a file is missing, naming the layout and the ``.npy`` files found.
        ValueError: if the arrays do not have that layout.
    """
    images_path, labels_path = root / f"{corruption}.npy", root / "labels.npy"
    layout = (
        f"expected {root}/{corruption}.npy (uint8 images, 5 severities x n, 32, 32, 3) and {root}/labels.npy (5 x n labels)"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10-C folder {root} does not exist; {layout}")
    missing = [path.name for path in (images_path, labels_path) if not path.is_file()]
    if missing:
        found = sorted(path.name for path in root.glob("*.npy"))
        raise FileNotFoundError(f"{', '.join(missing)} not in {root} (found {found or 'no .npy files'}); {layout}")
    images = np.load(images_path, mmap_mode="r")
    labels = np.load(labels_path)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) != len(labels) or len(labels) % 5:
        raise ValueError(
            f"{images_path} holds {images.dtype} {images.shape} and {labels_path} {labels.shape}; {layout}"
        )
    block = len(labels) // 5
    rows = slice((severity - 1) * block, severity * block)
    return _ArrayImages(images[rows], labels[rows], ToRGBTensor(image_size))
