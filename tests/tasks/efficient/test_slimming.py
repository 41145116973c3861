"""Network slimming: dataflow groups, threshold, physical pruning equal to masking, bad input, recalibration, files."""

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps import norm
from normapps.models import SmallCNN
from normapps.models.pretrained import Preprocessing
from normapps.models.resnet import SmallResNet
from normapps.tasks import ClassificationTask
from normapps.tasks.efficient import (
    BNSparsity,
    global_threshold,
    init_bn_gamma,
    load_model,
    prunable_groups,
    prune,
    recalibrate_pruned,
    save_model,
    sparsity_penalty,
)


def _randomize(model: nn.Module) -> nn.Module:
    """Spread gamma (both signs), beta and running statistics so that pruning has something to choose."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.weight.uniform_(-1, 1)
                m.bias.uniform_(-1, 1)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def _masked(model: nn.Module, keep: dict[str, list[int]]) -> nn.Module:
    """The original with every removed channel's gamma and beta set to 0."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, kept in keep.items():
            drop = torch.ones(modules[name].num_features, dtype=torch.bool)
            drop[kept] = False
            modules[name].weight[drop] = 0
            modules[name].bias[drop] = 0
    return masked


def _check_equal_to_masked(model: nn.Module, x: torch.Tensor, ratio: float = 0.5):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune(model, ratio, x)
    for key, value in model.state_dict().items():  # the input model is never modified
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), _masked(model, report.keep)(x), atol=1e-5, rtol=1e-5)
    return pruned, report


def test_residual_stream_keeps_its_width_and_inner_channels_are_pruned(one_thread):
    model = _randomize(SmallResNet(width=8, blocks=2))
    pruned, report = _check_equal_to_masked(model, torch.randn(3, 1, 16, 16))
    inner = {f"stages.{s}.{b}.norm1" for s in range(3) for b in range(2)}
    assert set(report.keep) == inner
    assert all("add" in report.skipped[name] for name in report.skipped)
    before, after = dict(model.named_modules()), dict(pruned.named_modules())
    for name, module in before.items():
        if isinstance(module, _BatchNorm) and name not in inner:
            assert after[name].num_features == module.num_features
    assert sum(after[name].num_features for name in inner) < sum(before[name].num_features for name in inner)
    for stage in range(3):
        block = pruned.stages[stage][0]
        assert block.conv1.out_channels == block.norm1.num_features == block.conv2.in_channels
    assert report.params[1] < report.params[0] and report.flops[1] < report.flops[0]


def test_small_cnn_pruning_equals_masking_and_resizes_the_head(one_thread):
    model = _randomize(SmallCNN(width=8))
    pruned, report = _check_equal_to_masked(model, torch.randn(3, 1, 16, 16), ratio=0.4)
    assert set(report.keep) == {"features.1", "features.4", "features.7"}
    assert pruned.head.in_features == len(report.keep["features.7"])
    assert pruned.features[3].in_channels == len(report.keep["features.1"])
    assert "features.7" in report.table() and "params" in report.table()


def test_torchvision_resnet18_pruning_equals_masking(one_thread):
    model = _randomize(torchvision.models.resnet18(num_classes=10))
    _, report = _check_equal_to_masked(model, torch.randn(2, 3, 32, 32))
    assert set(report.keep) == {f"layer{i}.{j}.bn1" for i in range(1, 5) for j in range(2)}
    assert "downsample" in " ".join(report.skipped) and "bn1" in report.skipped


def test_threshold_picks_the_right_number_of_channels():
    model = SmallCNN(width=4)
    gammas = torch.randperm(16).float() + 1  # 4 + 8 + 8 = 20 channels; 16 distinct values, 4 more below
    values = torch.cat([gammas, -torch.tensor([0.1, 0.2, 0.3, 0.4])])[torch.randperm(20)]
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    with torch.no_grad():
        start = 0
        for layer in layers:
            layer.weight.copy_(values[start:start + layer.num_features])
            start += layer.num_features
    for ratio, k in ((0.0, 0), (0.25, 5), (0.5, 10), (0.69, 13)):
        threshold = global_threshold(model, ratio)
        assert int((values.abs() < threshold).sum()) == k
        _, report = prune(model, ratio, torch.randn(2, 1, 16, 16))
        assert report.channels == (20 - k, 20)
    assert global_threshold(model, 1.0) == float("inf")
    with pytest.raises(ValueError, match="ratio"):
        prune(model, 1.0, torch.randn(2, 1, 16, 16))


