"""Training add-ons for any LightningModule, usable from a LightningCLI config.

* :class:`GradientNormalization` (a callback): gradient centralization or block-normalized
  gradients (:mod:`normapps.norm.gradient`) with whatever optimizer the module configures::

      trainer:
        callbacks:
          - class_path: normapps.tasks.GradientNormalization
            init_args: {method: gc}

* :class:`SyncNormalization` (a Lightning ``LayerSync`` plugin): under a multi-process strategy
  (``strategy: ddp``) every batch-statistics layer pools its statistics over the processes
  (:func:`normapps.norm.convert` with ``sync=True``), keeping its method::

      trainer:
        strategy: ddp
        plugins:
          - class_path: normapps.tasks.SyncNormalization

  Lightning's own ``sync_batchnorm: true`` instead turns every BatchNorm subclass (our ghostbn and
  brn included) into plain ``torch.nn.SyncBatchNorm``, and leaves the other methods local.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.plugins.layer_sync import LayerSync
from torch import nn
from torch.optim import Optimizer

from normapps import norm
from normapps.norm.distributed import supports_sync


class GradientNormalization(Callback):
    """Normalize the gradients of every optimized parameter before each optimizer step.

    It runs in ``on_before_optimizer_step``: after the last micro-batch of gradient accumulation,
    after DDP has averaged the gradients and after mixed precision has unscaled them, before
    gradient clipping -- so a non-linear method (``bng``) sees the full gradient.

    Args:
        method: a registered gradient method (``normapps.norm.available("gradient")``: ``gc``,
            ``bng``).
        options: the method's keyword arguments (``bng``: ``eps``, ``scale``).
    """

    def __init__(self, method: str = "gc", options: dict[str, Any] | None = None) -> None:
        expected = norm.available("gradient")
        if method not in expected:
            raise ValueError(f"unknown gradient normalization {method!r}: expected one of {', '.join(expected)}")
        self.method, self.options = method, dict(options or {})
        norm.gradient.normalize_gradients_([], method, **self.options)  # bad options fail here, not mid-training

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm.gradient.normalize_gradients_(params, self.method, **self.options)


class SyncNormalization(LayerSync):
    """Lightning plugin: batch statistics over all processes, each layer keeping its method
    (``norm.convert(model, sync=True)``; torch BatchNorm layers become our ``bn(sync=True)``)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return norm.convert(model, sync=True).model

    def revert(self, model: nn.Module) -> nn.Module:
        for layer in model.modules():
            if supports_sync(layer):
                layer.sync = False
        return model
