"""Parameter and FLOP counts against hand-computed values."""

import pytest
from torch import nn

from normapps.tasks.efficient import count


def test_tiny_network_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model.train()
    params, flops = count(model, (1, 4, 4))
    assert params == 2 * 9 + 2 * 2 + (4 * 2 * 9 + 4) + (4 * 3 + 3)
    # 2 FLOPs per multiply-add: conv1 2 out x 16 positions x 9 taps, conv2 4 out x 4 positions x 18 taps, linear 4 x 3
    assert flops == 2 * (2 * 16 * 9 + 4 * 4 * 18 + 4 * 3)
    assert model.training and model[1].num_batches_tracked == 0  # modes and statistics untouched


def test_grouped_convolution_counts_its_groups():
    _, flops = count(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), (4, 5, 5))
    assert flops == 2 * 4 * 25 * 9


def test_bad_input_size():
    with pytest.raises(ValueError, match="input_size"):
        count(nn.Linear(2, 2), ())
    with pytest.raises(ValueError, match="input_size"):
        count(nn.Linear(2, 2), (0,))
