"""Whitening: the normalization operation that decorrelates as well as standardizes (family ``whitening``).

The channels are split into groups of ``group_size``; within each group the centred activations
``X_c = X - mu`` (``group_size x m`` with ``m = N * H * W``) are multiplied by a whitening matrix
``W`` so that the covariance of ``W X_c`` is (close to) the identity. Methods differ in how ``W`` is
obtained from the covariance ``S = X_c X_c^T / m + eps I`` (Huang et al., TPAMI 2023, Sec. 4.2):

* ``dbn``: ZCA, ``W = U diag(lambda)^{-1/2} U^T`` (Huang et al., CVPR 2018). Its backward is the
  Daleckii-Krein formula with the divided difference of ``lambda^{-1/2}`` written in closed form, so
  it stays finite when eigenvalues coincide (rank-deficient batches);
* ``pcawhiten``: PCA, ``W = diag(lambda)^{-1/2} U^T``;
* ``cdwhiten``: Cholesky, ``W = L^{-1}`` with ``S = L L^T`` (Siarohin et al., ICLR 2019);
* ``iternorm``: Newton iterations ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N`` from ``P_0 = I`` on the
  trace-normalized ``S_N = S / tr(S)``, ``W = P_T / sqrt(tr(S))`` (Huang et al., CVPR 2019);
  approximate by design;
* ``gw``: group whitening, per sample, over ``group_size`` groups of channels (Huang et al., CVPR 2021).

Recovery: a per-channel affine ``gamma * x_hat + beta`` (``affine=True``, the default), or with
``coloring=True`` a learned ``group_size x group_size`` matrix per group and a per-channel bias,
``y = Gamma x_hat + beta``, ``Gamma`` initialized to the identity: the whitening-and-coloring
transform of Siarohin et al. (ICLR 2019), which can restore any covariance within a group.

Batch methods compute the training statistics in one method, ``_batch_moments``, which returns the
group means, the biased covariances (without ``eps``) and the number of values per channel; the rest
of the forward uses only those, so a subclass that pools them over processes whitens with global
statistics. For eval they keep ``running_mean`` and ``running_whitening`` (the whitening matrix ``W``,
before the recovery), both running averages of the batch values with factor ``momentum``.

Cost. On ``(N, C, *spatial)`` input the work is matrix products over the ``m`` values of each group:
the covariance ``X_c X_c^T``, the whitening ``W X_c`` and, in the backward, ``dY X_c^T``,
``W^T dY`` and ``(dS + dS^T) X_c / m``. They run on the input in blocks of samples moved into
group-major order ``(groups, g, samples * spatial)`` (the mean subtracted in the same pass), so the
full tensor is never transposed as a whole and the covariance is exact (two-pass) in float32. The
per-channel affine or coloring folds into the ``g x g`` matrix, ``y = (Gamma W)(x - mu) + beta``, so
the output is written once; in eval the running mean folds into the bias as well,
``y = M x + (beta - M mu)``, a grouped 1x1 convolution. Half/bfloat16 input gives float32
statistics and an output in the input's dtype. The data-sized backward of the batch methods is
written out (differentiable once: a second derivative raises). The ``g x g`` matrix functions have
hand-written backwards too: ZCA's Daleckii-Krein formula, Cholesky's with matrix products only, and
the Newton iterations of ``iternorm`` and ``gw`` through the stored iterates (vmap-able, so eval-mode
per-sample gradients with ``torch.func`` work).

The same operation applied to style: :func:`whiten`, :func:`color` and :func:`whiten_color_transform`
(WCT, Li et al., NeurIPS 2017) whiten each sample's feature maps with their own covariance and colour
them with a style's; the matrix roots come from float64 eigendecompositions with eigenvalues clamped
at ``eps``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import functional as NF
from .distributed import pooled_moments, sync_active
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
        # divided difference of f(l) = l^(-1/2): (f(a) - f(b)) / (a - b) = -f(a) f(b) / (sqrt(a) + sqrt(b))
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


class _CholeskyWhitening(torch.autograd.Function):
    """``W = L^{-1}`` with ``S = L L^T`` (batched), with a backward of matrix products only.

    The adjoint of the Cholesky factor (Murray, 2016) is ``dS = L^{-T} Phi(L^T dL) L^{-1}`` with
    ``Phi(X) = (X + tril(X, -1)^T) / 2`` on ``X = tril(L^T dL)``; through ``W = L^{-1}``,
    ``dL = -W^T dW W^T`` and ``W L = I`` give ``L^T dL = -dW W^T``, so
    ``dS = W^T Phi(tril(-dW W^T)) W``: no triangular solves."""

    @staticmethod
    def forward(ctx, s):
        eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device).expand_as(s)
        w = torch.linalg.solve_triangular(torch.linalg.cholesky(s), eye, upper=False)
        ctx.save_for_backward(w)
        return w

    @staticmethod
    def backward(ctx, dw):
        (w,) = ctx.saved_tensors
        x = torch.tril(-(dw @ w.mT))
        return w.mT @ (0.5 * (x + x.tril(-1).mT)) @ w


def cholesky_matrix(s: Tensor) -> Tensor:
    """Cholesky whitening matrix ``L^{-1}`` with ``S = L L^T`` (batched ``(..., d, d)``)."""
    return _CholeskyWhitening.apply(s)


class _Newton(torch.autograd.Function):
    """IterNorm's Newton iterations with a hand-written backward.

    Forward: ``S_N = S / tr(S)``, ``P_1 = 1.5 I - 0.5 S_N`` (the first step from ``P_0 = I``), then
    ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N`` up to ``P_T``, and ``W = P_T / sqrt(tr(S))``. The iterates
    ``P_k``, ``P_k^2`` and ``P_k^3`` (``k = 1 .. T-1``) are returned as extra non-differentiable
    outputs, so the backward reuses them. Backward: the chain rule through the iterations in reverse,
    per step ``D = -0.5 dP_{k+1} S_N^T``, ``dQ = D P_k^T``,
    ``dP_k = 1.5 dP_{k+1} + (P_k^2)^T D + dQ P_k^T + P_k^T dQ`` and ``dS_N += -0.5 (P_k^3)^T dP_{k+1}``;
    then through ``S_N = S / tr(S)`` and the final scaling. Exact for any input (no symmetry
    assumed); made of differentiable operations and vmap-able (``generate_vmap_rule``).
    ``s`` is ``(B, d, d)``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(s, iterations):
        eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
        trace = s.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
        s_n = s / trace
        p = torch.add(1.5 * eye, s_n, alpha=-0.5)
        stored = []
        for _ in range(iterations - 1):
            p2 = torch.bmm(p, p)
            p3 = torch.bmm(p2, p)
            stored += [p, p2, p3]
            p = torch.baddbmm(p, p3, s_n, beta=1.5, alpha=-0.5)
        return (p / trace.sqrt(), *stored)

    @staticmethod
    def setup_context(ctx, inputs, output):
        s, _ = inputs
        w, *stored = output
        ctx.mark_non_differentiable(*stored)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(s, w, *stored)

    @staticmethod
    def backward(ctx, dw, *_):
        s, w, *stored = ctx.saved_tensors
        if dw is None:
            return None, None
        eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
        trace = s.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
        s_n = s / trace
        dp = dw / trace.sqrt()  # W = P_T tr^(-1/2)
        dtrace = -0.5 * (dw * w).sum((-2, -1), keepdim=True) / trace
        ds_n = torch.zeros_like(s)
        for k in range(len(stored) - 3, -1, -3):  # P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N
            p, p2, p3 = stored[k:k + 3]
            d3 = torch.bmm(dp, s_n.mT) * -0.5
            ds_n = torch.baddbmm(ds_n, p3.mT, dp, alpha=-0.5)
            d2 = torch.bmm(d3, p.mT)
            dp = torch.baddbmm(torch.baddbmm(torch.baddbmm(dp, p2.mT, d3, beta=1.5), d2, p.mT), p.mT, d2)
        ds_n = torch.add(ds_n, dp, alpha=-0.5)  # P_1 = 1.5 I - 0.5 S_N
        dtrace = dtrace - (ds_n * s_n).sum((-2, -1), keepdim=True) / trace
        return ds_n / trace + dtrace * eye, None


