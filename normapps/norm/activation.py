"""Activation normalization: batch-statistics methods and per-sample methods.

Each class cites its paper; :mod:`normapps.norm.registry` places it in the survey's taxonomy.
All take ``(N, C)`` and ``(N, C, *spatial)`` input where the method is defined and raise a clear
error where it is not.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import functional as NF
from .distributed import count_range, pooled_moments, sync_active
from .framework import (
    L1,
    RMS,
    Affine,
    Batch,
    BatchGroup,
    Group,
    Instance,
    Layer,
    Normalize,
    Position,
    Scale,
    Standardize,
    check_batch_values,
    check_channels,
    layer_label,
    momentum_factor,
)
from .registry import register

# ------------------------------------------------------------------------------------------------
# population-statistics methods built on torch's own BatchNorm (so state dicts load and tools that
# handle a torch BatchNorm -- timm's freezing, recalibrate, fold -- handle them)


@register("bn", family="activation", partition="batch", operation="standardize", recovery="affine",
          paper="Ioffe & Szegedy, Batch Normalization, ICML 2015", year=2015, batch_statistics=True)
class BatchNorm(_BatchNorm):
    """Batch normalization (Ioffe & Szegedy, ICML 2015, Algorithm 1) for any ``(N, C, *spatial)`` input.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * gamma + beta`` with statistics per channel over the batch
    and spatial dims; population estimates (``running_mean``, unbiased ``running_var``) for eval.
    Parameter and buffer names are torch's, so ``nn.BatchNorm2d`` state dicts load. Runs torch's
    native kernel.
    """

    partition, operation = Batch(), Standardize()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, sync: bool = False,
                 process_group: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.sync, self.process_group = sync, process_group

    def _check_input_dim(self, x: Tensor) -> None:
        check_channels(self, x, self.num_features)

    def _uses_batch_statistics(self) -> bool:
        return self.training or not self.track_running_stats

    def _check_batch(self, x: Tensor) -> None:
        self._check_input_dim(x)
        if self._uses_batch_statistics():
            check_batch_values(self, x.numel() // self.num_features, x)

    def forward(self, x: Tensor) -> Tensor:
        if self._uses_batch_statistics() and sync_active(self):
            self._check_input_dim(x)
            mean, var, count = self._pooled_statistics(x)
            self._update_running_statistics(mean, var, count)
            return self._standardize(x, mean, var, self.weight, self.bias)
        self._check_batch(x)
        return super().forward(x)

    def _momentum_factor(self) -> float:
        """The running-average factor of this training step (0 when no statistics are tracked)."""
        return momentum_factor(self) if self.training and self.track_running_stats else 0.0

    def _pooled_statistics(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        """Per-channel mean and biased variance of ``x`` pooled over all processes (``sync=True``
        under ``torch.distributed``), differentiable, and the pooled count per channel."""
        dims = (0,) + tuple(range(2, x.dim()))
        mean, var = NF.moments(x, dims, keepdim=False)
        mean, var, count = pooled_moments(x.numel() // self.num_features, mean, var, self.process_group)
        if count <= 1:
            check_batch_values(self, count, x)
        return mean, var, count

    def _update_running_statistics(self, mean: Tensor, var: Tensor, count: int) -> None:
        """Move the running estimates towards ``mean`` and the unbiased ``var`` (``count`` values)."""
        if self.training and self.track_running_stats:
            factor = self._momentum_factor()
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var.detach() * count / (count - 1)).to(self.running_var.dtype), factor)

    def _standardize(self, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None,
                     bias: Tensor | None) -> Tensor:
        scale = torch.rsqrt(var + self.eps)
        return NF.scale_shift_apply(x, NF.channel_view(scale, x.dim()), NF.channel_view(-mean * scale, x.dim()),
                                    weight, bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", sync=True" if self.sync else "")


@register("ghostbn", family="activation", partition="batch (virtual batches)", operation="standardize",
          recovery="affine", paper="Hoffer et al., Train longer, generalize better, NeurIPS 2017",
          year=2017, batch_statistics=True)
class GhostBatchNorm(BatchNorm):
    """Ghost batch normalization (Hoffer et al., NeurIPS 2017, Algorithm 1).

    In training the batch is split into ``ceil(N / virtual_batch_size)`` near-equal virtual batches,
    each normalized with its own statistics (running estimates are updated once per virtual batch);
    eval is plain BN with the running estimates.
    """

    def __init__(self, num_features: int, virtual_batch_size: int = 32, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True,
                 sync: bool = False, process_group: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, sync, process_group)
        if virtual_batch_size < 2:
            raise ValueError(f"virtual_batch_size must be >= 2, got {virtual_batch_size}")
        self.virtual_batch_size = virtual_batch_size

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self._uses_batch_statistics():
            return super().forward(x)
        chunks = -(-x.shape[0] // self.virtual_batch_size)
        if sync_active(self):
            fewest, most = count_range(chunks, x.device, self.process_group)
            if fewest != most:
                raise ValueError(
                    f"{layer_label(self)} with sync=True pools the k-th virtual batch of every process, but the "
                    f"processes split their batches into {fewest} to {most} virtual batches (this one: input "
                    f"shape {tuple(x.shape)}, virtual_batch_size={self.virtual_batch_size}); give every process "
                    "the same batch size (DistributedSampler does)")
            return torch.cat([super(GhostBatchNorm, self).forward(c) for c in x.tensor_split(chunks)])
        if chunks == 1:
            return super().forward(x)
        smallest = x.shape[0] // chunks
        if smallest * (x.numel() // (x.shape[0] * self.num_features)) <= 1:
            raise ValueError(
                f"{layer_label(self)}: input shape {tuple(x.shape)} splits into {chunks} virtual batches of "
                f"virtual_batch_size={self.virtual_batch_size}, the smallest with one value per channel; "
                f"use a batch size that leaves at least 2 samples per virtual batch")
        return torch.cat([super(GhostBatchNorm, self).forward(c) for c in x.tensor_split(chunks)])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"


@register("brn", family="activation", partition="batch", operation="standardize (renormalized)",
          recovery="affine", paper="Ioffe, Batch Renormalization, NeurIPS 2017", year=2017,
          batch_statistics=True)
class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe, NeurIPS 2017, Algorithm 1).

    Training output ``gamma * ((x - mu_B)/sigma_B * r + d) + beta`` with
    ``r = clip(sigma_B/sigma, 1/rmax, rmax)`` and ``d = clip((mu_B - mu)/sigma, -dmax, dmax)`` held
    constant in backprop (``mu``, ``sigma`` the running estimates). ``rmax`` ramps linearly from 1 and
    ``dmax`` from 0 to their final values over ``ramp_steps`` training steps after ``warmup_steps``
    (the paper: 5k plain-BN steps, then a ramp over tens of thousands of steps; the defaults here suit
    short runs). At step 0 it equals BN in training mode. Since ``r``, ``d`` are constants, the layer is
    BN with weight ``gamma*r`` and bias ``gamma*d + beta``: it runs torch's native kernel.
    """

    def __init__(self, num_features: int, rmax: float = 3.0, dmax: float = 5.0, warmup_steps: int = 100,
                 ramp_steps: int = 1000, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, sync: bool = False, process_group: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, True, sync, process_group)
        if rmax < 1 or dmax < 0:
            raise ValueError(f"need rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}")
        self.rmax, self.dmax = rmax, dmax
        self.warmup_steps, self.ramp_steps = warmup_steps, ramp_steps

    def limits(self) -> tuple[float, float]:
        """The current (rmax, dmax) of the schedule."""
        step = int(self.num_batches_tracked)
        ramp = min(max((step - self.warmup_steps) / max(self.ramp_steps, 1), 0.0), 1.0)
        return 1.0 + (self.rmax - 1.0) * ramp, self.dmax * ramp

    def forward(self, x: Tensor) -> Tensor:
        self._check_batch(x)
        if not self.training:
            return super().forward(x)
        rmax, dmax = self.limits()
        synced = sync_active(self)
        if synced:
            mean_b, var_b, count = self._pooled_statistics(x)
        else:
            with torch.no_grad():
                mean_b, var_b = NF.moments(x, (0,) + tuple(range(2, x.dim())), keepdim=False)
        r, d = NF.batch_renorm_correction(mean_b.detach(), var_b.detach(), self.running_mean, self.running_var,
                                          self.eps, rmax, dmax)
        r, d = r.to(self.running_mean.dtype), d.to(self.running_mean.dtype)
        weight = r if self.weight is None else self.weight * r
        bias = d if self.weight is None else self.weight * d
        if self.bias is not None:
            bias = bias + self.bias
        if synced:
            self._update_running_statistics(mean_b, var_b, count)
            return self._standardize(x, mean_b, var_b, weight, bias)
        factor = self._momentum_factor()
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, True, factor, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", rmax={self.rmax}, dmax={self.dmax}, "
                                       f"warmup_steps={self.warmup_steps}, ramp_steps={self.ramp_steps}")


