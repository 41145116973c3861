"""Feature-statistics transfer: AdaIN and WCT targets with the AdaIN authors' user controls, colour
preservation, a colour-transfer baseline, and the stylizers built on them.

The controls (Huang & Belongie, ICCV 2017, Sec. 7.3) act on the encoder features of the content:

* ``alpha``: content-style trade-off, ``alpha * t + (1 - alpha) * c`` with ``t`` the transferred
  features and ``c`` the content features;
* ``weights``: style interpolation, ``t = sum_k w_k T(c, s_k)`` over several styles (``sum w_k = 1``);
* ``mask``: spatial control, one binary mask per style partitioning the image; each region of the
  content features is transferred with the statistics of the region itself and of its style (the
  authors' ``test.lua``: the masked positions are gathered, transferred and scattered back);
* colour preservation (:func:`preserve_color`): the style image's RGB mean and covariance are
  matched to the content image's before stylization.

``T`` is AdaIN (:func:`normapps.norm.functional.adaptive_instance_norm`) or WCT
(:func:`normapps.norm.whitening.whiten_color_transform`, Li et al., NeurIPS 2017).

Features are ``(N, C, H, W)``; a style is a tensor ``(1 or N, C, h, w)`` (one for all contents or one
per content, any size) and several styles are a sequence of such tensors. Images are RGB in [0, 1].

Encoders are modules with ``features(x, levels) -> {level: features}`` and ``forward(x)`` returning the
deepest level (relu4_1); decoders map one level's features back to an image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Union

import torch
import torch.nn.functional as F
from kornia.color import lab_to_rgb, rgb_to_lab
from torch import Tensor, nn

from normapps.norm import functional as NF
from normapps.norm.whitening import whiten_color_transform

Styles = Union[Tensor, Sequence[Tensor]]
"""One style's features ``(1 or N, C, h, w)``, or a sequence of them (several styles)."""

Weights = Union[Sequence[float], Tensor, None]

WCT_LEVELS = ("relu4_1", "relu3_1", "relu2_1", "relu1_1")
"""The coarse-to-fine order of Li et al. (NeurIPS 2017)."""

_WEIGHT_TOLERANCE = 1e-6


def _check_feature_map(x: Tensor, name: str, channels: int | None = None) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")


def _style_list(style_feats: Styles, content: Tensor) -> list[Tensor]:
    styles = [style_feats] if isinstance(style_feats, Tensor) else list(style_feats)
    if not styles:
        raise ValueError("expected at least one style, got none")
    n, c = content.shape[:2]
    for k, s in enumerate(styles):
        name = "style features" if len(styles) == 1 else f"style features {k}"
        _check_feature_map(s, name, c)
        if s.shape[0] not in (1, n):
            raise ValueError(f"{name} must have 1 or {n} samples (one per content sample), got {s.shape[0]}")
    return styles


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _check_weights(weights: Weights, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in (weights.flatten().tolist() if isinstance(weights, Tensor) else weights)]
    if len(values) != count:
        hint = " (give several styles as a sequence of tensors)" if count == 1 else ""
        raise ValueError(f"expected {count} style weights (one per style){hint}, got {len(values)}")
    if not all(math.isfinite(w) for w in values) or abs(sum(values) - 1.0) > _WEIGHT_TOLERANCE:
        raise ValueError(f"style weights must be finite and sum to 1, got {values} (sum {sum(values)})")
    return values


