"""Conditional recovery: the affine parameters come from something else (family ``conditional``).

Each layer is a :class:`~normapps.norm.framework.Normalize` whose recovery is a
:class:`~normapps.norm.framework.ConditionalRecovery` module, called as ``layer(x, condition)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as NF
from .framework import Batch, ConditionalRecovery, Instance, Normalize, Standardize
from .registry import register


def _expand(t: Tensor, ndim: int) -> Tensor:
    """``(N, C)`` -> ``(N, C, 1, ...)`` to broadcast against an ``ndim``-D activation."""
    return t.view(t.shape + (1,) * (ndim - 2))


class EmbeddingAffine(ConditionalRecovery):
    """One (gamma, beta) per class/style: ``y = gamma[c] * x_hat + beta[c]`` (gamma init 1, beta init 0).

    The condition is a class index per sample ``(N,)``, one index for the whole batch (int or 0-D
    tensor), or weights over the classes, ``(K,)`` or ``(N, K)``, which mix the embeddings
    (class morphing in a conditional-BN generator, style interpolation in CIN).
    """

    condition = "class labels y"

    def __init__(self, num_embeddings: int, num_features: int) -> None:
        super().__init__()
        if num_embeddings < 1:
            raise ValueError(f"num_embeddings must be >= 1, got {num_embeddings}")
        self.num_embeddings = num_embeddings
        self.weight = nn.Parameter(torch.ones(num_embeddings, num_features))
        self.bias = nn.Parameter(torch.zeros(num_embeddings, num_features))

    def gamma_beta(self, condition: Tensor | int, batch: int) -> tuple[Tensor, Tensor]:
        """The ``(N or 1, C)`` gamma and beta for ``condition``."""
        c = torch.as_tensor(condition, device=self.weight.device)
        if c.is_floating_point():
            if c.dim() not in (1, 2) or c.shape[-1] != self.num_embeddings or (c.dim() == 2 and c.shape[0] not in (1, batch)):
                raise ValueError(f"expected mixing weights of shape ({self.num_embeddings},) or "
                                 f"({batch}, {self.num_embeddings}), got {tuple(c.shape)}")
            self.check_weights(c)
            c = c.to(self.weight.dtype).reshape(-1, self.num_embeddings)
            return c @ self.weight, c @ self.bias
        if c.dim() > 1 or (c.dim() == 1 and c.shape[0] not in (1, batch)):
            raise ValueError(f"expected {self.condition} as an int or a ({batch},) index tensor, got shape {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_embeddings):
            raise ValueError(f"{self.condition} must lie in [0, {self.num_embeddings - 1}], "
                             f"got values in [{int(c.min())}, {int(c.max())}]")
        c = c.reshape(-1).long()
        return self.weight[c], self.bias[c]

    def check_weights(self, w: Tensor) -> None:
        """Mixing weights of classes are unconstrained (extrapolation is allowed)."""

    def forward(self, x_hat: Tensor, condition: Tensor | int) -> Tensor:
        gamma, beta = self.gamma_beta(condition, x_hat.shape[0])
        return torch.addcmul(_expand(beta, x_hat.dim()).to(x_hat.dtype), x_hat, _expand(gamma, x_hat.dim()).to(x_hat.dtype))


class StyleAffine(EmbeddingAffine):
    """CIN's per-style (gamma, beta); mixing weights must be convex (non-negative, summing to 1)."""

    condition = "a style index or convex style weights style"

    def check_weights(self, w: Tensor) -> None:
        if bool((w < 0).any()) or not torch.allclose(w.sum(-1), torch.ones((), dtype=w.dtype), atol=1e-4):
            raise ValueError(f"style weights must be convex (>= 0, summing to 1), got sums {w.sum(-1).tolist()}")


class StatisticsTransfer(ConditionalRecovery):
    """AdaIN's recovery: ``y = sigma(s) * x_hat + mu(s)`` with the per-sample, per-channel mean and
    standard deviation (``sqrt(var + eps)``) of the style features ``s`` over their spatial dims."""

    condition = "style features style_features"

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps

    def forward(self, x_hat: Tensor, style_features: Tensor) -> Tensor:
        if style_features.dim() != x_hat.dim() or style_features.shape[1] != self.num_features:
            raise ValueError(f"expected style features (N or 1, {self.num_features}, ...) with "
                             f"{x_hat.dim()} dims, got {tuple(style_features.shape)}")
        if style_features.shape[0] not in (1, x_hat.shape[0]):
            raise ValueError(f"style features must have 1 or {x_hat.shape[0]} samples, got {style_features.shape[0]}")
        mean, std = NF.instance_moments(style_features, self.eps)
        return torch.addcmul(mean.to(x_hat.dtype), x_hat, std.to(x_hat.dtype))