def newton_matrix(s: Tensor, iterations: int = 5) -> Tensor:
    """IterNorm's whitening matrix: ``T`` Newton steps towards ``S^{-1/2}`` on the trace-normalized
    covariance, ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N`` from ``P_0 = I``, then ``P_T / sqrt(tr S)``
    (Huang et al., CVPR 2019). ``s`` is ``(..., d, d)``; the backward is hand-written (:class:`_Newton`)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    return _Newton.apply(s.reshape((-1,) + s.shape[-2:]), iterations)[0].reshape(s.shape)


_MATRIX = {"zca": zca_matrix, "pca": pca_matrix, "cholesky": cholesky_matrix}

# --------------------------------------------------------------------------------------------
# data-sized work of the batch methods, on (N, groups * g, *spatial) input in blocks of samples

_BLOCK_VALUES = 1 << 18
"""Values per thread in a block of samples moved into group-major order (1 MiB in float32): small
enough to stay in cache between the copy and the matrix products that read it, large enough that
the products run at full speed."""


def _blocks(x4: Tensor) -> list[tuple[int, int]]:
    """Sample ranges ``[a, b)`` of ``x4 = (N, groups, g, L)``, each about ``_BLOCK_VALUES`` values
    per thread."""
    n = x4.shape[0]
    step = max(1, _BLOCK_VALUES * torch.get_num_threads() // max(1, x4[0].numel()))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _group_major(block: Tensor, mean: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``block - mean`` of a ``(k, groups, g, L)`` block in group-major order ``(groups, g, k * L)``,
    contiguous, in ``dtype``; the copy and the subtraction are one pass."""
    k, groups, g, spatial = block.shape
    out = torch.empty((groups, g, k, spatial), dtype=dtype, device=block.device)
    source = block.permute(1, 2, 0, 3)
    if mean is None:
        out.copy_(source)
    else:
        torch.sub(source, mean.unsqueeze(-1), out=out)
    return out.view(groups, g, k * spatial)


