"""The survey's framework as code: ``Normalize(partition, operation, recovery)``.

Huang et al. (TPAMI 2023, Algorithm 1) describe normalizing activations in three steps:

1. NAP, *normalization area partitioning*: which elements share statistics
   (:class:`Batch`, :class:`Layer`, :class:`Instance`, :class:`Group`, :class:`Position`,
   :class:`BatchGroup`);
2. NOP, *normalization operation* on each partition (:class:`Standardize`, :class:`Scale`,
   :class:`Center`, :class:`RMS`, :class:`L1`);
3. NRR, *normalization representation recovery* (:class:`Affine`, or a conditional module such as
   :class:`~normapps.norm.conditional.ClassAffine`).

``Normalize`` composes any three, so a new method needs no new class::

    >>> layer = Normalize(Group(8), RMS(), Affine(bias=False), num_features=64)
    >>> layer(torch.randn(4, 64, 8, 8)).shape
    torch.Size([4, 64, 8, 8])

Every operation here is a per-partition affine map ``x_hat = x * scale + shift``; the module folds
the channel affine into ``scale``/``shift`` and touches the full tensor once. Compositions that match
a torch kernel (batch_norm, group_norm, layer_norm) dispatch to it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as NF
from .distributed import pooled_moments, sync_active

# --------------------------------------------------------------------------------------------
# NAP: partitions


class Partition(ABC):
    """Which elements of an ``(N, C, *spatial)`` tensor share statistics."""

    name = "partition"
    uses_batch = False
    """Statistics involve several samples: training needs more than one value per partition and
    inference uses population (running) estimates."""
    needs_spatial = False

    def check(self, num_features: int) -> None:  # noqa: B027 (optional hook: most partitions fit any width)
        """Raise if the partition cannot be applied to ``num_features`` channels."""

    def num_stats(self, num_features: int) -> int:
        """How many statistics a batch partition keeps (its running-buffer size)."""
        return num_features

    def view(self, x: Tensor) -> Tensor:
        """A view of ``x`` in which :meth:`dims` are the reduced dimensions."""
        return x

    @abstractmethod
    def dims(self, xv: Tensor) -> tuple[int, ...]:
        """The dimensions of the view :meth:`view` that the statistics reduce over."""

    def to_channels(self, stat: Tensor, x: Tensor) -> Tensor:
        """Map a keep-dim statistic of the view back to a tensor that broadcasts against ``x``."""
        return stat

    def values_per_partition(self, x: Tensor) -> int:
        xv = self.view(x)
        return math.prod(xv.shape[d] for d in self.dims(xv))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Batch(Partition):
    """BN's partition: per channel, over (N, *spatial) (Ioffe & Szegedy, 2015)."""

    name = "batch"
    uses_batch = True

    def dims(self, xv: Tensor) -> tuple[int, ...]:
        return NF.reduce_dims(xv, batch=True, channels=False, spatial=True)


class Layer(Partition):
    """LN's partition: per sample, over (C, *spatial) (Ba et al., 2016)."""

    name = "layer"

    def dims(self, xv: Tensor) -> tuple[int, ...]:
        return NF.reduce_dims(xv, batch=False, channels=True, spatial=True)


class Instance(Partition):
    """IN's partition: per sample and channel, over the spatial dims (Ulyanov et al., 2016)."""

    name = "instance"
    needs_spatial = True

    def dims(self, xv: Tensor) -> tuple[int, ...]:
        return NF.reduce_dims(xv, batch=False, channels=False, spatial=True)


class Position(Partition):
    """PN's partition: per sample and position, over C (Li et al., 2019, positional normalization)."""

    name = "position"

    def dims(self, xv: Tensor) -> tuple[int, ...]:
        return (1,)


