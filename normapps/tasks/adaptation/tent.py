"""TENT: fully test-time adaptation by entropy minimization.

Wang, Shelhamer, Liu, Olshausen & Darrell 2021, "Tent: Fully Test-Time Adaptation by Entropy
Minimization" (ICLR). On each unlabelled test batch ``x`` the model

1. normalizes with the batch's own statistics (every BatchNorm, through
   :func:`normapps.norm.use_batch_stats`; running statistics are neither used nor updated),
2. predicts ``logits = f(x)``, and
3. takes one optimizer step on the BatchNorm affine parameters ``gamma``, ``beta`` -- the only
   trainable ones -- to minimize the mean Shannon entropy of its predictions::

       H(y_hat) = - sum_c p(y_hat_c) log p(y_hat_c),      p = softmax(logits)

The prediction for the batch is the ``logits`` of step 2, the very forward pass whose entropy is
minimized: the update benefits the following batches (online adaptation). The paper uses Adam with
learning rate 1e-3 (SGD with momentum for ImageNet) and one step per batch. ``episodic=True`` resets
the parameters and the optimizer state after every batch, so each batch is adapted to on its own.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.norm import use_batch_stats


def softmax_entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` along dimension 1, one value per sample."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def batch_norm_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``weight`` and ``bias`` of every BatchNorm (``_BatchNorm``) layer of ``model``, each once."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            for parameter in (module.weight, module.bias):
                if parameter is not None:
                    found.setdefault(id(parameter), parameter)
    return list(found.values())


class Tent(nn.Module):
    """Wrap ``model`` (changed in place) for test-time adaptation by entropy minimization; each
    call ``tent(x)`` adapts on ``x`` and returns the logits of the forward pass it adapted with.

    The wrapped model is put in eval mode (dropout off) with every BatchNorm normalizing by batch
    statistics, and only the BatchNorm affine parameters require gradients. :meth:`reset` restores
    those parameters and the optimizer state as they were when the wrapper was built.

    >>> tent = Tent(SmallCNN(norm="bn", width=8))
    >>> logits = tent(torch.randn(16, 1, 16, 16))      # predicted, then one Adam step
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        steps: int = 1,
        episodic: bool = False,
        optimizer: Literal["adam", "sgd"] = "adam",
        momentum: float = 0.9,
    ) -> None:
        """Initialize the wrapper.

        Args:
            model: a classifier with BatchNorm layers that have affine parameters.
            lr: learning rate of the optimizer.
            steps: optimizer steps per batch (the paper: 1); the logits returned are those of the
                last step's forward pass.
            episodic: reset parameters and optimizer state after every batch.
            optimizer: ``"adam"`` (betas 0.9, 0.999; the paper's choice for CIFAR) or ``"sgd"``
                (with ``momentum``; the paper's choice for ImageNet).
            momentum: SGD momentum (unused by Adam).

        Raises:
            ValueError: if ``model`` has no BatchNorm affine parameter or an argument is out of range.
        """
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        parameters = batch_norm_affine_parameters(model)
        if not parameters:
            raise ValueError(
                f"{type(model).__name__} has no BatchNorm affine parameter (weight / bias of a "
                "torch.nn.modules.batchnorm._BatchNorm with affine=True) for TENT to adapt"
            )
        self.model = use_batch_stats(model.eval())
        self.model.requires_grad_(False)
        for parameter in parameters:
            parameter.requires_grad_(True)
        self.parameters_to_adapt = parameters
        if optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(parameters, lr=lr, betas=(0.9, 0.999))
        else:
            self.optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum)
        self.steps = steps
        self.episodic = episodic
        self._initial_parameters = [p.detach().clone() for p in parameters]
        self._initial_optimizer = self.optimizer.state_dict()

    def forward(self, x: Tensor) -> Tensor:
        """Adapt on the batch ``x`` and return the (detached) logits of the forward pass of the
        last step, i.e. the predictions made before that step's update."""
        with torch.enable_grad():
            for _ in range(self.steps):
                logits = self.model(x)
                loss = softmax_entropy(logits).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        if self.episodic:
            self.reset()
        return logits.detach()

    def reset(self) -> None:
        """Restore the adapted parameters and the optimizer state to their values at construction."""
        with torch.no_grad():
            for parameter, initial in zip(self.parameters_to_adapt, self._initial_parameters):
                parameter.copy_(initial)
        self.optimizer.load_state_dict(self._initial_optimizer)
        self.optimizer.zero_grad(set_to_none=True)