def _write_block(out: Tensor, values: Tensor) -> None:
    """Write group-major ``values`` ``(groups, g, k * L)`` into the ``(k, groups, g, L)`` block ``out``."""
    k, groups, g, spatial = out.shape
    out.copy_(values.view(groups, g, k, spatial).permute(2, 0, 1, 3))


def _statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics of ``dtype`` input are computed in (float32 for half/bfloat16)."""
    return torch.float32 if dtype in NF.LOW_PRECISION else dtype


def _group_view(x: Tensor, group_size: int) -> Tensor:
    """``(N, C, *spatial)`` as ``(N, C / group_size, group_size, prod(spatial))``."""
    return x.reshape(x.shape[0], x.shape[1] // group_size, group_size, -1)


class _GroupMoments(torch.autograd.Function):
    """Per group of channels: the mean ``mu`` ``(groups, g, 1)`` and the biased covariance
    ``S = X_c X_c^T / m`` ``(groups, g, g)`` over the ``m = N * prod(spatial)`` values of each channel.

    Backward: ``dX = (dS + dS^T) X_c / m + dmu / m``, one pass over the blocks."""

    @staticmethod
    def forward(ctx, x, group_size):
        x4 = _group_view(x, group_size)
        dtype = _statistics_dtype(x.dtype)
        m = x4.shape[0] * x4.shape[3]
        # sums over the spatial values, then over the samples in float64: a float32 mean exact to
        # rounding even for activations far from zero
        mean = (x4.sum(3, dtype=dtype).sum(0, dtype=torch.float64) / m).to(dtype).unsqueeze(-1)
        s = None
        for a, b in _blocks(x4):
            xt = _group_major(x4[a:b], mean, dtype)
            s = torch.bmm(xt, xt.mT) if s is None else torch.baddbmm(s, xt, xt.mT)
        ctx.group_size = group_size
        ctx.save_for_backward(x, mean)
        return mean, s.div_(m)

    @staticmethod
    @once_differentiable
    def backward(ctx, dmean, dcov):
        x, mean = ctx.saved_tensors
        x4 = _group_view(x, ctx.group_size)
        m = x4.shape[0] * x4.shape[3]
        a = (dcov + dcov.mT) / m
        shift = dmean / m
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dx4 = _group_view(dx, ctx.group_size)
        for lo, hi in _blocks(x4):
            _write_block(dx4[lo:hi], torch.baddbmm(shift, a, _group_major(x4[lo:hi], mean, mean.dtype)))
        return dx, None


class _GroupWhiten(torch.autograd.Function):
    """``y = M (x - mu) + beta`` per group of channels: ``M`` ``(groups, g, g)``, ``mu`` and ``beta``
    ``(groups, g, 1)`` (``beta`` may be None), ``x`` and ``y`` ``(N, C, *spatial)``.

    Backward, one pass over the blocks: ``dx = M^T dy``, ``dM = dy (x - mu)^T``, ``dbeta = sum dy``
    and ``dmu = -M^T sum dy`` (sums over the values of each channel)."""

    @staticmethod
    def forward(ctx, x, mean, matrix, bias):
        x4 = _group_view(x, matrix.shape[-1])
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        y4 = _group_view(y, matrix.shape[-1])
        for a, b in _blocks(x4):
            xt = _group_major(x4[a:b], mean, matrix.dtype)
            _write_block(y4[a:b], torch.bmm(matrix, xt) if bias is None else torch.baddbmm(bias, matrix, xt))
        ctx.save_for_backward(x, mean, matrix)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mean, matrix = ctx.saved_tensors
        need_x, need_mean, need_matrix, need_bias = ctx.needs_input_grad
        g = matrix.shape[-1]
        x4, dy4 = _group_view(x, g), _group_view(dy, g)
        dx = dx4 = dmatrix = dsum = None
        if need_x:
            dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            dx4 = _group_view(dx, g)
        if need_matrix:
            dmatrix = torch.zeros_like(matrix)
        if need_mean or need_bias:
            dsum = torch.zeros_like(mean)
        for a, b in _blocks(x4):
            dyt = _group_major(dy4[a:b], None, matrix.dtype)
            if dmatrix is not None:
                dmatrix = torch.baddbmm(dmatrix, dyt, _group_major(x4[a:b], mean, matrix.dtype).mT)
            if dsum is not None:
                dsum += dyt.sum(-1, keepdim=True)
            if dx4 is not None:
                _write_block(dx4[a:b], torch.bmm(matrix.mT, dyt))
        dmean = -(matrix.mT @ dsum) if need_mean else None
        return dx, dmean, dmatrix, dsum if need_bias else None


def group_moments(x: Tensor, group_size: int) -> tuple[Tensor, Tensor, int]:
    """Batch statistics of whitening over groups of ``group_size`` channels of ``(N, C, *spatial)``
    input: the mean ``(C / g, g, 1)``, the biased covariance ``X_c X_c^T / m`` ``(C / g, g, g)``
    (no ``eps``) and ``m = N * prod(spatial)``, in the statistics dtype (float32 for half input),
    differentiable once."""
    mean, cov = _GroupMoments.apply(x.contiguous(), group_size)
    return mean, cov, x.numel() // x.shape[1]


def group_whiten(x: Tensor, mean: Tensor, matrix: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y = M (x - mu) + beta`` for each group of channels (``M`` ``(groups, g, g)``, ``mu`` and
    ``beta`` ``(groups, g, 1)``) on ``(N, C, *spatial)`` input, computed in ``M``'s dtype and
    returned in ``x``'s; differentiable once."""
    return _GroupWhiten.apply(x.contiguous(), mean.to(matrix.dtype), matrix,
                              None if bias is None else bias.to(matrix.dtype))


