"""Stateless normalization functions, in the manner of ``torch.nn.functional``.

Modules in this package hold parameters and buffers and call these. Every function takes
activations laid out as ``(N, C, *spatial)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


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
    return torch.addcmul(shift, x, scale)


def affine(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Per-channel ``weight * x + bias`` (either may be None)."""
    if weight is None and bias is None:
        return x
    if weight is None:
        return x + channel_view(bias, x.dim())
    w = channel_view(weight, x.dim())
    if bias is None:
        return x * w
    return torch.addcmul(channel_view(bias, x.dim()), x, w)


def instance_moments(x: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and standard deviation over the spatial dims, ``(N, C, 1, ...)``.

    ``std = sqrt(var + eps)`` with the biased variance, as in AdaIN (Huang & Belongie, 2017).
    """
    if x.dim() < 3:
        raise ValueError(f"instance statistics need (N, C, *spatial) input, got shape {tuple(x.shape)}")
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), keepdim=True, correction=0)
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
    return torch.addcmul(s_mean - c_mean * scale, content, scale)


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


def local_contrast_norm(
    x: Tensor, kernel_size: int = 5, sigma: float = 1.0, eps: float = 1e-5
) -> Tensor:
    """Local contrast normalization (Jarrett et al., ICCV 2009, Sec. 2).

    Subtractive step ``v = x - sum_{c,p,q} w_pq x_{c,i+p,j+q}`` with a Gaussian window ``w``
    normalized to sum 1 over channels and window; divisive step ``y = v / max(c, s)`` with
    ``s = sqrt(sum w v^2)`` and ``c`` the mean of ``s`` over each sample's map. At the borders the
    window is renormalized over the pixels inside the image.
    """
    if x.dim() != 4:
        raise ValueError(f"local contrast normalization needs (N, C, H, W) input, got shape {tuple(x.shape)}")
    radius = kernel_size // 2
    coords = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - radius
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, padding=radius)

    coverage = blur(torch.ones_like(x[:1, :1]))
    local_mean = blur(x.mean(1, keepdim=True)) / coverage
    v = x - local_mean
    s = (blur(v.pow(2).mean(1, keepdim=True)) / coverage).clamp_min(0).add(eps).sqrt()
    c = s.mean(dim=(2, 3), keepdim=True)
    return v / torch.maximum(s, c)


L1_TO_STD = math.sqrt(math.pi / 2)
"""For a Gaussian, ``std = sqrt(pi/2) * E|x - mu|``; L1-norm BN scales by it (Wu et al., 2018)."""
