"""Training on labelled source and unlabelled target data: DSBN and TransNorm as LightningModules.

:class:`DomainPairDataModule` pairs a labelled source data set with an unlabelled target one: every
training batch is ``{"source": (x_s, y_s), "target": x_t or (x_t, ...)}`` (target labels, if the
data set has them, are never read in training). Validation and test run on labelled target data.

:class:`DSBNTask` and :class:`TransNormTask` share :class:`DomainAdaptationTask`: the network
(default :class:`~normapps.models.SmallCNN` with BatchNorm, or any classifier with BatchNorm layers)
is converted to domain-specific normalization, trained with Adam, and evaluated on the target
domain; ``task(x)`` gives target-domain logits.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from normapps.models import SmallCNN
from normapps.norm.stats import iter_inputs

from .domains import SOURCE, TARGET, use_domain
from .dsbn import convert_to_dsbn
from .transnorm import convert_to_transnorm, paired


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class DomainPairDataModule(LightningDataModule):
    """Labelled source and unlabelled target training data, labelled target validation / test data.

    ``train_dataloader()`` zips a shuffled source loader and a shuffled target loader (both dropping
    their last incomplete batch, so no BatchNorm sees a single sample) into batches
    ``{"source": ..., "target": ...}``; an epoch runs through the longer one and cycles the shorter.

    >>> dm = DomainPairDataModule(TensorDataset(xs, ys), TensorDataset(xt), target_test=TensorDataset(xt, yt))
    >>> batch, _, _ = next(iter(dm.train_dataloader()))     # {"source": [x_s, y_s], "target": [x_t]}
    """

    def __init__(
        self,
        source: Dataset,
        target: Dataset,
        target_val: Dataset | None = None,
        target_test: Dataset | None = None,
        batch_size: int = 64,
        target_batch_size: int | None = None,
        num_classes: int = 10,
        num_workers: int = 0,
    ) -> None:
        """Initialize the datamodule.

        Args:
            source: labelled source training samples ``(input, label)``.
            target: target training samples; only the input (element 0, or the whole sample if it
                is a tensor) is used.
            target_val: labelled target samples for validation (none: no validation).
            target_test: labelled target samples for testing.
            batch_size: source samples per training batch, and samples per validation / test batch.
            target_batch_size: target samples per training batch (default ``batch_size``).
            num_classes: number of classes (linked to the task by the CLI).
            num_workers: subprocesses of each DataLoader.

        Raises:
            ValueError: if a size is out of range, or a training set is smaller than its batch.
        """
        super().__init__()
        target_batch_size = batch_size if target_batch_size is None else target_batch_size
        for name, value in (("batch_size", batch_size), ("target_batch_size", target_batch_size), ("num_classes", num_classes)):
            _positive_int(name, value)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        for name, data, size in (("source", source, batch_size), ("target", target, target_batch_size)):
            if len(data) < size:
                raise ValueError(f"the {name} training set has {len(data)} samples, fewer than one batch of {size}")
        self.source, self.target = source, target
        self.target_val, self.target_test = target_val, target_test
        self.batch_size, self.target_batch_size = batch_size, target_batch_size
        self.num_classes = num_classes
        self.num_workers = num_workers

    def train_dataloader(self) -> CombinedLoader:
        """Batches ``{"source": source batch, "target": target batch}``."""
        loaders = {
            "source": DataLoader(self.source, self.batch_size, shuffle=True, drop_last=True, num_workers=self.num_workers),
            "target": DataLoader(self.target, self.target_batch_size, shuffle=True, drop_last=True,
                                 num_workers=self.num_workers),
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _evaluation_loader(self, data: Dataset | None) -> DataLoader | list[DataLoader]:
        if data is None:
            return []
        return DataLoader(data, self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Labelled target validation batches (none if ``target_val`` was not given)."""
        return self._evaluation_loader(self.target_val)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """Labelled target test batches (none if ``target_test`` was not given)."""
        return self._evaluation_loader(self.target_test)


