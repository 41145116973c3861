"""Stateless normalization functions, in the manner of ``torch.nn.functional``.

Modules in this package hold parameters and buffers and call these. Every function takes
activations laid out as ``(N, C, *spatial)``.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

LOW_PRECISION = (torch.float16, torch.bfloat16)


def statistics_dtype(x: Tensor) -> Tensor:
    """``x`` in float32 if it is half/bfloat16: sums of squares overflow float16 beyond 256."""
    return x.float() if x.dtype in LOW_PRECISION else x


def float32_inside(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run ``fn(x, ...)`` in float32 for half/bfloat16 ``x`` and return the result in ``x``'s dtype
    (what torch's own normalization kernels do for mixed precision)."""

    @functools.wraps(fn)
    def wrapper(x: Tensor, *args, **kwargs):
        if x.dtype not in LOW_PRECISION:
            return fn(x, *args, **kwargs)
        out = fn(x.float(), *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0].to(x.dtype),) + out[1:]
        return out.to(x.dtype)

    return wrapper


def channel_view(t: Tensor, ndim: int) -> Tensor:
    """View a per-channel vector ``(C,)`` so that it broadcasts against ``(N, C, *spatial)``."""
    return t.view((1, -1) + (1,) * (ndim - 2))


def reduce_dims(x: Tensor, *, batch: bool, channels: bool, spatial: bool) -> tuple[int, ...]:
    """The dimensions of ``(N, C, *spatial)`` that a partition reduces over."""
    dims = [0] if batch else []
    if channels:
        dims.append(1)
    if spatial:
        dims.extend(range(2, x.dim()))
    return tuple(dims)


class _Moments(torch.autograd.Function):  # its backward is made of differentiable ops: double backward works
    """Mean and biased variance over ``dims``; the backward is one fused pass,
    ``dx = dmean / n + dvar * 2 (x - mean) / n``, where autograd of the composition makes several."""

    @staticmethod
    def forward(ctx, x, dims):
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).square_().mean(dim=dims, keepdim=True)
        ctx.save_for_backward(x, mean)
        ctx.n = x.numel() // mean.numel()
        return mean, var

    @staticmethod
    def backward(ctx, g_mean, g_var):
        x, mean = ctx.saved_tensors
        if g_var is None:
            return (g_mean / ctx.n).expand_as(x), None
        coef = g_var * (2.0 / ctx.n)
        shift = -coef * mean if g_mean is None else g_mean / ctx.n - coef * mean
        return torch.addcmul(shift, x, coef), None


def moments(x: Tensor, dims: tuple[int, ...], keepdim: bool = True) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over ``dims`` by the two-pass algorithm (mean, then mean squared
    deviation): exact in floating point like Welford's, on CPU several times faster than
    ``torch.var_mean``, and with a one-pass backward. Half/bfloat16 input gives float32 statistics."""
    mean, var = _Moments.apply(statistics_dtype(x), tuple(dims))
    if keepdim:
        return mean, var
    return mean.squeeze(dims), var.squeeze(dims)


def scale_shift_apply(
    x: Tensor, scale: Tensor, shift: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
) -> Tensor:
    """``x * scale + shift`` followed by the per-channel affine ``gamma * . + beta``, in one pass.

    ``scale`` and ``shift`` broadcast against ``x``; ``weight``/``bias`` are ``(C,)`` or None.
    Folding the affine into the (small) scale and shift tensors first means the full-size tensor
    is read and written once.
    """
    if weight is not None:
        w = channel_view(weight, x.dim())
        scale = scale * w
        shift = shift * w
    if bias is not None:
        shift = shift + channel_view(bias, x.dim())
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


def affine(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Per-channel ``weight * x + bias`` (either may be None), in ``x``'s dtype."""
    if weight is None and bias is None:
        return x
    if weight is None:
        return x + channel_view(bias, x.dim()).to(x.dtype)
    w = channel_view(weight, x.dim()).to(x.dtype)
    if bias is None:
        return x * w
    return torch.addcmul(channel_view(bias, x.dim()).to(x.dtype), x, w)


