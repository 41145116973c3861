"""Batch statistics over all processes (DDP, ``torchrun``, Lightning ``strategy: ddp``).

A batch-statistics layer built with ``sync=True`` pools its training statistics over every process
of ``process_group`` (default: all) when ``torch.distributed`` is initialized with more than one
process, so each process normalizes with the statistics one process would compute on the
concatenated batch; otherwise it computes them locally, as without ``sync``.

Pooling is exact and cancellation-free: each process contributes its count ``n_p``, mean ``mu_p``
and (biased) second central moment ``M_p`` (variance, or covariance for whitening), and

    mu = sum_p n_p mu_p / n,      M = sum_p n_p (M_p + (mu_p - mu)(mu_p - mu)^T) / n

(Chan et al.'s parallel formula; ``n = sum_p n_p``, so processes may hold different batch sizes).
The per-process triples travel in one differentiable all-reduce, whose backward all-reduces the
gradients: the gradient each process gets for its input is the slice of the gradient of the summed
loss over the concatenated batch, as with ``torch.nn.SyncBatchNorm``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def supports_sync(module: nn.Module) -> bool:
    """Whether ``module`` is one of our layers with a ``sync`` switch (a bool attribute next to
    ``process_group``; set on the batch-statistics methods)."""
    return isinstance(getattr(module, "sync", None), bool) and hasattr(module, "process_group")


def sync_active(module: nn.Module) -> bool:
    """Whether ``module`` asked for synchronized statistics (``module.sync``) and there are other
    processes to pool with."""
    if not getattr(module, "sync", False) or not dist.is_available() or not dist.is_initialized():
        return False
    return dist.get_world_size(getattr(module, "process_group", None)) > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum shared by all processes is the sum of theirs."""

    @staticmethod
    def forward(ctx, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_gather_differentiable(x: Tensor, group: Any = None) -> Tensor:
    """``(world_size, *x.shape)``: every process's ``x``, with gradients flowing back to each
    process's own slice (an all-reduce of per-process slots, so any backend, gloo included, works)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    slots = [x if r == rank else torch.zeros_like(x) for r in range(world)]
    return _AllReduceSum.apply(torch.stack(slots), group)


def pooled_moments(count: int, mean: Tensor, second: Tensor, group: Any = None,
                   covariance: bool = False) -> tuple[Tensor, Tensor, int]:
    """Pool per-process moments into the moments of the concatenated batch.

    Args:
        count: values per statistic on this process (``n_p``).
        mean: this process's mean, any shape ``S``.
        second: its biased variance (shape ``S``) or, with ``covariance=True``, its biased
            covariance ``(..., d, d)`` for ``mean`` of shape ``(..., d, 1)``.
        group: the process group (None: all processes).

    Returns:
        ``(mean, second, total_count)`` over all processes, differentiable in ``mean`` and ``second``.
    """
    packed = torch.cat([mean.new_full((1,), float(count)), mean.reshape(-1), second.reshape(-1)])
    every = all_gather_differentiable(packed, group)  # (world, 1 + |mean| + |second|)
    counts = every[:, 0].detach()
    total = counts.sum()
    weights = counts / total
    means = every[:, 1:1 + mean.numel()].reshape((-1,) + mean.shape)
    seconds = every[:, 1 + mean.numel():].reshape((-1,) + second.shape)
    pooled_mean = torch.einsum("p,p...->...", weights, means)
    dev = means - pooled_mean
    spread = dev @ dev.transpose(-1, -2) if covariance else dev.square()
    pooled_second = torch.einsum("p,p...->...", weights, seconds + spread)
    return pooled_mean, pooled_second, int(round(float(total)))


def count_range(count: int, device: torch.device | str = "cpu", group: Any = None) -> tuple[int, int]:
    """The smallest and largest ``count`` over processes (one all-reduce on ``device``)."""
    both = torch.tensor([count, -count], dtype=torch.float64, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    return int(-both[1]), int(both[0])
