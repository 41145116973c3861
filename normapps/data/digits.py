"""scikit-learn's bundled handwritten digits as a Lightning datamodule (no download)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningDataModule
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset


@functools.lru_cache(maxsize=4)
def _load_images(image_size: int) -> tuple[Tensor, Tensor]:
    """All 1797 digits as float images in [0, 1] of shape (N, 1, image_size, image_size)."""
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), torch.as_tensor(digits.target, dtype=torch.long)


@functools.lru_cache(maxsize=16)
def _split_indices(val_fraction: float, test_fraction: float, seed: int) -> dict[str, Tensor]:
    """Stratified train / val / test indices into the full data set (cached: the split is fixed)."""
    _, targets = _load_images(8)
    indices = torch.arange(len(targets)).numpy()
    labels = targets.numpy()
    rest, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest,
        test_size=val_fraction / (1.0 - test_fraction),
        stratify=labels[rest],
        random_state=seed,
    )
    return {"train": torch.as_tensor(train), "val": torch.as_tensor(val), "test": torch.as_tensor(test)}


@functools.lru_cache(maxsize=16)
def _train_statistics(image_size: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[float, float]:
    """Mean and (population) standard deviation of the training split's pixels at ``image_size``."""
    images, _ = _load_images(image_size)
    train = images[_split_indices(val_fraction, test_fraction, seed)["train"]].double()
    return float(train.mean()), float(train.std(correction=0))


class DigitsDataModule(LightningDataModule):
    """UCI handwritten digits (1797 images of 8x8 pixels, 10 classes) from ``sklearn.datasets``.

    Images are scaled to [0, 1], upsampled bilinearly to ``image_size`` and standardized with
    :attr:`mean` and :attr:`std`, the pixel statistics of the *training* split at ``image_size``
    (validation and test images do not contribute; cached per split and size). The split into
    train / validation / test is stratified by class and fixed by ``seed``, independently of the
    global seed. Tensors are built once per process and image size, and kept in memory.

    The training loader drops its last incomplete batch, so that batch-statistics normalizations
    never see a batch of one sample.

    >>> dm = DigitsDataModule(batch_size=32, image_size=16)
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> x.shape, y.shape
    (torch.Size([32, 1, 16, 16]), torch.Size([32]))
    """

    num_samples: int = 1797

    def __init__(
        self,
        batch_size: int = 32,
        image_size: int = 16,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        """Initialize the datamodule.

        Args:
            batch_size: samples per batch, for every split.
            image_size: side of the square images after bilinear upsampling (at least 8).
            val_fraction: fraction of all samples held out for validation.
            test_fraction: fraction of all samples held out for testing.
            seed: seed of the stratified split.
            num_workers: subprocesses of each DataLoader (0 loads in the main process).

        Raises:
            ValueError: if an argument is out of range.
        """
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8 (the digits are 8x8), got {image_size!r}")
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < fraction < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {fraction!r}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training data, "
                f"got {val_fraction} + {test_fraction}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
        self.batch_size = batch_size
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.splits: dict[str, TensorDataset] = {}
        # Checkpoints record the data settings and class (normapps adapt rebuilds the preprocessing from them).
        self.save_hyperparameters()
        self.hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")

    @property
    def num_classes(self) -> int:
        """Number of classes (the ten digits)."""
        return 10

    def split_indices(self) -> dict[str, Tensor]:
        """Indices into the full data set of the ``train``, ``val`` and ``test`` samples."""
        return {name: index.clone() for name, index in _split_indices(self.val_fraction, self.test_fraction, self.seed).items()}

    def split_sizes(self) -> dict[str, int]:
        """Number of samples of each split, e.g. ``{"train": 1077, "val": 360, "test": 360}``."""
        return {name: len(index) for name, index in self.split_indices().items()}

    @property
    def mean(self) -> float:
        """Mean pixel value of the training split at ``image_size``, after scaling to [0, 1]."""
        return _train_statistics(self.image_size, self.val_fraction, self.test_fraction, self.seed)[0]

    @property
    def std(self) -> float:
        """Standard deviation of the training split's pixels at ``image_size``, after scaling to [0, 1]."""
        return _train_statistics(self.image_size, self.val_fraction, self.test_fraction, self.seed)[1]

    def setup(self, stage: str | None = None) -> None:
        """Build the three splits (all at once: they are small and derived from one split)."""
        if self.splits:
            return
        images, targets = _load_images(self.image_size)
        images = (images - self.mean) / self.std
        self.splits = {
            name: TensorDataset(images[index], targets[index])
            for name, index in self.split_indices().items()
        }

    def _dataloader(self, split: str, train: bool = False) -> DataLoader:
        if not self.splits:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(self.splits[split]) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (the last incomplete batch is dropped)."""
        return self._dataloader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test set, in a fixed order, for predictions."""
        return self._dataloader("test")