class DomainAdaptationTask(LightningModule, ABC):
    """Train a classifier on labelled source and unlabelled target batches; evaluate it on the target.

    Subclasses say how the network is converted (:meth:`convert`) and what the training loss is
    (:meth:`adaptation_loss`). Logged per epoch: ``train_loss`` (and the parts the subclass returns,
    e.g. ``train_source_loss``), ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc`` (target domain).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        """Initialize the task.

        Args:
            model: a classifier with BatchNorm layers, e.g. a source-trained one (its weights and
                statistics are the starting point of every domain); default a fresh
                :class:`~normapps.models.SmallCNN` with BatchNorm.
            num_classes: number of classes (of the default network, and of the metrics).
            in_channels: input channels of the default network.
            width: width of the default network.
            lr: Adam learning rate.
            weight_decay: Adam L2 penalty.

        Raises:
            ValueError: if an argument is out of range or ``model`` has no BatchNorm layer.
        """
        super().__init__()
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}")
        self.save_hyperparameters(ignore=["model"])
        network = model if model is not None else SmallCNN(num_classes, norm="bn", width=width, in_channels=in_channels)
        self.model = self.convert(network)
        metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=num_classes, average="micro"), "loss": MeanMetric()})
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    @abstractmethod
    def convert(self, model: nn.Module) -> nn.Module:
        """Turn the classifier's BatchNorm layers into domain-specific ones."""

    @abstractmethod
    def adaptation_loss(self, source_x: Tensor, source_y: Tensor, target_x: Tensor) -> dict[str, Tensor]:
        """The training loss of one paired batch under ``"loss"``, and any parts to log beside it."""

    def forward(self, x: Tensor, domain: int = TARGET) -> Tensor:
        """Logits of a batch from one ``domain`` (default the target), in evaluation mode usually."""
        with use_domain(self.model, domain):
            return self.model(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """The loss of ``{"source": (x, y), "target": x or (x, ...)}``."""
        source_x, source_y = batch["source"][0], batch["source"][1]
        target_x = next(iter_inputs([batch["target"]]))
        if source_x.shape[1:] != target_x.shape[1:]:
            raise ValueError(
                f"source and target inputs must have the same shape but for the batch size, got "
                f"{tuple(source_x.shape)} and {tuple(target_x.shape)}"
            )
        losses = self.adaptation_loss(source_x, source_y, target_x)
        self.log_dict({f"train_{name}": value.detach() for name, value in losses.items()},
                      on_step=False, on_epoch=True, batch_size=len(source_x))
        return losses["loss"]

    def _evaluate(self, batch: tuple[Tensor, Tensor], metrics: MetricCollection) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        metrics.update(preds=logits, target=y, value=F.cross_entropy(logits, y), weight=len(y))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the target-domain loss and accuracy."""
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        """Log ``val_loss`` and ``val_acc``."""
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the target-domain loss and accuracy."""
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        """Log ``test_loss`` and ``test_acc``."""
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Predicted class of each target-domain sample (labels in the batch, if any, are ignored)."""
        return self(next(iter_inputs([batch]))).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam on every parameter."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class DSBNTask(DomainAdaptationTask):
    """Domain-specific batch normalization (Chang et al. 2019, CVPR), trained in one stage.

    Every BatchNorm becomes one BatchNorm per domain (:func:`~normapps.tasks.adaptation.dsbn.convert_to_dsbn`);
    a training step passes the source batch through the source branch and the target batch through
    the target branch (each batch from one domain, as in the paper) and minimizes::

        loss = CE(f_source(x_s), y_s) + target_weight * mean_i [ c_i >= confidence ] * CE(f_target(x_t_i), y_hat_i)

    The pseudo-labels ``y_hat`` and confidences ``c`` come from the fused prediction of the paper's
    second stage, ``p = (1 - lam) * softmax(f_source(x_t)) + lam * softmax(f_target(x_t))``, made in
    eval mode without gradient, with ``lam`` rising linearly from 0 to 1 over ``fusion_steps``
    optimizer steps. Simplification of the paper's two stages: there, a first-stage DSBN model
    trained by another adaptation method (MSTN or CPUA) is the fixed teacher of a second-stage model;
    here the model's own source branch is the teacher at the start (source-branch pseudo-labels)
    and its target branch takes over as it learns. Evaluation uses the target branch.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        confidence: float = 0.9,
        target_weight: float = 1.0,
        fusion_steps: int | None = None,
    ) -> None:
        """Initialize the task (arguments as :class:`DomainAdaptationTask`, plus):

        Args:
            confidence: pseudo-labels whose fused probability is below this are not used.
            target_weight: weight of the pseudo-label loss.
            fusion_steps: optimizer steps over which ``lam`` rises from 0 (source branch) to 1
                (target branch); default the whole training (``trainer.estimated_stepping_batches``).
        """
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
        if target_weight < 0:
            raise ValueError(f"target_weight must be >= 0, got {target_weight!r}")
        if fusion_steps is not None:
            _positive_int("fusion_steps", fusion_steps)
        super().__init__(model, num_classes, in_channels, width, lr, weight_decay)

    def convert(self, model: nn.Module) -> nn.Module:
        """:func:`~normapps.tasks.adaptation.dsbn.convert_to_dsbn` with a source and a target domain."""
        return convert_to_dsbn(model, num_domains=2)

    def fusion_weight(self) -> float:
        """``lam``: the weight of the target branch in the pseudo-labels at the current step."""
        steps = self.hparams.fusion_steps or self.trainer.estimated_stepping_batches
        return 0.0 if math.isinf(steps) else min(1.0, self.global_step / steps)

    @torch.no_grad()
    def pseudo_labels(self, target_x: Tensor) -> tuple[Tensor, Tensor]:
        """``(labels, confidences)`` of a target batch from the fused source / target prediction."""
        lam = self.fusion_weight()
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            probabilities = (1 - lam) * self(target_x, SOURCE).softmax(1)
            if lam > 0:
                probabilities += lam * self(target_x, TARGET).softmax(1)
        finally:
            for module, mode in modes.items():
                module.training = mode
        confidences, labels = probabilities.max(1)
        return labels, confidences

    def adaptation_loss(self, source_x: Tensor, source_y: Tensor, target_x: Tensor) -> dict[str, Tensor]:
        """Source cross-entropy plus the masked pseudo-label cross-entropy on the target."""
        source_loss = F.cross_entropy(self(source_x, SOURCE), source_y)
        labels, confidences = self.pseudo_labels(target_x)
        mask = (confidences >= self.hparams.confidence).to(source_loss.dtype)
        target_loss = (F.cross_entropy(self(target_x, TARGET), labels, reduction="none") * mask).mean()
        return {
            "loss": source_loss + self.hparams.target_weight * target_loss,
            "source_loss": source_loss,
            "target_loss": target_loss,
            "pseudo_label_fraction": mask.mean(),
        }


class TransNormTask(DomainAdaptationTask):
    """Transferable normalization (Wang et al. 2019, NeurIPS) trained on source labels.

    Every BatchNorm becomes a :class:`~normapps.tasks.adaptation.transnorm.TransNorm` (source and
    target statistics, shared affine, transferability weights ``1 + alpha``). A training step
    passes the source and target batches together (``paired``), so each layer normalizes each
    domain with its own statistics and weighs channels by their discrepancy, and minimizes the
    source cross-entropy. The target data shape the target statistics and ``alpha``; the paper adds
    TransNorm to domain-adversarial methods (DANN, CDAN), whose losses are not part of this task.
    Evaluation uses the target statistics.
    """

    def convert(self, model: nn.Module) -> nn.Module:
        """:func:`~normapps.tasks.adaptation.transnorm.convert_to_transnorm`."""
        return convert_to_transnorm(model)

    def adaptation_loss(self, source_x: Tensor, source_y: Tensor, target_x: Tensor) -> dict[str, Tensor]:
        """Source cross-entropy of the paired forward pass."""
        with paired(self.model, len(source_x)):
            logits = self.model(torch.cat([source_x, target_x]))
        return {"loss": F.cross_entropy(logits[: len(source_x)], source_y)}
