"""Transferable normalization (TransNorm).

Wang, Jin, Long, Wang & Jordan 2019, "Transferable Normalization: Towards Improving
Transferability of Deep Neural Networks" (NeurIPS). A BatchNorm that keeps separate statistics for
the source and the target domain, shares its affine parameters between them, and weights each
channel by how transferable it is. For channel ``j`` of ``C``::

    x_hat_s = (x_s - mu_s) / sqrt(var_s + eps),  x_hat_t likewise      domain-specific statistics
    z       = gamma * x_hat + beta                                     shared affine
    d_j     = | mu_s_j / sqrt(var_s_j + eps) - mu_t_j / sqrt(var_t_j + eps) |
    alpha_j = C * (1 + d_j)^-1 / sum_k (1 + d_k)^-1                    (so sum_j alpha_j = C)
    y       = (1 + alpha) * z

Channels whose standardized means agree between the domains (small ``d_j``) transfer better and
get more weight; the residual ``1 +`` keeps every channel's signal. As the weights sum to ``C``,
domains with equal statistics give ``alpha = 1`` everywhere and ``y = 2 z``: BatchNorm with a
shared affine, scaled by 2.

Choices the paper leaves open, made here:

* training normalizes each domain with its biased batch variance, as BatchNorm does; the distance
  ``d`` uses unbiased variances, the batch's in training and the running ones (which BatchNorm
  stores unbiased) in evaluation, so both modes measure it alike;
* ``alpha`` is a constant of each forward pass: no gradient flows through it (as in the authors'
  release);
* in training a batch holds the source samples first and the target samples after them (see
  :func:`paired`); in evaluation the layer normalizes with the running statistics of its
  ``domain`` and takes ``alpha`` from both domains' running statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.norm import functional as NF

from .domains import SOURCE, TARGET, DomainSpecificLayer, replace_modules

_DOMAIN_NAMES = {SOURCE: "source", TARGET: "target"}


def transferability_alpha(
    mean_source: Tensor, var_source: Tensor, mean_target: Tensor, var_target: Tensor, eps: float = 1e-5
) -> Tensor:
    """TransNorm's channel weights ``alpha_j = C (1 + d_j)^-1 / sum_k (1 + d_k)^-1`` with the
    distance ``d_j = |mu_s_j / sqrt(var_s_j + eps) - mu_t_j / sqrt(var_t_j + eps)|`` (all ``(C,)``).

    >>> transferability_alpha(torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3))
    tensor([1., 1., 1.])
    """
    shapes = {tuple(t.shape) for t in (mean_source, var_source, mean_target, var_target)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"expected four statistics of the same shape (C,), got shapes {sorted(shapes)}")
    distance = (mean_source * torch.rsqrt(var_source + eps) - mean_target * torch.rsqrt(var_target + eps)).abs()
    weight = 1.0 / (1.0 + distance)
    return weight * (weight.numel() / weight.sum())


class TransNorm(DomainSpecificLayer):
    """Transferable normalization of ``(N, C, *)`` input: source and target statistics, a shared
    affine and the transferability weights ``1 + alpha`` (see the module docstring).

    State: ``weight`` and ``bias`` (shared, if ``affine``), ``running_mean_source``,
    ``running_var_source``, ``running_mean_target``, ``running_var_target`` (updated in training
    like BatchNorm's, unbiased variance) and ``num_batches_tracked``.

    In training mode the batch must be paired -- ``source_size`` source samples, then the target
    samples -- which :func:`paired` arranges for every layer of a model. In eval mode the layer
    normalizes with the statistics of ``domain`` (:data:`SOURCE` or :data:`TARGET`).

    >>> layer = TransNorm(8)
    >>> layer.source_size = 4
    >>> layer(torch.randn(10, 8, 5, 5)).shape      # 4 source and 6 target samples
    torch.Size([10, 8, 5, 5])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True) -> None:
        """Initialize the layer.

        Args:
            num_features: channels ``C``.
            eps: added to the variances.
            momentum: factor of the running-statistics update, ``None`` for the cumulative average.
            affine: learn the shared ``weight`` and ``bias``.

        Raises:
            ValueError: if an argument is out of range.
        """
        super().__init__(num_domains=2)
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.source_size: int | None = None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        for name in _DOMAIN_NAMES.values():
            self.register_buffer(f"running_mean_{name}", torch.zeros(num_features))
            self.register_buffer(f"running_var_{name}", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, bn: _BatchNorm) -> TransNorm:
        """A TransNorm with ``bn``'s ``eps``, ``momentum``, affine parameters (shared) and running
        statistics (as both domains' starting statistics), on ``bn``'s device and dtype."""
        layer = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine)
        reference = next((t for t in (bn.weight, bn.running_mean) if t is not None), None)
        if reference is not None:
            layer.to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            if bn.affine:
                layer.weight.copy_(bn.weight)
                layer.bias.copy_(bn.bias)
            if bn.running_mean is not None and bn.running_var is not None:
                for name in _DOMAIN_NAMES.values():
                    getattr(layer, f"running_mean_{name}").copy_(bn.running_mean)
                    getattr(layer, f"running_var_{name}").copy_(bn.running_var)
        layer.train(bn.training)
        return layer

    def running_statistics(self, domain: int) -> tuple[Tensor, Tensor]:
        """``(running_mean, running_var)`` of ``domain``."""
        name = _DOMAIN_NAMES[domain]
        return getattr(self, f"running_mean_{name}"), getattr(self, f"running_var_{name}")

    def alpha(self) -> Tensor:
        """The transferability weights of evaluation mode, from the two domains' running statistics."""
        return transferability_alpha(*self.running_statistics(SOURCE), *self.running_statistics(TARGET), eps=self.eps)

    def forward(self, x: Tensor) -> Tensor:
        """Normalize a paired batch (training) or one domain's batch (evaluation); see the class docstring."""
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input of shape (N, {self.num_features}, *), got {tuple(x.shape)}")
        if not self.training:
            mean, var = self.running_statistics(self.domain)
            z = F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
            return z * NF.channel_view(1 + self.alpha().to(z.dtype), z.dim())
        n = self.source_size
        if n is None:
            raise ValueError(
                "TransNorm in training mode expects a paired batch, source samples first, then target samples; "
                "run the forward pass inside paired(model, source_size)"
            )
        if not 0 < n < x.shape[0]:
            raise ValueError(f"a paired batch of {x.shape[0]} samples needs 1 to {x.shape[0] - 1} source samples, got {n}")
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        parts = (x[:n], x[n:])
        z = torch.cat([
            F.batch_norm(part, *self.running_statistics(domain), self.weight, self.bias, True, factor, self.eps)
            for domain, part in zip((SOURCE, TARGET), parts)
        ])
        with torch.no_grad():
            alpha = transferability_alpha(*_unbiased_moments(parts[0]), *_unbiased_moments(parts[1]), eps=self.eps)
        return z * NF.channel_view(1 + alpha.to(z.dtype), z.dim())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, {super().extra_repr()}"


