"""Slimmable networks: one set of weights that runs at several widths.

Slimmable networks (Yu, Yang, Xu, Yang & Huang 2019, "Slimmable Neural Networks", ICLR). Every
convolution and linear layer keeps one full-width weight ``W`` of shape ``(C_out, C_in, ...)``;
at width multiplier ``w`` it uses the prefix ``W[:c_out(w), :c_in(w)]`` (the first channels), so
narrower networks are nested inside wider ones. Because the statistics of a channel's input
change with the number of channels feeding it, each listed width gets its own BatchNorm,
statistics and affine parameters both ("switchable batch normalization")::

    y = gamma_w * (x - mu_w) / sqrt(sigma_w^2 + eps) + beta_w        for x of c(w) channels

Universally slimmable networks (Yu & Huang 2019, "Universally Slimmable Networks and Improved
Training Techniques", ICCV) run at any width in ``[w_min, w_max]``: BatchNorm shares one affine
``(gamma, beta)`` of full width (sliced like the weights) and keeps no statistics during training
(batch statistics only); after training, :func:`calibrate` computes the exact population
statistics of each chosen width on a few training batches with
:func:`normapps.norm.recalibrate` and stores them per width ("post-statistics of BN"). The
training recipe of that paper (sandwich rule, in-place distillation) lives in
:class:`~normapps.tasks.efficient.slimmable_task.SlimmableTask`.

Channel counts follow the authors' code: ``c(w) = make_divisible(C * w, divisor)`` for a layer
of ``C`` channels at full width (with ``divisor=1``, ``C * w`` rounded half up, at least 1 and
at most ``C``). Input and output layers keep their fixed channels (image channels, classes).

The active width is a plain attribute of every slimmable layer, set for the whole network with
:func:`set_width` or, for a block of code, :func:`use_width`.

:func:`export_width` turns one width of a :class:`SlimmableCNN` into a plain
:class:`~normapps.models.SmallCNN` (``nn.Conv2d``, BatchNorm, ``nn.ReLU``, ``nn.Linear``) that
computes the same eval outputs, for :func:`~normapps.tasks.efficient.checkpoints.save_model`,
:func:`normapps.norm.fold` and ``torch.export`` without the slimmable classes.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normapps.norm import recalibrate

from .checkpoints import rebuild

DEFAULT_WIDTH_MULTS = (0.25, 0.5, 0.75, 1.0)
"""The widths of the slimmable networks paper (its MobileNet and ResNet experiments)."""

_KEY = re.compile(r"^w(\d+(?:_\d+)?)$")


def make_divisible(value: float, divisor: int = 1, min_value: int | None = None) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``min_value`` (default
    ``divisor``) and never more than 10% below ``value`` (the rule of MobileNet's reference code,
    which the slimmable networks' code uses for channel counts).

    >>> make_divisible(32 * 0.75), make_divisible(30 * 0.25), make_divisible(16 * 0.35, 8)
    (24, 8, 8)
    """
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"divisor must be a positive int, got {divisor!r}")
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def slim_channels(channels: int, width_mult: float, divisor: int = 1) -> int:
    """Channels at width ``width_mult`` of a layer with ``channels`` at full width:
    ``make_divisible(channels * width_mult, divisor)``, at most ``channels``."""
    return min(channels, make_divisible(channels * width_mult, divisor))


