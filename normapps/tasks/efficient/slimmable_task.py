"""Training slimmable and universally slimmable networks with Lightning.

:class:`SlimmableTask` trains :class:`~normapps.tasks.efficient.slimmable.SlimmableCNN` by summing
the losses of several widths on every batch, and reports the accuracy of each listed width:

* ``mode="slimmable"`` (Yu et al. 2019, Algorithm 1): every listed width on every batch, each
  with its own switchable BatchNorm;
* ``mode="universal"`` (Yu & Huang 2019, Algorithm 1): the sandwich rule -- the largest width, the
  smallest and ``n_random`` widths drawn uniformly from the range -- with shared BN affine and
  batch statistics; before every validation / test the BN statistics of each listed width are
  calibrated (:func:`~normapps.tasks.efficient.slimmable.calibrate`) on ``calibration_batches``
  training batches, which costs ``len(width_mults) * calibration_batches`` extra forward passes
  per evaluation (for the digits config: 4 x 8 batches of 32, about a tenth of a training epoch).

In-place distillation (Yu & Huang 2019, section 4.2; optional in both modes): the largest width
learns from the labels, every other width from the largest's predicted distribution of the same
batch (detached), ``L = CE(f_max(x), y) + sum_w CE(f_w(x), softmax(f_max(x)))``.

One width alone (``width_mults: [0.5]``) trains an ordinary network of that width with the same
code: the baseline that switchable-BN widths are compared with.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from normapps.tasks.classification import ClassificationTask

from .slimmable import SlimmableCNN, calibrate, check_width_mults, use_width, width_key

MODES = ("slimmable", "universal")


class SlimmableTask(LightningModule):
    """Train a slimmable network with the summed losses of several widths; evaluate every listed width.

    Logged once per epoch: ``train_loss`` (the summed loss, mean over batches), and per listed
    width ``w``: ``val_acc_w{w}``, ``val_loss_w{w}``, ``test_acc_w{w}``, ``test_loss_w{w}`` (e.g.
    ``val_acc_w0.25``; width 1 is ``w1``). :meth:`predict_step` predicts at the largest width.
    """

    def __init__(
        self,
        mode: Literal["slimmable", "universal"] = "slimmable",
        width_mults: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        n_random: int = 2,
        inplace_distillation: bool = False,
        calibration_batches: int = 8,
        width: int = 32,
        num_classes: int = 10,
        in_channels: int = 1,
        divisor: int = 1,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
    ) -> None:
        """Initialize the task.

        Args:
            mode: ``"slimmable"`` (switchable BN, every listed width trained) or ``"universal"``
                (any width in ``[min(width_mults), max(width_mults)]``, sandwich rule, calibrated BN).
            width_mults: the widths trained (slimmable) and evaluated (both modes); one width trains
                that width alone.
            n_random: universal only: random widths per batch besides the largest and smallest.
            inplace_distillation: widths below the largest learn from its soft predictions
                instead of the labels.
            calibration_batches: universal only: training batches that calibrate each evaluated
                width's BN statistics before every validation and test.
            width: channels of the network's first block at width 1.
            num_classes: number of classes (linked from the datamodule by the CLI).
            in_channels: channels of the input images.
            divisor: channel counts are multiples of it.
            optimizer, lr, momentum, weight_decay, lr_schedule: as
                :class:`~normapps.tasks.ClassificationTask`.

        Raises:
            ValueError: if ``mode`` is unknown, ``width_mults`` is empty or holds a width outside
                (0, 1], or another argument is out of range.
        """
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.width_mults = check_width_mults(width_mults)
        for name, value, low in (("n_random", n_random, 0), ("calibration_batches", calibration_batches, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if weight_decay < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need weight_decay >= 0 and 0 <= momentum < 1, got {weight_decay!r}, {momentum!r}")
        self.save_hyperparameters()
        self.model = SlimmableCNN(num_classes=num_classes, width=width, in_channels=in_channels,
                                  width_mults=self.width_mults, universal=mode == "universal", divisor=divisor)
        self.train_loss = MeanMetric()
        self.eval_metrics = nn.ModuleDict({
            split: nn.ModuleDict({
                width_key(w): nn.ModuleDict({"acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
                                             "loss": MeanMetric()})
                for w in self.width_mults
            })
            for split in ("val", "test")
        })

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of shape (N, num_classes) at the network's active width."""
        return self.model(x)

    def training_widths(self) -> list[float]:
        """The widths of one training step, largest first.

        Slimmable: every listed width. Universal (sandwich rule): the largest, the smallest and
        ``n_random`` widths drawn uniformly from between them (torch's global generator).
        """
        if self.hparams.mode == "slimmable" or len(self.width_mults) == 1:
            return sorted(self.width_mults, reverse=True)
        low, high = self.width_mults[0], self.width_mults[-1]
        drawn = (low + (high - low) * torch.rand(self.hparams.n_random)).tolist()
        return [high, low, *drawn]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """The sum over :meth:`training_widths` of each width's cross-entropy (with the labels, or
        with the largest width's soft predictions under in-place distillation).

        One backward pass on the sum gives the gradient that the papers accumulate width by width
        before one optimizer step; every width's graph is kept until then (small networks)."""
        x, y = batch
        total = x.new_zeros(())
        teacher: Tensor | None = None
        for index, w in enumerate(self.training_widths()):
            with use_width(self.model, w):
                logits = self.model(x)
            if index > 0 and teacher is not None:
                loss = F.cross_entropy(logits, teacher)
            else:
                loss = F.cross_entropy(logits, y)
                if self.hparams.inplace_distillation:
                    teacher = logits.detach().softmax(dim=1)
            total = total + loss
        self.train_loss.update(total.detach(), weight=len(y))
        return total

    def on_train_epoch_end(self) -> None:
        """Log ``train_loss``."""
        self.log("train_loss", self.train_loss.compute(), sync_dist=True)
        self.train_loss.reset()

    def calibration_data(self) -> Iterable[Any]:
        """The first ``calibration_batches`` batches of the training data (the trainer's datamodule,
        else the trainer's training loader).

        Raises:
            RuntimeError: if the trainer has neither (e.g. ``trainer.validate(model, loader)``).
        """
        datamodule = self.trainer.datamodule
        loader = datamodule.train_dataloader() if datamodule is not None else self.trainer.train_dataloader
        if loader is None:
            raise RuntimeError(
                "universal mode calibrates BN statistics on training batches before evaluation, but the trainer has no "
                "datamodule and no training loader; pass datamodule=... to the trainer call"
            )
        return itertools.islice(loader, self.hparams.calibration_batches)

    def calibrate_widths(self) -> None:
        """Universal mode: calibrate the BN statistics of every listed width on the training batches."""
        for w in self.width_mults:
            calibrate(self.model, w, self.calibration_data())

    def _evaluate(self, batch: tuple[Tensor, Tensor], split: str) -> None:
        x, y = batch
        for w in self.width_mults:
            metrics = self.eval_metrics[split][width_key(w)]
            with use_width(self.model, w):
                logits = self.model(x)
            metrics["acc"].update(logits, y)
            metrics["loss"].update(F.cross_entropy(logits, y), weight=len(y))

    def _log_widths(self, split: str) -> None:
        values = {}
        for w in self.width_mults:
            metrics = self.eval_metrics[split][width_key(w)]
            for name in ("acc", "loss"):
                values[f"{split}_{name}_w{w:g}"] = metrics[name].compute()
                metrics[name].reset()
        self.log_dict(values, prog_bar=split == "val", sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        """Universal mode: calibrate every listed width (see :meth:`calibrate_widths`)."""
        if self.hparams.mode == "universal":
            self.calibrate_widths()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the loss and accuracy of every listed width."""
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Log ``val_acc_w{w}`` and ``val_loss_w{w}`` for every listed width."""
        self._log_widths("val")

    def on_test_epoch_start(self) -> None:
        """Universal mode: calibrate every listed width (see :meth:`calibrate_widths`)."""
        if self.hparams.mode == "universal":
            self.calibrate_widths()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the loss and accuracy of every listed width."""
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        """Log ``test_acc_w{w}`` and ``test_loss_w{w}`` for every listed width."""
        self._log_widths("test")

    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> Tensor:
        """Predicted class index of each sample at the largest width (universal: calibrated first by a test run)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with use_width(self.model, self.width_mults[-1]):
            return self.model(x).argmax(dim=1)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam or SGD, stepped per epoch by ``lr_schedule``: the classifier's rule, same hyper-parameters."""
        return ClassificationTask.configure_optimizers(self)  # type: ignore[arg-type]
