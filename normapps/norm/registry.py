"""Name -> builder registry of normalization methods, with the survey's taxonomy for each.

Every method is registered with a :class:`NormInfo` that places it in the survey's framework
(Huang et al., *Normalization Techniques in Training DNNs*, TPAMI 2023, Algorithm 1):
which *partition* of the activations its statistics are computed over (NAP), which *operation*
is applied to each partition (NOP), and how representational power is *recovered* (NRR).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

FAMILIES = ("activation", "conditional", "whitening", "weight", "gradient")


@dataclass(frozen=True)
class NormInfo:
    """Where a method sits in the survey's taxonomy."""

    name: str
    family: str
    partition: str
    operation: str
    recovery: str
    paper: str
    year: int
    batch_statistics: bool = False
    """True if the method normalizes with statistics of the mini-batch (and keeps population
    estimates for inference); such methods need more than one value per partition in training."""


_REGISTRY: dict[str, tuple[Callable[..., Any], NormInfo]] = {}


def register(
    name: str,
    *,
    family: str,
    partition: str,
    operation: str,
    recovery: str,
    paper: str,
    year: int,
    batch_statistics: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a class or factory under ``name``.

    Example::

        @register("mynorm", family="activation", partition="group", operation="rms",
                  recovery="affine", paper="Me et al.", year=2026)
        class MyNorm(Normalize): ...
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    info = NormInfo(name, family, partition, operation, recovery, paper, year, batch_statistics)

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"normalization method {name!r} is already registered")
        _REGISTRY[name] = (builder, info)
        return builder

    return decorate


def available(family: str | None = None) -> list[str]:
    """Registered method names, optionally only those of one ``family`` (in registration order)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return [n for n, (_, info) in _REGISTRY.items() if family is None or info.family == family]


def _lookup(name: str) -> tuple[Callable[..., Any], NormInfo]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown normalization method {name!r}.{hint} "
            f"Registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def signature(name: str) -> inspect.Signature:
    """The signature of a registered method's builder: the arguments :func:`build` accepts
    (``"groups" in signature("gn").parameters``)."""
    return inspect.signature(_lookup(name)[0])


def describe(name: str) -> NormInfo:
    """The :class:`NormInfo` of a registered method."""
    return _lookup(name)[1]


def build(name: str | type | Callable[..., nn.Module], num_features: int, **kwargs: Any) -> nn.Module:
    """Build a normalization layer for ``num_features`` channels.

    ``name`` is a registered name (``"gn"``), a class or a ``functools.partial`` of one; like
    timm's ``create_norm_layer`` the latter two are called as ``name(num_features, **kwargs)``.

    >>> layer = build("gn", 64, groups=32)
    >>> layer(torch.randn(2, 64, 8, 8)).shape
    torch.Size([2, 64, 8, 8])
    """
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive int, got {num_features!r}")
    if isinstance(name, str):
        builder, info = _lookup(name)
        if info.family == "gradient":
            raise TypeError(f"{name!r} normalizes gradients, not activations: there is no layer to build; "
                            f"use normapps.norm.gradient.apply(model, {name!r})")
    elif callable(name):
        builder = name
    else:
        raise TypeError(f"expected a method name, a class or a partial, got {type(name).__name__}")
    try:
        inspect.signature(builder).bind(num_features, **kwargs)
    except (TypeError, ValueError) as err:  # ValueError: a partial that already holds bad arguments
        label = name if isinstance(name, str) else getattr(builder, "__name__", repr(builder))
        if isinstance(builder, functools.partial):
            label = getattr(builder.func, "__name__", label)
        raise TypeError(f"bad arguments for normalization method {label!r}: {err}") from None
    return builder(num_features, **kwargs)
