"""VGG-19 encoder to relu4_1 and its mirrored decoder, in the layout of the AdaIN authors' PyTorch port.

The AdaIN authors (Huang & Belongie, ICCV 2017) publish two plain ``nn.Sequential`` state dicts:
``vgg_normalised.pth`` (a 1x1 conv 3 -> 3, then reflection-pad + 3x3 conv + ReLU blocks with
ceil-mode 2x2 max-pools, through relu5_4) and ``decoder.pth`` (the mirror image from relu4_1:
reflection-pad + 3x3 conv + ReLU, nearest 2x upsampling, no normalization, no ReLU after the last
conv). At ``width=1.0`` our modules keep those key names (``"0.weight"``, ``"2.weight"``, ...), so
``state_dict()`` of ours loads into the plain port and the published files load into ours::

    encoder = VGGEncoder.from_published("vgg_normalised.pth")         # relu4_1, frozen
    decoder = VGGDecoder.from_published("decoder.pth")
    images = decoder(encoder(content))                                 # (N, 3, H, W) in, out

    feats = encoder.features(images)        # {"relu1_1": ..., "relu2_1": ..., "relu3_1": ..., "relu4_1": ...}

Conventions: inputs are RGB images in [0, 1], ``(N, 3, H, W)``. The first 1x1 conv turns them into
whatever the following convolutions were trained on (the published one: BGR in [0, 255] minus the
Caffe mean; :meth:`VGGEncoder.from_torchvision`: ImageNet mean / std standardization).

Other encoders of the same shape:

- :meth:`VGGEncoder.from_torchvision`: torchvision's ImageNet ``vgg19`` weights (a local file or
  the torch hub cache, see :func:`find_torchvision_weights`; nothing is downloaded).
- :meth:`VGGEncoder.random`: fixed random weights, for work without any pretrained file.
- ``width``: a narrow variant (``width=0.25`` has 16 / 32 / 64 / 128 channels at relu1_1 .. relu4_1)
  that can be trained and run on a CPU.

Layer names: ``reluB_K`` is the ReLU after the K-th convolution of block B (VGG-19 has blocks of
2, 2, 4, 4, 4 convolutions with 64, 128, 256, 512, 512 channels); :data:`VGG19_LAYERS` lists them.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import nnpack

__all__ = ["DECODER_LEVELS", "IMAGENET_MEAN", "IMAGENET_STD", "VGG19_LAYERS", "VGGDecoder", "VGGEncoder", "find_torchvision_weights"]

#: ImageNet mean and std of torchvision's VGG weights (RGB, images in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VGG-19's five blocks: (channels, convolutions); a 2x2 max-pool precedes every block but the first.
_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
#: The ReLU layers of VGG-19 in order of depth: relu1_1, relu1_2, relu2_1, ..., relu5_4.
VGG19_LAYERS = tuple(f"relu{b + 1}_{k + 1}" for b, (_, n) in enumerate(_BLOCKS) for k in range(n))
# Published decoder.pth from relu4_1: (in, out) per conv, "up" for nearest 2x upsampling.
_DECODER = ((512, 256), "up", (256, 256), (256, 256), (256, 256), (256, 128), "up", (128, 128), (128, 64), "up", (64, 64), (64, 3))
#: Levels a :class:`VGGDecoder` can start from, and the number of convolutions it then has.
DECODER_LEVELS = {"relu4_1": 9, "relu3_1": 5, "relu2_1": 3, "relu1_1": 1}
_KEY = re.compile(r"^(\d+)\.(weight|bias)$")


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _check_width(width: float) -> None:
    if not (isinstance(width, (int, float)) and 0 < width <= 4):
        raise ValueError(f"width must be a number in (0, 4], got {width!r}")


def _pad(padding: str) -> nn.Module:
    if padding == "reflect":
        return nn.ReflectionPad2d(1)
    if padding == "zeros":
        return nn.ZeroPad2d(1)
    raise ValueError(f"padding must be 'reflect' or 'zeros', got {padding!r}")


#: Images of fewer pixels run through the plain layers: below about 64 x 64 the fast path's fixed costs outweigh its gain.
_FAST_MIN_PIXELS = 64 * 64


def _fast_path(x: Tensor, scale: int = 1) -> bool:
    """Whether a conv stack takes the fast path (:func:`_fast_layers`): CPU inference (no autograd graph)
    on float32 images of at least :data:`_FAST_MIN_PIXELS` pixels (``scale``: image pixels per pixel of
    ``x``). It returns what the plain layers return up to float rounding (see
    ``benchmarks/style_speed.py``); with autograd the plain layers run as they are, so training and
    its gradients are unchanged."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and x.shape[-2] * x.shape[-1] * scale >= _FAST_MIN_PIXELS)


