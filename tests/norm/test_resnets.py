"""convert, fold, capture and recalibrate on real architectures: torchvision's and timm's ResNet-18
(random weights, offline; 32x32 inputs keep the tests fast)."""

import copy

import pytest
import timm
import torch
import torchvision
from bn_helpers import randomize_bn as randomize_bn_shared
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.norm.framework import Normalize
from normapps.norm.stats import capture, recalibrate
from normapps.norm.surgery import convert, fold


def resnet18(source: str) -> nn.Module:
    torch.manual_seed(0)
    if source == "torchvision":
        return torchvision.models.resnet18(weights=None)
    return timm.create_model("resnet18", pretrained=False)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    return randomize_bn_shared(model, seed, mean_scale=0.1, bias_scale=0.1, positive_weight=True)


SOURCES = ["torchvision", "timm"]


@pytest.mark.parametrize("source", SOURCES)
def test_convert_resnet18_to_group_norm(source):
    model = resnet18(source)
    report = convert(model, "gn", groups=8)
    assert len(report) == 20 and not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert all(isinstance(m, Normalize) for m in model.modules() if type(m).__name__ == "GroupNorm")
    assert model.layer1[0].bn1.layer_name == "layer1.0.bn1"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


@pytest.mark.parametrize("source", SOURCES)
def test_convert_resnet18_to_our_bn_loads_its_state_dict_and_keeps_eval_outputs(source):
    model = randomize_bn(resnet18(source)).eval()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    report = convert(model, "bn")
    assert len(report) == 20 and all(r.kept_affine and r.kept_stats for r in report.replaced)
    model.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("source", SOURCES)
def test_fold_resnet18_keeps_eval_outputs(source):
    model = randomize_bn(resnet18(source)).eval()
    x = torch.randn(2, 3, 32, 32)
    report = fold(model, return_report=True)
    assert len(report) == 20 and not report.kept
    assert not any(isinstance(m, _BatchNorm) for m in report.model.modules())
    with torch.no_grad():
        assert (report.model(x) - model(x)).abs().max() < 1e-4


def test_recalibrate_resnet18_on_shifted_data_matches_train_mode_statistics_and_changes_eval_output():
    model = randomize_bn(resnet18("torchvision")).eval()
    torch.manual_seed(1)
    shifted = [torch.randn(2, 3, 32, 32) * 2 + 1 for _ in range(2)]
    with torch.no_grad():
        before = model(shifted[0])
    stats = capture(copy.deepcopy(model).train(), shifted)  # each BN's input when BNs use batch statistics
    # The memory format of capture's pass: with 2 values per channel in layer4, batch statistics turn the
    # rounding differences of channels-last convolution kernels into large ones (tests/norm/test_stats.py
    # checks the channels-last pass on a shallow network).
    recalibrate(model, shifted, channels_last=False)
    assert not model.training
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            torch.testing.assert_close(m.running_mean, stats[name].mean.float(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(m.running_var, stats[name].unbiased_var.float(), rtol=1e-4, atol=1e-5)
    outputs = {}
    model.bn1.register_forward_hook(
        lambda module, args, out: outputs.update(bn1=out.clone())
    )  # before the in-place ReLU
    with torch.no_grad():
        after = model(torch.cat(shifted))
    assert not torch.allclose(after[:2], before)
    # bn1 now standardizes the shifted data with its pooled statistics: output mean = beta
    torch.testing.assert_close(outputs["bn1"].mean((0, 2, 3)), model.bn1.bias.detach(), atol=1e-4, rtol=0)