_FEW_GROUPS = 4
"""Up to this many groups, :func:`grouped_matmul` runs one product per group on the input as laid
out; beyond, one product over all groups in group-major order (fewer, larger operations)."""


def grouped_matmul(x: Tensor, matrix: Tensor, shift: Tensor) -> Tensor:
    """``y = M x + b`` per group of channels, with plain (vmap-able, differentiable) operations: a
    grouped 1x1 convolution. ``x`` ``(N, C, *spatial)``, ``M`` ``(groups, g, g)``, ``b``
    ``(groups, g, 1)``; computed and returned in ``M``'s dtype."""
    n = x.shape[0]
    groups, g = matrix.shape[:2]
    x4 = _group_view(x, g).to(matrix.dtype)
    if groups <= _FEW_GROUPS:  # each sample's block times the (broadcast) matrix: no transposed copy
        parts = [torch.baddbmm(shift[i], matrix[i].expand(n, g, g), x4[:, i]) for i in range(groups)]
        return (parts[0] if groups == 1 else torch.stack(parts, 1)).reshape(x.shape)
    y = torch.baddbmm(shift, matrix, x4.permute(1, 2, 0, 3).reshape(groups, g, -1))
    return y.view(groups, g, n, -1).permute(2, 0, 1, 3).reshape(x.shape)


def _check_group_size(num_features: int, group_size: int) -> int:
    group_size = min(group_size, num_features)
    if group_size < 1 or num_features % group_size:
        raise ValueError(f"group_size={group_size} does not divide num_features={num_features}; "
                         f"choose one of {[d for d in range(1, num_features + 1) if num_features % d == 0]}")
    return group_size


def _check_recovery(affine: bool, coloring: bool) -> None:
    if coloring and not affine:
        raise ValueError("coloring=True replaces the per-channel affine with a learned matrix and needs "
                         "affine=True, got affine=False")