def check_width_mults(width_mults: Iterable[float]) -> tuple[float, ...]:
    """The widths as a sorted tuple of floats, after checking them.

    Raises:
        ValueError: if the list is empty, holds a duplicate or something that is not a number in
            (0, 1].
    """
    values = list(width_mults) if not isinstance(width_mults, (str, bytes)) else [width_mults]
    if not values:
        raise ValueError("width_mults must list at least one width multiplier in (0, 1], got an empty list")
    bad = [w for w in values if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < w <= 1.0]
    if bad:
        raise ValueError(f"every width multiplier must be a number in (0, 1], got {bad} in {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"width_mults must not repeat a width, got {values}")
    return tuple(sorted(float(w) for w in values))


def width_key(width_mult: float) -> str:
    """Module and state-dict key of a width: ``0.25 -> "w0_25"``, ``1.0 -> "w1"`` (6 significant digits)."""
    return "w" + f"{width_mult:g}".replace(".", "_")


def _width_of_key(key: str) -> float:
    return float(key[1:].replace("_", "."))


def _format(widths: Iterable[float]) -> str:
    return ", ".join(f"{w:g}" for w in widths)


class SlimmableLayer(nn.Module):
    """Base of every layer whose shape follows the network's active width ``width_mult``.

    Subclasses say which widths they accept with :meth:`check_width`; :func:`set_width` checks
    every layer before it changes any.
    """

    width_mult: float

    def check_width(self, width_mult: float) -> float:
        """Return the width this layer will use for ``width_mult`` (a listed width may be
        snapped to its stored value); raise ValueError naming the accepted widths if it has none."""
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not 0.0 < width_mult <= 1.0:
            raise ValueError(f"width multiplier must be a number in (0, 1], got {width_mult!r}")
        return float(width_mult)


def _check_input(layer: nn.Module, x: Tensor, expected: int) -> None:
    if x.dim() < 2 or x.shape[1] != expected:
        raise ValueError(
            f"{type(layer).__name__} at width {layer.width_mult:g} expected an input with {expected} channels at "
            f"dimension 1, got shape {tuple(x.shape)}"
        )


class SlimmableConv2d(nn.Conv2d, SlimmableLayer):
    """A ``Conv2d`` whose active part is the prefix ``weight[:c_out(w), :c_in(w)]`` at width ``w``.

    ``weight`` and ``bias`` have the full-width shape (torch's names and shapes, so a full-width
    state dict loads); ``slim_in=False`` keeps all input channels (the image), ``slim_out=False``
    all output channels. Groups are not supported (the paper's MobileNets slice depthwise
    convolutions with their channels; this project's networks have none).

    >>> conv = SlimmableConv2d(3, 16, 3, padding=1, slim_in=False)
    >>> conv.width_mult = 0.5
    >>> conv(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 8, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        slim_in: bool = True,
        slim_out: bool = True,
        divisor: int = 1,
    ) -> None:
        """Initialize a full-width convolution (torch's default initialization).

        Args:
            in_channels, out_channels: channels at full width.
            kernel_size, stride, padding, bias: as ``nn.Conv2d``.
            slim_in: slice the input channels with the width (False for the image input).
            slim_out: slice the output channels with the width (False for a fixed-size output).
            divisor: channel counts are multiples of it (:func:`slim_channels`).
        """
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.slim_in, self.slim_out, self.divisor = slim_in, slim_out, divisor
        self.width_mult = 1.0

    def active_channels(self) -> tuple[int, int]:
        """``(c_in, c_out)`` at the active width."""
        c_in = slim_channels(self.in_channels, self.width_mult, self.divisor) if self.slim_in else self.in_channels
        c_out = slim_channels(self.out_channels, self.width_mult, self.divisor) if self.slim_out else self.out_channels
        return c_in, c_out

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` of shape (N, c_in(w), H, W) to (N, c_out(w), H', W')."""
        c_in, c_out = self.active_channels()
        _check_input(self, x, c_in)
        bias = None if self.bias is None else self.bias[:c_out]
        return F.conv2d(x, self.weight[:c_out, :c_in], bias, self.stride, self.padding, self.dilation)


class SlimmableLinear(nn.Linear, SlimmableLayer):
    """A ``Linear`` whose active part is ``weight[:c_out(w), :c_in(w)]`` at width ``w`` (see
    :class:`SlimmableConv2d`); a classifier head has ``slim_out=False``."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, slim_in: bool = True, slim_out: bool = True, divisor: int = 1
    ) -> None:
        """Initialize a full-width linear layer (torch's default initialization); arguments as
        :class:`SlimmableConv2d`."""
        super().__init__(in_features, out_features, bias=bias)
        self.slim_in, self.slim_out, self.divisor = slim_in, slim_out, divisor
        self.width_mult = 1.0

    def active_channels(self) -> tuple[int, int]:
        """``(in_features, out_features)`` at the active width."""
        c_in = slim_channels(self.in_features, self.width_mult, self.divisor) if self.slim_in else self.in_features
        c_out = slim_channels(self.out_features, self.width_mult, self.divisor) if self.slim_out else self.out_features
        return c_in, c_out

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x`` of shape (N, c_in(w)) to (N, c_out(w))."""
        c_in, c_out = self.active_channels()
        _check_input(self, x, c_in)
        bias = None if self.bias is None else self.bias[:c_out]
        return F.linear(x, self.weight[:c_out, :c_in], bias)


class SwitchableBatchNorm2d(SlimmableLayer):
    """Switchable batch normalization (Yu et al. 2019, section 3.2): one private ``nn.BatchNorm2d``
    (running statistics and affine parameters) per listed width; the active width picks one.

    ``bns[i]`` normalizes ``slim_channels(num_features, width_mults[i])`` channels; training at one
    width never touches another width's statistics or parameters.

    >>> bn = SwitchableBatchNorm2d(16, (0.5, 1.0))
    >>> bn.width_mult = 0.5
    >>> bn(torch.randn(4, 8, 5, 5)).shape
    torch.Size([4, 8, 5, 5])
    """

    def __init__(
        self,
        num_features: int,
        width_mults: Sequence[float] = DEFAULT_WIDTH_MULTS,
        divisor: int = 1,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ) -> None:
        """Initialize one BatchNorm per width.

        Args:
            num_features: channels at full width.
            width_mults: the widths (see :func:`check_width_mults`).
            divisor: channel counts are multiples of it (:func:`slim_channels`).
            eps, momentum: as ``nn.BatchNorm2d``.
        """
        super().__init__()
        self.width_mults = check_width_mults(width_mults)
        self.num_features = num_features
        self.bns = nn.ModuleList(
            nn.BatchNorm2d(slim_channels(num_features, w, divisor), eps=eps, momentum=momentum) for w in self.width_mults
        )
        self.width_mult = self.width_mults[-1]

    def check_width(self, width_mult: float) -> float:
        """The listed width equal to ``width_mult`` (to 1e-9), else a ValueError listing them."""
        width_mult = super().check_width(width_mult)
        for w in self.width_mults:
            if math.isclose(w, width_mult, abs_tol=1e-9):
                return w
        raise ValueError(
            f"width {width_mult:g} is not one of this network's widths: expected one of {_format(self.width_mults)} "
            "(switchable batch norm keeps statistics for the listed widths only)"
        )

    def active(self) -> nn.BatchNorm2d:
        """The BatchNorm of the active width."""
        return self.bns[self.width_mults.index(self.check_width(self.width_mult))]

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` of shape (N, c(w), H, W) with the active width's BatchNorm."""
        bn = self.active()
        _check_input(self, x, bn.num_features)
        return bn(x)


class UniversalBatchNorm2d(SlimmableLayer):
    """Batch normalization of a universally slimmable network (Yu & Huang 2019, section 3).

    One affine ``(weight, bias)`` of full width, sliced to the first ``c(w)`` channels at any width
    ``w`` in ``[min_width, max_width]``. In training mode it normalizes with the batch statistics
    and stores none::

        y = weight[:c] * (x - mean_batch) / sqrt(var_batch + eps) + bias[:c]

    In eval mode it needs the statistics of the active width, computed after training by
    :func:`calibrate`: ``stats[width_key(w)]`` is an ``nn.BatchNorm2d(c(w), affine=False)`` whose
    running buffers hold them (so :func:`normapps.norm.recalibrate` computes them, and state
    dicts carry them: ``stats.w0_5.running_mean``; loading a state dict creates the widths it holds).

    >>> bn = UniversalBatchNorm2d(16, min_width=0.25)
    >>> bn.width_mult = 0.6
    >>> bn(torch.randn(4, 10, 5, 5)).shape
    torch.Size([4, 10, 5, 5])
    """

    def __init__(self, num_features: int, min_width: float = 0.25, max_width: float = 1.0, divisor: int = 1, eps: float = 1e-5) -> None:
        """Initialize the shared affine (``weight`` 1, ``bias`` 0) and no statistics.

        Args:
            num_features: channels at full width.
            min_width, max_width: the range of widths, ``0 < min_width <= max_width <= 1``.
            divisor: channel counts are multiples of it (:func:`slim_channels`).
            eps: added to the variance.
        """
        super().__init__()
        check_width_mults((min_width,) if min_width == max_width else (min_width, max_width))
        if min_width > max_width:
            raise ValueError(f"min_width must be <= max_width, got {min_width} > {max_width}")
        self.num_features, self.min_width, self.max_width = num_features, float(min_width), float(max_width)
        self.divisor, self.eps = divisor, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.stats = nn.ModuleDict()
        self.width_mult = self.max_width

    def channels(self, width_mult: float | None = None) -> int:
        """Channels at ``width_mult`` (default: the active width)."""
        return slim_channels(self.num_features, self.width_mult if width_mult is None else width_mult, self.divisor)

    def check_width(self, width_mult: float) -> float:
        """``width_mult`` if it lies in ``[min_width, max_width]``, else a ValueError giving the range."""
        width_mult = super().check_width(width_mult)
        if not self.min_width - 1e-9 <= width_mult <= self.max_width + 1e-9:
            raise ValueError(
                f"width {width_mult:g} is outside this universally slimmable network's range: expected a width in "
                f"[{self.min_width:g}, {self.max_width:g}]"
            )
        return width_mult

    @property
    def calibrated_widths(self) -> tuple[float, ...]:
        """The widths with stored statistics, sorted."""
        return tuple(sorted(_width_of_key(key) for key in self.stats))

    def statistics(self, width_mult: float | None = None, create: bool = False) -> nn.BatchNorm2d:
        """The statistics holder of ``width_mult`` (default: the active width).

        Args:
            width_mult: a width in the range.
            create: make a fresh one (mean 0, variance 1) if the width has none.

        Raises:
            KeyError: if the width has no statistics and ``create`` is false (the message says to
                call :func:`calibrate` and lists the calibrated widths).
        """
        width_mult = self.check_width(self.width_mult if width_mult is None else width_mult)
        key = width_key(width_mult)
        if key not in self.stats:
            if not create:
                raise KeyError(
                    f"width {width_mult:g} has no batch-norm statistics: call calibrate(model, {width_mult:g}, batches) "
                    f"first (calibrated widths: {_format(self.calibrated_widths) or 'none'})"
                )
            with torch.inference_mode(False):
                self.stats[key] = nn.BatchNorm2d(self.channels(width_mult), eps=self.eps, momentum=None, affine=False).to(
                    self.weight.device
                )
        return self.stats[key]

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` of shape (N, c(w), H, W): batch statistics in training mode, the active
        width's calibrated statistics in eval mode (batch statistics while :func:`calibrate` runs)."""
        c = self.channels()
        _check_input(self, x, c)
        weight, bias = self.weight[:c], self.bias[:c]
        if self.training:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        normalized = self.statistics()(x)
        shape = (1, c, 1, 1)
        return normalized * weight.reshape(shape) + bias.reshape(shape)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in state_dict:
            if name.startswith(prefix + "stats."):
                key = name[len(prefix) + len("stats.") :].split(".")[0]
                if _KEY.match(key) and key not in self.stats:
                    self.statistics(_width_of_key(key), create=True)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, widths=[{self.min_width:g}, {self.max_width:g}], calibrated=[{_format(self.calibrated_widths)}]"


def slimmable_layers(model: nn.Module) -> list[SlimmableLayer]:
    """Every :class:`SlimmableLayer` of ``model`` (the root included)."""
    return [m for m in model.modules() if isinstance(m, SlimmableLayer)]


def get_width(model: nn.Module) -> float:
    """The active width of ``model`` (that of its first slimmable layer)."""
    layers = slimmable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no slimmable layers (SlimmableConv2d, SwitchableBatchNorm2d, ...)")
    return layers[0].width_mult


def set_width(model: nn.Module, width_mult: float) -> nn.Module:
    """Make every slimmable layer of ``model`` run at width ``width_mult``; return ``model``.

    Every layer checks the width before any is changed: a switchable-BN network accepts its listed
    widths, a universally slimmable one any width in its range.

    Raises:
        ValueError: if ``model`` has no slimmable layer, or a layer does not accept the width (the
            message lists the valid widths).
    """
    layers = slimmable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no slimmable layers (SlimmableConv2d, SwitchableBatchNorm2d, ...)")
    for layer in layers:  # a listed width within float rounding is snapped to the listed value
        width_mult = layer.check_width(width_mult)
    for layer in layers:
        layer.width_mult = width_mult
    return model


@contextlib.contextmanager
def use_width(model: nn.Module, width_mult: float) -> Iterator[nn.Module]:
    """Run ``model`` at ``width_mult`` inside the block, then restore its previous width.

    >>> with use_width(model, 0.5):
    ...     logits = model(x)
    """
    previous = get_width(model)
    set_width(model, width_mult)
    try:
        yield model
    finally:
        set_width(model, previous)


class _ActiveStatistics(nn.Module):
    """A view of a network for :func:`normapps.norm.recalibrate`: its registered children are only
    the statistics holders of the active width, so recalibration reads, resets and restores those
    and no other width's; calling it runs the whole network (held outside the module tree)."""

    def __init__(self, network: nn.Module, holders: list[nn.BatchNorm2d]) -> None:
        super().__init__()
        self.holders = nn.ModuleList(holders)
        self.__dict__["network"] = network

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)


def calibrate(model: nn.Module, width_mult: float, batches: Iterable[Any], max_batches: int | None = None) -> nn.Module:
    """Compute and store the exact BatchNorm statistics of ``model`` at width ``width_mult``.

    The post-training statistics of universally slimmable networks (Yu & Huang 2019, section 3):
    the network runs at ``width_mult`` over ``batches`` with every BatchNorm of that width
    normalizing with batch statistics, and each stores the statistics of all its inputs pooled
    together (``running_mean = sum(x) / n``, ``running_var = sum((x - mean)^2) / (n - 1)``), by
    :func:`normapps.norm.recalibrate` with ``mode="exact"``. Other widths' statistics do not
    change; the model's active width and train/eval modes are restored.

    Universal BN layers get (or replace) statistics for this width; switchable BN layers
    recalibrate the BatchNorm of this listed width (e.g. after a change of data).

    Cost: one forward pass per batch at ``width_mult`` (about a training-mode forward), per width.

    Args:
        model: a network with :class:`UniversalBatchNorm2d` or :class:`SwitchableBatchNorm2d` layers.
        width_mult: the width (see :func:`set_width`).
        batches: tensors, ``(input, target)`` pairs or dicts (see :func:`normapps.norm.stats.iter_inputs`).
        max_batches: use at most this many batches.

    Returns:
        ``model``.

    Raises:
        ValueError: if the model has no slimmable BatchNorm, the width is not accepted, or
            ``batches`` is empty.
    """
    norms = [m for m in model.modules() if isinstance(m, (UniversalBatchNorm2d, SwitchableBatchNorm2d))]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no UniversalBatchNorm2d or SwitchableBatchNorm2d layer to calibrate")
    with use_width(model, width_mult), torch.inference_mode(False):
        key = width_key(get_width(model))
        created = [norm for norm in norms if isinstance(norm, UniversalBatchNorm2d) and key not in norm.stats]
        holders = [norm.statistics(create=True) if isinstance(norm, UniversalBatchNorm2d) else norm.active() for norm in norms]
        training = {m: m.training for m in model.modules()}
        model.eval()
        try:
            recalibrate(_ActiveStatistics(model, holders), batches, mode="exact", max_batches=max_batches)
        except BaseException:
            for norm in created:  # no half-made statistics: the width stays uncalibrated
                del norm.stats[key]
            raise
        finally:
            for module, was_training in training.items():
                module.training = was_training
    return model


class SlimmableCNN(nn.Module):
    """:class:`~normapps.models.SmallCNN`'s topology, slimmable: three conv blocks (3x3 conv ->
    BN -> ReLU; the second and third with stride 2), global average pooling and a linear head.

    At width ``w`` the blocks have ``c1 = slim_channels(width, w)`` and ``c2 = slim_channels(2 *
    width, w)`` channels (``c1, c2, c2``); the first convolution keeps the image's channels and the
    head the classes. ``universal=False``: a switchable BN per listed width (Yu et al. 2019);
    ``universal=True``: any width in ``[min(width_mults), max(width_mults)]`` with
    :class:`UniversalBatchNorm2d` (Yu & Huang 2019), ``width_mults`` being the widths evaluated.

    >>> model = SlimmableCNN(num_classes=10, width=16)
    >>> with use_width(model, 0.5):
    ...     model(torch.randn(4, 1, 16, 16)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 32,
        in_channels: int = 1,
        width_mults: Sequence[float] = DEFAULT_WIDTH_MULTS,
        universal: bool = False,
        divisor: int = 1,
    ) -> None:
        """Initialize the network at full width (active width: the largest).

        Args:
            num_classes: outputs of the head.
            width: channels of the first block at width 1 (the others have twice as many).
            in_channels: channels of the input images.
            width_mults: the widths (switchable BN), or the evaluated widths whose extremes bound
                the range (universal).
            universal: universally slimmable (shared BN affine, statistics by :func:`calibrate`).
            divisor: channel counts are multiples of it.

        Raises:
            ValueError: if a size is not a positive int or ``width_mults`` is invalid.
        """
        super().__init__()
        for name, value in (("num_classes", num_classes), ("width", width), ("in_channels", in_channels), ("divisor", divisor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.width_mults = check_width_mults(width_mults)
        self.universal = universal

        def norm(channels: int) -> nn.Module:
            if universal:
                return UniversalBatchNorm2d(channels, self.width_mults[0], self.width_mults[-1], divisor)
            return SwitchableBatchNorm2d(channels, self.width_mults, divisor)

        blocks: list[nn.Module] = []
        for c_in, c_out, stride in [(in_channels, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 2)]:
            conv = SlimmableConv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, slim_in=bool(blocks), divisor=divisor)
            blocks += [conv, norm(c_out), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = SlimmableLinear(2 * width, num_classes, slim_out=False, divisor=divisor)
        set_width(self, self.width_mults[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of shape (N, num_classes) for images of shape (N, in_channels, H, W), at the active width."""
        return self.head(self.pool(self.features(x)).flatten(1))


def export_width(model: SlimmableCNN, width_mult: float) -> tuple[nn.Module, dict[str, list[int]], dict[str, Any]]:
    """The network ``model`` runs at width ``width_mult``, as a plain pruned :class:`~normapps.models.SmallCNN`.

    At width ``w`` the slimmable network computes a SmallCNN of ``c1 = slim_channels(width, w)`` and
    ``c2 = slim_channels(2 * width, w)`` channels: the full-width SmallCNN with every block keeping
    its first channels. So the export is that SmallCNN, rebuilt exactly as
    :func:`~normapps.tasks.efficient.checkpoints.rebuild` rebuilds a pruned file (``keep`` holds
    ``list(range(c))`` for each BatchNorm), holding the prefix weights
    ``W[:c_out(w), :c_in(w)]`` and the BatchNorm of the width:

    * switchable BN: the width's own BatchNorm (affine parameters, running statistics, ``eps``);
    * universal BN: the prefix ``weight[:c], bias[:c]`` of the shared affine and the statistics
      :func:`calibrate` stored for the width.

    In eval mode its outputs equal ``model``'s at the width (up to float rounding). ``model`` is not
    modified; its active width is restored.

    Args:
        model: a slimmable network.
        width_mult: a listed width (switchable BN) or a calibrated width in the range (universal BN).

    Returns:
        ``(network, keep, hyper_parameters)``: the plain network in eval mode, on ``model``'s device
        and dtype; the kept channels of each BatchNorm; and the
        :class:`~normapps.tasks.ClassificationTask` hyper-parameters (``arch="cnn"``, ``norm="bn"``)
        that, with ``keep``, rebuild its architecture. The triple is what
        :func:`~normapps.tasks.efficient.checkpoints.save_model` takes (``folded=False``).

    Raises:
        TypeError: if ``model`` is not a :class:`SlimmableCNN`.
        ValueError: if the width is not one of the network's (the message lists the listed widths or
            gives the range), or a universally slimmable network has no statistics for it (the
            message says to call :func:`calibrate`).

    >>> model = SlimmableCNN(num_classes=10, width=8, width_mults=(0.5, 1.0))
    >>> plain, keep, hyper_parameters = export_width(model.eval(), 0.5)
    >>> keep["features.1"], plain.features[3]
    ([0, 1, 2, 3], Conv2d(4, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False))
    """
    if not isinstance(model, SlimmableCNN):
        raise TypeError(f"export_width expected a SlimmableCNN, got {type(model).__name__}")
    state: dict[str, Tensor] = {}
    keep: dict[str, list[int]] = {}
    eps: set[float] = set()
    with use_width(model, width_mult), torch.no_grad():
        width_mult = get_width(model)
        for name, module in model.named_modules():
            prefix = f"{name}."
            if isinstance(module, (SlimmableConv2d, SlimmableLinear)):
                c_in, c_out = module.active_channels()
                state[prefix + "weight"] = module.weight[:c_out, :c_in]
                if module.bias is not None:
                    state[prefix + "bias"] = module.bias[:c_out]
            elif isinstance(module, SwitchableBatchNorm2d):
                bn = module.active()
                state.update({prefix + key: value for key, value in bn.state_dict().items()})
                keep[name], eps = list(range(bn.num_features)), eps | {bn.eps}
            elif isinstance(module, UniversalBatchNorm2d):
                if width_key(width_mult) not in module.stats:
                    raise ValueError(
                        f"width {width_mult:g} of this universally slimmable network has no batch-norm statistics "
                        f"({name}): call calibrate(model, {width_mult:g}, batches) first (calibrated widths: "
                        f"{_format(module.calibrated_widths) or 'none'})"
                    )
                c = module.channels()
                state[prefix + "weight"], state[prefix + "bias"] = module.weight[:c], module.bias[:c]
                state.update({prefix + key: value for key, value in module.statistics().state_dict().items()})
                keep[name], eps = list(range(c)), eps | {module.eps}
    conv = model.features[0]
    hyper_parameters: dict[str, Any] = {
        "arch": "cnn",
        "norm": "bn",
        "width": conv.out_channels,
        "num_classes": model.head.out_features,
        "in_channels": conv.in_channels,
    }
    if len(eps) > 1:
        raise ValueError(f"the BatchNorm layers of the network use different eps {sorted(eps)}; a SmallCNN has one eps")
    if eps != {1e-5}:  # torch's default; another value goes to every BatchNorm of the rebuilt network
        hyper_parameters["norm_kwargs"] = {"eps": eps.pop()}
    network = rebuild(hyper_parameters, keep, folded=False).to(device=model.head.weight.device, dtype=model.head.weight.dtype)
    network.load_state_dict(state)  # copies: the export shares no tensor with ``model``
    return network.eval(), keep, hyper_parameters