def _unbiased_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased variance of ``(N, C, *)`` input."""
    mean, var = NF.moments(x, (0, *range(2, x.dim())), keepdim=False)
    count = x.numel() // x.shape[1]
    return mean, var * (count / (count - 1))


def transnorm_layers(model: nn.Module) -> list[TransNorm]:
    """The model's :class:`TransNorm` layers, in module order."""
    return [m for m in model.modules() if isinstance(m, TransNorm)]


@contextmanager
def paired(model: nn.Module, source_size: int) -> Iterator[nn.Module]:
    """Within the block, every :class:`TransNorm` of ``model`` takes its input's first
    ``source_size`` samples as source and the rest as target::

        with paired(model, len(source_x)):
            logits = model(torch.cat([source_x, target_x]))

    Raises:
        ValueError: if ``model`` has no TransNorm layer or ``source_size`` is not a positive int.
    """
    if isinstance(source_size, bool) or not isinstance(source_size, int) or source_size < 1:
        raise ValueError(f"source_size must be a positive int, got {source_size!r}")
    layers = transnorm_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no TransNorm layer; convert it with convert_to_transnorm first")
    for layer in layers:
        layer.source_size = source_size
    try:
        yield model
    finally:
        for layer in layers:
            layer.source_size = None


def convert_to_transnorm(model: nn.Module) -> nn.Module:
    """Replace, in place, every BatchNorm of ``model`` by :meth:`TransNorm.from_batch_norm`.

    A BatchNorm subclass that applies submodules after normalizing (timm's ``BatchNormAct2d``:
    ``drop``, ``act``) becomes ``nn.Sequential(TransNorm, *those submodules)``, so the activation
    stays.

    Returns:
        The converted model (a new object only if ``model`` itself is a BatchNorm).

    Raises:
        ValueError: if ``model`` has no BatchNorm layer.
    """
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layer (torch.nn.modules.batchnorm._BatchNorm) to turn into TransNorm"
        )

    def make(bn: nn.Module) -> nn.Module:
        after = [child for child in bn.children() if not isinstance(child, nn.Identity)]
        layer = TransNorm.from_batch_norm(bn)
        return nn.Sequential(layer, *after) if after else layer

    return replace_modules(model, make, lambda m: isinstance(m, _BatchNorm))
