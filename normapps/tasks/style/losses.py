"""Style-transfer losses on encoder features: content, mean / std (AdaIN) and Gram (Gatys, Johnson).

Every loss takes ``reduction="mean"`` (one scalar, for training) or ``"none"`` (one value per image,
``(N,)``, for evaluation); the scalar is the mean of the per-image values. Style losses take dicts
``{level: (N, C, H, W) features}`` as :meth:`normapps.models.vgg.VGGEncoder.features` returns them;
the style features may hold one image for the whole batch and may have another spatial size::

    feats = encoder.features(stylized)
    with torch.no_grad():
        style_feats = encoder.features(style)
    loss = content_loss(feats["relu4_1"], target) + 10 * style_loss_moments(feats, style_feats)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from normapps.norm.functional import instance_moments

__all__ = ["content_loss", "gram_matrix", "style_loss_gram", "style_loss_moments"]

_REDUCTIONS = ("mean", "none")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}; got {reduction!r}")


def _per_sample_mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared difference per sample, ``(N,)``; ``y`` may have batch size 1 (broadcast)."""
    return (x - y).square().flatten(1).mean(1)


def content_loss(features: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error between ``features`` and ``target`` (AdaIN's Eq. 12 with the AdaIN output as target).

    Shapes must be equal, or ``target`` of batch size 1 for a target shared by the batch.
    """
    if target.shape != features.shape and not (target.shape[0] == 1 and target.shape[1:] == features.shape[1:]):
        raise ValueError(f"content target of shape {tuple(target.shape)} does not match features of shape {tuple(features.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}; got {reduction!r}")
    if reduction == "mean" and target.shape == features.shape:
        return torch.nn.functional.mse_loss(features, target)
    return _reduce(_per_sample_mse(features, target), reduction)


def _pairs(features: Mapping[str, Tensor], style_features: Mapping[str, Tensor], levels: Iterable[str] | None):
    levels = list(features) if levels is None else list(levels)
    missing = [level for level in levels if level not in features or level not in style_features]
    if missing:
        raise ValueError(f"levels {', '.join(missing)} are missing: features have {', '.join(features) or 'none'}, "
                         f"style features have {', '.join(style_features) or 'none'}")
    if not levels:
        raise ValueError("a style loss needs at least one level")
    for level in levels:
        x, s = features[level], style_features[level]
        if x.dim() != 4 or s.dim() != 4 or s.shape[1] != x.shape[1] or s.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"at {level}: features of shape {tuple(x.shape)} and style features of shape {tuple(s.shape)}; "
                             "expected (N, C, H, W) and (N or 1, C, H', W')")
        yield x, s


def style_loss_moments(
    features: Mapping[str, Tensor],
    style_features: Mapping[str, Tensor],
    levels: Iterable[str] | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    """AdaIN's style loss (Huang & Belongie, ICCV 2017, Eq. 13).

    ``sum over levels of MSE(mu(x), mu(s)) + MSE(sigma(x), sigma(s))`` with per-sample, per-channel
    means and standard deviations over H x W (:func:`~normapps.norm.functional.instance_moments`:
    biased variance, ``eps`` added to it, as in :func:`~normapps.norm.functional.adaptive_instance_norm`;
    the authors' port uses the unbiased variance). ``levels`` defaults to all of ``features``' keys.
    """
    total = None
    for x, s in _pairs(features, style_features, levels):
        x_mean, x_std = instance_moments(x, eps)
        s_mean, s_std = instance_moments(s, eps)
        term = _per_sample_mse(x_mean, s_mean) + _per_sample_mse(x_std, s_std)
        total = term if total is None else total + term
    return _reduce(total, reduction)


def gram_matrix(x: Tensor) -> Tensor:
    """Gram matrices ``F F^T / (C * H * W)`` of features ``(N, C, H, W)`` flattened to ``F: (N, C, H * W)``; ``(N, C, C)``.

    The normalization of Johnson et al. (ECCV 2016), which makes the matrix independent of the image size.
    """
    if x.dim() < 3:
        raise ValueError(f"gram_matrix needs (N, C, *spatial) features, got shape {tuple(x.shape)}")
    flat = x.flatten(2)
    return torch.bmm(flat, flat.transpose(1, 2)) / flat[0].numel()


def style_loss_gram(
    features: Mapping[str, Tensor],
    style_features: Mapping[str, Tensor],
    levels: Iterable[str] | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Gram-matrix style loss (Gatys et al., CVPR 2016; Johnson et al., ECCV 2016).

    ``sum over levels of MSE(G(x), G(s))`` with :func:`gram_matrix` (normalized by C * H * W; the
    mean over the C x C entries, as in the reference implementations of Johnson et al.'s network).
    ``levels`` defaults to all of ``features``' keys.
    """
    total = None
    for x, s in _pairs(features, style_features, levels):
        term = _per_sample_mse(gram_matrix(x), gram_matrix(s))
        total = term if total is None else total + term
    return _reduce(total, reduction)