class Group(Partition):
    """GN's partition: per sample and group of ``C/groups`` channels, over (C/G, *spatial) (Wu & He, 2018)."""

    name = "group"

    def __init__(self, groups: int) -> None:
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        self.groups = groups

    def check(self, num_features: int) -> None:
        if num_features % self.groups:
            divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
            raise ValueError(
                f"groups={self.groups} does not divide num_features={num_features}; "
                f"choose one of {divisors}"
            )

    def view(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (self.groups, x.shape[1] // self.groups))

    def dims(self, xv: Tensor) -> tuple[int, ...]:
        return tuple(range(2, xv.dim()))

    def to_channels(self, stat: Tensor, x: Tensor) -> Tensor:
        shape = list(stat.shape)
        shape[2] = x.shape[1] // self.groups
        return stat.expand(shape).flatten(1, 2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(groups={self.groups})"


class BatchGroup(Group):
    """BGN's partition: per group of channels, over (N, C/G, *spatial) (Zhou et al., 2020)."""

    name = "batch-group"
    uses_batch = True

    def num_stats(self, num_features: int) -> int:
        return self.groups

    def dims(self, xv: Tensor) -> tuple[int, ...]:
        return (0,) + tuple(range(2, xv.dim()))


# --------------------------------------------------------------------------------------------
# NOP: operations. Each returns the per-partition affine map (scale, shift) of x_hat = x*scale+shift.


class Operation(ABC):
    """What is done to each partition, given its statistics."""

    name = "operation"
    statistics: tuple[str, ...] = ()
    """Names of the statistics; batch partitions keep ``running_<name>`` buffers for them."""
    unbiased: tuple[str, ...] = ()
    """Statistics whose running estimate gets Bessel's correction (torch's convention for var)."""

    def __init__(self, eps: float = 1e-5) -> None:
        self.eps = eps

    @abstractmethod
    def compute(self, xv: Tensor, dims: tuple[int, ...]) -> dict[str, Tensor]:
        """The statistics of each partition of ``xv`` (reduced over ``dims``, kept as size-1 dims)."""

    @abstractmethod
    def scale_shift(self, stats: dict[str, Tensor]) -> tuple[Tensor, Tensor | float]:
        """The per-partition ``(scale, shift)`` with ``x_hat = x * scale + shift``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class Standardize(Operation):
    """``(x - mean) / sqrt(var + eps)``: centering and scaling (BN, LN, IN, GN, ...)."""

    name = "standardize"
    statistics = ("mean", "var")
    unbiased = ("var",)

    def compute(self, xv, dims):
        mean, var = NF.moments(xv, dims)
        return {"mean": mean, "var": var}

    def scale_shift(self, stats):
        scale = torch.rsqrt(stats["var"] + self.eps)
        return scale, -stats["mean"] * scale


class Scale(Operation):
    """``x / sqrt(var + eps)``: scaling by the standard deviation without centering."""

    name = "scale"
    statistics = ("var",)
    unbiased = ("var",)

    def compute(self, xv, dims):
        return {"var": NF.moments(xv, dims)[1]}

    def scale_shift(self, stats):
        return torch.rsqrt(stats["var"] + self.eps), 0.0


class Center(Operation):
    """``x - mean``: centering only."""

    name = "center"
    statistics = ("mean",)

    def compute(self, xv, dims):
        return {"mean": NF.statistics_dtype(xv).mean(dim=dims, keepdim=True)}

    def scale_shift(self, stats):
        return torch.ones_like(stats["mean"]), -stats["mean"]


class RMS(Operation):
    """``x / sqrt(mean(x^2) + eps)``: scaling by the root mean square (RMSNorm, Zhang & Sennrich 2019; FRN)."""

    name = "rms"
    statistics = ("ms",)

    def compute(self, xv, dims):
        return {"ms": NF.statistics_dtype(xv).square().mean(dim=dims, keepdim=True)}

    def scale_shift(self, stats):
        return torch.rsqrt(stats["ms"] + self.eps), 0.0


class L1(Operation):
    """``(x - mean) / (sqrt(pi/2) * mean|x - mean| + eps)`` (L1-norm BN, Wu et al., 2018).

    The factor ``sqrt(pi/2)`` makes the L1 deviation match the standard deviation for Gaussian data.
    """

    name = "l1"
    statistics = ("mean", "mad")

    def compute(self, xv, dims):
        xv = NF.statistics_dtype(xv)
        mean = xv.mean(dim=dims, keepdim=True)
        return {"mean": mean, "mad": (xv - mean).abs().mean(dim=dims, keepdim=True)}

    def scale_shift(self, stats):
        scale = 1.0 / (NF.L1_TO_STD * stats["mad"] + self.eps)
        return scale, -stats["mean"] * scale


# --------------------------------------------------------------------------------------------
# NRR: recovery


@dataclass(frozen=True)
class Affine:
    """Per-channel ``gamma * x_hat + beta``; the parameters live on the layer as ``weight`` / ``bias``."""

    weight: bool = True
    bias: bool = True
    weight_init: float = 1.0


NoRecovery = Affine(weight=False, bias=False)
"""Normalization without recovery."""


class ConditionalRecovery(nn.Module):
    """Recovery that depends on a second input: ``forward(x_hat, condition) -> y``."""

    condition = "condition"
    """What the condition is, for error messages (e.g. "class labels y")."""


# --------------------------------------------------------------------------------------------
# the composition

_PARTITIONS: dict[str, Callable[[], Partition]] = {
    "batch": Batch, "layer": Layer, "instance": Instance, "position": Position,
}
_OPERATIONS: dict[str, Callable[[], Operation]] = {
    "standardize": Standardize, "scale": Scale, "center": Center, "rms": RMS, "l1": L1,
}


_POOLABLE = ("mean", "var", "ms")
"""Statistics that pool exactly over processes (from each process's count, mean and variance)."""


def _parse(value, table: dict, what: str):
    if isinstance(value, str):
        try:
            return table[value]()
        except KeyError:
            raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(table)} "
                             f"or an instance (e.g. Group(8))") from None
    return value


def momentum_factor(module: nn.Module) -> float:
    """Advance ``module.num_batches_tracked`` and return its running-average factor, torch's rule:
    ``momentum``, or ``1 / num_batches_tracked`` (a cumulative average) when ``momentum`` is None."""
    module.num_batches_tracked.add_(1)
    if module.momentum is None:
        return 1.0 / float(module.num_batches_tracked)
    return module.momentum


def layer_label(module: nn.Module) -> str:
    """How a layer names itself in errors: its class, width and, if known, its place in a model."""
    name = getattr(module, "layer_name", None)
    width = getattr(module, "num_features", "?")
    return f"{type(module).__name__}({width})" + (f" at {name!r}" if name else "")


def check_channels(module: nn.Module, x: Tensor, num_features: int) -> None:
    """Raise a ValueError naming the layer if ``x`` is not ``(N, num_features, *spatial)``."""
    if x.dim() < 2 or x.shape[1] != num_features:
        found = f"{x.shape[1]} channels" if x.dim() >= 2 else f"a {x.dim()}-D tensor"
        raise ValueError(
            f"{layer_label(module)} expected input (N, {num_features}, ...) with {num_features} "
            f"channels in dim 1, got {found} (input shape {tuple(x.shape)})"
        )


def check_batch_values(module: nn.Module, count: int, x: Tensor) -> None:
    """Batch statistics of a single value are meaningless (variance 0): refuse them in training."""
    if count <= 1:
        raise ValueError(
            f"{layer_label(module)} computes batch statistics in training and needs more than one "
            f"value per channel/partition, got input shape {tuple(x.shape)} ({count} value). "
            f"Use a larger batch, call .eval(), or use a per-sample method such as 'gn' or 'ln'."
        )


class Normalize(nn.Module):
    """A normalization layer composed from a partition, an operation and a recovery.

    Args:
        partition: a :class:`Partition` (or ``"batch"``, ``"layer"``, ``"instance"``, ``"position"``).
        operation: an :class:`Operation` (or ``"standardize"``, ``"scale"``, ``"center"``, ``"rms"``, ``"l1"``).
        recovery: :class:`Affine` (parameters ``weight``, ``bias`` on this layer), :data:`NoRecovery`,
            or a :class:`ConditionalRecovery` module, called as ``recovery(x_hat, *condition)``.
        num_features: channels C of the ``(N, C, *spatial)`` input.
        momentum: running-statistics factor for batch partitions (None: cumulative average, as torch).
        track_running_stats: batch partitions keep ``running_<statistic>`` buffers and use them in eval.

    Shapes: input ``(N, C)`` or ``(N, C, *spatial)``; output the same.
    """

    def __init__(
        self,
        partition: Partition | str,
        operation: Operation | str,
        recovery: Affine | ConditionalRecovery = Affine(),
        *,
        num_features: int,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        sync: bool = False,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        self.partition = _parse(partition, _PARTITIONS, "partition")
        self.operation = _parse(operation, _OPERATIONS, "operation")
        if not isinstance(self.partition, Partition):
            raise TypeError(f"partition must be a Partition, got {type(self.partition).__name__}")
        if not isinstance(self.operation, Operation):
            raise TypeError(f"operation must be an Operation, got {type(self.operation).__name__}")
        self.partition.check(num_features)
        if sync and not self.partition.uses_batch:
            raise ValueError(f"sync=True pools batch statistics over processes, but the {self.partition.name} "
                             "partition computes none (its statistics are per sample already)")
        if sync and not set(self.operation.statistics) <= set(_POOLABLE):
            raise ValueError(f"sync=True pools the statistics {_POOLABLE} over processes; the "
                             f"{self.operation.name} operation needs {self.operation.statistics}")
        self.sync, self.process_group = sync, process_group
        self.num_features = num_features
        self.momentum = momentum
        self.eps = self.operation.eps
        self.track_running_stats = track_running_stats and self.partition.uses_batch

        if isinstance(recovery, Affine):
            self.recovery = None
            self.affine = recovery.weight or recovery.bias
            self.weight = nn.Parameter(torch.full((num_features,), float(recovery.weight_init))) \
                if recovery.weight else None
            self.bias = nn.Parameter(torch.zeros(num_features)) if recovery.bias else None
        elif isinstance(recovery, nn.Module):
            self.recovery = recovery
            self.affine = False
            self.weight = self.bias = None
        else:
            raise TypeError(f"recovery must be Affine(...) or a ConditionalRecovery module, "
                            f"got {type(recovery).__name__}")

        if self.track_running_stats:
            k = self.partition.num_stats(num_features)
            for stat in self.operation.statistics:
                init = torch.ones(k) if stat in ("var", "ms", "mad") else torch.zeros(k)
                self.register_buffer(f"running_{stat}", init)
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    # ---- statistics ------------------------------------------------------------------------

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            for stat in self.operation.statistics:
                buf = getattr(self, f"running_{stat}")
                buf.fill_(1.0 if stat in ("var", "ms", "mad") else 0.0)
            self.num_batches_tracked.zero_()

    def _use_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def _momentum_factor(self) -> float:
        return momentum_factor(self)

    def _update_running(self, stats: dict[str, Tensor], n: int) -> None:
        """Move each ``running_<name>`` towards the batch statistic (Bessel-corrected where the
        operation says so, torch's convention for the variance); ``n`` values per statistic."""
        factor = self._momentum_factor()
        with torch.no_grad():
            for name, value in stats.items():
                value = value.detach().flatten()
                if name in self.operation.unbiased:
                    value = value * (n / max(n - 1, 1))
                buffer = getattr(self, f"running_{name}")
                buffer.lerp_(value.to(buffer.dtype), factor)

    def _statistics(self, xv: Tensor, dims: tuple[int, ...]) -> dict[str, Tensor]:
        """Statistics of the view ``xv``: from the batch (updating running estimates) or the running buffers."""
        if not self.partition.uses_batch or self._use_batch_stats():
            count = math.prod(xv.shape[d] for d in dims)
            if self.partition.uses_batch and sync_active(self):
                stats, count = self._pooled_statistics(xv, dims, count)
            else:
                stats = self.operation.compute(xv, dims)
            if self.training and self.track_running_stats:
                self._update_running(stats, count)
            return stats
        shape = [1] * xv.dim()
        shape[1] = -1
        return {name: getattr(self, f"running_{name}").view(shape) for name in self.operation.statistics}

    def _pooled_statistics(self, xv: Tensor, dims: tuple[int, ...], count: int) -> tuple[dict[str, Tensor], int]:
        """The operation's statistics pooled over all processes (``sync=True``) and the pooled count."""
        mean, var = NF.moments(xv, dims)
        mean, var, count = pooled_moments(count, mean, var, self.process_group)
        check_batch_values(self, count, xv)
        pooled = {"mean": mean, "var": var, "ms": var + mean.square()}
        return {name: pooled[name] for name in self.operation.statistics}, count

    # ---- forward -----------------------------------------------------------------------------

    def check_input(self, x: Tensor) -> None:
        """Validate ``x`` against this layer; errors name the layer, the expected and the found shape."""
        check_channels(self, x, self.num_features)
        if self.partition.needs_spatial and x.dim() < 3:
            raise ValueError(
                f"{layer_label(self)} normalizes over spatial positions ({self.partition.name} "
                f"partition) and needs (N, C, *spatial) input, got shape {tuple(x.shape)}"
            )
        if self.partition.uses_batch and self._use_batch_stats() and not sync_active(self):
            check_batch_values(self, self.partition.values_per_partition(x), x)

    def normalize(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """Partition, operate and apply the per-channel affine ``weight``/``bias`` (no other recovery)."""
        native = _NATIVE.get((type(self.partition), type(self.operation)))
        if native is not None and not (self.partition.uses_batch and sync_active(self)):
            out = native(self, x, weight, bias)
            if out is not None:
                return out
        xv = self.partition.view(x)
        stats = self._statistics(xv, self.partition.dims(xv))
        scale, shift = self.operation.scale_shift(stats)
        scale = self.partition.to_channels(scale, x)
        if isinstance(shift, Tensor):
            shift = self.partition.to_channels(shift, x)
        else:
            shift = torch.zeros((), dtype=x.dtype, device=x.device)
        return NF.scale_shift_apply(x, scale, shift, weight, bias)

    def forward(self, x: Tensor, *condition) -> Tensor:
        self.check_input(x)
        if self.recovery is None:
            if condition:
                raise TypeError(f"{layer_label(self)} takes no condition, got {len(condition)} extra input(s)")
            return self.normalize(x, self.weight, self.bias)
        if not condition:
            raise TypeError(f"{layer_label(self)} needs {self.recovery.condition}: call layer(x, {self.recovery.condition.split()[-1]})")
        return self.recovery(self.normalize(x), *condition)

    def extra_repr(self) -> str:
        parts = [f"{self.num_features}", f"partition={self.partition!r}", f"operation={self.operation!r}"]
        if self.recovery is None:
            parts.append(f"affine={self.affine}")
        if self.partition.uses_batch:
            parts.append(f"momentum={self.momentum}, track_running_stats={self.track_running_stats}")
        if self.sync:
            parts.append("sync=True")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# native dispatch: compositions that match a torch kernel. Each returns None to fall back.


def _native_batch(m: Normalize, x, weight, bias):
    training = m._use_batch_stats()
    factor = m._momentum_factor() if (m.training and m.track_running_stats) else 0.0
    rm = m.running_mean if m.track_running_stats else None
    rv = m.running_var if m.track_running_stats else None
    return F.batch_norm(x, rm, rv, weight, bias, training, factor, m.eps)


def _native_batch_group(m: Normalize, x, weight, bias):
    n, g = x.shape[0], m.partition.groups
    training = m._use_batch_stats()
    factor = m._momentum_factor() if (m.training and m.track_running_stats) else 0.0
    rm = m.running_mean if m.track_running_stats else None
    rv = m.running_var if m.track_running_stats else None
    y = F.batch_norm(x.reshape(n, g, -1), rm, rv, None, None, training, factor, m.eps).view_as(x)
    return NF.affine(y, weight, bias)


def _native_layer(m: Normalize, x, weight, bias):
    if x.dim() == 2:
        return F.layer_norm(x, (x.shape[1],), weight, bias, m.eps)
    return F.group_norm(x, 1, weight, bias, m.eps)


def _native_instance(m: Normalize, x, weight, bias):
    return F.group_norm(x, x.shape[1], weight, bias, m.eps)


def _native_group(m: Normalize, x, weight, bias):
    return F.group_norm(x, m.partition.groups, weight, bias, m.eps)


def _native_position(m: Normalize, x, weight, bias):
    if x.dim() == 2:
        return F.layer_norm(x, (x.shape[1],), weight, bias, m.eps)
    # layer_norm over the last dim of a contiguous channels-last copy beats the strided view
    return F.layer_norm(x.movedim(1, -1).contiguous(), (x.shape[1],), weight, bias, m.eps).movedim(-1, 1)


_NATIVE: dict[tuple[type, type], Callable[..., Tensor | None]] = {
    (Batch, Standardize): _native_batch,
    (BatchGroup, Standardize): _native_batch_group,
    (Layer, Standardize): _native_layer,
    (Instance, Standardize): _native_instance,
    (Group, Standardize): _native_group,
    (Position, Standardize): _native_position,
}