def _is_pad1(layer: nn.Module) -> bool:
    return isinstance(layer, nn.ReflectionPad2d) and tuple(layer.padding) == (1, 1, 1, 1)


def _reflect_border(out: Tensor) -> Tensor:
    """``out`` with its 1-pixel border set to the reflection of its inside: ``ReflectionPad2d(1)`` in place."""
    out[:, :, 0, 1:-1] = out[:, :, 2, 1:-1]
    out[:, :, -1, 1:-1] = out[:, :, -3, 1:-1]
    out[:, :, :, 0] = out[:, :, :, 2]
    out[:, :, :, -1] = out[:, :, :, -3]
    return out


def _empty(x: Tensor, channels: int, height: int, width: int, layout: torch.memory_format = torch.channels_last) -> Tensor:
    return torch.empty((x.shape[0], channels, height, width), dtype=x.dtype, device=x.device, memory_format=layout)


def _relu_reflect_pad(x: Tensor, layout: torch.memory_format = torch.channels_last) -> Tensor:
    """``ReflectionPad2d(1)(relu(x))`` in one pass over ``x``: the ReLU writes into the inside of the padded tensor."""
    out = _empty(x, x.shape[1], x.shape[2] + 2, x.shape[3] + 2, layout)
    torch.clamp_min(x, 0, out=out[:, :, 1:-1, 1:-1])
    return _reflect_border(out)


def _fits_pool_pad(pool: nn.Module, rest: list[nn.Module]) -> bool:
    """Whether ``pool, *rest`` starts with a plain 2x2 max-pool of stride 2 and ``ReflectionPad2d(1)``."""
    return (isinstance(pool, nn.MaxPool2d) and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1)) and not pool.return_indices
            and bool(rest) and _is_pad1(rest[0]))


def _pool_reflect_pad(x: Tensor, ceil_mode: bool, layout: torch.memory_format) -> Tensor:
    """``ReflectionPad2d(1)(max_pool2d(x, 2, 2, ceil_mode))`` as the maximum of the four strided 2x2 phases of
    ``x``, written into the inside of the padded tensor (exact: a maximum has no rounding)."""
    h, w = x.shape[-2:]
    if ceil_mode and (h % 2 or w % 2):  # the last window holds one row / column: repeat it
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
    h, w = x.shape[-2] // 2, x.shape[-1] // 2  # at least 2 each: the caller passes maps of 4 x 4 or more
    x = x[:, :, : 2 * h, : 2 * w]
    out = _empty(x, x.shape[1], h + 2, w + 2, layout)
    top = torch.maximum(x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2])
    torch.maximum(top, torch.maximum(x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]), out=out[:, :, 1:-1, 1:-1])
    return _reflect_border(out)


# Nearest 2x upsampling, reflection pad 1 and a 3-tap kernel: output 2m sees the low-resolution rows
# (m - 1, m, m) and output 2m + 1 the rows (m, m, m + 1), with replicate padding of the low-resolution
# rows at the ends. So each output phase is a 2-tap kernel on the low-resolution rows (m - 1, m),
# resp. (m, m + 1): these matrices map the 3 taps to the 2 (phase, 2-tap, 3-tap).
_PHASE_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def _fits_upsampled_conv(up: nn.Module, rest: list[nn.Module]) -> bool:
    """Whether ``up, *rest`` starts with nearest 2x upsampling, ``ReflectionPad2d(1)`` and a plain 3x3 conv."""
    if not (isinstance(up, nn.Upsample) and up.mode == "nearest" and up.size is None and up.scale_factor in (2, (2, 2))):
        return False
    if len(rest) < 2 or not _is_pad1(rest[0]) or not isinstance(rest[1], nn.Conv2d):
        return False
    conv = rest[1]
    return (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) == ((3, 3), (1, 1), (0, 0), (1, 1), 1)


