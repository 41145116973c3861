"""A small convolutional classifier parameterized by its normalization layer."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from normapps import norm as norms

NormLayer = str | Callable[..., nn.Module]
"""A registered method name (``"gn"``), or a class / ``functools.partial`` called with the channels."""



@functools.lru_cache(maxsize=None)
def takes_groups(name: str) -> bool:
    """Whether the registered method ``name`` takes a ``groups`` argument (gn, bgn, evonorm_s0, ...).

    Read from the signature of the method's registered builder, the very callable that
    :func:`normapps.norm.build` checks keyword arguments against, so a newly registered grouped
    method is picked up without a list to keep in sync.

    Raises:
        ValueError: if ``name`` is not a registered method.
    """
    return "groups" in norms.signature(name).parameters


def default_groups(num_channels: int) -> int:
    """Number of groups for ``num_channels`` channels: about 4 channels per group.

    The largest divisor of ``num_channels`` that is at most ``num_channels // 4`` (at least 1).
    Group Normalization (Wu & He, 2018, Table 3) is insensitive to the group size over a wide
    range; few channels per group keeps it distinct from LN on narrow networks.
    """
    limit = max(1, num_channels // 4)
    return max(d for d in range(1, limit + 1) if num_channels % d == 0)


def check_norm_name(name: str, families: tuple[str, ...] = ("activation", "whitening")) -> str:
    """Return ``name`` if it is a registered method of one of ``families``, else raise a clear ValueError.

    The message gives the name found, the names expected and the closest matches: a network
    normalizes plain activations (standardizing or whitening them), so conditional methods (which
    need a condition input) and other families are refused here even though
    :func:`normapps.norm.build` knows them.
    """
    expected = [n for family in families for n in norms.available(family)]
    if name in expected:
        return name
    close = difflib.get_close_matches(name, expected, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    other = f" ({name!r} is a {norms.describe(name).family} method)" if name in norms.available() else ""
    raise ValueError(
        f"unknown norm {name!r}{other}: expected one of the {' or '.join(families)} methods "
        f"{', '.join(expected)}.{hint}"
    )


def check_sizes(**sizes: Any) -> None:
    """Raise ``ValueError`` naming the first of ``sizes`` that is not a positive int (bools are not sizes)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def build_norm(layer: NormLayer, num_channels: int, **kwargs: Any) -> nn.Module:
    """Build a normalization layer with defaults that fit ``num_channels``.

    Like :func:`normapps.norm.build`, plus a default ``groups`` (:func:`default_groups`) for the
    grouped methods when ``kwargs`` does not give one.
    """
    if isinstance(layer, str) and "groups" not in kwargs and takes_groups(layer):
        kwargs = {**kwargs, "groups": default_groups(num_channels)}
    return norms.build(layer, num_channels, **kwargs)


class SmallCNN(nn.Module):
    """Three conv blocks (conv 3x3 -> norm -> ReLU), global average pooling and a linear head.

    The second and third blocks halve the resolution (stride 2) and double the width, so a 16x16
    input is normalized at 16x16 (``width`` channels), 8x8 and 4x4 (``2 * width`` channels).
    Convolutions have no bias: the normalization that follows removes it or adds its own.

    >>> model = SmallCNN(num_classes=10, norm="gn", width=16)
    >>> model(torch.randn(4, 1, 16, 16)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        norm: NormLayer = "bn",
        norm_kwargs: dict[str, Any] | None = None,
        width: int = 32,
        in_channels: int = 1,
    ) -> None:
        """Initialize the network.

        Args:
            num_classes: outputs of the linear head.
            norm: normalization after every convolution, a name of ``normapps.norm.available()``
                or a callable ``norm(num_channels, **norm_kwargs) -> nn.Module``.
            norm_kwargs: keyword arguments of every normalization layer.
            width: channels of the first block (the others have twice as many).
            in_channels: channels of the input images.

        Raises:
            ValueError: if a size is not a positive int, or ``norm`` is not the name of an
                activation or whitening method.
        """
        super().__init__()
        if isinstance(norm, str):
            check_norm_name(norm)
        check_sizes(num_classes=num_classes, width=width, in_channels=in_channels)
        kwargs = dict(norm_kwargs or {})
        blocks = []
        channels = [(in_channels, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 2)]
        for c_in, c_out, stride in channels:
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                build_norm(norm, c_out, **kwargs),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of shape (N, num_classes) for images of shape (N, in_channels, H, W)."""
        return self.head(self.pool(self.features(x)).flatten(1))