class _BatchWhitening(nn.Module):
    """Whitening over the batch (and spatial dims) per group of ``group_size`` channels.

    Args:
        num_features: channels ``C`` of the ``(N, C, *spatial)`` input.
        group_size: channels per whitened group (capped at ``C``; must divide it).
        T: Newton iterations (``iternorm`` only).
        eps: added to the covariance diagonal.
        momentum: factor of the running averages, or None for a cumulative average.
        affine: learn a per-channel scale ``weight`` ``(C,)`` and shift ``bias`` ``(C,)``.
        coloring: instead of the per-channel scale, learn a matrix ``weight`` ``(groups, g, g)``
            (initialized to the identity) applied to each whitened group, ``y = Gamma x_hat + beta``
            (Siarohin et al., ICLR 2019).
        sync: under ``torch.distributed``, pool the group means and covariances over the processes
            of ``process_group`` (default: all), so each whitens with the statistics of the
            concatenated batch (:mod:`normapps.norm.distributed`).

    After training, :func:`normapps.norm.recalibrate` replaces the running averages by the exact
    statistics of a data set. Do so for ``dbn`` (and ``pcawhiten``, ``cdwhiten``) on layers whose
    input is rank-deficient (e.g. more channels than the previous layer's receptive field has
    values): there the moving average of whitening matrices taken under drifting weights amplifies
    nearly-null directions by up to ``eps^(-1/2)`` and the eval output breaks down (digits CNN: 10%
    validation accuracy from the running matrix, 97% after ``recalibrate``); ``iternorm``'s
    trace-normalized Newton matrix stays bounded and is far less affected.
    """

    method = "zca"

    def __init__(self, num_features: int, group_size: int = 64, T: int = 5, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, coloring: bool = False,
                 sync: bool = False, process_group: Any = None) -> None:
        super().__init__()
        self.sync, self.process_group = sync, process_group
        group_size = _check_group_size(num_features, group_size)
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        _check_recovery(affine, coloring)
        self.num_features, self.group_size, self.T, self.eps, self.momentum = num_features, group_size, T, eps, momentum
        self.affine, self.coloring = affine, coloring
        groups = num_features // group_size
        if coloring:
            self.weight = nn.Parameter(torch.eye(group_size).repeat(groups, 1, 1))
        else:
            self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(groups, group_size, 1))
        self.register_buffer("running_whitening", torch.eye(group_size).repeat(groups, 1, 1))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def whitening_matrix(self, s: Tensor) -> Tensor:
        """The whitening matrix ``W`` of the regularized covariance ``s`` ``(groups, g, g)``."""
        if self.method == "newton":
            return newton_matrix(s, self.T)
        return _MATRIX[self.method](s)

    def _batch_moments(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        """The training statistics of the input ``x`` ``(N, C, *spatial)``: the mean of each group
        ``(groups, g, 1)``, its biased covariance ``(groups, g, g)`` without ``eps``, and the number
        ``m`` of values per channel behind them; in the statistics dtype, differentiable.

        The forward uses nothing else from the batch: a version that pools these over processes
        (sums of ``x`` and ``x x^T`` and the counts) makes the layer whiten with global statistics."""
        mean, cov, m = group_moments(x, self.group_size)
        if sync_active(self):
            return pooled_moments(m, mean, cov, self.process_group, covariance=True)
        return mean, cov, m

    def _recovery(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        """The matrix ``M`` ``(groups, g, g)`` and shift ``beta`` ``(groups, g, 1)`` (or None) of
        ``y = M (x - mu) + beta``: ``M = Gamma W`` (coloring), ``diag(gamma) W`` (affine) or ``W``."""
        groups, g = w.shape[:2]
        if self.weight is None:
            matrix = w
        elif self.coloring:
            matrix = self.weight.to(w.dtype) @ w
        else:
            matrix = self.weight.to(w.dtype).view(groups, g, 1) * w
        shift = None if self.bias is None else self.bias.to(w.dtype).view(groups, g, 1)
        return matrix, shift

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.num_features)
        if not self.training:
            dtype = _statistics_dtype(x.dtype)
            matrix, shift = self._recovery(self.running_whitening.to(dtype))
            shift = -(matrix @ self.running_mean.to(dtype)) if shift is None else torch.baddbmm(
                shift, matrix, self.running_mean.to(dtype), alpha=-1)
            return grouped_matmul(x, matrix, shift).to(x.dtype)
        mean, cov, m = self._batch_moments(x)
        check_batch_values(self, m, x)
        w = self.whitening_matrix(cov + self.eps * torch.eye(self.group_size, dtype=cov.dtype, device=cov.device))
        with torch.no_grad():
            factor = momentum_factor(self)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
            self.running_whitening.lerp_(w.detach().to(self.running_whitening.dtype), factor)
        matrix, shift = self._recovery(w)
        return group_whiten(x, mean, matrix, shift)

    def extra_repr(self) -> str:
        t = f", T={self.T}" if self.method == "newton" else ""
        recovery = ", coloring=True" if self.coloring else ("" if self.affine else ", affine=False")
        return (f"{self.num_features}, group_size={self.group_size}{t}, eps={self.eps}, "
                f"momentum={self.momentum}{recovery}" + (", sync=True" if self.sync else ""))


@register("dbn", family="whitening", partition="batch (channel groups)", operation="ZCA whitening",
          recovery="affine or coloring", paper="Huang et al., Decorrelated Batch Normalization, CVPR 2018",
          year=2018, batch_statistics=True)
class DecorrelatedBatchNorm(_BatchWhitening):
    """Decorrelated BN: ZCA whitening per group of channels over the batch (Huang et al., CVPR 2018)."""

    method = "zca"


@register("pcawhiten", family="whitening", partition="batch (channel groups)", operation="PCA whitening",
          recovery="affine or coloring", paper="Huang et al., Decorrelated Batch Normalization, CVPR 2018 (PCA variant)",
          year=2018, batch_statistics=True)
class PCAWhitening(_BatchWhitening):
    """PCA whitening per group of channels over the batch. Its gradient involves the eigenvectors
    themselves and is ill-conditioned when eigenvalues nearly coincide (the reason DBN uses ZCA)."""

    method = "pca"


@register("cdwhiten", family="whitening", partition="batch (channel groups)", operation="Cholesky whitening",
          recovery="affine or coloring", paper="Siarohin et al., Whitening and Coloring Batch Transform for GANs, ICLR 2019",
          year=2019, batch_statistics=True)
class CholeskyWhitening(_BatchWhitening):
    """Cholesky whitening per group of channels over the batch (Siarohin et al., ICLR 2019); with
    ``coloring=True`` the paper's whitening-and-coloring transform."""

    method = "cholesky"


@register("iternorm", family="whitening", partition="batch (channel groups)", operation="Newton-iteration whitening",
          recovery="affine or coloring", paper="Huang et al., Iterative Normalization, CVPR 2019", year=2019,
          batch_statistics=True)
class IterNorm(_BatchWhitening):
    """Iterative normalization: ``T`` Newton iterations towards ZCA (Huang et al., CVPR 2019); whitens
    only approximately, more closely as ``T`` grows; no eigen-decomposition."""

    method = "newton"


class _SampleMoments(torch.autograd.Function):
    """Per sample and row of ``x`` ``(N, g, d)``: the centred ``X_c = x - mean`` and the biased
    covariance ``X_c X_c^T / d`` ``(N, g, g)``. Backward: ``dx = dX_c - mean(dX_c) + (dS + dS^T) X_c / d``
    (the last term has zero row means). Differentiable operations; vmap-able."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        xc = x - x.mean(-1, keepdim=True)
        return xc, torch.bmm(xc, xc.mT) / x.shape[-1]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[0])

    @staticmethod
    def backward(ctx, dxc, dcov):
        (xc,) = ctx.saved_tensors
        a = (dcov + dcov.mT) / xc.shape[-1]
        return torch.baddbmm(dxc - dxc.mean(-1, keepdim=True), a, xc)


@register("gw", family="whitening", partition="per sample (channel groups)", operation="Newton-iteration whitening",
          recovery="affine or coloring", paper="Huang et al., Group Whitening: Balancing Learning Efficiency and "
          "Representational Capacity, CVPR 2021", year=2021)
class GroupWhitening(nn.Module):
    """Group whitening (Huang et al., CVPR 2021): per sample, the channels form ``group_size`` groups
    whose ``group_size x group_size`` covariance (over the rest of the group's channels and the spatial
    positions) is whitened by ``T`` Newton iterations; no batch statistics.

    Recovery: per-channel ``weight`` and ``bias`` ``(C,)`` (``affine``), or with ``coloring=True`` a
    learned ``group_size x group_size`` matrix ``weight`` (initialized to the identity) mixing the
    whitened groups, plus the per-channel ``bias`` (Siarohin et al., ICLR 2019)."""

    def __init__(self, num_features: int, group_size: int = 16, T: int = 5, eps: float = 1e-5,
                 affine: bool = True, coloring: bool = False) -> None:
        super().__init__()
        group_size = _check_group_size(num_features, group_size)
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        _check_recovery(affine, coloring)
        self.num_features, self.group_size, self.T, self.eps = num_features, group_size, T, eps
        self.affine, self.coloring = affine, coloring
        if coloring:
            self.weight = nn.Parameter(torch.eye(group_size))
        else:
            self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        check_channels(self, x, self.num_features)
        n, g = x.shape[0], self.group_size
        xg = NF.statistics_dtype(x).reshape(n, g, -1)  # (N, groups, C/groups * spatial)
        if xg.shape[-1] < 2:
            raise ValueError(f"{layer_label(self)} needs more than one value per group and sample, "
                             f"got input shape {tuple(x.shape)}")
        xc, cov = _SampleMoments.apply(xg)
        w = newton_matrix(cov + self.eps * torch.eye(g, dtype=cov.dtype, device=cov.device), self.T)
        if self.coloring:
            y = (self.weight.to(w.dtype) @ w @ xc).reshape(x.shape).to(x.dtype)
            return NF.affine(y, None, self.bias)
        return NF.affine((w @ xc).reshape(x.shape).to(x.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        recovery = ", coloring=True" if self.coloring else ("" if self.affine else ", affine=False")
        return f"{self.num_features}, group_size={self.group_size}, T={self.T}, eps={self.eps}{recovery}"


# --------------------------------------------------------------------------------------------
# the whitening and colouring transform of feature maps (WCT, Li et al., NeurIPS 2017)

class _ClampedSpectralRoot(torch.autograd.Function):
    """``U max(Lambda, eps)^p U^T`` for ``p = +1/2`` or ``-1/2`` of symmetric ``S = U Lambda U^T``
    (batched ``(..., d, d)``).

    Backward (Daleckii-Krein): ``dS = U (K o U^T sym(dM) U) U^T`` with ``K_ij`` the divided difference
    of ``f(l) = max(l, eps)^p`` at ``lambda_i, lambda_j``. It is written as the closed form on the
    clamped values ``a' = max(a, eps)`` (``1 / (sqrt a' + sqrt b')`` for ``p = 1/2``,
    ``-f(a) f(b) / (sqrt a' + sqrt b')`` for ``p = -1/2``) times ``(a' - b') / (a - b)``, which is 1 where
    both eigenvalues exceed ``eps`` and 0 where both are clamped: finite for repeated eigenvalues and
    for rank-deficient ``S``."""

    @staticmethod
    def forward(ctx, s, power, eps):
        lam, u = torch.linalg.eigh(s)
        clamped = lam.clamp_min(eps)
        f = clamped.rsqrt() if power < 0 else clamped.sqrt()
        ctx.save_for_backward(lam, u, clamped, f)
        ctx.power, ctx.eps = power, eps
        return u @ (f.unsqueeze(-1) * u.mT)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        lam, u, clamped, f = ctx.saved_tensors
        root = clamped.sqrt()
        k = (root.unsqueeze(-1) + root.unsqueeze(-2)).reciprocal()
        if ctx.power < 0:
            k = -(f.unsqueeze(-1) * f.unsqueeze(-2)) * k
        gap = lam.unsqueeze(-1) - lam.unsqueeze(-2)
        same = gap == 0
        active = lam > ctx.eps
        slope = torch.where(same, (active.unsqueeze(-1) & active.unsqueeze(-2)).to(lam.dtype),
                            (clamped.unsqueeze(-1) - clamped.unsqueeze(-2)) / torch.where(same, 1.0, gap))
        inner = u.mT @ ((g + g.mT) / 2) @ u
        return u @ (k * slope * inner) @ u.mT, None, None


def _spectral_root(s: Tensor, power: float, eps: float) -> Tensor:
    """``S^power`` (``power = +-1/2``) in float64 with the eigenvalues clamped at ``eps``."""
    return _ClampedSpectralRoot.apply(s.double(), power, eps)


def _feature_rows(x: Tensor, name: str) -> Tensor:
    """``(N, C, *spatial)`` feature maps as ``(N, C, prod(spatial))`` rows in the statistics dtype."""
    if x.dim() < 3:
        raise ValueError(f"{name} must be feature maps (N, C, *spatial), got shape {tuple(x.shape)}")
    return NF.statistics_dtype(x).reshape(x.shape[0], x.shape[1], -1)


def _check_style(content: Tensor, style: Tensor, content_name: str = "content") -> None:
    if style.dim() < 3 or style.shape[1] != content.shape[1]:
        found = f"{style.shape[1]} channels" if style.dim() >= 3 else f"a {style.dim()}-D tensor"
        raise ValueError(f"style features must be (N, {content.shape[1]}, *spatial) like the {content_name} "
                         f"{tuple(content.shape)}, got {found} (shape {tuple(style.shape)})")
    if style.shape[0] not in (1, content.shape[0]):
        raise ValueError(f"style features must have 1 or {content.shape[0]} samples (one per {content_name} "
                         f"sample), got {style.shape[0]}")


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (the floor of the covariance eigenvalues), got {eps}")


def whiten(features: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-sample whitening of feature maps: ``W (X - mu)`` with ``W = S^{-1/2}`` (ZCA).

    For each sample, ``X`` is the ``C x (H*W)`` matrix of its features, ``mu`` the per-channel mean
    and ``S = (X - mu)(X - mu)^T / (H*W)`` the biased covariance; ``S^{-1/2} = U max(Lambda, eps)^{-1/2} U^T``
    from an eigendecomposition in float64 with the eigenvalues clamped at ``eps``, so rank-deficient
    covariances (constant channels, fewer positions than channels) stay finite. The output has zero
    mean and identity covariance per sample (on the directions whose eigenvalue exceeds ``eps``).

    Shapes: ``(N, C, *spatial)`` in, the same out. The covariance is computed in the input's
    precision (float32 for half input), the ``C x C`` matrix functions in float64.

    Example::

        >>> y = whiten(torch.randn(2, 8, 16, 16))
        >>> cov = y.flatten(2) @ y.flatten(2).mT / 256   # ~ identity
    """
    _check_eps(eps)
    rows = _feature_rows(features, "features")
    xc, cov = _SampleMoments.apply(rows)
    return (_spectral_root(cov, -0.5, eps).to(xc.dtype) @ xc).reshape(features.shape).to(features.dtype)