def _upsampled_conv(x: Tensor, conv: nn.Conv2d, relu_pad: bool, use_nnpack: bool = False) -> Tensor:
    """``conv(ReflectionPad2d(1)(x upsampled 2x, nearest))``, then with ``relu_pad`` ReLU and ``ReflectionPad2d(1)``.

    Computed on ``x`` itself, replicate-padded, as one convolution with a 2x2 kernel per output phase
    (:data:`_PHASE_TAPS`): 16 multiply-adds per low-resolution pixel and channel pair instead of 36;
    the four phases are then interleaved into the output (through the ReLU and into the inside of
    the padded tensor with ``relu_pad``). With ``use_nnpack`` the tensors are NCHW and a wide phase
    convolution runs in NNPACK.
    """
    layout = torch.contiguous_format if use_nnpack else torch.channels_last
    n, _, h, w = x.shape
    o = conv.out_channels
    c = conv.in_channels
    taps = torch.tensor(_PHASE_TAPS, dtype=x.dtype, device=x.device)
    phase_of_taps = torch.einsum("pak,qbl->pqabkl", taps, taps).reshape(16, 9)  # 3x3 taps -> (row phase, col phase, 2x2)
    weight = (conv.weight.reshape(o * c, 9) @ phase_of_taps.T).reshape(o, c, 2, 2, 2, 2)  # one GEMM, not an einsum: 8x faster
    weight = weight.permute(2, 3, 0, 1, 4, 5).reshape(4 * o, c, 2, 2)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    if use_nnpack and nnpack.wide(c, o):
        phases = nnpack.conv2d(padded, weight, bias)
    else:
        phases = F.conv2d(padded, weight, bias)  # (n, 4 o, h + 1, w + 1)
    out = _empty(x, o, 2 * h + 2, 2 * w + 2, layout) if relu_pad else _empty(x, o, 2 * h, 2 * w, layout)
    inside = out[:, :, 1:-1, 1:-1] if relu_pad else out
    for py in (0, 1):
        for px in (0, 1):
            k = 2 * py + px
            phase = phases[:, k * o : (k + 1) * o, py : py + h, px : px + w]
            if relu_pad:
                torch.clamp_min(phase, 0, out=inside[:, :, py::2, px::2])
            else:
                inside[:, :, py::2, px::2] = phase
    return _reflect_border(out) if relu_pad else out


def _fast_layers(layers: list[nn.Module], x: Tensor, first: int = 0, use_nnpack: bool = False) -> Iterator[tuple[int, Tensor]]:
    """``(position, output)`` of layers run in channels-last memory format, positions counted from ``first``.

    oneDNN's channels-last convolutions, max-pools and pads are faster than the NCHW ones on CPU.
    With ``use_nnpack`` (inside :func:`normapps.models.nnpack.inference`) the tensors are NCHW
    instead, the wide 3x3 and phase convolutions run in NNPACK (:func:`normapps.models.nnpack.eligible`,
    :func:`normapps.models.nnpack.wide`), and each 2x2 max-pool and the pad after it are one pass
    (:func:`_pool_reflect_pad`; PyTorch's NCHW max-pool is slow on one thread).
    Fused here: a ReLU and the ``ReflectionPad2d(1)`` after it (one pass, :func:`_relu_reflect_pad`;
    the ReLU's output is the inside of the padded tensor, a view), and nearest 2x upsampling, pad
    and 3x3 conv (:func:`_upsampled_conv`, with the ReLU and pad after them where there are). The
    upsampling, pad and conv positions of such a fusion are not yielded.
    """
    layout = torch.contiguous_format if use_nnpack else torch.channels_last
    i = 0
    while i < len(layers):
        layer, rest = layers[i], layers[i + 1 :]
        if _fits_upsampled_conv(layer, rest):
            relu_pad = len(rest) >= 4 and isinstance(rest[2], nn.ReLU) and _is_pad1(rest[3])
            x = _upsampled_conv(x, rest[1], relu_pad, use_nnpack)
            if relu_pad:
                yield first + i + 3, x[:, :, 1:-1, 1:-1]
                i += 4
            else:
                i += 2
        elif isinstance(layer, nn.ReLU) and rest and _is_pad1(rest[0]) and min(x.shape[-2:]) >= 2:
            x = _relu_reflect_pad(x, layout)
            yield first + i, x[:, :, 1:-1, 1:-1]
            i += 1
        elif use_nnpack and nnpack.eligible(layer):
            x = nnpack.conv2d(x, layer.weight, layer.bias)
        elif use_nnpack and _fits_pool_pad(layer, rest) and min(x.shape[-2:]) >= 4:  # NCHW pools are slow
            x = _pool_reflect_pad(x, layer.ceil_mode, layout)
            yield first + i, x[:, :, 1:-1, 1:-1]
            i += 1
        else:
            x = layer(x)
        yield first + i, x
        i += 1


