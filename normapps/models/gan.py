"""GAN generators and discriminators for small square images (the SN-GAN paper's networks).

Two families, each with a ``width`` multiplier of the paper's channel counts (``width=1`` is the paper):

- :class:`DCGANGenerator` / :class:`DCGANDiscriminator`: the "standard CNN" of Miyato et al.,
  Spectral Normalization for Generative Adversarial Networks, ICLR 2018, appendix B, table 3.
- :class:`ResNetGenerator` / :class:`ResNetDiscriminator`: that paper's CIFAR-10 ResNets (table 4),
  the networks of Miyato & Koyama, cGANs with Projection Discriminator, ICLR 2018.

Normalization is chosen by name and built by :mod:`normapps.norm`:

- generator, ``g_norm`` (:data:`GENERATOR_NORMS`): ``"bn"``; ``"cbn"``, conditional BN with one
  (gamma, beta) per class, ``G(z, y)`` with class indices ``y`` or class weights (mixing two classes'
  parameters morphs between them); ``"smbn"``, self-modulated BN with gamma, beta from ``z``
  (Chen et al., ICLR 2019).
- discriminator, ``d_norm`` (:data:`DISCRIMINATOR_NORMS`): ``"none"``; ``"bn"`` or ``"ln"`` as
  layers; ``"wn"`` or ``"spectral"`` as weight parametrizations on every conv / linear
  (:func:`normapps.norm.weight.apply`). With ``num_classes`` the discriminator is a projection
  discriminator, ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>`` (Miyato & Koyama 2018, Eq. 3),
  its embedding spectrally normalized too when ``d_norm="spectral"``.

Initialization follows the authors' code (sngan_projection): the standard CNNs draw every conv /
linear weight from N(0, 0.02) (Radford et al. 2016); the ResNets use Xavier-uniform weights with
gain sqrt(2) in the residual branches and gain 1 on shortcuts, the linear layers, the output
convolution and the projection embedding. Biases start at 0; normalization layers keep their own
initialization (gamma 1, beta 0).
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normapps import norm as norms

__all__ = [
    "ARCHITECTURES", "DISCRIMINATOR_NORMS", "GENERATOR_NORMS", "DCGANDiscriminator", "DCGANGenerator", "Discriminator", "Generator",
    "ResNetDiscriminator", "ResNetGenerator", "build_discriminator", "build_generator",
]

#: Normalizations of the generator: plain, class-conditional and latent-conditional (self-modulated) BN.
GENERATOR_NORMS = ("bn", "cbn", "smbn")
#: Normalizations of the discriminator: none, activation layers, weight parametrizations.
DISCRIMINATOR_NORMS = ("none", "bn", "ln", "wn", "spectral")
#: The architectures, by name (``build_generator`` / ``build_discriminator``).
ARCHITECTURES = ("dcgan", "resnet")


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(map(repr, choices))}")
    return value  # type: ignore[return-value]


def _scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a number > 0, got {width!r}")
    return max(1, round(channels * width))


def _check_image_size(image_size: object, multiple: int) -> int:
    _check_int("image_size", image_size, multiple)
    if image_size % multiple:  # type: ignore[operator]
        raise ValueError(f"image_size must be a multiple of {multiple} (>= {multiple}), got {image_size}")
    return image_size  # type: ignore[return-value]


def _init(module: nn.Module, kind: str, gain: float = 1.0) -> nn.Module:
    """Initialize a conv / linear / embedding weight (``"normal"``: N(0, 0.02); ``"xavier"``) and zero its bias."""
    if kind == "normal":
        nn.init.normal_(module.weight, 0.0, 0.02)
    else:
        nn.init.xavier_uniform_(module.weight, gain)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def _labels(y: Tensor | int, batch: int, num_classes: int, who: str, weights: bool) -> Tensor:
    """Validate class indices ``(N,)`` (an int: the same class for all) or, if ``weights``, class weights ``(N, K)`` / ``(K,)``."""
    t = torch.as_tensor(y)
    if t.is_floating_point():
        if not weights:
            raise ValueError(f"{who} takes class indices (an int64 tensor of shape ({batch},)), got a float tensor")
        if t.dim() == 1:
            t = t.unsqueeze(0).expand(batch, -1)
        if t.dim() != 2 or t.shape != (batch, num_classes):
            raise ValueError(f"{who}: class weights must have shape ({batch}, {num_classes}) or ({num_classes},), "
                             f"got {tuple(torch.as_tensor(y).shape)}")
        return t
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{who}: class labels must be integers, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{who}: class labels must have shape ({batch},), got {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"{who}: class labels must lie in [0, {num_classes - 1}], got values in [{int(t.min())}, {int(t.max())}]")
    return t.long()


# --------------------------------------------------------------------------------------------------
# generators


class Generator(nn.Module):
    """Base of the generators: the latent, the normalization and how a condition reaches it.

    Subclasses build their layers with :meth:`norm` and call :meth:`normalize` with the condition
    returned by :meth:`condition`.
    """

    def __init__(self, z_dim: int, g_norm: str, num_classes: int | None, image_size: int, channels: int) -> None:
        super().__init__()
        self.z_dim = _check_int("z_dim", z_dim)
        self.g_norm = _check_choice("generator normalization g_norm", g_norm, GENERATOR_NORMS)
        self.image_size = _check_image_size(image_size, 8)
        self.channels = _check_int("channels", channels)
        if g_norm == "cbn":
            if num_classes is None:
                raise ValueError("g_norm='cbn' (conditional BN) needs num_classes")
            _check_int("num_classes", num_classes)
        elif num_classes is not None:
            raise ValueError(f"num_classes={num_classes} needs g_norm='cbn' (the class reaches the generator through "
                             f"conditional BN); g_norm={g_norm!r} makes an unconditional generator")
        self.num_classes = num_classes

    @property
    def conditional(self) -> bool:
        """Whether the generator takes class labels (``g_norm="cbn"``)."""
        return self.num_classes is not None

    def norm(self, channels: int) -> nn.Module:
        """A normalization layer of ``g_norm`` for ``channels`` channels."""
        if self.g_norm == "cbn":
            return norms.build("cbn", channels, num_classes=self.num_classes)
        if self.g_norm == "smbn":
            return norms.build("smbn", channels, latent_dim=self.z_dim)
        return norms.build("bn", channels)

    @staticmethod
    def normalize(layer: nn.Module, x: Tensor, condition: Tensor | None) -> Tensor:
        """``layer(x)``, or ``layer(x, condition)`` for a conditional normalization."""
        return layer(x) if condition is None else layer(x, condition)

    def condition(self, z: Tensor, y: Tensor | int | None) -> Tensor | None:
        """Check ``z`` and ``y``; return what the normalization layers are conditioned on (y, z or nothing)."""
        name = type(self).__name__
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.z_dim or not z.is_floating_point():
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{name}: expected a float latent z of shape (N, {self.z_dim}), got {shape}")
        if self.num_classes is None:
            if y is not None:
                raise ValueError(f"{name} is unconditional (g_norm={self.g_norm!r}) and takes no class labels y; "
                                 "build it with g_norm='cbn' and num_classes for a conditional generator")
            return z if self.g_norm == "smbn" else None
        if y is None:
            raise ValueError(f"{name} is conditional (g_norm='cbn'): give class labels y of shape ({z.shape[0]},) "
                             f"or class weights ({z.shape[0]}, {self.num_classes})")
        return _labels(y, z.shape[0], self.num_classes, name, weights=True).to(z.device)


class DCGANGenerator(Generator):
    """The SN-GAN paper's standard CNN generator (Miyato et al. 2018, table 3a).

    ``z`` -> linear to ``(8 ngf, S/8, S/8)`` -> norm, ReLU -> three 4x4 stride-2 transposed convolutions
    halving the channels (norm, ReLU after each) -> 3x3 conv to ``channels`` -> tanh; ``ngf = 64 * width``.

    >>> g = DCGANGenerator(width=0.25, g_norm="cbn", num_classes=10)
    >>> g(torch.randn(4, 128), torch.tensor([0, 1, 2, 3])).shape
    torch.Size([4, 3, 32, 32])
    """

    def __init__(self, z_dim: int = 128, width: float = 1.0, g_norm: str = "bn", num_classes: int | None = None,
                 image_size: int = 32, channels: int = 3) -> None:
        """Initialize the generator.

        Args:
            z_dim: dimension of the latent.
            width: multiplier of the paper's channels (512, 256, 128, 64).
            g_norm: one of :data:`GENERATOR_NORMS`.
            num_classes: number of classes; required by (and only by) ``g_norm="cbn"``.
            image_size: side ``S`` of the square output, a multiple of 8.
            channels: channels of the output images.

        Raises:
            ValueError: for an unknown ``g_norm``, a bad size, or ``num_classes`` not matching ``g_norm``.
        """
        super().__init__(z_dim, g_norm, num_classes, image_size, channels)
        c = _scaled(512, width)
        if c >> 3 < 1:
            raise ValueError(f"width={width} leaves no channels in the last layer (512 * width / 8 < 1)")
        self.bottom = image_size // 8
        self.linear = _init(nn.Linear(z_dim, c * self.bottom**2), "normal")
        self.norm0 = self.norm(c)
        self.deconvs = nn.ModuleList(_init(nn.ConvTranspose2d(c >> i, c >> (i + 1), 4, 2, 1), "normal") for i in range(3))
        self.norms = nn.ModuleList(self.norm(c >> (i + 1)) for i in range(3))
        self.out = _init(nn.Conv2d(c >> 3, channels, 3, 1, 1), "normal")

    def forward(self, z: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Images ``(N, channels, S, S)`` in [-1, 1] from latents ``(N, z_dim)`` (and class labels / weights ``y``)."""
        cond = self.condition(z, y)
        h = self.linear(z).view(z.shape[0], -1, self.bottom, self.bottom)
        h = F.relu(self.normalize(self.norm0, h, cond))
        for deconv, layer in zip(self.deconvs, self.norms):
            h = F.relu(self.normalize(layer, deconv(h), cond))
        return torch.tanh(self.out(h))