# ------------------------------------------------------------------------------------------------
# compositions of partition x operation x affine


def _affine(affine: bool, bias: bool = True) -> Affine:
    return Affine(weight=affine, bias=affine and bias)


@register("bgn", family="activation", partition="batch-group", operation="standardize", recovery="affine",
          paper="Zhou et al., Batch Group Normalization, arXiv 2020", year=2020, batch_statistics=True)
class BatchGroupNorm(Normalize):
    """Batch group normalization (Zhou et al., 2020): statistics per group of ``C/groups`` channels over
    ``(N, C/G, *spatial)``, so each statistic pools ``C/G`` times more values than BN's; running
    estimates per group for eval."""

    def __init__(self, num_features: int, groups: int = 32, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True,
                 sync: bool = False, process_group: Any = None) -> None:
        super().__init__(BatchGroup(groups), Standardize(eps), _affine(affine), num_features=num_features,
                         momentum=momentum, track_running_stats=track_running_stats, sync=sync,
                         process_group=process_group)


@register("ln", family="activation", partition="layer", operation="standardize", recovery="affine",
          paper="Ba et al., Layer Normalization, arXiv 2016", year=2016)
class LayerNorm(Normalize):
    """Layer normalization (Ba et al., 2016): statistics per sample over ``(C, *spatial)``, per-channel
    affine (for ``(N, C)`` input identical to ``nn.LayerNorm(C)``; for images ``GroupNorm(1, C)``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(Layer(), Standardize(eps), _affine(affine), num_features=num_features)


@register("in", family="activation", partition="instance", operation="standardize", recovery="affine",
          paper="Ulyanov et al., Instance Normalization, arXiv 2016", year=2016)
class InstanceNorm(Normalize):
    """Instance normalization (Ulyanov et al., 2016): statistics per sample and channel over the
    spatial dims; needs ``(N, C, *spatial)`` input."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(Instance(), Standardize(eps), _affine(affine), num_features=num_features)


