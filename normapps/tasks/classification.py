"""Image classification with a choice of normalization: the baseline every suite compares to."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from normapps.models import SmallCNN
from normapps.models.resnet import SmallResNet


class ClassificationTask(LightningModule):
    """Train :class:`~normapps.models.SmallCNN` (or :class:`~normapps.models.resnet.SmallResNet`) with
    cross-entropy; report loss and accuracy.

    Logged once per epoch: ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss``,
    ``test_acc`` (means over the epoch's samples). :meth:`predict_step` returns the predicted class
    of every sample (:class:`~normapps.tasks.PredictionWriter` writes them to a CSV file).
    """

    def __init__(
        self,
        norm: str = "bn",
        norm_kwargs: dict[str, Any] | None = None,
        width: int = 32,
        num_classes: int = 10,
        in_channels: int = 1,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        arch: Literal["cnn", "resnet"] = "cnn",
        blocks: int = 1,
        bn_gamma_init: float | None = None,
    ) -> None:
        """Initialize the task.

        Args:
            norm: normalization after every convolution, one of
                ``normapps.norm.available("activation")`` or ``available("whitening")`` (see ``normapps norms``).
            norm_kwargs: keyword arguments of every normalization layer, e.g. ``{"groups": 4}``.
            width: channels of the network's first block.
            num_classes: number of classes (linked from the datamodule by the CLI).
            in_channels: channels of the input images.
            optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
            lr: learning rate.
            momentum: SGD momentum (unused by Adam).
            weight_decay: L2 penalty of the optimizer.
            lr_schedule: ``"constant"``, or ``"cosine"`` annealing to 0 over ``max_epochs``.
            arch: ``"cnn"`` (:class:`~normapps.models.SmallCNN`) or ``"resnet"``
                (:class:`~normapps.models.resnet.SmallResNet`).
            blocks: residual blocks per stage of the ``"resnet"`` (unused by the ``"cnn"``).
            bn_gamma_init: initial value of every BatchNorm scale gamma (None: torch's 1). Network
                slimming (Liu et al. 2017) starts from 0.5 in the authors' code.

        Raises:
            ValueError: if ``optimizer``, ``lr_schedule`` or ``arch`` is unknown, or ``lr`` /
                ``weight_decay`` / ``momentum`` is out of range.
        """
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if arch not in ("cnn", "resnet"):
            raise ValueError(f"arch must be 'cnn' or 'resnet', got {arch!r}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if weight_decay < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need weight_decay >= 0 and 0 <= momentum < 1, got {weight_decay!r}, {momentum!r}")
        self.save_hyperparameters()
        self.configure_models()
        self.configure_metrics()

    def configure_models(self) -> None:
        """Build the network from the hyper-parameters."""
        hp = self.hparams
        common = {"num_classes": hp.num_classes, "norm": hp.norm, "norm_kwargs": hp.norm_kwargs, "width": hp.width,
                  "in_channels": hp.in_channels}
        if hp.get("arch", "cnn") == "resnet":
            self.model: nn.Module = SmallResNet(blocks=hp.get("blocks", 1), **common)
        else:
            self.model = SmallCNN(**common)
        gamma = hp.get("bn_gamma_init")
        if gamma is not None:
            with torch.no_grad():
                for layer in self.model.modules():
                    if isinstance(layer, _BatchNorm) and layer.weight is not None:
                        layer.weight.fill_(gamma)

    def configure_metrics(self) -> None:
        """Per split, accuracy and mean loss in one :class:`~torchmetrics.MetricCollection`."""
        metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes=self.hparams.num_classes, average="micro"), "loss": MeanMetric()}
        )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of shape (N, num_classes)."""
        return self.model(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], metrics: MetricCollection) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metrics.update(preds=logits.detach(), target=y, value=loss.detach(), weight=len(y))
        return loss

    def _log_epoch(self, metrics: MetricCollection, prog_bar: bool) -> None:
        # Logged once per epoch rather than per step: Lightning's self.log costs about as much as
        # a training step of this small network. compute() has already pooled the metrics over
        # processes (DDP); sync_dist averages those equal values and keeps Lightning from warning.
        self.log_dict(metrics.compute(), prog_bar=prog_bar, sync_dist=True)
        metrics.reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy loss of one training batch."""
        return self._shared_step(batch, self.train_metrics)

    def on_train_epoch_end(self) -> None:
        """Log ``train_loss`` and ``train_acc``."""
        self._log_epoch(self.train_metrics, prog_bar=False)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the validation loss and accuracy."""
        self._shared_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        """Log ``val_loss`` and ``val_acc``."""
        self._log_epoch(self.val_metrics, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the test loss and accuracy."""
        self._shared_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        """Log ``test_loss`` and ``test_acc``."""
        self._log_epoch(self.test_metrics, prog_bar=False)

    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> Tensor:
        """Predicted class index of each sample (labels in the batch, if any, are ignored)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam or SGD with momentum (``optimizer``), stepped per epoch by ``lr_schedule``."""
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return {"optimizer": optimizer}
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise ValueError(f"lr_schedule 'cosine' needs trainer.max_epochs >= 1, got {max_epochs!r}")
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def linear_scaled_lr(batch_size: int, base_lr: float = 0.1, base_batch_size: int = 32) -> float:
    """SGD learning rate by the linear scaling rule (Goyal et al. 2017): ``base_lr * batch_size / base_batch_size``."""
    return base_lr * batch_size / base_batch_size


class MetricHistory(Callback):
    """Record the logged validation metrics at the end of every validation run.

    ``history`` holds one dict per epoch, with ``epoch`` and every metric whose name starts with
    ``val_``; the sanity check before training is skipped.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run that hook before the module logs its metrics.
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        self.history.append({"epoch": trainer.current_epoch, **row})


@dataclass
class ExperimentResult:
    """Outcome of :func:`train_and_test`."""

    task_kwargs: dict[str, Any]
    test: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    num_parameters: int = 0


def train_and_test(
    datamodule: LightningDataModule,
    max_epochs: int,
    seed: int = 0,
    validate: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
    **task_kwargs: Any,
) -> ExperimentResult:
    """Seed, build a :class:`ClassificationTask`, train it for ``max_epochs`` and test the last weights.

    The test set is used once, after training: no model selection happens here. The trainer runs
    on the CPU without logger, checkpoints or progress bar.

    Args:
        datamodule: the data; its ``num_classes`` is passed to the task.
        max_epochs: training epochs.
        seed: seed of :func:`~pytorch_lightning.seed_everything` (initialization, shuffling).
        validate: evaluate on the validation set after every epoch (recorded in ``history``).
        trainer_kwargs: :class:`~pytorch_lightning.Trainer` arguments that override the
            defaults, e.g. ``{"limit_train_batches": 5}``.
        **task_kwargs: arguments of :class:`ClassificationTask` (``norm``, ``lr``, ...).
    """
    seed_everything(seed, workers=True, verbose=False)
    task = ClassificationTask(num_classes=datamodule.num_classes, **task_kwargs)
    history = MetricHistory()
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1.0 if validate else 0,
    }
    settings.update(trainer_kwargs or {})
    trainer = Trainer(callbacks=[history], **settings)
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    seconds = time.perf_counter() - start
    test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    return ExperimentResult(
        task_kwargs=dict(task_kwargs),
        test={k: float(v) for k, v in test.items()},
        history=history.history,
        seconds=seconds,
        steps=trainer.global_step,
        num_parameters=sum(p.numel() for p in task.parameters()),
    )
