"""Domain-specific batch normalization (DSBN).

Chang, You, Seo, Kwak & Han 2019, "Domain-Specific Batch Normalization for Unsupervised Domain
Adaptation" (CVPR). Every BatchNorm of a network becomes one BatchNorm per domain ``d``, each with
its own statistics *and* affine parameters, while every other weight (convolutions, the classifier)
is shared by the domains::

    DSBN_d(x) = gamma_d * (x - mu_d) / sqrt(sigma_d^2 + eps) + beta_d

Each batch comes from one domain, chosen with :func:`~normapps.tasks.adaptation.domains.set_domain`
or :func:`~normapps.tasks.adaptation.domains.use_domain`. Training on labelled source and
pseudo-labelled target data is :class:`~normapps.tasks.adaptation.lightning.DSBNTask`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .domains import DomainSpecificLayer, replace_modules


class DomainSpecificBatchNorm(DomainSpecificLayer):
    """One BatchNorm per domain; ``domain`` selects the one that normalizes the input.

    ``layers[d]`` is a complete BatchNorm of any ``_BatchNorm`` class (torch's, ours, timm's, with
    its own activation if it has one), so its state-dict keys are ``layers.<d>.weight``,
    ``layers.<d>.running_mean``, ... and :func:`export_domain` gives back the original architecture.

    >>> dsbn = DomainSpecificBatchNorm.from_batch_norm(nn.BatchNorm2d(8))
    >>> dsbn.select(1)
    >>> dsbn(torch.randn(4, 8, 5, 5)).shape
    torch.Size([4, 8, 5, 5])
    """

    def __init__(self, layers: Sequence[_BatchNorm]) -> None:
        """Initialize from one BatchNorm per domain (at least two, with equal ``num_features``).

        Raises:
            ValueError: if fewer than two layers are given, one is not a ``_BatchNorm``, or their
                channel counts differ.
        """
        layers = list(layers)
        super().__init__(len(layers))
        wrong = [type(layer).__name__ for layer in layers if not isinstance(layer, _BatchNorm)]
        if wrong:
            raise ValueError(f"expected torch.nn.modules.batchnorm._BatchNorm layers, got {wrong}")
        channels = sorted({layer.num_features for layer in layers})
        if len(channels) != 1:
            raise ValueError(f"every domain's BatchNorm must have the same num_features, got {channels}")
        self.layers = nn.ModuleList(layers)

    @classmethod
    def from_batch_norm(cls, bn: _BatchNorm, num_domains: int = 2) -> DomainSpecificBatchNorm:
        """``num_domains`` independent copies of ``bn`` (parameters, statistics, class, device)."""
        if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 2:
            raise ValueError(f"num_domains must be an int >= 2, got {num_domains!r}")
        return cls([copy.deepcopy(bn) for _ in range(num_domains)])

    @property
    def num_features(self) -> int:
        """Channels of the normalized input."""
        return self.layers[0].num_features

    def forward(self, x: Tensor) -> Tensor:
        """``layers[domain](x)``."""
        return self.layers[self.domain](x)


def convert_to_dsbn(model: nn.Module, num_domains: int = 2) -> nn.Module:
    """Replace, in place, every BatchNorm of ``model`` by a :class:`DomainSpecificBatchNorm` whose
    domains all start as copies of it (a pretrained source model keeps its statistics and affine
    parameters in every domain). Shared weights stay single objects; layers already
    domain-specific are left as they are.

    Returns:
        The converted model (a new object only if ``model`` itself is a BatchNorm).

    Raises:
        ValueError: if ``model`` has no BatchNorm layer.

    Example::

        model = convert_to_dsbn(SmallCNN(norm="bn"))
        with use_domain(model, TARGET):
            logits = model(target_images)
    """
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layer (torch.nn.modules.batchnorm._BatchNorm) to make domain-specific"
        )
    return replace_modules(model, partial(DomainSpecificBatchNorm.from_batch_norm, num_domains=num_domains),
                           lambda m: isinstance(m, _BatchNorm))


def export_domain(model: nn.Module, domain: int) -> nn.Module:
    """A deep copy of a DSBN model in which every :class:`DomainSpecificBatchNorm` is replaced by
    its BatchNorm for ``domain``: the architecture before :func:`convert_to_dsbn`, whose state dict
    loads into the original model class.

    Raises:
        ValueError: if ``model`` has no :class:`DomainSpecificBatchNorm` or ``domain`` is out of range.
    """
    layers = [m for m in model.modules() if isinstance(m, DomainSpecificBatchNorm)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DomainSpecificBatchNorm layer to export")
    for layer in layers:
        if isinstance(domain, bool) or not isinstance(domain, int) or not 0 <= domain < layer.num_domains:
            raise ValueError(f"domain must be an int in [0, {layer.num_domains - 1}], got {domain!r}")
    return replace_modules(copy.deepcopy(model), lambda m: m.layers[domain], lambda m: isinstance(m, DomainSpecificBatchNorm))