def color(whitened: Tensor, style_features: Tensor, eps: float = 1e-5) -> Tensor:
    """Colouring: ``S_s^{1/2} Z + mu_s``, giving (whitened) features ``Z`` the style's covariance
    ``S_s`` and per-channel mean ``mu_s`` (Li et al., NeurIPS 2017, Sec. 3.1).

    ``S_s^{1/2} = U max(Lambda, eps)^{1/2} U^T`` in float64. ``whitened`` is ``(N, C, *spatial)``;
    ``style_features`` ``(N or 1, C, *spatial')``: one style per sample or one for all, any spatial size.
    """
    _check_eps(eps)
    rows = _feature_rows(whitened, "whitened features")
    _check_style(whitened, style_features, "whitened features")
    style = _feature_rows(style_features, "style features").to(rows.dtype)
    _, style_cov = _SampleMoments.apply(style)
    out = torch.baddbmm(style.mean(-1, keepdim=True).expand(rows.shape[0], -1, -1),
                        _spectral_root(style_cov, 0.5, eps).to(rows.dtype).expand(rows.shape[0], -1, -1), rows)
    return out.reshape(whitened.shape).to(whitened.dtype)


def whiten_color_transform(content: Tensor, style: Tensor, alpha: float = 1.0, eps: float = 1e-5) -> Tensor:
    """WCT (Li et al., Universal Style Transfer via Feature Transforms, NeurIPS 2017, Eq. 1-4):
    ``alpha * color(whiten(content), style) + (1 - alpha) * content``.

    After the transform (``alpha = 1``) each sample's per-channel mean and ``C x C`` covariance are
    the style's; ``alpha = 0`` returns the content. The whitening and colouring matrices fold into
    one, ``y = (alpha S_s^{1/2} S_c^{-1/2} + (1 - alpha) I)(x - mu_c) + alpha mu_s + (1 - alpha) mu_c``,
    applied in one pass over the features. Covariances are biased, their eigendecompositions run in
    float64 with eigenvalues clamped at ``eps``; the whole transform is differentiable.

    Args:
        content: ``(N, C, *spatial)`` feature maps.
        style: ``(N or 1, C, *spatial')``: one style per content sample, or one for all; any spatial size.
        alpha: stylization strength in ``[0, 1]``.
        eps: floor of the covariance eigenvalues.

    Example::

        >>> t = whiten_color_transform(torch.randn(1, 64, 32, 32), torch.randn(1, 64, 24, 40), alpha=0.8)
    """
    _check_eps(eps)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rows = _feature_rows(content, "content features")
    _check_style(content, style)
    style_rows = _feature_rows(style, "style features").to(rows.dtype)
    xc, content_cov = _SampleMoments.apply(rows)
    _, style_cov = _SampleMoments.apply(style_rows)
    matrix = _spectral_root(style_cov, 0.5, eps) @ _spectral_root(content_cov, -0.5, eps)
    content_mean, style_mean = rows.mean(-1, keepdim=True), style_rows.mean(-1, keepdim=True)
    if alpha != 1.0:
        eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
        matrix = alpha * matrix + (1.0 - alpha) * eye
        style_mean = torch.lerp(content_mean, style_mean, alpha)
    out = torch.baddbmm(style_mean.expand(rows.shape[0], -1, -1), matrix.to(rows.dtype), xc)
    return out.reshape(content.shape).to(content.dtype)
