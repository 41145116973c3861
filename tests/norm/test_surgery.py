"""Tests of normapps.norm.surgery: convert and fold."""

import copy

import pytest
import torch
from bn_helpers import randomize_bn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.norm.framework import Normalize
from normapps.norm.registry import build
from normapps.norm.stats import use_batch_stats
from normapps.norm.surgery import ConversionReport, FoldReport, convert, fold


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Mixed(nn.Module):
    """One layer of each normalization family torch has, plus ours."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(4, 8)
        self.inorm = nn.InstanceNorm2d(8)
        self.ours = build("bn", 8)
        self.head = nn.Linear(8, 6)
        self.ln = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ours(self.inorm(self.gn(self.bn(self.conv(x)))))
        return self.ln(self.head(x.mean((2, 3))))


# --- convert -------------------------------------------------------------------------------------


def test_convert_replaces_every_norm_layer_and_names_it():
    model = randomize_bn(Mixed())
    report = convert(model, "gn", groups=2)
    assert isinstance(report, ConversionReport) and report.model is model and len(report) == 5
    assert [r.name for r in report.replaced] == ["bn", "gn", "inorm", "ours", "ln"]
    assert [r.old_type for r in report.replaced] == [
        "BatchNorm2d",
        "GroupNorm",
        "InstanceNorm2d",
        "BatchNorm",
        "LayerNorm",
    ]
    assert [r.channels for r in report.replaced] == [8, 8, 8, 8, 6]
    assert [r.kept_affine for r in report.replaced] == [True, True, False, True, True]
    assert all(isinstance(getattr(model, n), Normalize) for n in ("bn", "gn", "inorm", "ours", "ln"))
    assert model.ours.layer_name == "ours"
    assert model(torch.randn(2, 3, 5, 5)).shape == (2, 6)
    table = str(report)
    assert "5 normalization layers replaced" in table and "InstanceNorm2d" in table
    weight = model.gn.weight.detach().clone()
    again = convert(model, "bn")  # our Normalize layers are targets too
    assert len(again) == 5 and all(r.old_type == "GroupNorm" and r.kept_affine for r in again.replaced)
    assert torch.equal(model.gn.weight, weight)


def test_convert_keeps_affine_parameters_statistics_device_dtype_and_mode():
    model = randomize_bn(Mixed()).double().eval()
    old = {k: v.clone() for k, v in model.bn.state_dict().items()}
    report = convert(model, "brn")
    row = report.replaced[0]
    assert row.kept_affine and row.kept_stats
    assert type(model.bn).__name__ != "BatchNorm2d" and isinstance(model.bn, _BatchNorm)
    assert model.bn.weight.dtype == torch.float64 and not model.bn.training
    assert same_state(old, {k: v for k, v in model.bn.state_dict().items() if k in old})
    with torch.no_grad():
        out = model(torch.randn(2, 3, 5, 5, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_convert_bn_to_ours_keeps_the_state_dict_loadable_and_eval_outputs_equal():
    torch.manual_seed(0)
    model = randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 9, 2), nn.BatchNorm1d(2)
        )
    ).eval()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 5, 5)
    expected = model(x)
    convert(model, "bn")
    assert all(
        isinstance(m, _BatchNorm) and type(m).__module__.startswith("normapps") for m in (model[1], model[4])
    )
    model.load_state_dict(state)
    torch.testing.assert_close(model(x), expected)


def test_convert_unknown_name_or_bad_arguments_leave_the_model_untouched():
    model = Mixed()
    state = copy.deepcopy(model.state_dict())
    types = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=r"unknown normalization method 'gm'.*'gn'"):
        convert(model, "gm", groups=2)
    with pytest.raises(ValueError, match="unknown normalization method"):
        convert(nn.Linear(2, 2), "no-such-norm")
    with pytest.raises((ValueError, TypeError)):
        convert(model, "gn", groups=5)  # 5 does not divide 6 or 8: fails while building, before installing
    assert [type(m) for m in model.modules()] == types and same_state(state, model.state_dict())


def test_convert_root_norm_layer_returns_the_replacement_in_the_report():
    bn = nn.BatchNorm1d(4)
    report = convert(bn, "gn", groups=2)
    assert report.model is not bn and isinstance(report.model, Normalize)
    assert report.replaced[0].name == "" and "(root)" in str(report)


def test_convert_shared_layer_is_replaced_by_one_shared_layer():
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(4, 4, 1), bn, nn.Conv2d(4, 4, 1), bn)
    report = convert(model, "bn")
    assert len(report) == 1 and model[1] is model[3] and model[1] is not bn


def test_convert_targets_select_the_layers_and_empty_report_for_none():
    model = Mixed()
    report = convert(model, "gn", targets=nn.BatchNorm2d, groups=4)
    assert [r.name for r in report.replaced] == ["bn"] and isinstance(model.gn, nn.GroupNorm)
    report = convert(model, "bn", targets=lambda m: isinstance(m, nn.LayerNorm))
    assert [r.name for r in report.replaced] == ["ln"]
    empty = convert(nn.Sequential(nn.Linear(2, 2)), "bn")
    assert len(empty) == 0 and "0 normalization layers replaced" in str(empty)
    with pytest.raises(TypeError, match="targets"):
        convert(model, "bn", targets="BatchNorm2d")


# --- fold ----------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """Every foldable pair: conv without bias, BN without affine, grouped and depthwise conv,
    Conv1d, Conv3d and Linear -> BatchNorm1d; plus BatchNorms that must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, groups=4)
        self.bn_plain = nn.BatchNorm2d(8, affine=False)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8)
        self.bn_depth = build("bn", 8)
        self.bn_after_relu = nn.BatchNorm2d(8)  # follows a ReLU: stays
        self.conv1d = nn.Conv1d(8, 4, 1)
        self.bn1d = nn.BatchNorm1d(4)
        self.conv3d = nn.Conv3d(1, 2, 1)
        self.bn3d = nn.BatchNorm3d(2)
        self.fc = nn.Linear(2 * 4, 5)
        self.bn_fc = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_depth(self.depthwise(self.bn_plain(self.grouped(self.bn(self.conv(x))))))
        x = self.bn_after_relu(torch.relu(x))
        x = self.bn1d(self.conv1d(x.flatten(2)))  # (N, 4, L)
        x = self.bn3d(self.conv3d(x[:, None, :, :2, None]))  # (N, 2, 4, 2, 1)
        return self.bn_fc(self.fc(x.mean((3, 4)).flatten(1)))


