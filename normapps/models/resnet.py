"""A small CIFAR-style residual network for 16-32 px images, parameterized by its normalization layer."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .cnn import NormLayer, build_norm, check_norm_name, check_sizes


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al. 2016, "Deep Residual Learning", Fig. 2)::

        y = relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))

    ``shortcut`` is the identity, or a strided 1x1 convolution and a normalization when the
    resolution or the width changes. Only the inner channels (``conv1`` -> ``norm1`` -> ``conv2``)
    can be pruned without touching the residual stream.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: NormLayer, norm_kwargs: dict[str, Any]) -> None:
        """Initialize the block: ``c_in`` -> ``c_out`` channels, resolution divided by ``stride``."""
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = build_norm(norm, c_out, **norm_kwargs)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.norm2 = build_norm(norm, c_out, **norm_kwargs)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), build_norm(norm, c_out, **norm_kwargs)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Output of shape (N, c_out, H / stride, W / stride) for input (N, c_in, H, W)."""
        inner = self.relu1(self.norm1(self.conv1(x)))
        return self.relu2(self.norm2(self.conv2(inner)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, Section 4.2) sized for 16-32 px digits.

    A 3x3 stem convolution to ``width`` channels, three stages of ``blocks`` :class:`BasicBlock`
    each with ``width``, ``2 * width`` and ``4 * width`` channels (the second and third halve the
    resolution), global average pooling and a linear head. Convolutions have no bias.

    >>> model = SmallResNet(num_classes=10, norm="bn", width=8)
    >>> model(torch.randn(4, 1, 16, 16)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        norm: NormLayer = "bn",
        norm_kwargs: dict[str, Any] | None = None,
        width: int = 16,
        in_channels: int = 1,
        blocks: int = 1,
    ) -> None:
        """Initialize the network.

        Args:
            num_classes: outputs of the linear head.
            norm: normalization after every convolution, a name of ``normapps.norm.available()``
                or a callable ``norm(num_channels, **norm_kwargs) -> nn.Module``.
            norm_kwargs: keyword arguments of every normalization layer.
            width: channels of the stem and the first stage (the others have 2x and 4x).
            in_channels: channels of the input images.
            blocks: residual blocks per stage.

        Raises:
            ValueError: if a size is not a positive int, or ``norm`` is not the name of an
                activation or whitening method.
        """
        super().__init__()
        if isinstance(norm, str):
            check_norm_name(norm)
        check_sizes(num_classes=num_classes, width=width, in_channels=in_channels, blocks=blocks)
        kwargs = dict(norm_kwargs or {})
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False), build_norm(norm, width, **kwargs), nn.ReLU()
        )
        stages = []
        c_in = width
        for index, c_out in enumerate((width, 2 * width, 4 * width)):
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(c_in, c_out, stride, norm, kwargs))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of shape (N, num_classes) for images of shape (N, in_channels, H, W)."""
        return self.head(self.pool(self.stages(self.stem(x))).flatten(1))