def instance_moments(x: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and standard deviation over the spatial dims, ``(N, C, 1, ...)``.

    ``std = sqrt(var + eps)`` with the biased variance, as in AdaIN (Huang & Belongie, 2017).
    """
    if x.dim() < 3:
        raise ValueError(f"instance statistics need (N, C, *spatial) input, got shape {tuple(x.shape)}")
    mean, var = moments(x, tuple(range(2, x.dim())))
    return mean, (var + eps).sqrt()


def adaptive_instance_norm(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """AdaIN (Huang & Belongie, ICCV 2017, Eq. 8).

    ``AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y)`` with statistics per sample and
    channel over the spatial dims and ``eps`` added to the variances. ``style`` may have one sample
    (broadcast to the batch) and any spatial size.
    """
    c_mean, c_std = instance_moments(content, eps)
    s_mean, s_std = instance_moments(style, eps)
    scale = s_std / c_std
    return torch.addcmul((s_mean - c_mean * scale).to(content.dtype), content, scale.to(content.dtype))


def batch_renorm_correction(
    batch_mean: Tensor, batch_var: Tensor, running_mean: Tensor, running_var: Tensor,
    eps: float, rmax: float, dmax: float,
) -> tuple[Tensor, Tensor]:
    """Batch Renormalization's r and d (Ioffe, NeurIPS 2017, Algorithm 1), both without gradient.

    ``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``.
    """
    with torch.no_grad():
        sigma = (running_var + eps).sqrt()
        r = ((batch_var + eps).sqrt() / sigma).clamp(1.0 / rmax, rmax)
        d = ((batch_mean - running_mean) / sigma).clamp(-dmax, dmax)
    return r, d


def _gaussian_window(kernel_size: int, sigma: float, like: Tensor) -> Tensor:
    """A normalized 2-D Gaussian ``(1, 1, k, k)`` kernel (symmetric, so the blur is self-adjoint)."""
    coords = torch.arange(kernel_size, dtype=like.dtype, device=like.device) - kernel_size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


class _LCN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, kernel, eps):
        pad = kernel.shape[-1] // 2
        c = x.shape[1]
        coverage = F.conv2d(torch.ones_like(x[:1, :1]), kernel, padding=pad)
        v = x - F.conv2d(x.mean(1, keepdim=True), kernel, padding=pad) / coverage
        scratch = v.square()  # full-size temporaries are reused in place (a fresh one costs about an op)
        q = scratch.mean(1, keepdim=True)
        s = (F.conv2d(q, kernel, padding=pad) / coverage).clamp_min_(0).add_(eps).sqrt_()
        s_mean = s.mean(dim=(2, 3), keepdim=True)
        above = s >= s_mean
        inv = torch.where(above, s, s_mean).reciprocal_()
        y = torch.mul(v, inv, out=scratch)
        ctx.save_for_backward(weight, kernel, coverage, v, y, s, inv, above)
        ctx.c = c
        return affine(y, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        weight, kernel, coverage, v, y, s, inv, above = ctx.saved_tensors
        pad, c, hw = kernel.shape[-1] // 2, ctx.c, s.shape[2] * s.shape[3]
        # full-size temporaries are reused in place (a fresh one costs about as much as an op)
        if weight is not None:
            gy = g * y
            g_weight = _sum_c(gy) if ctx.needs_input_grad[1] else None
            gy = torch.mul(g, channel_view(weight, g.dim()), out=gy)
        else:
            gy, g_weight = g, None
        g_bias = _sum_c(g) if ctx.needs_input_grad[2] else None
        scratch = gy * v
        g_den = -scratch.sum(1, keepdim=True) * inv.square()  # y = v / den
        g_s = torch.where(above, g_den, 0.0)
        g_s = g_s + (g_den - g_s).sum(dim=(2, 3), keepdim=True) / hw  # den = max(s, mean_HW(s))
        # s = sqrt(blur(q) / coverage + eps), q = mean_C(v^2); the Gaussian blur is self-adjoint
        g_q = F.conv2d(g_s * 0.5 / s / coverage, kernel, padding=pad)
        gv = torch.mul(gy, inv, out=scratch).addcmul_(v, g_q, value=2.0 / c)
        # v = x - blur(mean_C(x)) / coverage
        g_x = gv.sub_(F.conv2d(gv.sum(1, keepdim=True) / coverage, kernel, padding=pad) / c)
        return g_x, g_weight, g_bias, None, None


@float32_inside
def local_contrast_norm(
    x: Tensor, kernel_size: int = 5, sigma: float = 1.0, eps: float = 1e-5,
    weight: Tensor | None = None, bias: Tensor | None = None,
) -> Tensor:
    """Local contrast normalization (Jarrett et al., ICCV 2009, Sec. 2), then an optional per-channel affine.

    Subtractive step ``v = x - sum_{c,p,q} w_pq x_{c,i+p,j+q}`` with a Gaussian window ``w``
    normalized to sum 1 over channels and window; divisive step ``y = v / max(c, s)`` with
    ``s = sqrt(sum w v^2 + eps)`` and ``c`` the mean of ``s`` over each sample's map. At the borders
    the window is renormalized over the pixels inside the image.
    """
    if x.dim() != 4:
        raise ValueError(f"local contrast normalization needs (N, C, H, W) input, got shape {tuple(x.shape)}")
    return _LCN.apply(x, weight, bias, _gaussian_window(kernel_size, sigma, x), eps)


L1_TO_STD = math.sqrt(math.pi / 2)
"""For a Gaussian, ``std = sqrt(pi/2) * E|x - mu|``; L1-norm BN scales by it (Wu et al., 2018)."""


# ------------------------------------------------------------------------------------------------
# fused autograd functions for the element-wise-heavy methods. Autograd of their compositions makes
# many full-size temporaries (torch.maximum's backward alone costs more than a whole BN), so forward
# and backward are written out; float64 gradcheck in tests/norm covers each backward. They are
# differentiable once: a second derivative (create_graph=True, e.g. a gradient penalty) raises.


def _sum_nc(t: Tensor) -> Tensor:
    """Sum over the spatial dims: ``(N, C, *S) -> (N, C, 1, ...)``; ``(N, C)`` has none to sum."""
    return t.sum(dim=tuple(range(2, t.dim())), keepdim=True) if t.dim() > 2 else t


def _sum_c(t: Tensor) -> Tensor:
    """Sum over batch and spatial dims to a ``(C,)`` vector."""
    return t.sum(dim=(0,) + tuple(range(2, t.dim())))


def _positive_part_backward(g: Tensor, positive: Tensor) -> Tensor:
    """``g`` where ``positive > 0``, else 0 (relu's backward kernel: much faster than ``torch.where``)."""
    return torch.ops.aten.threshold_backward(g, positive, 0)


class _FRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, tau, eps):
        m = math.prod(x.shape[2:])
        s = torch.rsqrt(_sum_nc(x.square()) / m + eps)
        a = s * channel_view(weight, x.dim())
        tau_c = channel_view(tau, x.dim())
        r = torch.addcmul(channel_view(bias, x.dim()) - tau_c, x, a).relu_()  # max(z, tau) - tau
        ctx.save_for_backward(x, weight, s, r, eps if isinstance(eps, Tensor) else None)
        ctx.m = m
        return r + tau_c

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight, s, r, eps = ctx.saved_tensors
        gz = _positive_part_backward(g, r)
        g_bias = _sum_c(gz)
        g_tau = _sum_c(g) - g_bias
        dot = _sum_nc(gz * x)  # sum over space of dL/dz * x, per (n, c)
        w = channel_view(weight, x.dim())
        g_weight = (dot * s).sum(0).flatten()
        s3 = s.pow(3)
        gx = torch.addcmul(gz * (s * w), x, -w * s3 * dot / ctx.m)
        g_eps = None
        if eps is not None and ctx.needs_input_grad[4]:
            g_eps = (-0.5 * w * s3 * dot).sum().reshape(eps.shape)
        return gx, g_weight, g_bias, g_tau, g_eps


