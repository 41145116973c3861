"""Source and target data sets by name (:func:`normapps.data.load_domain`) as one Lightning datamodule.

:class:`DomainDataModule` lets a YAML config name a domain shift instead of building data sets::

    data:
      class_path: normapps.tasks.adaptation.DomainDataModule
      init_args: {source: digits, target: digits_c, target_corruption: fog, target_severity: 5}

It lives beside :class:`~normapps.tasks.adaptation.lightning.DomainPairDataModule` (not in
:mod:`normapps.data`, which knows nothing of tasks) because its paired mode is that datamodule.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from normapps.data import load_domain
from normapps.data.corruptions import check_corruption

from .lightning import DomainPairDataModule

__all__ = ["DomainDataModule"]


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class DomainDataModule(LightningDataModule):
    """A labelled source domain to train on and a target domain to evaluate on, both by name.

    ======================  ===============================================================
    ``train_dataloader``    labelled source ``train`` split, shuffled, last incomplete batch
                            dropped; with ``paired=True``, batches ``{"source": (x, y),
                            "target": (x, y)}`` zipping it with the target ``train`` split,
                            whose labels are never read (for ``DSBNTask`` / ``TransNormTask``)
    ``val_dataloader``      labelled source ``val`` split; with ``paired=True``, the target
                            ``val`` split (the tasks evaluate on the target; its labels only
                            feed the logged metrics)
    ``test_dataloader``     target ``test`` split (labels used only to measure the error)
    ``predict_dataloader``  target ``test`` split, in order
    ======================  ===============================================================

    Images are float ``(3, S, S)`` in [0, 1], as :func:`~normapps.data.load_domain` gives them (no
    standardization: the networks here start with convolution and BatchNorm). Data sets are built
    in :meth:`setup` and cached by :func:`~normapps.data.load_domain` (``cache_dir``, else
    ``$NORMAPPS_CACHE``, else ``~/.cache/normapps``). Every domain of
    :func:`~normapps.data.available_domains` has the ten digit (or CIFAR-10) classes:
    :attr:`num_classes` is 10, and the command line links it to the model's ``num_classes``.

    >>> dm = DomainDataModule("digits", "digits_c", target_corruption="fog", target_severity=5, count=64)
    >>> dm.setup("test")
    >>> x, y = next(iter(dm.test_dataloader()))
    >>> x.shape
    torch.Size([64, 3, 32, 32])
    """

    #: Classes of every domain of :func:`~normapps.data.available_domains`.
    num_classes: int = 10

    def __init__(
        self,
        source: str = "digits",
        target: str = "digits_m",
        image_size: int = 32,
        batch_size: int = 64,
        target_corruption: str | None = None,
        target_severity: int | None = None,
        seed: int = 0,
        count: int | None = None,
        num_workers: int = 0,
        paired: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        """Initialize the datamodule (nothing is loaded before :meth:`setup`).

        Args:
            source: the labelled training domain: a name of :func:`~normapps.data.available_domains`
                other than the corrupted ``digits_c`` / ``cifar10_c``, or an image folder's path.
            target: the evaluation domain, a name of :func:`~normapps.data.available_domains` or an
                image folder's path.
            image_size: side of the square images.
            batch_size: samples per batch in every loader (source and target alike when paired).
            target_corruption: the corruption of a ``digits_c`` / ``cifar10_c`` target.
            target_severity: its severity, 1 to 5.
            seed: seed of the generated data and of the ``count`` subsets (not of training).
            count: images per split of each domain: ``syndigits`` renders ``count`` images, the
                other domains keep a seeded subset of at most ``count`` (the same digits for
                ``digits``, ``digits_m`` and ``digits_c``); None: whole splits (``syndigits``:
                :data:`~normapps.data.domains.SYNDIGITS_COUNTS`).
            num_workers: subprocesses of each DataLoader.
            paired: zip the source training batches with unlabelled target training batches.
            cache_dir: where generated images are cached (see :func:`~normapps.data.default_cache_dir`).

        Raises:
            ValueError: if a size is out of range, or the corruption arguments do not fit the target.
        """
        super().__init__()
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            _positive_int(name, value)
        if count is not None:
            _positive_int("count", count)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        corrupted = ("digits_c", "cifar10_c")
        if source in corrupted:
            raise ValueError(f"source {source!r} is a corrupted test domain; train on its clean domain and use it as target")
        if target in corrupted:
            if target_corruption is None or target_severity is None:
                raise ValueError(f"target {target!r} needs target_corruption and target_severity (1-5)")
            check_corruption(target_corruption, target_severity)
        elif target_corruption is not None or target_severity is not None:
            raise ValueError(
                f"target_corruption / target_severity apply to a {' or '.join(corrupted)} target, not to {target!r}"
            )
        self.source, self.target = source, target
        self.image_size, self.batch_size = image_size, batch_size
        self.target_corruption, self.target_severity = target_corruption, target_severity
        self.seed, self.count = seed, count
        self.num_workers, self.paired = num_workers, paired
        self.cache_dir = cache_dir
        # Checkpoints record the data settings and class (normapps adapt rebuilds the preprocessing from them).
        self.save_hyperparameters()
        self.hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")
        self.splits: dict[str, Dataset] = {}
        self.pair: DomainPairDataModule | None = None

    def load(self, role: str, split: str) -> Dataset:
        """One split of the ``"source"`` or ``"target"`` domain, as this module loads it."""
        if role not in ("source", "target"):
            raise ValueError(f"role must be 'source' or 'target', got {role!r}")
        options: dict[str, Any] = {}
        if role == "target":
            options = {"corruption": self.target_corruption, "severity": self.target_severity}
        name = self.source if role == "source" else self.target
        options.update(image_size=self.image_size, seed=self.seed, cache_dir=self.cache_dir)
        if name == "syndigits":
            return load_domain(name, split, count=self.count, **options)
        data = load_domain(name, split, **options)
        if self.count is not None and self.count < len(data):
            data = load_domain(name, split, count=self.count, **options)
        return data

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs (all of them for ``None``); splits already loaded are kept."""
        wanted = {
            "fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"],
        }.get(stage or "", ["train", "val", "test"])
        if self.paired:
            wanted = ["train", "val", "test"]
        roles = {"train": "source", "val": "target" if self.paired else "source", "test": "target"}
        for split in wanted:
            if split not in self.splits:
                self.splits[split] = self.load(roles[split], split)
        if self.paired and self.pair is None:
            self.pair = DomainPairDataModule(
                self.splits["train"], self.load("target", "train"), target_val=self.splits["val"],
                target_test=self.splits["test"], batch_size=self.batch_size, num_classes=self.num_classes,
                num_workers=self.num_workers,
            )

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if split not in self.splits:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        data = self.splits[split]
        return DataLoader(data, batch_size=self.batch_size, shuffle=train, drop_last=train and len(data) > self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> Any:
        """Shuffled labelled source batches; paired: ``{"source": ..., "target": ...}`` batches."""
        if self.pair is not None:
            return self.pair.train_dataloader()
        return self._loader("train", train=True)

    def val_dataloader(self) -> Any:
        """Source validation batches; paired: target validation batches."""
        if self.pair is not None:
            return self.pair.val_dataloader()
        return self._loader("val")

    def test_dataloader(self) -> Any:
        """Target test batches, in order."""
        return self._loader("test")

    def predict_dataloader(self) -> Any:
        """Target test batches, in order (their labels are ignored by ``predict_step``)."""
        return self._loader("test")