class SpatialAffine(ConditionalRecovery):
    """SPADE's recovery (Park et al., CVPR 2019, Eq. 1): ``y = x_hat * (1 + gamma(m)) + beta(m)`` with
    gamma and beta predicted per position from the segmentation map ``m`` (resized to the activation
    with nearest interpolation) by a shared 3x3 conv + ReLU and two 3x3 convs."""

    condition = "a segmentation map segmap"

    def __init__(self, label_channels: int, num_features: int, hidden: int = 128, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.label_channels = label_channels
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, kernel_size, padding=pad), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, num_features, kernel_size, padding=pad)
        self.beta = nn.Conv2d(hidden, num_features, kernel_size, padding=pad)

    def forward(self, x_hat: Tensor, segmap: Tensor) -> Tensor:
        if x_hat.dim() != 4:
            raise ValueError(f"SPADE needs (N, C, H, W) activations, got {tuple(x_hat.shape)}")
        if segmap.dim() != 4 or segmap.shape[1] != self.label_channels or segmap.shape[0] != x_hat.shape[0]:
            raise ValueError(f"expected a segmentation map ({x_hat.shape[0]}, {self.label_channels}, H, W), "
                             f"got {tuple(segmap.shape)}")
        h = self.shared(F.interpolate(segmap.to(x_hat.dtype), size=x_hat.shape[2:], mode="nearest"))
        return torch.addcmul(self.beta(h), x_hat, 1 + self.gamma(h))


class LatentAffine(ConditionalRecovery):
    """Self-modulation (Chen et al., ICLR 2019, Eq. 3): ``y = gamma(z) * x_hat + beta(z)`` with
    ``gamma(z) = 1 + MLP_g(z)`` and ``beta(z) = MLP_b(z)``, one-hidden-layer MLPs of the latent."""

    condition = "a latent z"

    def __init__(self, latent_dim: int, num_features: int, hidden: int = 32) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.gamma = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_features))
        self.beta = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_features))

    def forward(self, x_hat: Tensor, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim or z.shape[0] != x_hat.shape[0]:
            raise ValueError(f"expected a latent of shape ({x_hat.shape[0]}, {self.latent_dim}), got {tuple(z.shape)}")
        gamma, beta = 1 + self.gamma(z), self.beta(z)
        return torch.addcmul(_expand(beta, x_hat.dim()), x_hat, _expand(gamma, x_hat.dim()))


@register("cbn", family="conditional", partition="batch", operation="standardize", recovery="per-class affine",
          paper="de Vries et al., Modulating early visual processing by language, NeurIPS 2017; "
                "Miyato & Koyama, cGANs with Projection Discriminator, ICLR 2018", year=2017,
          batch_statistics=True)
class ConditionalBatchNorm(Normalize):
    """Conditional batch normalization: BN without affine, then one (gamma, beta) per class.
    ``layer(x, y)`` with class indices ``y``, or class weights to morph between classes."""

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(Batch(), Standardize(eps), EmbeddingAffine(num_classes, num_features),
                         num_features=num_features, momentum=momentum)


@register("cin", family="conditional", partition="instance", operation="standardize", recovery="per-style affine",
          paper="Dumoulin et al., A Learned Representation for Artistic Style, ICLR 2017", year=2017)
class ConditionalInstanceNorm(Normalize):
    """Conditional instance normalization: IN, then one (gamma, beta) per style. ``layer(x, style)``
    with a style index (per batch or per sample) or convex weights over the styles to interpolate."""

    def __init__(self, num_features: int, num_styles: int, eps: float = 1e-5) -> None:
        super().__init__(Instance(), Standardize(eps), StyleAffine(num_styles, num_features),
                         num_features=num_features)


@register("adain", family="conditional", partition="instance", operation="standardize",
          recovery="style statistics", paper="Huang & Belongie, Arbitrary Style Transfer in Real-time "
          "with Adaptive Instance Normalization, ICCV 2017", year=2017)
class AdaptiveInstanceNorm(Normalize):
    """AdaIN: ``sigma(s) * (x - mu(x)) / sigma(x) + mu(s)`` with per-sample, per-channel statistics
    over H x W and eps added to both variances. ``layer(x, style_features)``; no parameters."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(Instance(), Standardize(eps), StatisticsTransfer(num_features, eps),
                         num_features=num_features)


@register("spade", family="conditional", partition="batch", operation="standardize",
          recovery="spatial affine from a segmentation map",
          paper="Park et al., Semantic Image Synthesis with Spatially-Adaptive Normalization, CVPR 2019",
          year=2019, batch_statistics=True)
class SPADE(Normalize):
    """SPADE: parameter-free BN, then per-position gamma/beta predicted from a segmentation map.
    ``layer(x, segmap)`` with ``segmap`` of shape ``(N, label_channels, H', W')`` (one-hot or soft)."""

    def __init__(self, num_features: int, label_channels: int, hidden: int = 128, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        super().__init__(Batch(), Standardize(eps), SpatialAffine(label_channels, num_features, hidden),
                         num_features=num_features, momentum=momentum)


@register("smbn", family="conditional", partition="batch", operation="standardize", recovery="affine from the latent",
          paper="Chen et al., On Self Modulation for Generative Adversarial Networks, ICLR 2019", year=2019,
          batch_statistics=True)
class SelfModulatedBatchNorm(Normalize):
    """Self-modulated BN: BN without affine, then ``gamma(z)``, ``beta(z)`` from the generator's latent.
    ``layer(x, z)`` with ``z`` of shape ``(N, latent_dim)``."""

    def __init__(self, num_features: int, latent_dim: int, hidden: int = 32, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        super().__init__(Batch(), Standardize(eps), LatentAffine(latent_dim, num_features, hidden),
                         num_features=num_features, momentum=momentum)


__all__ = [
    "EmbeddingAffine", "StyleAffine", "StatisticsTransfer", "SpatialAffine", "LatentAffine",
    "ConditionalBatchNorm", "ConditionalInstanceNorm", "AdaptiveInstanceNorm", "SPADE",
    "SelfModulatedBatchNorm",
]