def test_fold_keeps_eval_outputs_of_every_foldable_pair():
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).eval()
    x = torch.randn(3, 3, 9, 9)
    report = fold(model, return_report=True)
    assert isinstance(report, FoldReport) and report.method == "fx"
    assert {f.norm: f.into for f in report.folded} == {
        "bn": "conv",
        "bn_plain": "grouped",
        "bn_depth": "depthwise",
        "bn1d": "conv1d",
        "bn3d": "conv3d",
        "bn_fc": "fc",
    }
    assert list(report.kept) == ["bn_after_relu"] and "relu" in report.kept["bn_after_relu"]
    assert isinstance(report.model.bn, nn.Identity) and report.model.conv.bias is not None
    torch.testing.assert_close(report.model(x), model(x), atol=1e-4, rtol=0)
    assert "6 BatchNorm layers folded, 1 kept" in str(report)


def test_fold_leaves_the_input_model_untouched():
    model = randomize_bn(TinyNet()).train()
    state = copy.deepcopy(model.state_dict())
    folded = fold(model)
    assert isinstance(folded, TinyNet) and not folded.training
    assert all(m.training for m in model.modules()) and same_state(state, model.state_dict())
    assert model.conv.bias is None and isinstance(model.bn, nn.BatchNorm2d)


def test_fold_keeps_bn_whose_producer_output_is_used_twice():
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = randomize_bn(Branch()).eval()
    report = fold(model, return_report=True)
    assert len(report) == 0 and "also used elsewhere" in report.kept["bn"]
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(report.model(x), model(x))


def test_fold_falls_back_to_sequential_pairs_when_tracing_fails():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) if x.sum() > -1e9 else x  # control flow on values

    model = randomize_bn(Untraceable()).eval()
    report = fold(model, return_report=True)
    assert report.method == "sequential"
    assert [(f.norm, f.into) for f in report.folded] == [("body.1", "body.0")]
    assert "body.3" in report.kept
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(report.model(x), model(x), atol=1e-5, rtol=0)


def test_fold_keeps_bn_using_batch_statistics_without_running_statistics_or_with_an_activation():
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.Conv2d(4, 4, 1),
        BatchNormAct2d(4, act_layer=nn.ReLU),
    )
    use_batch_stats(model[:2])
    report = fold(model, return_report=True)
    assert len(report) == 0
    assert "use_batch_stats" in report.kept["1"] and "track_running_stats=False" in report.kept["3"]
    assert "activation" in report.kept["5"]


def test_fold_of_linear_into_batchnorm1d_is_exact_in_float64():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4))).double().eval()
    folded = fold(model)
    assert isinstance(folded[1], nn.Identity) and folded[0].bias.dtype == torch.float64
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), atol=1e-12, rtol=0)


def test_convert_keeps_the_activation_of_timm_norm_act_layers():
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4, act_layer=nn.ReLU)).eval()
    x = torch.randn(2, 3, 5, 5)
    expected = model(x)
    report = convert(model, "bn")
    assert report.replaced[0].new_type == "BatchNorm + ReLU"
    assert isinstance(model[1], nn.Sequential) and isinstance(model[1][1], nn.ReLU)
    torch.testing.assert_close(model(x), expected)
    assert (model(x) >= 0).all()


def test_convert_copies_running_statistics_only_when_the_new_layer_keeps_the_same_ones():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    report = convert(model, "l1bn")  # keeps running_mean and running_mad, not running_var
    assert not report.replaced[0].kept_stats
    assert torch.equal(model[1].running_mean, torch.zeros(4))
    assert torch.equal(model[1].running_mad, torch.ones(4))


def test_convert_handles_our_local_normalizations():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), build("lrn", 4), nn.Conv2d(4, 4, 3), build("lcn", 4))
    report = convert(model, "gn", groups=2)
    assert [row.name for row in report.replaced] == ["1", "3"]
