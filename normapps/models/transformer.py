"""The feed-forward stylization network of Johnson et al. (ECCV 2016), its normalization chosen by name.

Layout (channels at ``width=1``; every convolution reflection-padded, each but the last followed by
the normalization and a ReLU):

========================  ==================================================
conv 9x9, stride 1        3 -> 32
conv 3x3, stride 2        32 -> 64
conv 3x3, stride 2        64 -> 128
5 residual blocks         conv 3x3 -> norm -> ReLU -> conv 3x3 -> norm, + input
upsample 2x + conv 3x3    128 -> 64   (nearest upsampling, Odena et al. 2016, instead of
upsample 2x + conv 3x3    64 -> 32     Johnson's transposed convolutions: no checkerboard)
conv 9x9, stride 1        32 -> 3, then a sigmoid
========================  ==================================================

``norm`` is any name :func:`normapps.norm.build` knows for plain activations: ``"in"`` (Ulyanov et
al. 2016: instance normalization is what makes the network stylize well), ``"bn"`` (the original
network, for the IN-versus-BN comparison), or ``"cin"`` (Dumoulin et al., ICLR 2017: one (gamma,
beta) per style in every layer, ``num_styles`` of them). With ``"cin"`` the forward pass takes the
style: an index for the whole batch, one index per sample, or convex weights over the styles
(``(num_styles,)`` or ``(N, num_styles)``), which interpolate every layer's gamma and beta::

    net = TransformerNet(width=0.25, norm="cin", num_styles=6)
    net(images, 2)                                    # style 2
    net(images, torch.tensor([0, 5]))                 # one style per image
    net(images, torch.tensor([0.7, 0.3, 0, 0, 0, 0])) # a blend of styles 0 and 1

Output: ``sigmoid`` of the last convolution, so images lie in (0, 1) and the loss keeps a gradient
everywhere (a clamp would have none outside [0, 1]; Johnson et al. use a scaled tanh, which is the
same function up to scale). Images of any size work: the output is cropped to the input's size
(sides that are no multiple of 4 come back from the upsampling a few pixels larger).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normapps import norm as norms

__all__ = ["TransformerNet"]

_BASE = (32, 64, 128)


def _channels(base: int, width: float) -> int:
    return max(1, round(base * width))


class _ConvNorm(nn.Module):
    """Reflection pad + conv (+ norm (+ ReLU)); the norm gets the style when it is conditional."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: nn.Module | None, relu: bool,
                 upsample: bool = False) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest") if upsample else None
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride)
        self.norm = norm
        self.relu = relu

    def forward(self, x: Tensor, style: Any = None) -> Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        x = self.conv(self.pad(x))
        if self.norm is not None:
            x = self.norm(x) if style is None else self.norm(x, style)
        return torch.relu(x) if self.relu else x


class _Residual(nn.Module):
    def __init__(self, channels: int, make_norm) -> None:
        super().__init__()
        self.first = _ConvNorm(channels, channels, 3, 1, make_norm(channels), relu=True)
        self.second = _ConvNorm(channels, channels, 3, 1, make_norm(channels), relu=False)

    def forward(self, x: Tensor, style: Any = None) -> Tensor:
        return x + self.second(self.first(x, style), style)


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network with a selectable normalization (see the module docstring).

    Args:
        width: channel multiplier of the base widths 32 / 64 / 128 (``width=0.25``: 8 / 16 / 32,
            small enough to train on a CPU).
        norm: normalization after every convolution but the last: ``"in"`` (default), ``"bn"``,
            ``"cin"``, or any other activation method of :func:`normapps.norm.available`.
        num_styles: number of styles of a ``"cin"`` network (required for it, refused otherwise).
        residual_blocks: number of residual blocks (Johnson et al.: 5).
        norm_kwargs: extra keyword arguments of every normalization layer.

    Example:
        >>> net = TransformerNet(width=0.25, norm="cin", num_styles=3)
        >>> net(torch.rand(2, 3, 64, 64), style=1).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, width: float = 1.0, norm: str = "in", num_styles: int | None = None, residual_blocks: int = 5,
                 norm_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
            raise ValueError(f"width must be a number in (0, 4], got {width!r}")
        if isinstance(residual_blocks, bool) or not isinstance(residual_blocks, int) or residual_blocks < 0:
            raise ValueError(f"residual_blocks must be an int >= 0, got {residual_blocks!r}")
        available = norms.available("activation") + norms.available("whitening")
        if norm == "cin":
            if isinstance(num_styles, bool) or not isinstance(num_styles, int) or num_styles < 1:
                raise ValueError(f"norm 'cin' needs num_styles, a positive int; got {num_styles!r}")
        elif norm not in available:
            raise ValueError(f"norm must be 'cin' or one of {', '.join(available)}; got {norm!r}")
        elif num_styles is not None:
            raise ValueError(f"num_styles is only for norm 'cin' (one gamma / beta per style), got it with norm {norm!r}")
        self.width, self.norm, self.num_styles = float(width), norm, num_styles
        self.residual_blocks, self.norm_kwargs = residual_blocks, dict(norm_kwargs or {})
        kwargs = dict(self.norm_kwargs)
        if norm == "cin":
            kwargs["num_styles"] = num_styles

        def make_norm(channels: int) -> nn.Module:
            return norms.build(norm, channels, **kwargs)

        c1, c2, c3 = (_channels(c, width) for c in _BASE)
        self.down = nn.ModuleList([
            _ConvNorm(3, c1, 9, 1, make_norm(c1), relu=True),
            _ConvNorm(c1, c2, 3, 2, make_norm(c2), relu=True),
            _ConvNorm(c2, c3, 3, 2, make_norm(c3), relu=True),
        ])
        self.residual = nn.ModuleList([_Residual(c3, make_norm) for _ in range(residual_blocks)])
        self.up = nn.ModuleList([
            _ConvNorm(c3, c2, 3, 1, make_norm(c2), relu=True, upsample=True),
            _ConvNorm(c2, c1, 3, 1, make_norm(c1), relu=True, upsample=True),
        ])
        self.out = _ConvNorm(c1, 3, 9, 1, None, relu=False)

    @property
    def conditional(self) -> bool:
        """Whether the forward pass needs a style (``norm="cin"``)."""
        return self.norm == "cin"

    def forward(self, x: Tensor, style: int | Tensor | None = None) -> Tensor:
        """Stylized images ``(N, 3, H, W)`` in (0, 1) from images ``(N, 3, H, W)`` in [0, 1].

        ``style`` (``"cin"`` only): an int, a ``(N,)`` index tensor, or convex weights ``(num_styles,)``
        / ``(N, num_styles)`` as a float tensor (interpolation of every layer's gamma and beta).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (N, 3, H, W), got shape {tuple(x.shape)}")
        if self.conditional and style is None:
            raise ValueError(f"this network has conditional instance norm over {self.num_styles} styles: pass style= "
                             "an index, one index per image, or convex weights over the styles")
        if not self.conditional and style is not None:
            raise ValueError(f"style= is only for a 'cin' network; this one has norm {self.norm!r} and one style")
        height, width = x.shape[-2:]
        h = x
        for layer in self.down:
            h = layer(h, style)
        for block in self.residual:
            h = block(h, style)
        for layer in self.up:
            h = layer(h, style)
        return torch.sigmoid(self.out(h))[..., :height, :width]

    def extra_repr(self) -> str:
        styles = f", num_styles={self.num_styles}" if self.conditional else ""
        return f"width={self.width:g}, norm={self.norm!r}{styles}"
