"""Whitening: the normalization operation that decorrelates as well as standardizes (family ``whitening``).

The channels are split into groups of ``group_size``; within each group the centred activations
``X`` (``group_size x m`` with ``m = N * H * W``) are multiplied by a whitening matrix ``W`` so that
the covariance of ``W X`` is (close to) the identity. Methods differ in how ``W`` is obtained from
the covariance ``S = X X^T / m + eps I`` (Huang et al., TPAMI 2023, Sec. 4.2):

* ``dbn``: ZCA, ``W = U diag(lambda)^{-1/2} U^T`` (Huang et al., CVPR 2018). Its backward is the
  Daleckii-Krein formula with the divided difference of ``lambda^{-1/2}`` written in closed form, so
  it stays finite when eigenvalues coincide (rank-deficient batches);
* ``pcawhiten``: PCA, ``W = diag(lambda)^{-1/2} U^T``;
* ``cdwhiten``: Cholesky, ``W = L^{-1}`` with ``S = L L^T`` (Siarohin et al., ICLR 2019);
* ``iternorm``: Newton iterations ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N`` on the trace-normalized
  ``S_N = S / tr(S)``, ``W = P_T / sqrt(tr(S))`` (Huang et al., CVPR 2019); approximate by design;
* ``gw``: group whitening, per sample, over ``group_size`` groups of channels (Huang et al., CVPR 2021).

Batch methods keep ``running_mean`` and ``running_whitening`` (the whitening matrix) for eval.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as NF
from .framework import check_batch_values, check_channels, layer_label, momentum_factor
from .registry import register


class _ZCA(torch.autograd.Function):
    """``S^{-1/2}`` of symmetric positive definite ``S`` (batched), with a backward that is finite
    for repeated eigenvalues."""

    @staticmethod
    def forward(ctx, s):
        lam, u = torch.linalg.eigh(s)
        lam = lam.clamp_min(torch.finfo(s.dtype).tiny)
        r = lam.rsqrt()
        ctx.save_for_backward(u, r)
        return u @ (r.unsqueeze(-1) * u.transpose(-1, -2))

    @staticmethod
    def backward(ctx, g):
        u, r = ctx.saved_tensors
        # divided difference of f(l) = l^(-1/2): (f(a) - f(b)) / (a - b) = -f(a) f(b) / (a^(-1/2)... )
        sq = r.reciprocal()  # sqrt(lambda)
        k = -(r.unsqueeze(-1) * r.unsqueeze(-2)) / (sq.unsqueeze(-1) + sq.unsqueeze(-2))
        gs = u.transpose(-1, -2) @ ((g + g.transpose(-1, -2)) / 2) @ u
        return u @ (k * gs) @ u.transpose(-1, -2)


def zca_matrix(s: Tensor) -> Tensor:
    """ZCA whitening matrix ``S^{-1/2}`` of a batch of SPD matrices ``(..., d, d)``."""
    return _ZCA.apply(s)


class _SafeEigh(torch.autograd.Function):
    """``torch.linalg.eigh`` whose backward drops the terms of (nearly) equal eigenvalue pairs, where
    the eigenvectors are not determined and the exact gradient ``1 / (lambda_j - lambda_i)`` is
    infinite; the common remedy in decorrelation code."""

    @staticmethod
    def forward(ctx, s):
        lam, u = torch.linalg.eigh(s)
        ctx.save_for_backward(lam, u)
        return lam, u

    @staticmethod
    def backward(ctx, g_lam, g_u):
        lam, u = ctx.saved_tensors
        inner = torch.diag_embed(g_lam) if g_lam is not None else torch.zeros_like(u)
        if g_u is not None:
            gap = lam.unsqueeze(-2) - lam.unsqueeze(-1)  # lambda_j - lambda_i
            tol = 1e-7 * lam.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1e-30)
            f = torch.where(gap.abs() > tol, 1.0 / torch.where(gap.abs() > tol, gap, torch.ones_like(gap)), 0.0)
            inner = inner + f * (u.transpose(-1, -2) @ g_u)
        grad = u @ inner @ u.transpose(-1, -2)
        return (grad + grad.transpose(-1, -2)) / 2


def pca_matrix(s: Tensor) -> Tensor:
    """PCA whitening matrix ``diag(lambda)^{-1/2} U^T`` (eigenvalues ascending). Its gradient runs
    through the eigenvectors, ill-conditioned when eigenvalues nearly coincide (the reason DBN uses
    ZCA); pairs closer than a relative 1e-7 are dropped from it rather than made infinite."""
    lam, u = _SafeEigh.apply(s)
    return lam.clamp_min(torch.finfo(s.dtype).tiny).rsqrt().unsqueeze(-1) * u.transpose(-1, -2)


def cholesky_matrix(s: Tensor) -> Tensor:
    """Cholesky whitening matrix ``L^{-1}`` with ``S = L L^T``."""
    eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device).expand_as(s)
    return torch.linalg.solve_triangular(torch.linalg.cholesky(s), eye, upper=False)


def newton_matrix(s: Tensor, iterations: int = 5) -> Tensor:
    """IterNorm's whitening matrix: ``T`` Newton steps towards ``S^{-1/2}`` on the trace-normalized
    covariance, ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N``, then ``P_T / sqrt(tr S)``."""
    trace = s.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True).unsqueeze(-1)
    s_n = s / trace
    p = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device).expand_as(s)
    for _ in range(iterations):
        p = 1.5 * p - 0.5 * (p @ p @ p @ s_n)
    return p / trace.sqrt()


_MATRIX = {"zca": zca_matrix, "pca": pca_matrix, "cholesky": cholesky_matrix, "newton": newton_matrix}


class _BatchWhitening(nn.Module):
    """Whitening over the batch (and spatial dims) per group of ``group_size`` channels."""

    method = "zca"

    def __init__(self, num_features: int, group_size: int = 64, T: int = 5, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True) -> None:
        super().__init__()
        group_size = min(group_size, num_features)
        if num_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide num_features={num_features}; "
                             f"choose one of {[d for d in range(1, num_features + 1) if num_features % d == 0]}")
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        self.num_features, self.group_size, self.T, self.eps, self.momentum = num_features, group_size, T, eps, momentum
        groups = num_features // group_size
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(groups, group_size, 1))
        self.register_buffer("running_whitening", torch.eye(group_size).repeat(groups, 1, 1))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def whitening_matrix(self, s: Tensor) -> Tensor:
        if self.method == "newton":
            return newton_matrix(s, self.T)
        return _MATRIX[self.method](s)

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.num_features)
        n, c = x.shape[:2]
        groups, g = c // self.group_size, self.group_size
        xs = NF.statistics_dtype(x)
        xg = xs.transpose(0, 1).reshape(groups, g, -1)  # (groups, g, m)
        if self.training:
            check_batch_values(self, xg.shape[-1], x)
            mean = xg.mean(-1, keepdim=True)
            xc = xg - mean
            s = xc @ xc.transpose(-1, -2) / xg.shape[-1]
            s = s + self.eps * torch.eye(g, dtype=s.dtype, device=s.device)
            w = self.whitening_matrix(s)
            with torch.no_grad():
                factor = momentum_factor(self)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_whitening.lerp_(w.detach().to(self.running_whitening.dtype), factor)
        else:
            xc = xg - self.running_mean.to(xs.dtype)
            w = self.running_whitening.to(xs.dtype)
        y = (w @ xc).reshape((c, n) + x.shape[2:]).transpose(0, 1)
        return NF.affine(y.to(x.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        t = f", T={self.T}" if self.method == "newton" else ""
        return f"{self.num_features}, group_size={self.group_size}{t}, eps={self.eps}, momentum={self.momentum}"



@register("dbn", family="whitening", partition="batch (channel groups)", operation="ZCA whitening",
          recovery="affine", paper="Huang et al., Decorrelated Batch Normalization, CVPR 2018", year=2018, batch_statistics=True)
class DecorrelatedBatchNorm(_BatchWhitening):
    """Decorrelated BN: ZCA whitening per group of channels over the batch (Huang et al., CVPR 2018)."""

    method = "zca"


@register("pcawhiten", family="whitening", partition="batch (channel groups)", operation="PCA whitening",
          recovery="affine", paper="Huang et al., Decorrelated Batch Normalization, CVPR 2018 (PCA variant)",
          year=2018, batch_statistics=True)
class PCAWhitening(_BatchWhitening):
    """PCA whitening per group of channels over the batch. Its gradient involves the eigenvectors
    themselves and is ill-conditioned when eigenvalues nearly coincide (the reason DBN uses ZCA)."""

    method = "pca"


@register("cdwhiten", family="whitening", partition="batch (channel groups)", operation="Cholesky whitening",
          recovery="affine", paper="Siarohin et al., Whitening and Coloring Batch Transform for GANs, ICLR 2019",
          year=2019, batch_statistics=True)
class CholeskyWhitening(_BatchWhitening):
    """Cholesky whitening per group of channels over the batch (Siarohin et al., ICLR 2019)."""

    method = "cholesky"


@register("iternorm", family="whitening", partition="batch (channel groups)", operation="Newton-iteration whitening",
          recovery="affine", paper="Huang et al., Iterative Normalization, CVPR 2019", year=2019, batch_statistics=True)
class IterNorm(_BatchWhitening):
    """Iterative normalization: ``T`` Newton iterations towards ZCA (Huang et al., CVPR 2019); whitens
    only approximately, more closely as ``T`` grows; no eigen-decomposition."""

    method = "newton"


@register("gw", family="whitening", partition="per sample (channel groups)", operation="Newton-iteration whitening",
          recovery="affine", paper="Huang et al., Group Whitening: Balancing Learning Efficiency and "
          "Representational Capacity, CVPR 2021", year=2021)
class GroupWhitening(nn.Module):
    """Group whitening (Huang et al., CVPR 2021): per sample, the channels form ``group_size`` groups
    whose ``group_size x group_size`` covariance (over the rest of the group's channels and the spatial
    positions) is whitened by ``T`` Newton iterations; no batch statistics."""

    def __init__(self, num_features: int, group_size: int = 16, T: int = 5, eps: float = 1e-5,
                 affine: bool = True) -> None:
        super().__init__()
        group_size = min(group_size, num_features)
        if num_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide num_features={num_features}")
        self.num_features, self.group_size, self.T, self.eps = num_features, group_size, T, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.num_features)
        n, g = x.shape[0], self.group_size
        xs = NF.statistics_dtype(x)
        xg = xs.reshape(n, g, -1)  # (N, groups, C/groups * spatial)
        if xg.shape[-1] < 2:
            raise ValueError(f"{layer_label(self)} needs more than one value per group and sample, "
                             f"got input shape {tuple(x.shape)}")
        xc = xg - xg.mean(-1, keepdim=True)
        s = xc @ xc.transpose(-1, -2) / xg.shape[-1] + self.eps * torch.eye(g, dtype=xs.dtype, device=x.device)
        y = (newton_matrix(s, self.T) @ xc).reshape(x.shape)
        return NF.affine(y.to(x.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, group_size={self.group_size}, T={self.T}, eps={self.eps}"
