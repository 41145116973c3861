"""Images for generative models: ``(image in [-1, 1], label)`` batches of one domain (no download)."""

from __future__ import annotations

import os
from pathlib import Path

from pytorch_lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .domains import available_domains, load_domain

__all__ = ["GenerativeDataModule"]

_LABELLED = {"digits": 10, "syndigits": 10, "digits_m": 10, "mnist": 10, "usps": 10, "svhn": 10, "cifar10": 10}


class _Symmetric(Dataset):
    """A lazily read data set with its images mapped from [0, 1] to [-1, 1]."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.dataset[index]
        return image * 2.0 - 1.0, label


def _to_symmetric(dataset: Dataset) -> Dataset:
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
        return TensorDataset(images * 2.0 - 1.0, labels)
    return _Symmetric(dataset)


def _folder_classes(dataset: Dataset) -> list[str]:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return list(getattr(dataset, "classes", []))


class GenerativeDataModule(LightningDataModule):
    """Training images of one domain of :func:`~normapps.data.load_domain` for a GAN, scaled to [-1, 1].

    Batches are ``(images (B, 3, S, S) float in [-1, 1], labels (B,) int64)``; the generator's tanh output
    lives in the same range. ``train`` is shuffled and drops its last incomplete batch (a batch-normalized
    network never sees a tiny batch); ``val`` (real images for the metrics) keeps a fixed order.

    Domains: ``"digits"`` (scikit-learn's handwritten digits, 1077 training / 360 validation images),
    ``"syndigits"`` (digits rendered from bundled fonts), the other names of
    :func:`~normapps.data.available_domains` (real data on disk), or the path of an image folder. A
    folder with ``train`` / ``val`` subfolders serves those; a folder without them (class folders or
    plain images) serves all its images as ``train`` and the same images as ``val``.

    :attr:`num_classes` is 10 for the digit domains (and MNIST, USPS, SVHN, CIFAR-10), the number of
    class folders of a labelled image folder, and 1 for a folder of plain images (labelled -1: only an
    unconditional model can use it). ``normapps fit`` links it to the model's ``num_classes``.

    >>> dm = GenerativeDataModule("digits", image_size=16, batch_size=8, count=32)
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> x.shape, float(x.min()) >= -1.0, float(x.max()) <= 1.0, dm.num_classes
    (torch.Size([8, 3, 16, 16]), True, True, 10)
    """

    def __init__(
        self,
        domain: str = "digits",
        image_size: int = 32,
        batch_size: int = 64,
        count: int | None = None,
        val_count: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        """Initialize the datamodule.

        Args:
            domain: a name of :func:`~normapps.data.available_domains` without corruption (``digits``,
                ``syndigits``, ...) or the path of an image folder.
            image_size: side of the square images (at least 8).
            batch_size: samples per batch.
            count: number of training images (a seeded subset; ``syndigits`` renders that many);
                None for the whole split.
            val_count: number of validation images; None for the whole split.
            seed: seed of the generation and of the subsets.
            num_workers: subprocesses of each DataLoader (0 loads in the main process).
            cache_dir: where generated images are cached (see :func:`~normapps.data.default_cache_dir`).

        Raises:
            ValueError: if an argument is out of range or the domain needs a corruption.
        """
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if domain in ("digits_c", "cifar10_c"):
            raise ValueError(f"domain {domain!r} is a corrupted test set; a generative model trains on one of "
                             f"{', '.join(d for d in available_domains() if not d.endswith('_c'))} or an image folder")
        self.domain = os.fspath(domain)
        self.image_size = image_size
        self.batch_size = batch_size
        self.count = count
        self.val_count = val_count
        self.seed = seed
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.splits: dict[str, Dataset] = {}
        self._raw_train: Dataset | None = None
        self.save_hyperparameters()
        self.hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")

    def _is_folder(self) -> bool:
        return self.domain not in available_domains()

    def _folder_has_splits(self) -> bool:
        return any((Path(self.domain) / split).is_dir() for split in ("train", "val", "test"))

    def _load(self, split: str, count: int | None) -> Dataset:
        """One split in [0, 1]; a folder without split subfolders serves all its images for every split."""
        if self._is_folder():
            if not Path(self.domain).is_dir():
                return load_domain(self.domain, split, self.image_size, self.seed, count)  # the clear FileNotFoundError
            if not self._folder_has_splits():
                split = "test"
            return load_domain(self.domain, split, self.image_size, self.seed, count)
        return load_domain(self.domain, split, self.image_size, self.seed, count, cache_dir=self.cache_dir)

    def _train_raw(self) -> Dataset:
        if self._raw_train is None:
            self._raw_train = self._load("train", self.count)
        return self._raw_train

    @property
    def num_classes(self) -> int:
        """Number of classes: 10 for the digit domains, the class folders of an image folder (1 if none)."""
        if not self._is_folder():
            return _LABELLED[self.domain]
        return max(1, len(_folder_classes(self._train_raw())))

    def setup(self, stage: str | None = None) -> None:
        """Load ``train`` and ``val`` (once; both are small or read lazily)."""
        if self.splits:
            return
        self.splits = {
            "train": _to_symmetric(self._train_raw()),
            "val": _to_symmetric(self._load("val", self.val_count)),
        }

    def _dataloader(self, split: str, train: bool) -> DataLoader:
        if not self.splits:
            raise RuntimeError("call setup() before asking for a dataloader")
        dataset = self.splits[split]
        if train and len(dataset) < self.batch_size:  # type: ignore[arg-type]
            raise ValueError(f"the {split} split has {len(dataset)} images, fewer than batch_size={self.batch_size}; "  # type: ignore[arg-type]
                             "lower the batch size or use more images (count)")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the last incomplete batch is dropped."""
        return self._dataloader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches (real images) in a fixed order."""
        return self._dataloader("val", train=False)
