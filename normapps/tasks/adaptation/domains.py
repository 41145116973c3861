"""Layers that keep one set of statistics per domain, and how to choose the domain they use.

Domain-specific normalization (DSBN, TransNorm) gives every domain its own statistics inside one
network. Each such layer is a :class:`DomainSpecificLayer` with an integer ``domain`` attribute:
:data:`SOURCE` (0) or :data:`TARGET` (1), or a further index for DSBN with more domains.
:func:`set_domain` and :func:`use_domain` choose it for every layer of a model at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

SOURCE = 0
"""Index of the labelled source domain."""
TARGET = 1
"""Index of the unlabelled target domain."""


class DomainSpecificLayer(nn.Module):
    """Base of the layers that keep statistics per domain; ``domain`` picks the one a forward uses."""

    def __init__(self, num_domains: int) -> None:
        super().__init__()
        if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 2:
            raise ValueError(f"num_domains must be an int >= 2, got {num_domains!r}")
        self.num_domains = num_domains
        self.domain = SOURCE

    def select(self, domain: int) -> None:
        """Make the following forward passes use ``domain``'s statistics."""
        if isinstance(domain, bool) or not isinstance(domain, int) or not 0 <= domain < self.num_domains:
            raise ValueError(f"domain must be an int in [0, {self.num_domains - 1}], got {domain!r}")
        self.domain = domain

    def extra_repr(self) -> str:
        return f"num_domains={self.num_domains}, domain={self.domain}"


def domain_layers(model: nn.Module) -> list[DomainSpecificLayer]:
    """The model's :class:`DomainSpecificLayer` modules, in module order."""
    return [m for m in model.modules() if isinstance(m, DomainSpecificLayer)]


def set_domain(model: nn.Module, domain: int) -> nn.Module:
    """Make every domain-specific layer of ``model`` use ``domain`` (e.g. :data:`TARGET` for
    evaluating on the target domain); returns ``model``.

    Raises:
        ValueError: if ``model`` has no domain-specific layer or ``domain`` is out of range.
    """
    layers = domain_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no domain-specific layer (expected DomainSpecificBatchNorm or TransNorm; "
            "convert the model with convert_to_dsbn or convert_to_transnorm first)"
        )
    for layer in layers:
        layer.select(domain)
    return model


@contextmanager
def use_domain(model: nn.Module, domain: int) -> Iterator[nn.Module]:
    """``with use_domain(model, TARGET): logits = model(x)`` -- :func:`set_domain` for the block,
    then every layer's previous domain again."""
    previous = [(layer, layer.domain) for layer in domain_layers(model)]
    set_domain(model, domain)
    try:
        yield model
    finally:
        for layer, index in previous:
            layer.domain = index


def replace_modules(model: nn.Module, make: Callable[[nn.Module], nn.Module], match: Callable[[nn.Module], bool]) -> nn.Module:
    """Replace, in place, every submodule for which ``match`` holds by ``make(module)``, without
    looking inside domain-specific layers (a converted model converts to itself) or inside matches.

    A module registered at several places is replaced by one shared new module. Returns the model,
    which is ``make(model)`` if the root itself matches.
    """
    if match(model):
        return make(model)
    replaced: dict[int, nn.Module] = {}

    def visit(parent: nn.Module) -> None:
        for attribute, child in list(parent._modules.items()):
            if child is None:
                continue
            if match(child):
                if id(child) not in replaced:
                    replaced[id(child)] = make(child)
                setattr(parent, attribute, replaced[id(child)])
            elif not isinstance(child, DomainSpecificLayer):
                visit(child)

    visit(model)
    return model