class _UpBlock(nn.Module):
    """Generator residual block: norm-ReLU-up-conv3x3-norm-ReLU-conv3x3, shortcut up-conv1x1 (nearest 2x up-sampling)."""

    def __init__(self, c_in: int, c_out: int, make_norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        gain = math.sqrt(2.0)
        self.norm1, self.norm2 = make_norm(c_in), make_norm(c_out)
        self.conv1 = _init(nn.Conv2d(c_in, c_out, 3, 1, 1), "xavier", gain)
        self.conv2 = _init(nn.Conv2d(c_out, c_out, 3, 1, 1), "xavier", gain)
        self.shortcut = _init(nn.Conv2d(c_in, c_out, 1), "xavier")

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        h = F.relu(Generator.normalize(self.norm1, x, cond))
        h = self.conv1(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(Generator.normalize(self.norm2, h, cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResNetGenerator(Generator):
    """The SN-GAN paper's CIFAR-10 ResNet generator (Miyato et al. 2018, table 4a; Miyato & Koyama 2018).

    ``z`` -> linear to ``(C, S/8, S/8)`` -> three up-sampling residual blocks (norm-ReLU-conv3x3 twice,
    nearest 2x up-sampling) -> norm, ReLU, 3x3 conv to ``channels`` -> tanh; ``C = 256 * width``.

    >>> ResNetGenerator(width=0.125)(torch.randn(2, 128)).shape
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, z_dim: int = 128, width: float = 1.0, g_norm: str = "bn", num_classes: int | None = None,
                 image_size: int = 32, channels: int = 3) -> None:
        """Initialize the generator; arguments as :class:`DCGANGenerator` (``width`` multiplies 256 channels)."""
        super().__init__(z_dim, g_norm, num_classes, image_size, channels)
        c = _scaled(256, width)
        self.bottom = image_size // 8
        self.linear = _init(nn.Linear(z_dim, c * self.bottom**2), "xavier")
        self.blocks = nn.ModuleList(_UpBlock(c, c, self.norm) for _ in range(3))
        self.norm_out = self.norm(c)
        self.out = _init(nn.Conv2d(c, channels, 3, 1, 1), "xavier")

    def forward(self, z: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Images ``(N, channels, S, S)`` in [-1, 1] from latents ``(N, z_dim)`` (and class labels / weights ``y``)."""
        cond = self.condition(z, y)
        h = self.linear(z).view(z.shape[0], -1, self.bottom, self.bottom)
        for block in self.blocks:
            h = block(h, cond)
        return torch.tanh(self.out(F.relu(self.normalize(self.norm_out, h, cond))))


# --------------------------------------------------------------------------------------------------
# discriminators


class Discriminator(nn.Module, metaclass=ABCMeta):
    """Base of the discriminators: ``D(x, y) = psi(phi(x)) [+ <embed(y), phi(x)>]``.

    Subclasses define :meth:`features` (``phi``, shape ``(N, F)``) and build ``self.psi``
    (``nn.Linear(F, 1)``), then call :meth:`finish`, which adds the projection embedding and the
    weight normalization.
    """

    def __init__(self, d_norm: str, num_classes: int | None, image_size: int, channels: int, multiple: int) -> None:
        super().__init__()
        self.d_norm = _check_choice("discriminator normalization d_norm", d_norm, DISCRIMINATOR_NORMS)
        self.image_size = _check_image_size(image_size, multiple)
        self.channels = _check_int("channels", channels)
        self.num_classes = None if num_classes is None else _check_int("num_classes", num_classes)

    @property
    def conditional(self) -> bool:
        """Whether this is a projection discriminator (built with ``num_classes``)."""
        return self.num_classes is not None

    def norm(self, channels: int) -> nn.Module:
        """An activation normalization layer of ``d_norm`` (identity for none / wn / spectral)."""
        return norms.build(self.d_norm, channels) if self.d_norm in ("bn", "ln") else nn.Identity()

    def finish(self, num_features: int) -> None:
        """Add the projection embedding ``(num_classes, num_features)`` and the weight normalization."""
        self.embed = _init(nn.Embedding(self.num_classes, num_features), "xavier") if self.conditional else None
        if self.d_norm in ("wn", "spectral"):
            norms.weight.apply(self, self.d_norm)
            if self.embed is not None and self.d_norm == "spectral":
                norms.weight.apply(self.embed, "spectral")

    @abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """``phi(x)``, shape ``(N, F)``."""

    def forward(self, x: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Logits ``(N,)`` for images ``(N, channels, S, S)`` (and class labels ``(N,)`` for a projection discriminator)."""
        name = type(self).__name__
        expected = (self.channels, self.image_size, self.image_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected images of shape (N, {', '.join(map(str, expected))}), got {shape}")
        if self.num_classes is None and y is not None:
            raise ValueError(f"{name} is unconditional and takes no class labels y; build it with num_classes "
                             "for a projection discriminator")
        if self.num_classes is not None and y is None:
            raise ValueError(f"{name} is a projection discriminator ({self.num_classes} classes): give class labels y")
        phi = self.features(x)
        out = self.psi(phi).squeeze(1)
        if self.embed is not None:
            labels = _labels(y, x.shape[0], self.num_classes, name, weights=False).to(x.device)
            out = out + (self.embed(labels) * phi).sum(dim=1)
        return out


class DCGANDiscriminator(Discriminator):
    """The SN-GAN paper's standard CNN discriminator (Miyato et al. 2018, table 3b).

    conv3x3 64, conv4x4/2 64, conv3x3 128, conv4x4/2 128, conv3x3 256, conv4x4/2 256, conv3x3 512 (channels
    times ``width``), each followed by LeakyReLU(0.1), then a linear layer on the flattened ``(512, S/8, S/8)``
    features (``phi``). ``d_norm`` ``"bn"`` / ``"ln"`` puts a layer after every conv but the first (the
    input layer stays unnormalized, as in DCGAN).

    >>> DCGANDiscriminator(width=0.25, d_norm="spectral")(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2])
    """

    def __init__(self, width: float = 1.0, d_norm: str = "spectral", num_classes: int | None = None, image_size: int = 32,
                 channels: int = 3) -> None:
        """Initialize the discriminator.

        Args:
            width: multiplier of the paper's channels (64, 64, 128, 128, 256, 256, 512).
            d_norm: one of :data:`DISCRIMINATOR_NORMS`.
            num_classes: number of classes of a projection discriminator; None for an unconditional one.
            image_size: side ``S`` of the square input, a multiple of 8.
            channels: channels of the input images.

        Raises:
            ValueError: for an unknown ``d_norm`` or a bad size.
        """
        super().__init__(d_norm, num_classes, image_size, channels, 8)
        plan = [(3, 1, 64), (4, 2, 64), (3, 1, 128), (4, 2, 128), (3, 1, 256), (4, 2, 256), (3, 1, 512)]
        layers: list[nn.Module] = []
        c_in = channels
        for i, (k, s, c) in enumerate(plan):
            c_out = _scaled(c, width)
            layers += [_init(nn.Conv2d(c_in, c_out, k, s, 1), "normal")]
            layers += [nn.Identity() if i == 0 else self.norm(c_out), nn.LeakyReLU(0.1)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        num_features = c_in * (image_size // 8) ** 2
        self.psi = _init(nn.Linear(num_features, 1), "normal")
        self.finish(num_features)

    def features(self, x: Tensor) -> Tensor:
        """``phi(x)``: the last conv layer's activations, flattened, ``(N, 512 width (S/8)^2)``."""
        return self.convs(x).flatten(1)


class _DownBlock(nn.Module):
    """Discriminator residual block. ``first`` (the "optimized" block on images): conv3x3-norm-ReLU-conv3x3-pool,
    shortcut pool-conv1x1; otherwise norm-ReLU-conv3x3-norm-ReLU-conv3x3[-pool], shortcut conv1x1[-pool]
    when the channels change or the block down-samples (identity otherwise). Pooling: 2x2 average."""

    def __init__(self, c_in: int, c_out: int, downsample: bool, first: bool, make_norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        gain = math.sqrt(2.0)
        self.first, self.downsample = first, downsample
        self.norm1 = nn.Identity() if first else make_norm(c_in)
        self.conv1 = _init(nn.Conv2d(c_in, c_out, 3, 1, 1), "xavier", gain)
        self.norm2 = make_norm(c_out)
        self.conv2 = _init(nn.Conv2d(c_out, c_out, 3, 1, 1), "xavier", gain)
        learnable = first or downsample or c_in != c_out
        self.shortcut = _init(nn.Conv2d(c_in, c_out, 1), "xavier") if learnable else None

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(self.norm1(x))
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.shortcut is None:
            return h + x
        if self.first:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        s = self.shortcut(x)
        return h + (F.avg_pool2d(s, 2) if self.downsample else s)


class ResNetDiscriminator(Discriminator):
    """The SN-GAN paper's CIFAR-10 ResNet discriminator (Miyato et al. 2018, table 4b; Miyato & Koyama 2018).

    Optimized first block (down-sampling), one down-sampling block, two plain blocks (``C = 128 * width``
    channels), ReLU, global SUM pooling (``phi``, ``(N, C)``), linear. ``d_norm`` ``"bn"`` / ``"ln"`` puts a
    layer before every ReLU.

    >>> ResNetDiscriminator(width=0.125, num_classes=10)(torch.randn(2, 3, 32, 32), torch.tensor([1, 7])).shape
    torch.Size([2])
    """

    def __init__(self, width: float = 1.0, d_norm: str = "spectral", num_classes: int | None = None, image_size: int = 32,
                 channels: int = 3) -> None:
        """Initialize the discriminator; arguments as :class:`DCGANDiscriminator` (``width`` multiplies 128
        channels; ``image_size`` a multiple of 4)."""
        super().__init__(d_norm, num_classes, image_size, channels, 4)
        c = _scaled(128, width)
        self.blocks = nn.Sequential(
            _DownBlock(channels, c, downsample=True, first=True, make_norm=self.norm),
            _DownBlock(c, c, downsample=True, first=False, make_norm=self.norm),
            _DownBlock(c, c, downsample=False, first=False, make_norm=self.norm),
            _DownBlock(c, c, downsample=False, first=False, make_norm=self.norm),
        )
        self.norm_out = self.norm(c)
        self.psi = _init(nn.Linear(c, 1), "xavier")
        self.finish(c)

    def features(self, x: Tensor) -> Tensor:
        """``phi(x)``: ReLU of the last block, summed over positions, ``(N, 128 width)``."""
        return F.relu(self.norm_out(self.blocks(x))).sum(dim=(2, 3))


_GENERATORS = {"dcgan": DCGANGenerator, "resnet": ResNetGenerator}
_DISCRIMINATORS = {"dcgan": DCGANDiscriminator, "resnet": ResNetDiscriminator}


def build_generator(architecture: str, **kwargs: Any) -> Generator:
    """``"dcgan"`` or ``"resnet"`` generator with the keyword arguments of its class."""
    return _GENERATORS[_check_choice("generator", architecture, ARCHITECTURES)](**kwargs)


def build_discriminator(architecture: str, **kwargs: Any) -> Discriminator:
    """``"dcgan"`` or ``"resnet"`` discriminator with the keyword arguments of its class."""
    return _DISCRIMINATORS[_check_choice("discriminator", architecture, ARCHITECTURES)](**kwargs)