@register("gn", family="activation", partition="group", operation="standardize", recovery="affine",
          paper="Wu & He, Group Normalization, ECCV 2018", year=2018)
class GroupNorm(Normalize):
    """Group normalization (Wu & He, ECCV 2018, Eq. 1-4): statistics per sample over groups of
    ``C/groups`` channels and the spatial dims."""

    def __init__(self, num_features: int, groups: int = 32, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(Group(groups), Standardize(eps), _affine(affine), num_features=num_features)


@register("pn", family="activation", partition="position", operation="standardize", recovery="affine",
          paper="Li et al., Positional Normalization, NeurIPS 2019", year=2019)
class PositionalNorm(Normalize):
    """Positional normalization (Li et al., NeurIPS 2019): statistics per sample and position over
    the channels (the moments PONO extracts); optional per-channel affine."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(Position(), Standardize(eps), _affine(affine), num_features=num_features)


@register("rmsnorm", family="activation", partition="layer", operation="rms", recovery="gain",
          paper="Zhang & Sennrich, Root Mean Square Layer Normalization, NeurIPS 2019", year=2019)
class RMSNorm(Normalize):
    """RMSNorm (Zhang & Sennrich, NeurIPS 2019, Eq. 4): ``x / sqrt(mean(x^2) + eps) * g`` over the
    layer partition ``(C, *spatial)``, no centering; per-channel gain (``bias=True`` adds a shift)."""

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True, bias: bool = False) -> None:
        super().__init__(Layer(), RMS(eps), _affine(affine, bias), num_features=num_features)


@register("l1bn", family="activation", partition="batch", operation="l1 standardize", recovery="affine",
          paper="Wu et al., L1-Norm Batch Normalization for Efficient Training of Deep Neural Networks, "
                "IEEE TNNLS 2018", year=2018, batch_statistics=True)
class L1BatchNorm(Normalize):
    """L1-norm batch normalization (Wu et al., 2018): BN with the standard deviation replaced by the
    mean absolute deviation times ``sqrt(pi/2)``; running ``running_mean`` / ``running_mad``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(Batch(), L1(eps), _affine(affine), num_features=num_features,
                         momentum=momentum, track_running_stats=track_running_stats)


@register("frn", family="activation", partition="instance", operation="rms", recovery="affine + TLU",
          paper="Singh & Krishnan, Filter Response Normalization, CVPR 2020", year=2020)
class FilterResponseNorm(Normalize):
    """Filter response normalization with a thresholded linear unit (Singh & Krishnan, CVPR 2020, Eq. 1-2).

    ``nu2 = mean(x^2 over spatial)``, ``y = max(gamma * x / sqrt(nu2 + |eps|) + beta, tau)``. The paper
    recommends a learnable eps for 1x1 maps and ``(N, C)`` input (``learnable_eps=True``).
    """

    def __init__(self, num_features: int, eps: float = 1e-6, learnable_eps: bool = False) -> None:
        super().__init__(Instance(), RMS(eps), Affine(), num_features=num_features)
        self.tau = nn.Parameter(torch.zeros(num_features))
        self.eps_param = nn.Parameter(torch.tensor(float(eps))) if learnable_eps else None

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.num_features)
        eps = self.eps if self.eps_param is None else self.eps_param.abs() + self.eps
        return NF.filter_response_norm(x, self.weight, self.bias, self.tau, eps)