def test_a_layer_is_never_emptied():
    model = SmallCNN(width=4)
    with torch.no_grad():
        model.features[1].weight.fill_(1e-3)  # every channel of the first layer below every other
        model.features[4].weight.copy_(torch.arange(1.0, 9.0))
    with pytest.warns(UserWarning, match=r"features\.1 \(2 of 4\)"):
        pruned, report = prune(model, 0.3, torch.randn(2, 1, 16, 16), min_channels=2)
    assert pruned.features[1].num_features == 2
    assert next(row for row in report.layers if row.norm == "features.1").clamped


def test_model_without_batch_norm_is_refused():
    for function in (lambda m: prune(m, 0.5, torch.randn(2, 1, 16, 16)), sparsity_penalty, init_bn_gamma):
        with pytest.raises(ValueError, match="BatchNorm"):
            function(SmallCNN(width=4, norm="gn"))


def test_grouped_convolutions_are_not_pruned():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    groups, reasons = prunable_groups(model)
    assert [g.norm for g in groups] == ["7"]
    assert "grouped" in reasons["1"] and "grouped" in reasons["4"]  # the depthwise layer reads, then produces them


def test_sparsity_subgradient_and_penalty():
    model = init_bn_gamma(SmallCNN(width=4), 0.5)
    with torch.no_grad():
        model.features[1].weight[0] = -0.25
    assert sparsity_penalty(model).item() == pytest.approx(0.5 * 19 + 0.25)
    loss = model(torch.randn(4, 1, 16, 16)).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    BNSparsity(strength=0.1).on_before_optimizer_step(None, model, None)
    for name, p in model.named_parameters():
        expected = grads[name] + (0.1 * torch.sign(p.detach()) if name.endswith(("1.weight", "4.weight", "7.weight")) and
                                  "features" in name else 0)
        torch.testing.assert_close(p.grad, expected)


def test_recalibration_after_pruning_gives_full_data_statistics(one_thread):
    model = _randomize(SmallResNet(width=4))
    pruned, _ = prune(model, 0.5, torch.randn(2, 1, 16, 16))
    data = [torch.randn(8, 1, 16, 16) for _ in range(3)]
    expected = norm.capture(norm.use_batch_stats(copy.deepcopy(pruned)), data)
    recalibrate_pruned(pruned, data)
    for name, module in pruned.named_modules():
        if isinstance(module, _BatchNorm):
            torch.testing.assert_close(module.running_mean, expected[name].mean.float())
            torch.testing.assert_close(module.running_var, expected[name].unbiased_var.float())


@pytest.mark.parametrize("folded", [False, True])
def test_saved_models_load_with_weights_only(tmp_path, folded, one_thread):
    hyper_parameters = {"arch": "resnet", "width": 4, "in_channels": 1}
    network = _randomize(ClassificationTask(**hyper_parameters).model)
    pruned, report = prune(network, 0.5, torch.randn(2, 1, 16, 16))
    if folded:
        pruned = norm.fold(pruned)
    preprocessing = Preprocessing(16, (0.3,), (0.2,), "test")
    path = save_model(tmp_path / "m.pt", pruned, hyper_parameters=hyper_parameters, keep=report.keep, folded=folded,
                      preprocessing=preprocessing)
    torch.load(path, weights_only=True)
    loaded = load_model(path)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), pruned.eval()(x))
    assert loaded.keep == report.keep and loaded.folded == folded and loaded.preprocessing == preprocessing
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_model(path, pruned, hyper_parameters=hyper_parameters, keep=report.keep, folded=folded,
                   preprocessing=preprocessing)


def test_file_that_does_not_match_its_architecture_is_refused(tmp_path):
    hyper_parameters = {"width": 4}
    pruned, report = prune(_randomize(ClassificationTask(**hyper_parameters).model), 0.5, torch.randn(2, 1, 16, 16))
    path = save_model(tmp_path / "m.pt", pruned, hyper_parameters=hyper_parameters, keep=report.keep, folded=False,
                      preprocessing=Preprocessing(16, (0.0,), (1.0,), "test"))
    content = torch.load(path, weights_only=True)
    content["hyper_parameters"]["width"] = 8  # another architecture: the kept indices and weights no longer fit
    content["keep"] = {name: [0] for name in content["keep"]}
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not match its architecture"):
        load_model(tmp_path / "other.pt")
    content = torch.load(path, weights_only=True)
    content["state_dict"]["head.weight"] = torch.zeros(10, 99)
    torch.save(content, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): head.weight"):
        load_model(tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="neither"):
        torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
        load_model(tmp_path / "plain.pt")