@float32_inside
def filter_response_norm(x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor, eps: float | Tensor = 1e-6) -> Tensor:
    """FRN + TLU (Singh & Krishnan, CVPR 2020, Eq. 1-2): ``max(gamma * x / sqrt(mean_S(x^2) + eps) + beta, tau)``
    with the mean over the spatial dims ``S`` per sample and channel; ``(N, C)`` input is treated as 1x1."""
    if x.dim() == 2:
        return _FRN.apply(x[..., None], weight, bias, tau, eps)[..., 0]
    return _FRN.apply(x, weight, bias, tau, eps)


def _group_moments(x: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample mean and ``rsqrt(var + eps)`` over groups of ``C/groups`` channels and the spatial
    dims, shape ``(N, groups)``, from torch's fused group-norm kernel (no gradient); also returns the
    kernel's full-size output, free for reuse as a buffer."""
    n, c = x.shape[:2]
    buffer, mean, rstd = torch.native_group_norm(x, None, None, n, c, x.numel() // (n * c), groups, eps)
    return mean, rstd, buffer


class _EvoNormB0(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, v, running_var, eps):
        n, c, nd = x.shape[0], x.shape[1], x.dim()
        mean_i, rstd_i, buffer = _group_moments(x, c, eps)
        mean_i, rstd_i = (t.view(n, c, *(1,) * (nd - 2)) for t in (mean_i, rstd_i))
        std_i = rstd_i.reciprocal()
        if running_var is None:  # training: batch variance, with gradient
            var_i = std_i.square() - eps
            mean_b = mean_i.mean(0, keepdim=True)
            var_b = (var_i + (mean_i - mean_b).square()).mean(0, keepdim=True)
        else:
            mean_b, var_b = None, channel_view(running_var, nd)
        std_b = (var_b + eps).sqrt()
        den = torch.addcmul(std_i, x, channel_view(v, nd), out=buffer)
        torch.maximum(den, std_b, out=den)
        y = x / den
        ctx.save_for_backward(x, weight, v, den, y, mean_i, std_i, mean_b, std_b)
        ctx.training = running_var is None
        var_out = var_b.detach().flatten()
        ctx.mark_non_differentiable(var_out)
        return torch.addcmul(channel_view(bias, nd), y, channel_view(weight, nd)), var_out

    @staticmethod
    @once_differentiable
    def backward(ctx, g, _):
        x, weight, v, den, y, mean_i, std_i, mean_b, std_b = ctx.saved_tensors
        nd = x.dim()
        m = math.prod(x.shape[2:])
        # full-size temporaries are reused in place: on CPU each fresh one costs about as much as the op
        scratch = g * y
        g_weight = _sum_c(scratch)
        g_bias = _sum_c(g)
        direct = (g * channel_view(weight, nd)).div_(den)  # dL/dx through y = x / den, den fixed
        neg_gden = torch.mul(direct, y, out=scratch)  # -dL/d den, den = max(v*x + std_i, std_b)
        # the part where v*x + std_i won; relu's backward kernel writes over den - std_b in place
        neg_gu = den - std_b
        torch.ops.aten.threshold_backward.grad_input(neg_gden, neg_gu, 0, grad_input=neg_gu)
        sum_neg_gden = _sum_c(neg_gden) if ctx.training else None
        a = -_sum_nc(neg_gu) / (m * std_i)  # through std_i: d std_i / dx = (x - mean_i) / (m * std_i)
        coef, offset = a, a * mean_i
        if ctx.training:  # through std_b: d std_b / dx = (x - mean_b) / (N m std_b)
            b = (_sum_c(neg_gu) - sum_neg_gden).view_as(std_b) / (x.shape[0] * m * std_b)
            coef, offset = coef + b, offset + b * mean_b
        g_v = -_sum_c(torch.mul(neg_gu, x, out=scratch))
        gx = direct.addcmul_(neg_gu, channel_view(-v, nd)).addcmul_(x, coef).sub_(offset)
        return gx, g_weight, g_bias, g_v, None, None


@float32_inside
def evonorm_b0(x: Tensor, weight: Tensor, bias: Tensor, v: Tensor, running_var: Tensor | None = None,
               eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """EvoNorm-B0 (Liu et al., NeurIPS 2020): ``x / max(sqrt(s_B^2 + eps), v*x + sqrt(s_I^2 + eps)) * gamma + beta``.

    ``running_var=None`` uses the batch variance ``s_B^2`` over (N, *spatial) (training); otherwise the
    given population variance. Returns the output and the (biased) batch or given variance, ``(C,)``.
    """
    return _EvoNormB0.apply(x, weight, bias, v, running_var, eps)


class _EvoNormS0(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, v, groups, eps):
        n, c, nd = x.shape[0], x.shape[1], x.dim()
        mean_g, rstd_g, buffer = _group_moments(x, groups, eps)
        per_channel = lambda t: t.repeat_interleave(c // groups, 1).view(n, c, *(1,) * (nd - 2))  # noqa: E731
        rho = per_channel(rstd_g)
        sig = torch.mul(x, channel_view(v, nd), out=buffer).sigmoid_()
        h = x * sig
        ctx.save_for_backward(x, weight, v, sig, h, per_channel(mean_g), rho)
        ctx.groups = groups
        return torch.addcmul(channel_view(bias, nd), h, rho * channel_view(weight, nd))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight, v, sig, h, mean_c, rho = ctx.saved_tensors
        nd, groups, (n, c) = x.dim(), ctx.groups, x.shape[:2]
        w = channel_view(weight, nd)
        scratch = g * h  # full-size temporaries are reused in place (a fresh one costs about an op)
        gh_sum = _sum_nc(scratch)  # (N, C, 1..): serves both gamma's and rho's gradient (aliases scratch for 2-D x)
        g_weight = (gh_sum * rho).sum(0).flatten()
        # rho = (var_g + eps)^(-1/2): d rho / dx = -rho^3 (x - mean_g) / M_g, summed over the group
        g_rho = (gh_sum * w).view(n, groups, c // groups).sum(2, keepdim=True)
        g_bias = _sum_c(g)
        gh = g * (rho * w)
        # h = x * sigmoid(v x): dh/dx = sig + v * x sig (1 - sig), dh/dv = x * x sig (1 - sig)
        q = torch.addcmul(h, h, sig, value=-1.0).mul_(gh)  # gh * x sig (1 - sig)
        g_v = _sum_c(torch.mul(q, x, out=scratch))
        m_g = x.numel() // (n * groups)
        k = (-g_rho * rho.view(n, groups, c // groups)[:, :, :1].pow(3) / m_g).expand(n, groups, c // groups)
        k = k.reshape(n, c, *(1,) * (nd - 2))
        gx = gh.mul_(sig).addcmul_(q, channel_view(v, nd)).addcmul_(x, k).sub_(k * mean_c)
        return gx, g_weight, g_bias, g_v, None, None


@float32_inside
def evonorm_s0(x: Tensor, weight: Tensor, bias: Tensor, v: Tensor, groups: int, eps: float = 1e-5) -> Tensor:
    """EvoNorm-S0 (Liu et al., NeurIPS 2020): ``x * sigmoid(v*x) / sqrt(s_G^2 + eps) * gamma + beta`` with
    ``s_G^2`` the per-sample variance over each group of ``C/groups`` channels and the spatial dims."""
    return _EvoNormS0.apply(x, weight, bias, v, groups, eps)


def _channel_window_sum(t: Tensor, size: int, front: int) -> Tensor:
    """``s_c = sum_{j=c-front}^{c-front+size-1} t_j`` over channels (terms outside 0..C-1 are zero),
    accumulated in place on shifted slices: one new tensor, no padded copy."""
    c = t.shape[1]
    out = t.clone()
    for j in range(-front, size - front):
        if 0 < j < c:
            out[:, : c - j] += t[:, j:]
        elif -c < j < 0:
            out[:, -j:] += t[:, : c + j]
    return out


def _power(d: Tensor, exponent: float) -> Tensor:
    """``d ** exponent`` for positive ``d``; the common LRN exponents through square roots (faster)."""
    if exponent == -0.75:
        r = torch.rsqrt(d)
        return r.mul_(r.sqrt())
    if exponent == -0.5:
        return torch.rsqrt(d)
    return d.log().mul_(exponent).exp_()


class _LRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        d = _channel_window_sum(x.square(), size, size // 2).mul_(alpha / size).add_(k)
        p = _power(d, -beta)
        ctx.save_for_backward(x, d, p)
        ctx.params = size, alpha, beta
        return x * p

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, d, p = ctx.saved_tensors
        size, alpha, beta = ctx.params
        gp = g * p
        # channel i enters the windows of channels i - (size-1-front) .. i + front: the mirrored window
        t = _channel_window_sum(torch.mul(gp, x).div_(d), size, size - 1 - size // 2)
        return gp.addcmul_(x, t, value=-2.0 * alpha * beta / size), None, None, None, None


@float32_inside
def local_response_norm(x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> Tensor:
    """LRN (Krizhevsky et al., 2012): ``x_c / (k + alpha/size * sum_{window(c)} x^2)^beta`` over ``size``
    neighbouring channels (same window and constants as ``torch.nn.functional.local_response_norm``)."""
    return _LRN.apply(x, size, alpha, beta, k)