def _resized_masks(mask: Tensor, content: Tensor, count: int) -> Tensor:
    """Masks ``(K, H, W)`` or ``(1 or N, K, H, W)`` as booleans ``(1 or N, K, h, w)`` at the feature size
    (nearest interpolation), checked to assign every position to exactly one style."""
    n = content.shape[0]
    if mask.dim() == 3:
        mask = mask.unsqueeze(0)
    if mask.dim() != 4:
        raise ValueError(f"mask must be (K, H, W) or (N, K, H, W) with K = {count} styles, got shape {tuple(mask.shape)}")
    if mask.shape[1] != count:
        raise ValueError(f"expected {count} masks (one per style), got {mask.shape[1]} (mask shape {tuple(mask.shape)})")
    if mask.shape[0] not in (1, n):
        raise ValueError(f"mask must have 1 or {n} samples (one per content sample), got {mask.shape[0]}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask values must be 0 or 1 (binarize the mask first)")
    resized = F.interpolate(mask.float(), size=content.shape[-2:], mode="nearest") > 0.5
    covered = resized.sum(1)
    if not bool((covered == 1).all()):
        raise ValueError(f"the masks must assign every position to exactly one style; at the feature size "
                         f"{tuple(content.shape[-2:])}, {int((covered != 1).sum())} positions have "
                         f"{sorted(set(covered[covered != 1].tolist()))} styles")
    return resized


def _masked_target(transfer: Callable[[Tensor, Tensor], Tensor], content: Tensor, styles: list[Tensor],
                   masks: Tensor) -> Tensor:
    """Each region of ``content`` transferred on its own: its positions gathered into an ``(n, C, L, 1)``
    map, transferred to its style and scattered back."""
    flat = content.flatten(2)
    groups = [(slice(None), masks[0])] if masks.shape[0] == 1 else [(slice(i, i + 1), masks[i]) for i in range(len(masks))]
    parts = []
    for rows, region_masks in groups:
        part = flat[rows]
        out = torch.empty_like(part)
        for style, region in zip(styles, region_masks):
            index = region.flatten().nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            style_rows = style if style.shape[0] == 1 else style[rows]
            moved = transfer(part.index_select(2, index).unsqueeze(-1), style_rows)
            out = out.index_copy(2, index, moved.squeeze(-1))
        parts.append(out)
    return torch.cat(parts).view_as(content)


def _transfer_target(transfer: Callable[[Tensor, Tensor], Tensor], content_feat: Tensor, style_feats: Styles,
                     weights: Weights, alpha: float, mask: Tensor | None) -> Tensor:
    _check_feature_map(content_feat, "content features")
    styles = _style_list(style_feats, content_feat)
    _check_alpha(alpha)
    if mask is not None:
        if weights is not None:
            raise ValueError("give either style weights (interpolation) or masks (spatial control), not both")
        target = _masked_target(transfer, content_feat, styles, _resized_masks(mask, content_feat, len(styles)))
    elif len(styles) == 1 and weights is None:
        target = transfer(content_feat, styles[0])
    else:
        target = None
        for w, style in zip(_check_weights(weights, len(styles)), styles):
            if w != 0.0:
                term = transfer(content_feat, style)
                target = term * w if target is None else torch.add(target, term, alpha=w)
    return target if alpha == 1.0 else torch.lerp(content_feat, target, alpha)