@register("evonorm_b0", family="activation", partition="batch + instance", operation="std division (non-linear)",
          recovery="affine", paper="Liu et al., Evolving Normalization-Activation Layers, NeurIPS 2020",
          year=2020, batch_statistics=True)
class EvoNormB0(Normalize):
    """EvoNorm-B0 (Liu et al., NeurIPS 2020, Table 1): a fused normalization-activation,
    ``y = x / max(sqrt(s_B^2 + eps), v*x + sqrt(s_I^2 + eps)) * gamma + beta`` with ``s_B^2`` the batch
    variance (running estimate in eval) and ``s_I^2`` the instance variance; needs spatial input."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(Batch(), Scale(eps), Affine(), num_features=num_features, momentum=momentum)
        self.v = nn.Parameter(torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.num_features)
        if x.dim() < 3:
            raise ValueError(f"{layer_label(self)} uses instance variances and needs (N, C, *spatial) "
                             f"input, got shape {tuple(x.shape)}")
        if not self.training:
            return NF.evonorm_b0(x, self.weight, self.bias, self.v, self.running_var, self.eps)[0]
        check_batch_values(self, x.numel() // self.num_features, x)
        out, var_b = NF.evonorm_b0(x, self.weight, self.bias, self.v, None, self.eps)
        self._update_running({"var": var_b}, x.numel() // self.num_features)
        return out


@register("evonorm_s0", family="activation", partition="group", operation="swish / group std (non-linear)",
          recovery="affine", paper="Liu et al., Evolving Normalization-Activation Layers, NeurIPS 2020",
          year=2020)
class EvoNormS0(Normalize):
    """EvoNorm-S0 (Liu et al., NeurIPS 2020, Table 1): ``y = x * sigmoid(v*x) / sqrt(s_G^2 + eps) * gamma + beta``
    with ``s_G^2`` the group variance per sample (a batch-independent, swish-like layer)."""

    def __init__(self, num_features: int, groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__(Group(groups), Standardize(eps), Affine(), num_features=num_features)
        self.v = nn.Parameter(torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return NF.evonorm_s0(x, self.weight, self.bias, self.v, self.partition.groups, self.eps)


# ------------------------------------------------------------------------------------------------
# combinational: learned mixtures of IN / LN / BN statistics


class _MixedMoments(Normalize):
    """Shared machinery of switchable and batch-instance normalization: the IN moments of the input
    and the LN / BN moments derived from them (Luo et al., ICLR 2019, Sec. 3.1), BN's running estimates."""

    def __init__(self, num_features: int, eps: float, momentum: float | None, sync: bool = False,
                 process_group: Any = None) -> None:
        super().__init__(Batch(), Standardize(eps), Affine(), num_features=num_features, momentum=momentum,
                         sync=sync, process_group=process_group)

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.dim() < 3:
            raise ValueError(f"{layer_label(self)} mixes in instance statistics and needs (N, C, *spatial) "
                             f"input, got shape {tuple(x.shape)}")

    def moments(self, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"in": (mean, var), "ln": ..., "bn": ...}``, each broadcastable against ``x`` (biased var)."""
        mean_in, var_in = NF.moments(x, tuple(range(2, x.dim())))
        # pooled moments by the law of total variance (mean of variances + variance of means): no
        # E[x^2] - E[x]^2 cancellation when the mean is large
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = var_in.mean(1, keepdim=True) + (mean_in - mean_ln).square().mean(1, keepdim=True)
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = var_in.mean(0, keepdim=True) + (mean_in - mean_bn).square().mean(0, keepdim=True)
            count = x.numel() // self.num_features
            if sync_active(self):
                mean_bn, var_bn, count = pooled_moments(count, mean_bn, var_bn, self.process_group)
            self._update_running({"mean": mean_bn, "var": var_bn}, count)
        else:
            mean_bn = NF.channel_view(self.running_mean, x.dim())
            var_bn = NF.channel_view(self.running_var, x.dim())
        return {"in": (mean_in, var_in), "ln": (mean_ln, var_ln), "bn": (mean_bn, var_bn)}


@register("switchnorm", family="activation", partition="instance + layer + batch (learned mix)",
          operation="standardize", recovery="affine",
          paper="Luo et al., Differentiable Learning-to-Normalize via Switchable Normalization, ICLR 2019",
          year=2019, batch_statistics=True)
class SwitchNorm(_MixedMoments):
    """Switchable normalization (Luo et al., ICLR 2019, Eq. 3): standardize with
    ``mean = sum_k softmax(lambda)_k mu_k`` and ``var = sum_k softmax(lambda')_k sigma_k^2`` over
    k in (IN, LN, BN); the mixing logits ``mean_weight`` and ``var_weight`` are learned."""

    KINDS = ("in", "ln", "bn")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 sync: bool = False, process_group: Any = None) -> None:
        super().__init__(num_features, eps, momentum, sync, process_group)
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        moments = self.moments(x)
        mw, vw = self.mean_weight.softmax(0), self.var_weight.softmax(0)
        mean = sum(mw[i] * moments[k][0] for i, k in enumerate(self.KINDS))
        var = sum(vw[i] * moments[k][1] for i, k in enumerate(self.KINDS))
        scale = torch.rsqrt(var + self.eps)
        return NF.scale_shift_apply(x, scale, -mean * scale, self.weight, self.bias)


@register("bin", family="activation", partition="batch + instance (learned gate)", operation="standardize",
          recovery="affine", paper="Nam & Kim, Batch-Instance Normalization for Adaptively Style-Invariant "
          "Neural Networks, NeurIPS 2018", year=2018, batch_statistics=True)
class BatchInstanceNorm(_MixedMoments):
    """Batch-instance normalization (Nam & Kim, NeurIPS 2018, Eq. 5):
    ``y = (rho * x_BN + (1 - rho) * x_IN) * gamma + beta`` with a per-channel gate ``rho`` clipped to
    [0, 1] (init 1: starts as BN)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 sync: bool = False, process_group: Any = None) -> None:
        super().__init__(num_features, eps, momentum, sync, process_group)
        self.rho = nn.Parameter(torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if self.training and bool(((self.rho < 0) | (self.rho > 1)).any()):
            with torch.no_grad():  # the paper clips the gate after each update; clamping inside the
                self.rho.clamp_(0, 1)  # forward instead would block its gradient at the bounds
        moments = self.moments(x)
        rho = NF.channel_view(self.rho, x.dim())
        (mean_b, var_b), (mean_i, var_i) = moments["bn"], moments["in"]
        s_b, s_i = torch.rsqrt(var_b + self.eps) * rho, torch.rsqrt(var_i + self.eps) * (1 - rho)
        return NF.scale_shift_apply(x, s_b + s_i, -(mean_b * s_b + mean_i * s_i), self.weight, self.bias)


# ------------------------------------------------------------------------------------------------
# local (windowed) normalization


@register("lrn", family="activation", partition="local (channel window)", operation="power scaling",
          recovery="none", paper="Krizhevsky et al., ImageNet Classification with Deep CNNs, NeurIPS 2012",
          year=2012)
class LocalResponseNorm(nn.Module):
    """Local response normalization (Krizhevsky et al., 2012, Sec. 3.3):
    ``b_c = a_c / (k + alpha/n * sum_{c' in window(c)} a_{c'}^2)^beta`` over ``size`` neighbouring
    channels (torch's kernel, same constants)."""

    def __init__(self, num_features: int, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__()
        self.num_features, self.size, self.alpha, self.beta, self.k = num_features, size, alpha, beta, k

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.num_features)
        return NF.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.num_features}, size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


@register("lcn", family="activation", partition="local (channels x spatial window)",
          operation="subtractive + divisive", recovery="affine",
          paper="Jarrett et al., What is the Best Multi-Stage Architecture for Object Recognition?, ICCV 2009",
          year=2009)
class LocalContrastNorm(nn.Module):
    """Local contrast (subtractive + divisive) normalization (Jarrett et al., ICCV 2009), see
    :func:`normapps.norm.functional.local_contrast_norm`; optional per-channel affine. Needs
    ``(N, C, H, W)`` input."""

    def __init__(self, num_features: int, kernel_size: int = 5, sigma: float = 1.0, eps: float = 1e-5,
                 affine: bool = True) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        self.num_features, self.kernel_size, self.sigma, self.eps = num_features, kernel_size, sigma, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.num_features)
        if x.dim() != 4:
            raise ValueError(f"{layer_label(self)} normalizes over spatial windows and needs (N, C, H, W) "
                             f"input, got shape {tuple(x.shape)}")
        return NF.local_contrast_norm(x, self.kernel_size, self.sigma, self.eps, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, kernel_size={self.kernel_size}, sigma={self.sigma}"
