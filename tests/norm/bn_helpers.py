"""Shared set-up of the surgery and statistics tests."""

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def randomize_bn(model: nn.Module, seed: int = 0, *, mean_scale: float = 0.5, bias_scale: float = 1.0,
                 positive_weight: bool = False) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (small scales and
    positive weights keep deep networks such as ResNet-18 well conditioned)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * mean_scale)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    weight = torch.rand if positive_weight else torch.randn
                    m.weight.copy_(weight(m.num_features, generator=g) + (0.5 if positive_weight else 0.0))
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * bias_scale)
    return model
