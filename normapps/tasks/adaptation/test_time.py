"""Test-time adaptation from a config: a trained classifier, one method of :data:`METHODS`, the target data.

::

    normapps test -c configs/adaptation/digits_digits_m/tent.yaml --model.init_args.checkpoint SOURCE.ckpt

:class:`TestTimeAdaptationTask` loads a :class:`~normapps.tasks.ClassificationTask` checkpoint and,
at the start of ``test`` (or ``predict``), adapts a copy of its network to the target data the
datamodule serves: ``adabn`` / ``adabn_ema`` read the whole test set once first (:func:`adapt`);
``source``, ``norm``, ``prior`` and ``tent`` adapt batch by batch as the batches are predicted
(``tent``: each batch is predicted by the forward pass it then takes its step from, as
:func:`predict_stream` does). Every run starts from the checkpoint: one run is one shift (reset per
shift). ``tent`` needs gradients: run it with ``trainer.inference_mode: false``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from normapps.norm.stats import iter_inputs
from normapps.tasks.classification import ClassificationTask

from .methods import METHODS, adapt
from .tent import Tent

__all__ = ["TestTimeAdaptationTask"]

_TEST_METHODS = [name for name, method in METHODS.items() if method.stage == "test"]


def _batches(loaders: Any) -> Iterator[Any]:
    """The batches of the trainer's test / predict loader(s): one loader, or a list / dict of them in turn.

    Each DataLoader is read through a new DataLoader over the same data set, batch size and collate
    function, in order: iterating the trainer's own loader before its run would restart the batch
    sampler Lightning wraps it with for predict, and the run would see no batch.
    """
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        if isinstance(loader, DataLoader):
            batch_size = getattr(loader.batch_sampler, "batch_size", None) or loader.batch_size
            loader = DataLoader(loader.dataset, batch_size=batch_size, collate_fn=loader.collate_fn)
        yield from loader


class TestTimeAdaptationTask(LightningModule):
    """Evaluate a trained :class:`~normapps.tasks.ClassificationTask` on the target with a test-time method.

    Logged by ``test``: ``test_acc`` and ``test_loss`` on the target test data (the labels are read
    by the metrics only). ``predict`` returns the predicted class of every sample. Not trainable:
    use ``normapps test`` or ``normapps predict``.
    """

    __test__ = False  # a task, not a pytest test class, despite its name

    def __init__(
        self,
        checkpoint: str,
        method: str = "source",
        options: dict[str, Any] | None = None,
        num_classes: int = 10,
    ) -> None:
        """Initialize the task (the checkpoint is read by :meth:`configure_model`).

        Args:
            checkpoint: a Lightning checkpoint of :class:`~normapps.tasks.ClassificationTask`
                (``normapps fit -c configs/adaptation/<shift>/source.yaml`` writes one).
            method: ``source``, ``adabn``, ``adabn_ema``, ``norm``, ``prior`` or ``tent``.
            options: the method's options, as :func:`~normapps.tasks.adaptation.adapt` takes them
                (``prior``: ``{n_source: 16}``; ``tent``: ``{lr: 0.001, steps: 1, episodic: false}``).
            num_classes: classes of the data (linked from the datamodule); must match the checkpoint.

        Raises:
            ValueError: for a method that is not a test-time one.
            FileNotFoundError: if ``checkpoint`` is not a file.
        """
        super().__init__()
        if method not in _TEST_METHODS:
            raise ValueError(f"method must be a test-time method, one of {_TEST_METHODS}; got {method!r} "
                             "(dsbn and transnorm are trained: normapps fit -c configs/adaptation/<shift>/<method>.yaml)")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist; train the source model first "
                                    "(normapps fit -c configs/adaptation/<shift>/source.yaml)")
        self.save_hyperparameters()
        self.source: nn.Module | None = None
        self.adapted: nn.Module | None = None
        metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=num_classes, average="micro"), "loss": MeanMetric()})
        self.test_metrics = metrics.clone(prefix="test_")

    def configure_model(self) -> None:
        """Load the source network from the checkpoint (once; the trainer calls this before test / predict).

        Not in ``__init__``: a LightningModule built while the command line instantiates this one
        would take this one's hyper-parameters.

        Raises:
            ValueError: if the checkpoint's class count differs from ``num_classes``.
        """
        if self.source is not None:
            return
        checkpoint, num_classes = self.hparams.checkpoint, self.hparams.num_classes
        source = ClassificationTask.load_from_checkpoint(checkpoint, map_location="cpu")
        if source.hparams.num_classes != num_classes:
            raise ValueError(f"the data has {num_classes} classes but the checkpoint {checkpoint} predicts "
                             f"{source.hparams.num_classes}")
        self.source = source.model.eval()

    def adapt_to(self, loaders: Any) -> None:
        """Build the adapted model from the source network; offline methods read ``loaders`` once."""
        self.configure_model()
        method, options = self.hparams.method, dict(self.hparams.options or {})
        if method == "tent":
            if torch.is_inference_mode_enabled():
                raise RuntimeError("tent takes gradient steps at test time: set trainer.inference_mode: false "
                                   "(--trainer.inference_mode false)")
            self.adapted = Tent(copy.deepcopy(self.source), **options)
        elif METHODS[method].online:
            self.adapted = adapt(self.source, method, None, **options)
        else:
            self.adapted = adapt(self.source, method, _batches(loaders), **options)

    def on_test_start(self) -> None:
        """Adapt to the test data (a fresh copy of the source network every run)."""
        self.adapt_to(self.trainer.test_dataloaders)

    def on_predict_start(self) -> None:
        """Adapt to the predict data (a fresh copy of the source network every run)."""
        self.adapt_to(self.trainer.predict_dataloaders)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the adapted model (``tent``: after predicting, one step on ``x``)."""
        if self.adapted is None:
            raise RuntimeError("the model adapts when test or predict starts; call adapt_to(loaders) to use it directly")
        return self.adapted(x)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the target accuracy and cross-entropy."""
        x, y = batch[0], batch[1]
        logits = self(x)
        self.test_metrics.update(preds=logits, target=y, value=F.cross_entropy(logits, y), weight=len(y))

    def on_test_epoch_end(self) -> None:
        """Log ``test_acc`` and ``test_loss``."""
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Predicted class of each target sample (labels in the batch, if any, are ignored)."""
        return self(next(iter_inputs([batch]))).argmax(dim=1)

