"""NNPACK's Winograd convolutions for the CPU inference path of :mod:`normapps.models.vgg`.

PyTorch ships NNPACK (``torch._nnpack_spatial_convolution``), whose fast convolution algorithms
(Winograd F(6x6, 3x3) for 3x3 kernels) do fewer multiplications than oneDNN's direct convolution,
which runs near this kind of CPU's float32 peak already: a VGG conv with 128-512 channels takes
about half the time (``benchmarks/style_speed.py``). Results differ from ``F.conv2d`` by float
rounding of a different order of operations (about 1e-5 relative to the largest output).

Two properties of PyTorch's NNPACK binding decide how it is used:

- it runs on a thread pool of its own, created at its first call with the thread count of that
  moment (:func:`torch.get_num_threads`) and never resized. :func:`pool_threads` makes that first
  call and remembers the count; :func:`usable` is false when the current thread count differs, so
  a thread limit set later (``torch.set_num_threads(1)``) is kept by falling back to oneDNN;
- OpenMP's worker threads, which run every other operation, keep spinning for a while after each
  parallel region and so take the cores from NNPACK's pool (two pools on two cores ran slower than
  oneDNN alone). :func:`inference` therefore runs a whole pass with OpenMP at one thread: the
  convolutions use all of NNPACK's pool, the few other operations (pools, pads, the 3-channel
  convolutions) one core. The thread count is restored afterwards, also on error; other threads
  running torch work at the same time see the lowered count meanwhile.

``NORMAPPS_NNPACK=0`` in the environment, or ``normapps.models.nnpack.ENABLED = False``, switches it
off (oneDNN channels-last convolutions are then used, as on machines without NNPACK).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["ENABLED", "MIN_CHANNELS", "MIN_SHARE", "conv2d", "eligible", "inference", "pool_threads", "share", "usable", "wide"]

#: Whether the VGG inference path may use NNPACK (``NORMAPPS_NNPACK=0`` sets it false at import).
ENABLED = os.environ.get("NORMAPPS_NNPACK", "1").strip().lower() not in ("0", "false", "no", "off")
#: Fewest input and output channels of a convolution run by NNPACK: narrower ones are faster in oneDNN.
MIN_CHANNELS = 64
#: Smallest share of a pass's multiply-adds in NNPACK's convolutions for the pass to use it: the other
#: convolutions then run on one thread, which costs more than NNPACK gains in narrow networks (the
#: width-0.25 VGG of the shipped stylizers has about half its work in convolutions of 64 channels or more).
MIN_SHARE = 0.8

_pool: dict[str, int | None] = {}


def pool_threads() -> int | None:
    """The size of NNPACK's thread pool (created now at the current thread count if it is not yet), or
    None where NNPACK cannot run (not built into this torch, an unsupported CPU, or its first call failed)."""
    if "threads" not in _pool:
        threads = None
        if hasattr(torch, "_nnpack_spatial_convolution") and torch._nnpack_available():
            try:
                torch._nnpack_spatial_convolution(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), None, [0, 0])
                threads = torch.get_num_threads()
            except RuntimeError:
                threads = None
        _pool["threads"] = threads
    return _pool["threads"]


def usable() -> bool:
    """Whether NNPACK runs the convolutions now: enabled, available, and its pool as large as the current thread count."""
    return ENABLED and pool_threads() == torch.get_num_threads()


def eligible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3 convolution (stride 1, no padding, dilation 1, one group) of at
    least :data:`MIN_CHANNELS` input and output channels, which NNPACK runs faster than oneDNN."""
    return (isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward
            and (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) == ((3, 3), (1, 1), (0, 0), (1, 1), 1)
            and conv.padding_mode == "zeros" and wide(conv.in_channels, conv.out_channels))


def wide(in_channels: int, out_channels: int) -> bool:
    """Whether a convolution has enough channels (:data:`MIN_CHANNELS`) to run faster in NNPACK than in oneDNN."""
    return min(in_channels, out_channels) >= MIN_CHANNELS


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias)`` (stride 1, no padding) by NNPACK, for float32 CPU tensors; NCHW output."""
    return torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, [0, 0])


def share(layers: Iterable[nn.Module]) -> float:
    """The share of the multiply-adds of ``layers`` (a sequential stack of convolutions, pools and upsamplings)
    in 3x3 convolutions wide enough for NNPACK (:func:`wide`), each counted at its resolution."""
    scale, eligible_macs, total = 1.0, 0.0, 0.0
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            scale /= 4
        elif isinstance(layer, nn.Upsample):
            scale *= 4
        elif isinstance(layer, nn.Conv2d):
            macs = layer.in_channels * layer.out_channels * math.prod(layer.kernel_size) / layer.groups * scale
            total += macs
            if layer.kernel_size == (3, 3) and layer.groups == 1 and wide(layer.in_channels, layer.out_channels):
                eligible_macs += macs
    return eligible_macs / total if total else 0.0


@contextmanager
def inference(layers: Iterable[nn.Module]) -> Iterator[bool]:
    """Run a pass through ``layers`` that may use NNPACK: yields whether it does (:func:`usable`, and at least
    :data:`MIN_SHARE` of the work in its convolutions, :func:`share`); if so, OpenMP runs at one thread inside
    the block (see the module's docstring) and the thread count is restored on exit."""
    if not (usable() and share(layers) >= MIN_SHARE):
        yield False
        return
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield True
    finally:
        if threads > 1:
            torch.set_num_threads(threads)

