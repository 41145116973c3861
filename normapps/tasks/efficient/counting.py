"""Parameter and FLOP counts of a network, with ``torch.utils.flop_counter``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (each shared tensor once); buffers are not counted."""
    return sum(p.numel() for p in model.parameters())


def count(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """``(parameters, FLOPs)`` of ``model`` for one input example of shape ``input_size`` (no batch dimension).

    FLOPs are what :class:`torch.utils.flop_counter.FlopCounterMode` counts for a forward pass in eval
    mode on a batch of one: 2 per multiply-add (FLOPs = 2 x MACs) of convolutions and matrix products;
    normalization, activations, pooling and additions are not counted. A ``Conv2d`` with ``C_in`` inputs,
    ``C_out`` outputs, a ``k x k`` kernel and an ``H_out x W_out`` output counts
    ``2 * C_out * H_out * W_out * C_in * k * k / groups``; a ``Linear`` ``2 * in_features * out_features``.
    The model's parameters, buffers and train/eval modes are unchanged.

    Args:
        model: any network.
        input_size: shape of one example, e.g. ``(1, 16, 16)`` for grey 16x16 images.

    Raises:
        ValueError: if ``input_size`` is empty or has a size < 1.
    """
    size = tuple(int(s) for s in input_size)
    if not size or min(size) < 1:
        raise ValueError(f"input_size must be the positive sizes of one example (no batch dimension), got {tuple(input_size)!r}")
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(torch.zeros((1, *size), device=device, dtype=dtype))
    finally:
        for module, training in modes.items():
            module.training = training
    return count_parameters(model), int(counter.get_total_flops())