def _source_name(source: str | Path | Mapping[str, Tensor]) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else "the state dict"


def _read(source: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"expected a state dict or the path of a weights file, got {type(source).__name__}")
    from .pretrained import read_state_dict  # pretrained imports the timm and torchvision model zoos: only when a file is read

    return read_state_dict(source)


def _listed(keys: Iterable[str], limit: int = 3) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"{shown}, ... ({len(keys) - limit} more)" if len(keys) > limit else shown


def _conv_entries(state_dict: Mapping[str, Tensor], name: str, hint: str = "") -> list[tuple[int, Tensor, Tensor]]:
    """``(index, weight, bias)`` of a plain ``nn.Sequential``'s convolutions, in order of index."""
    bad = [k for k in state_dict if not _KEY.match(k)]
    if bad:
        raise ValueError(
            f"{name} has keys {_listed(bad)}; expected only the '<index>.weight' and '<index>.bias' keys of a plain "
            f"nn.Sequential of convolutions (e.g. '0.weight'){hint}"
        )
    params: dict[int, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        index, kind = _KEY.match(key).groups()
        params.setdefault(int(index), {})[kind] = value
    entries = []
    for index in sorted(params):
        found = params[index]
        if set(found) != {"weight", "bias"}:
            missing = ({"weight", "bias"} - set(found)).pop()
            raise ValueError(f"{name} has '{index}.{next(iter(found))}' but no '{index}.{missing}'; every convolution needs both")
        weight, bias = found["weight"], found["bias"]
        if not isinstance(weight, Tensor) or weight.dim() != 4 or not isinstance(bias, Tensor) or bias.dim() != 1:
            raise ValueError(f"{name}: '{index}.weight' / '{index}.bias' should be a 4-D convolution weight and a 1-D bias, "
                             f"got {_shape(weight)} / {_shape(bias)}")
        entries.append((index, weight, bias))
    return entries


def _shape(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _load_convs(convs: list[tuple[str, nn.Conv2d, str]], entries: list[tuple[int, Tensor, Tensor]], name: str) -> None:
    """Copy ``entries`` into ``convs`` (``(key, conv, description)``) in order, checking every shape first."""
    for (key, conv, what), (index, weight, bias) in zip(convs, entries):
        if weight.shape != conv.weight.shape or bias.shape != conv.bias.shape:
            raise ValueError(
                f"{name}: '{index}.weight' / '{index}.bias' have shapes {tuple(weight.shape)} / {tuple(bias.shape)}, "
                f"expected {tuple(conv.weight.shape)} / {tuple(conv.bias.shape)} for {what} (our '{key}')"
            )
    with torch.no_grad():
        for (_, conv, _), (_, weight, bias) in zip(convs, entries):
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)


def _infer_width(found: int, base: int, name: str, where: str) -> float:
    width = found / base
    if not 0 < width <= 4:
        raise ValueError(f"{name}: {where} has {found} channels, expected {base} (or {base} x width for a narrow variant)")
    return width


def find_torchvision_weights(arch: str = "vgg19", hub_dir: str | Path | None = None) -> Path | None:
    """The torchvision weights file of ``arch`` in the torch hub cache, or None; never downloads.

    torchvision stores ``vgg19`` ImageNet weights as ``<hub_dir>/checkpoints/vgg19-dcbb9e9d.pth``
    (``hub_dir`` defaults to :func:`torch.hub.get_dir`, usually ``~/.cache/torch/hub``). Any
    ``<arch>-<hash>.pth`` there counts (not ``vgg19_bn-...``); with several, the newest.
    """
    folder = Path(hub_dir if hub_dir is not None else torch.hub.get_dir()) / "checkpoints"
    found = [p for p in folder.glob(f"{arch}-*.pth") if p.is_file()] if folder.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


class VGGEncoder(nn.Module):
    """VGG-19 from RGB images in [0, 1] to one ReLU layer (``last``), in the AdaIN port's layout.

    Layers, with the published state dict's indices at ``width=1.0``: ``0`` a 1x1 conv 3 -> 3
    (input conversion), then per convolution a pad (``1``), a 3x3 conv (``2``) and a ReLU (``3``,
    relu1_1), with a 2x2 max-pool before every block after the first. Only layers up to ``last``
    are built.

    Parameters are frozen at construction (``requires_grad_(False)``): the encoder is a fixed feature
    extractor for AdaIN / WCT and for perceptual losses, and gradients still flow through it to its
    input. Call ``encoder.requires_grad_(True)`` to train it. It has no normalization or dropout
    layers, so train and eval modes compute the same.

    Args:
        width: channel multiplier (channels ``round(c * width)``); 1.0 is VGG-19.
        last: the deepest layer computed, one of :data:`VGG19_LAYERS`.
        padding: ``"reflect"`` (the published port) or ``"zeros"`` (torchvision's VGG).
        ceil_mode: max-pools round odd sizes up (the published port) or down (torchvision).

    Attributes:
        levels: the AdaIN style-loss levels (class attribute); :meth:`features`' default are those
            this encoder reaches, plus ``last``.

    Example:
        >>> encoder = VGGEncoder(width=0.25)
        >>> encoder(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 128, 8, 8])
        >>> {k: tuple(v.shape[1:]) for k, v in encoder.features(torch.rand(1, 3, 64, 64), ["relu1_1", "relu2_1"]).items()}
        {'relu1_1': (16, 64, 64), 'relu2_1': (32, 32, 32)}
    """

    levels = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")

    def __init__(self, width: float = 1.0, last: str = "relu4_1", *, padding: str = "reflect", ceil_mode: bool = True) -> None:
        super().__init__()
        _check_width(width)
        if last not in VGG19_LAYERS:
            raise ValueError(f"last must be one of {', '.join(VGG19_LAYERS)}; got {last!r}")
        self.width = float(width)
        self.last = last
        self.padding = padding
        self.ceil_mode = ceil_mode
        self._channels: dict[str, int] = {}
        self._stops: dict[str, int] = {}  # layer name -> position of its ReLU
        layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
        in_channels = 3
        for b, (channels, n) in enumerate(_BLOCKS):
            for k in range(n):
                if b > 0 and k == 0:
                    layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
                out_channels = _scaled(channels, width)
                layers += [_pad(padding), nn.Conv2d(in_channels, out_channels, 3), nn.ReLU(inplace=True)]
                in_channels = out_channels
                name = f"relu{b + 1}_{k + 1}"
                self._channels[name] = out_channels
                self._stops[name] = len(layers) - 1
                if name == last:
                    break
            if last in self._stops:
                break
        for index, layer in enumerate(layers):
            self.add_module(str(index), layer)
        self.requires_grad_(False)

    @property
    def reached(self) -> tuple[str, ...]:
        """The layers this encoder computes, shallow to deep (:data:`VGG19_LAYERS` up to ``last``)."""
        return tuple(self._stops)

    def channels(self, level: str) -> int:
        """Channels of the features at ``level`` (any of :data:`VGG19_LAYERS`, at this width)."""
        if level not in VGG19_LAYERS:
            raise ValueError(f"unknown level {level!r}; expected one of {', '.join(VGG19_LAYERS)}")
        return _scaled(_BLOCKS[int(level[4]) - 1][0], self.width)

    def forward(self, x: Tensor) -> Tensor:
        """Features at ``last``, ``(N, channels(last), H / 2^p, W / 2^p)`` after ``p`` pools."""
        return self.features(x, [self.last])[self.last]

    def features(self, x: Tensor, levels: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Features at each of ``levels`` from one pass that stops at the deepest of them.

        ``levels`` defaults to :attr:`levels` that this encoder reaches, plus ``last``. The dict
        is ordered shallow to deep.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (N, 3, H, W) in [0, 1], got shape {tuple(x.shape)}")
        if levels is None:
            wanted = {name for name in self.levels if name in self._stops} | {self.last}
        else:
            wanted = set([levels] if isinstance(levels, str) else levels)
            unknown = sorted(wanted - set(self._stops))
            if unknown:
                raise ValueError(f"this encoder stops at {self.last}: it cannot give {', '.join(unknown)}; "
                                 f"choose from {', '.join(self._stops)} or build VGGEncoder(last=...) deeper")
            if not wanted:
                return {}
        stop = max(self._stops[name] for name in wanted)
        positions = {self._stops[name]: name for name in wanted}
        out: dict[str, Tensor] = {}
        layers = list(self._modules.values())[: stop + 1]
        if _fast_path(x):  # the 1x1 input conv in NCHW: a channels-last 3 -> 3 conv takes a slow path
            with nnpack.inference(layers) as use_nnpack:
                converted = layers[0](x)
                if not use_nnpack:
                    converted = converted.contiguous(memory_format=torch.channels_last)
                for position, value in _fast_layers(layers[1:], converted, first=1, use_nnpack=use_nnpack):
                    if position in positions:
                        out[positions[position]] = value.contiguous()
            return out
        for position, layer in enumerate(layers):
            x = layer(x)
            if position in positions:
                out[positions[position]] = x
        return out

    def _convs(self) -> list[tuple[str, nn.Conv2d, str]]:
        convs = [(key, m) for key, m in self._modules.items() if isinstance(m, nn.Conv2d)]
        names = ["the 1x1 input conv"] + [f"VGG-19 conv{n[4:]} at width {self.width:g}" for n in self._stops]
        return [(key, conv, what) for (key, conv), what in zip(convs, names)]

    @classmethod
    def from_published(
        cls, state_dict_or_path: str | Path | Mapping[str, Tensor], last: str = "relu4_1", width: float | None = None
    ) -> VGGEncoder:
        """The encoder with the AdaIN authors' ``vgg_normalised.pth`` weights (or a state dict of that layout).

        The published file runs through relu5_4 (17 convolutions); any prefix that reaches ``last``
        is accepted and the rest ignored. Convolutions are matched by order of their indices, so a
        plain ``nn.Sequential`` numbered differently loads too. Inputs are RGB in [0, 1], as the
        port feeds them (its 1x1 conv maps them to the Caffe VGG's BGR [0, 255] minus mean).
        ``width`` is read from the shapes unless given (our own narrow encoders' state dicts load too).

        Raises:
            FileNotFoundError: a path that is no file.
            ValueError: keys that are not a plain ``nn.Sequential``'s, too few convolutions, wrong shapes.
        """
        name = _source_name(state_dict_or_path)
        entries = _conv_entries(_read(state_dict_or_path), name, " as in vgg_normalised.pth")
        if not entries or tuple(entries[0][1].shape) != (3, 3, 1, 1):
            first = f"'{entries[0][0]}.weight' of shape {tuple(entries[0][1].shape)}" if entries else "no convolution"
            raise ValueError(f"{name} starts with {first}; the published layout starts with a 1x1 conv of shape (3, 3, 1, 1)"
                             " (for torchvision's vgg19 weights use VGGEncoder.from_torchvision)")
        if width is None:
            width = _infer_width(entries[1][1].shape[0], 64, name, "the first 3x3 conv") if len(entries) > 1 else 1.0
        encoder = cls(width, last)
        convs = encoder._convs()
        if len(entries) < len(convs):
            raise ValueError(
                f"{name} has {len(entries)} convolution weights, expected at least {len(convs)} (the 1x1 input conv "
                f"and the {len(convs) - 1} VGG-19 convolutions up to {last})"
            )
        _load_convs(convs, entries, name)
        return encoder

    @classmethod
    def from_torchvision(
        cls,
        state_dict_or_path: str | Path | Mapping[str, Tensor] | None = None,
        last: str = "relu4_1",
        *,
        padding: str = "zeros",
        ceil_mode: bool = False,
    ) -> VGGEncoder:
        """The encoder with torchvision's ImageNet ``vgg19`` weights, taking RGB in [0, 1].

        ``state_dict_or_path``: a ``torchvision.models.vgg19`` state dict (``features.N.weight`` /
        ``features.N.bias``; ``classifier.*`` is ignored), the state dict of its ``features`` alone,
        or a file holding one. None looks in the torch hub cache (:func:`find_torchvision_weights`).

        The ImageNet standardization ``(x - mean) / std`` is folded into the 1x1 input conv. By
        default padding is zeros and pooling rounds down, as in torchvision, so the features equal
        those of ``vgg19().features`` on standardized input: the weights were trained that way.
        Zero padding of standardized input is padding with the ImageNet mean colour, which keeps the
        fold exact. ``padding="reflect"`` gives fewer border artefacts for stylization at the cost of
        features that differ from torchvision's near the borders.
        """
        if state_dict_or_path is None:
            found = find_torchvision_weights("vgg19")
            if found is None:
                raise FileNotFoundError(
                    f"no torchvision vgg19 weights in {Path(torch.hub.get_dir()) / 'checkpoints'} (vgg19-*.pth); "
                    "pass the path of a vgg19 state dict"
                )
            state_dict_or_path = found
        name = _source_name(state_dict_or_path)
        state = _read(state_dict_or_path)
        if any(k.startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} | {
                k: v for k, v in state.items() if not k.startswith(("features.", "classifier."))
            }
        hint = " as in torchvision's vgg19 (features.N.weight); batch-norm variants (vgg19_bn) are not supported"
        entries = _conv_entries(state, name, hint)
        if entries and tuple(entries[0][1].shape) == (3, 3, 1, 1):
            raise ValueError(f"{name} starts with a 1x1 conv: that is the published AdaIN layout, use VGGEncoder.from_published")
        width = _infer_width(entries[0][1].shape[0], 64, name, "the first conv") if entries else 1.0
        encoder = cls(width, last, padding=padding, ceil_mode=ceil_mode)
        convs = encoder._convs()
        if len(entries) < len(convs) - 1:
            raise ValueError(f"{name} has {len(entries)} convolution weights, expected at least {len(convs) - 1} "
                             f"(VGG-19's convolutions up to {last})")
        _load_convs(convs[1:], entries, name)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        with torch.no_grad():
            convs[0][1].weight.copy_(torch.diag(1 / std)[:, :, None, None])
            convs[0][1].bias.copy_(-mean / std)
        return encoder

    @classmethod
    def random(cls, width: float = 1.0, seed: int = 0, last: str = "relu4_1", *, padding: str = "reflect") -> VGGEncoder:
        """A fixed random-weight encoder, the same for the same ``(width, seed, last)`` on every machine.

        Random convolutional networks already give usable texture and style statistics:
        Ustyuzhaninov et al., "What does it take to generate natural textures?" (ICLR 2017) and
        He, Wang & Hopcroft, "A powerful generative model using random weights for the deep image
        representation" (NeurIPS 2016). Here: the 1x1 input conv is the ImageNet standardization
        (as in :meth:`from_torchvision`), every 3x3 conv has He-normal weights
        ``N(0, 2 / (9 * in_channels))`` and zero bias, which keeps the mean square of the features
        of the same order from layer to layer (He et al., ICCV 2015); the max-pools raise it a little.
        Weights come from a private ``torch.Generator`` seeded with ``seed``, so the global RNG is
        neither used nor changed.

        Limits: such features capture colour and local texture, not the object-level structure
        of a trained VGG; a decoder must be trained for the encoder.
        """
        with torch.device("meta"):  # no default initialization: it would draw from the global RNG
            encoder = cls(width, last, padding=padding)
        encoder.to_empty(device="cpu")
        generator = torch.Generator().manual_seed(seed)
        convs = encoder._convs()
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        with torch.no_grad():
            convs[0][1].weight.copy_(torch.diag(1 / std)[:, :, None, None])
            convs[0][1].bias.copy_(-mean / std)
            for _, conv, _ in convs[1:]:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                conv.bias.zero_()
        return encoder

    def extra_repr(self) -> str:
        return f"width={self.width:g}, last={self.last!r}, padding={self.padding!r}, ceil_mode={self.ceil_mode}"


class VGGDecoder(nn.Module):
    """The mirror of :class:`VGGEncoder` from ``level`` back to RGB, in the layout of the AdaIN port's ``decoder.pth``.

    From relu4_1 (the published decoder): pad + 3x3 conv 512 -> 256 + ReLU, nearest 2x upsampling,
    three 256 -> 256 convs, 256 -> 128, upsampling, 128 -> 128, 128 -> 64, upsampling, 64 -> 64,
    64 -> 3; every conv but the last is followed by a ReLU, there is no normalization. A decoder
    from a shallower level (relu3_1, relu2_1, relu1_1, as WCT needs) is the tail of that sequence
    that starts at the level's channels; its layers keep the indices they have in the published
    decoder (the relu3_1 decoder's first conv is ``"14"``), so at ``width=1.0`` every state dict
    of ours uses the published key names.

    The output is not clamped: images in [0, 1] are the training target; clamp for display.

    Args:
        width: channel multiplier, as in :class:`VGGEncoder` (use the encoder's).
        level: the encoder layer the decoder inverts, one of :data:`DECODER_LEVELS`.

    Example:
        >>> decoder = VGGDecoder(width=0.25, level="relu3_1")
        >>> decoder(torch.rand(1, decoder.in_channels, 16, 16)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, width: float = 1.0, level: str = "relu4_1") -> None:
        super().__init__()
        _check_width(width)
        if level not in DECODER_LEVELS:
            raise ValueError(f"level must be one of {', '.join(DECODER_LEVELS)}; got {level!r}")
        self.width = float(width)
        self.level = level
        layers: list[nn.Module] = []
        for step in _DECODER:
            if step == "up":
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                continue
            c_in, c_out = step
            c_out = 3 if c_out == 3 else _scaled(c_out, width)
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(_scaled(c_in, width), c_out, 3), nn.ReLU(inplace=True)]
        layers.pop()  # no ReLU after the last conv
        start = {"relu4_1": 0, "relu3_1": 13, "relu2_1": 20, "relu1_1": 27}[level]
        for index in range(start, len(layers)):
            self.add_module(str(index), layers[index])
        self.in_channels = next(m for m in self.children() if isinstance(m, nn.Conv2d)).in_channels
        self.upsamplings = sum(isinstance(m, nn.Upsample) for m in self.children())

    def forward(self, features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Images ``(N, 3, h * 2^u, w * 2^u)`` from features ``(N, in_channels, h, w)`` (``u`` upsamplings).

        ``size``: crop the output to ``(H, W)`` from the top left, for images whose sides the
        encoder's ceil-mode pools rounded up (the extra row / column is at the bottom / right).
        """
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"VGGDecoder(width={self.width:g}, level={self.level!r}) takes features of shape "
                             f"(N, {self.in_channels}, h, w), got {tuple(features.shape)}")
        if _fast_path(features, scale=4**self.upsamplings):
            layers = list(self.children())
            with nnpack.inference(layers) as use_nnpack:
                layout = torch.contiguous_format if use_nnpack else torch.channels_last
                outputs = _fast_layers(layers, features.contiguous(memory_format=layout), use_nnpack=use_nnpack)
                features = deque(outputs, maxlen=1)[0][1].contiguous()  # the last layer's output
        else:
            for layer in self.children():
                features = layer(features)
        if size is not None:
            height, width = size
            if height > features.shape[2] or width > features.shape[3]:
                raise ValueError(f"cannot crop the decoded {tuple(features.shape[2:])} images to the larger size {tuple(size)}")
            features = features[:, :, :height, :width]
        return features

    @classmethod
    def from_published(
        cls, state_dict_or_path: str | Path | Mapping[str, Tensor], level: str | None = None, width: float | None = None
    ) -> VGGDecoder:
        """The decoder with the AdaIN authors' ``decoder.pth`` weights (or a state dict of that layout).

        ``level`` defaults to the one the number of convolutions implies (9: relu4_1, the published
        decoder; 5: relu3_1; 3: relu2_1; 1: relu1_1) and ``width`` to the one the last conv's input
        channels imply (64 x width). Convolutions are matched by order of their indices, so a plain
        ``nn.Sequential`` numbered from 0 loads too; the state dict must have exactly the convolutions
        of that level.

        Raises:
            FileNotFoundError: a path that is no file.
            ValueError: keys that are not a plain ``nn.Sequential``'s, another number of convolutions, wrong shapes.
        """
        name = _source_name(state_dict_or_path)
        entries = _conv_entries(_read(state_dict_or_path), name, " as in decoder.pth")
        counts = " or ".join(f"{n} ({lvl})" for lvl, n in DECODER_LEVELS.items())
        if level is None:
            level = next((lvl for lvl, n in DECODER_LEVELS.items() if n == len(entries)), None)
            if level is None:
                raise ValueError(f"{name} has {len(entries)} convolution weights, expected {counts}")
        elif level not in DECODER_LEVELS:
            raise ValueError(f"level must be one of {', '.join(DECODER_LEVELS)}; got {level!r}")
        elif len(entries) != DECODER_LEVELS[level]:
            raise ValueError(f"{name} has {len(entries)} convolution weights, expected {DECODER_LEVELS[level]} for a "
                             f"decoder from {level} ({counts})")
        if width is None:
            width = _infer_width(entries[-1][1].shape[1], 64, name, "the input of the last conv")
        decoder = cls(width, level)
        convs = [(key, m, f"the decoder's conv {m.in_channels} -> {m.out_channels}")
                 for key, m in decoder._modules.items() if isinstance(m, nn.Conv2d)]
        _load_convs(convs, entries, name)
        return decoder

    def extra_repr(self) -> str:
        return f"width={self.width:g}, level={self.level!r}"
