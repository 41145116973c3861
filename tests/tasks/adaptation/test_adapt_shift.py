"""Tests of normapps.tasks.adaptation.shift: statistics_shift."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.models import SmallCNN
from normapps.norm import LayerStats, capture, recalibrate, use_batch_stats
from normapps.tasks.adaptation import statistics_shift


def batch_norm_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def test_statistics_shift_is_zero_when_the_target_statistics_are_the_source_running_statistics():
    model = SmallCNN(num_classes=5, width=4, in_channels=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    target = {name: LayerStats(model.get_submodule(name).running_mean.double(), model.get_submodule(name).running_var.double(), 50)
              for name in batch_norm_names(model)}
    rows = statistics_shift(model, target)
    assert [row["layer"] for row in rows] == batch_norm_names(model)
    assert [row["channels"] for row in rows] == [model.get_submodule(name).num_features for name in batch_norm_names(model)]
    assert all(row["values_per_channel"] == 50 for row in rows)
    for row in rows:
        assert row["mean_shift"] == 0 and row["log_var_ratio"] == 0 and row["symmetric_kl"] == pytest.approx(0, abs=1e-12)


def test_statistics_shift_after_adabn_on_the_same_data_is_only_the_variance_bias():
    g = torch.Generator().manual_seed(3)
    batches = [torch.rand(16, 3, 8, 8, generator=g) * 2 + 1 for _ in range(3)]
    model = recalibrate(SmallCNN(num_classes=5, width=4, in_channels=3), batches)
    target = capture(use_batch_stats(copy.deepcopy(model)), batches, layers=batch_norm_names(model))
    for row in statistics_shift(model, target):
        ratio = (row["values_per_channel"] - 1) / row["values_per_channel"]  # captured (biased) / running (unbiased) variance
        assert row["mean_shift"] == pytest.approx(0, abs=1e-5)
        assert row["log_var_ratio"] == pytest.approx(math.log(ratio), abs=1e-4)
        assert row["symmetric_kl"] == pytest.approx((ratio + 1 / ratio - 2) / 2, rel=0.05, abs=1e-8)


def test_statistics_shift_of_one_channel_matches_the_closed_form():
    bn = nn.BatchNorm2d(1, eps=0.0).eval()  # running mean 0, running variance 1
    target = {"": LayerStats(torch.tensor([2.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64), 10)}
    (row,) = statistics_shift(bn, target)
    assert row["mean_shift"] == pytest.approx(2.0)
    assert row["log_var_ratio"] == pytest.approx(math.log(4.0))
    # KL(N(0, 1) || N(2, 4)) + KL(N(2, 4) || N(0, 1)) = (1/4 + 4 - 2) / 2 + 2^2 (1 + 1/4) / 2
    assert row["symmetric_kl"] == pytest.approx(1.125 + 2.5)