def adain_target(content_feat: Tensor, style_feats: Styles, weights: Weights = None, alpha: float = 1.0,
                 mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """The AdaIN target ``t`` that the decoder turns into the stylized image (Huang & Belongie, ICCV 2017):
    ``AdaIN(c, s) = sigma(s) (c - mu(c)) / sigma(c) + mu(s)``, per sample and channel over H x W.

    Args:
        content_feat: ``(N, C, H, W)`` content features.
        style_feats: one style ``(1 or N, C, h, w)`` or a sequence of styles.
        weights: style interpolation weights, one per style, summing to 1; the target is the weighted sum
            of the per-style AdaIN outputs. ``None``: equal weights.
        alpha: content-style trade-off in ``[0, 1]``: ``alpha * t + (1 - alpha) * content_feat``.
        mask: spatial control, ``(K, H', W')`` or ``(1 or N, K, H', W')`` binary masks, one per style,
            partitioning the image; resized to ``H x W`` with nearest interpolation. Excludes ``weights``.
        eps: added to the variances.

    Example::

        >>> t = adain_target(torch.rand(1, 512, 32, 32), [torch.rand(1, 512, 32, 32), torch.rand(1, 512, 24, 24)],
        ...                  weights=(0.7, 0.3), alpha=0.8)
    """
    return _transfer_target(lambda c, s: NF.adaptive_instance_norm(c, s, eps), content_feat, style_feats,
                            weights, alpha, mask)


def wct_target(content_feat: Tensor, style_feats: Styles, weights: Weights = None, alpha: float = 1.0,
               mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """The WCT target (Li et al., NeurIPS 2017): the content features whitened and coloured with each
    style's mean and covariance; weights, ``alpha`` and masks as in :func:`adain_target` (Li et al. also
    interpolate styles by a weighted sum of the transformed features). ``eps`` floors the covariance
    eigenvalues."""
    return _transfer_target(lambda c, s: whiten_color_transform(c, s, eps=eps), content_feat, style_feats,
                            weights, alpha, mask)


def _paired(a: Tensor, b: Tensor, a_name: str, b_name: str) -> tuple[Tensor, Tensor]:
    """Two image batches broadcast to a common batch size (1 and N pair with every sample)."""
    for x, name in ((a, a_name), (b, b_name)):
        _check_feature_map(x, name, 3)
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"{a_name} and {b_name} must have the same number of images or one of them 1, "
                         f"got {a.shape[0]} and {b.shape[0]}")
    n = max(a.shape[0], b.shape[0])
    return a.expand(n, -1, -1, -1), b.expand(n, -1, -1, -1)


def preserve_color(style_image: Tensor, content_image: Tensor, eps: float = 1e-8) -> Tensor:
    """The AdaIN authors' colour preservation (their ``coral``): the style image with its RGB mean and
    3 x 3 covariance matched to the content image's, ``C_c^{1/2} C_s^{-1/2} (s - mu_s) + mu_c``, i.e.
    WCT on the pixels. Stylizing with the returned image keeps the content's colours.

    ``style_image`` and ``content_image`` are ``(N or 1, 3, H, W)`` (sizes may differ); the result has one
    image per content image (or per style image if there is one content). Values are not clipped, so
    the statistics match exactly; they may fall slightly outside [0, 1], which the encoder accepts.
    """
    style, content = _paired(style_image, content_image, "style image", "content image")
    return whiten_color_transform(style, content, eps=eps)


def color_transfer(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """Colour-transfer baseline (Reinhard et al., 2001): the content image's per-channel mean and std in
    CIE Lab matched to the style image's (AdaIN on Lab pixels), converted back to RGB and clipped to [0, 1].

    ``content`` is ``(N, 3, H, W)``, ``style`` ``(1 or N, 3, h, w)``.
    """
    _check_feature_map(content, "content image", 3)
    _check_feature_map(style, "style image", 3)
    if style.shape[0] not in (1, content.shape[0]):
        raise ValueError(f"style image must have 1 or {content.shape[0]} images, got {style.shape[0]}")
    matched = NF.adaptive_instance_norm(rgb_to_lab(content), rgb_to_lab(style), eps)
    return lab_to_rgb(matched, clip=True).clamp(0.0, 1.0)


def _check_style_source(style: Styles | None, style_features: object) -> None:
    if (style is None) == (style_features is None):
        raise ValueError("give exactly one of style (images) and style_features (from encode_style)")


def _check_mask_size(mask: Tensor | None, content: Tensor) -> None:
    if mask is not None and tuple(mask.shape[-2:]) != tuple(content.shape[-2:]):
        raise ValueError(f"mask must have the content image's size {tuple(content.shape[-2:])}, "
                         f"got {tuple(mask.shape[-2:])}")


class AdaINStylizer(nn.Module):
    """Arbitrary style transfer with AdaIN (Huang & Belongie, ICCV 2017): encode, AdaIN to the style's
    feature statistics (with the user controls of :func:`adain_target`), decode, clamp to [0, 1].

    Args:
        encoder: module whose ``forward(x)`` returns relu4_1 features.
        decoder: module mapping relu4_1 features to an image.

    Example::

        >>> stylizer = AdaINStylizer(encoder, decoder).eval()
        >>> with torch.inference_mode():
        ...     s = stylizer.encode_style(style)          # once for a folder of contents
        ...     out = stylizer(content, style_features=s, alpha=0.8)
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def encode_style(self, style_images: Styles) -> Styles:
        """Encoder features of one style image batch ``(1 or N, 3, H, W)`` or of a sequence of them."""
        if isinstance(style_images, Tensor):
            _check_feature_map(style_images, "style image", 3)
            return self.encoder(style_images)
        return [self.encode_style(image) for image in style_images]

    def forward(self, content: Tensor, style: Styles | None = None, style_features: Styles | None = None,
                weights: Weights = None, alpha: float = 1.0, mask: Tensor | None = None) -> Tensor:
        """Stylize ``content`` ``(N, 3, H, W)`` with ``style`` images or precomputed ``style_features``;
        ``mask`` has the content's ``H x W``."""
        _check_feature_map(content, "content image", 3)
        _check_style_source(style, style_features)
        _check_mask_size(mask, content)
        if style_features is None:
            style_features = self.encode_style(style)
        target = adain_target(self.encoder(content), style_features, weights, alpha, mask)
        return self.decoder(target).clamp(0.0, 1.0)


class WCTStylizer(nn.Module):
    """Universal style transfer (Li et al., NeurIPS 2017): coarse to fine over ``levels``, encode the
    current image to the level, WCT to the style's features at that level (:func:`wct_target`) and
    decode with that level's decoder; the last image is clamped to [0, 1].

    Args:
        encoder: module with ``features(x, levels) -> {level: features}``.
        decoders: one decoder per level, mapping that level's features to an image.
        levels: the levels in the order applied.
        eps: floor of the covariance eigenvalues.
    """

    def __init__(self, encoder: nn.Module, decoders: Mapping[str, nn.Module], levels: Sequence[str] = WCT_LEVELS,
                 eps: float = 1e-5) -> None:
        super().__init__()
        levels = tuple(levels)
        if not levels:
            raise ValueError("expected at least one level")
        missing = [level for level in levels if level not in decoders]
        if missing:
            raise ValueError(f"expected a decoder for every level {list(levels)}, missing {missing} "
                             f"(got decoders for {sorted(decoders)})")
        self.encoder = encoder
        self.decoders = nn.ModuleDict({level: decoders[level] for level in levels})
        self.levels, self.eps = levels, eps

    def encode_style(self, style_images: Styles) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Features of every level for one style image batch, or a list of them for a sequence."""
        if isinstance(style_images, Tensor):
            _check_feature_map(style_images, "style image", 3)
            return self.encoder.features(style_images, self.levels)
        return [self.encode_style(image) for image in style_images]

    def forward(self, content: Tensor, style: Styles | None = None,
                style_features: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]] | None = None,
                weights: Weights = None, alpha: float = 1.0, mask: Tensor | None = None) -> Tensor:
        """Stylize ``content`` ``(N, 3, H, W)`` with ``style`` images or ``style_features`` from
        :meth:`encode_style`; ``alpha``, ``weights`` and ``mask`` apply at every level."""
        _check_feature_map(content, "content image", 3)
        _check_style_source(style, style_features)
        _check_mask_size(mask, content)
        if style_features is None:
            style_features = self.encode_style(style)
        several = not isinstance(style_features, Mapping)
        per_style = list(style_features) if several else [style_features]
        for level in self.levels:
            missing = [k for k, features in enumerate(per_style) if level not in features]
            if missing:
                raise ValueError(f"style features lack level {level!r} (styles {missing}); "
                                 f"encode them with encode_style")
        image = content
        for level in self.levels:
            features = self.encoder.features(image, (level,))[level]
            styles = [s[level] for s in per_style] if several else per_style[0][level]
            image = self.decoders[level](wct_target(features, styles, weights, alpha, mask, self.eps))
        return image.clamp(0.0, 1.0)
