"""Tests of normapps.norm.stats: capture, recalibrate (AdaBN / precise BN), use_batch_stats."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normapps.norm.registry import build
from normapps.norm.stats import (
    BatchStatsNorm,
    LayerStats,
    capture,
    iter_inputs,
    recalibrate,
    source_prior,
    use_batch_stats,
)


def shifted_batches(seed: int = 0, shape=(4, 3, 6, 6)) -> list[torch.Tensor]:
    """Three batches with different per-channel means, so pooled and per-batch statistics differ."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g) * scale + shift
        for scale, shift in ((1.0, 0.0), (2.0, 3.0), (0.5, -1.0))
    ]


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance per channel (dimension 1) in float64."""
    dims = [0, *range(2, x.dim())]
    x = x.double()
    return x.mean(dims), x.var(dims, correction=1)


def conv_bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(8, 4, 3),
        build("bn", 4),
        nn.Flatten(),
        nn.Linear(64, 5),
    )


# --- iter_inputs ---------------------------------------------------------------------------------


def test_iter_inputs_accepts_tensors_tuples_dicts_and_dataloaders():
    x = torch.randn(4, 3)
    batches = [x, (x, 1), [x, 2, 3], {"input": x}, {"image": x, "label": 0}, {"x": x}]
    assert all(y is x for y in iter_inputs(batches))
    loader = DataLoader(TensorDataset(torch.randn(10, 3), torch.arange(10)), batch_size=4)
    assert [y.shape[0] for y in iter_inputs(loader)] == [4, 4, 2]


def test_iter_inputs_moves_to_device():
    x = torch.randn(2, 3)
    (y,) = iter_inputs([x], device="meta")
    assert y.device.type == "meta"


def test_iter_inputs_rejects_unknown_batches_naming_what_was_expected():
    with pytest.raises(TypeError, match=r"'input' / 'image' / 'x'.*keys \['data'\]"):
        list(iter_inputs([{"data": torch.zeros(1)}]))
    with pytest.raises(TypeError, match="batch 1"):
        list(iter_inputs([torch.zeros(1), "text"]))
    with pytest.raises(TypeError, match="single tensor"):
        list(iter_inputs(torch.zeros(3, 2)))


# --- capture -------------------------------------------------------------------------------------


def test_capture_equals_statistics_of_concatenated_data():
    batches = shifted_batches()
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 5, 1), nn.GroupNorm(1, 5))
    stats = capture(model, batches)
    assert list(stats) == ["0", "2"]
    data = torch.cat(batches)
    mean, var = channel_stats(data)
    assert stats["0"].mean.dtype == torch.float64 and stats["0"].mean.shape == (3,)
    assert stats["0"].count == data.numel() // 3
    torch.testing.assert_close(stats["0"].mean, mean)
    torch.testing.assert_close(stats["0"].unbiased_var, var)
    torch.testing.assert_close(stats["0"].var, var * (data.numel() // 3 - 1) / (data.numel() // 3))
    with torch.no_grad():
        conv_mean, _ = channel_stats(model[1](model[0](data)))
    assert stats["2"].mean.shape == (5,)
    torch.testing.assert_close(stats["2"].mean, conv_mean)


def test_capture_covers_every_norm_family_and_ours_by_default():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1),
        nn.BatchNorm2d(8),
        nn.InstanceNorm2d(8, affine=True),
        nn.GroupNorm(2, 8),
        build("bn", 8),
        build("gn", 8, groups=4),
        nn.Flatten(2),
        nn.LayerNorm(4),
        nn.LayerNorm((8, 4)),
    )
    stats = capture(model, [torch.randn(2, 3, 2, 2)])
    assert list(stats) == ["1", "2", "3", "4", "5", "7"]  # LayerNorm over 2 dims is not a channel norm
    assert stats["7"].mean.shape == (4,)  # LayerNorm: channels are the last dimension
    assert stats["4"].mean.shape == (8,)


def test_capture_named_layers_and_errors_name_the_problem():
    model = conv_bn_model()
    stats = capture(model, [torch.randn(2, 3, 6, 6)], layers=["1", "4"])
    assert list(stats) == ["1", "4"] and stats["4"].mean.shape == (8,)  # any module: its input
    with pytest.raises(ValueError, match=r"no module named \['bn9'\].*\['1', '5'\]"):
        capture(model, [torch.randn(2, 3, 6, 6)], layers=["bn9"])
    with pytest.raises(ValueError, match="at least one batch"):
        capture(model, [])


def test_capture_in_train_mode_restores_running_statistics_and_mode():
    model = conv_bn_model().train()
    before = copy.deepcopy(model.state_dict())
    capture(model, shifted_batches())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in model.modules())


# --- recalibrate ---------------------------------------------------------------------------------


def torch_cumulative_average(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """torch's own momentum=None running statistics, from reset ones."""
    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for x in batches:
            model(x)
    return model


@pytest.mark.parametrize("bn", [nn.BatchNorm2d(3), build("bn", 3)], ids=["torch", "ours"])
def test_recalibrate_exact_equals_concatenated_data_statistics_and_cumulative_average_does_not(bn):
    batches = shifted_batches()
    model = nn.Sequential(bn, nn.Conv2d(3, 2, 1))
    recalibrate(model, batches)
    mean, var = channel_stats(torch.cat(batches))
    torch.testing.assert_close(bn.running_mean, mean.float())
    torch.testing.assert_close(bn.running_var, var.float())
    cumulative = torch_cumulative_average(model, batches)[0]
    assert not torch.allclose(cumulative.running_var, bn.running_var, rtol=0.05)


def test_recalibrate_exact_first_bn_after_conv_and_dropout_uses_all_data_with_dropout_off():
    model = conv_bn_model()
    batches = shifted_batches()
    recalibrate(model, batches)
    with torch.no_grad():
        mean, var = channel_stats(model[0](torch.cat(batches)))
    torch.testing.assert_close(model[1].running_mean, mean.float())
    torch.testing.assert_close(model[1].running_var, var.float())


def test_recalibrate_restores_modes_and_momentum_and_keeps_weights():
    model = conv_bn_model().train()
    model[1].momentum = None
    model[5].eval()
    weights = {k: v.clone() for k, v in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    recalibrate(model, shifted_batches())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model[1].momentum is None and model[5].momentum == 0.1
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())


def test_recalibrate_counts_batches_and_honours_max_batches():
    model = conv_bn_model()
    model[1].num_batches_tracked.fill_(7)
    batches = shifted_batches()
    recalibrate(model, batches, max_batches=2)
    assert model[1].num_batches_tracked.item() == 9
    mean, _ = channel_stats(model[0](torch.cat(batches[:2])).detach())
    torch.testing.assert_close(model[1].running_mean, mean.float())


@pytest.mark.parametrize("momentum", [0.3, None])
def test_recalibrate_ema_equals_torch_training_updates_from_reset_statistics(momentum):
    batches = shifted_batches()
    model = conv_bn_model()
    reference = copy.deepcopy(model).train()
    reference[3].p = 0.0  # recalibrate keeps dropout off
    for m in (reference[1], reference[5]):
        m.reset_running_stats()
        m.momentum = momentum
    with torch.no_grad():
        for x in batches:
            reference(x)
    recalibrate(model, batches, mode="ema", momentum=momentum)
    for i in (1, 5):
        torch.testing.assert_close(model[i].running_mean, reference[i].running_mean)
        torch.testing.assert_close(model[i].running_var, reference[i].running_var)
        assert model[i].num_batches_tracked.item() == 3


class ViewsItsInput(nn.Module):
    """A model that calls ``view`` on its input, which channels-last tensors refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3 * 6 * 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.view(x.shape[0], -1))


def deeper_model(norm: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), build(norm, 8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2), build(norm, 8), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2),
    )


@pytest.mark.parametrize("norm", ["bn", "ghostbn"])  # torch's kernel fills the buffers / a hook computes the moments
@pytest.mark.parametrize("channels_last", [None, True, False])
def test_recalibrate_exact_is_the_statistics_of_each_layer_input_in_the_pass_in_any_memory_format(norm, channels_last):
    batches = shifted_batches()
    model = deeper_model(norm)
    reference = copy.deepcopy(model).train()
    inputs = {}
    reference[4].register_forward_pre_hook(lambda m, args: inputs.setdefault(len(inputs), args[0].detach().clone()))
    with torch.no_grad():
        for x in batches:
            reference(x)
    recalibrate(model, batches, channels_last=channels_last)
    mean, var = channel_stats(model[0](torch.cat(batches)).detach())
    torch.testing.assert_close(model[1].running_mean, mean.float())
    torch.testing.assert_close(model[1].running_var, var.float())
    mean, var = channel_stats(torch.cat(list(inputs.values())))  # the second layer's inputs, batch-normalized upstream
    torch.testing.assert_close(model[4].running_mean, mean.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[4].running_var, var.float(), rtol=1e-5, atol=1e-5)


def test_recalibrate_falls_back_to_the_input_format_when_the_model_refuses_channels_last():
    batches = shifted_batches()
    model = ViewsItsInput()
    with pytest.raises(RuntimeError, match="view"):  # what a channels-last input does to this model
        model.train()(batches[0].contiguous(memory_format=torch.channels_last))
    model.eval()
    recalibrate(model, batches)
    mean, var = channel_stats(torch.cat(batches).flatten(1))
    torch.testing.assert_close(model.bn.running_mean, mean.float())
    torch.testing.assert_close(model.bn.running_var, var.float())
    assert model.bn.num_batches_tracked.item() == 3  # the refused batch is not counted twice


def test_recalibrate_ema_without_reset_continues_from_the_current_statistics_like_training_mode():
    batches = shifted_batches()
    model = conv_bn_model()
    reference = copy.deepcopy(model).train()
    reference[3].p = 0.0
    with torch.no_grad():
        for x in batches:
            reference(x)  # model.train() and forward passes: the moving average public AdaBN code computes
    recalibrate(model, batches, mode="ema", reset=False)
    for i in (1, 5):
        torch.testing.assert_close(model[i].running_mean, reference[i].running_mean)
        torch.testing.assert_close(model[i].running_var, reference[i].running_var)
        assert model[i].num_batches_tracked.item() == 3


def test_recalibrate_errors_say_what_was_expected():
    model = conv_bn_model()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate(model, [], mode="ema")
    with pytest.raises(ValueError, match=r"'exact', 'ema'"):
        recalibrate(model, shifted_batches(), mode="adabn")
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        recalibrate(nn.Sequential(nn.Conv2d(3, 3, 1), nn.GroupNorm(1, 3)), shifted_batches())
    with pytest.raises(ValueError, match="max_batches"):
        recalibrate(model, shifted_batches(), max_batches=0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_recalibrate_restores_statistics_when_the_forward_pass_fails():
    model = conv_bn_model()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError):
        recalibrate(model, [torch.randn(2, 3, 6, 6), torch.randn(2, 5, 6, 6)], mode="ema")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


class WithUnusedBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_recalibrate_warns_about_layers_never_called_and_keeps_their_statistics():
    model = WithUnusedBranch()
    with pytest.warns(UserWarning, match="unused"):
        recalibrate(model, [torch.randn(4, 3)], mode="ema")
    assert model.unused.num_batches_tracked.item() == 0 and model.used.num_batches_tracked.item() == 1


# --- use_batch_stats -----------------------------------------------------------------------------


def bn_model(bn: nn.Module) -> nn.Sequential:
    torch.manual_seed(1)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    return nn.Sequential(nn.Conv2d(3, 4, 3), bn).eval()


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm2d(4), lambda: build("bn", 4)], ids=["torch", "ours"])
def test_use_batch_stats_prior_0_is_train_mode_and_prior_1_is_eval_mode(make):
    model = bn_model(make())
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        eval_out = model(x)
        train_out = copy.deepcopy(model).train()(x)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    use_batch_stats(model)
    assert isinstance(model[1], BatchStatsNorm) and isinstance(model[1], type(make()))
    torch.testing.assert_close(model(x), train_out)
    use_batch_stats(model, prior=0)
    torch.testing.assert_close(model(x), train_out)
    use_batch_stats(model, prior=1)
    torch.testing.assert_close(model(x), eval_out)
    model.train()(x)
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items())


def test_use_batch_stats_mixes_source_and_batch_statistics():
    model = bn_model(nn.BatchNorm2d(4))
    x = torch.randn(3, 3, 8, 8)
    use_batch_stats(model, prior=source_prior(16, 48))
    h = model[0](x)
    var, mean = torch.var_mean(h, dim=(0, 2, 3), correction=0)
    bn = model[1]
    mu = 0.25 * bn.running_mean + 0.75 * mean
    sigma2 = 0.25 * bn.running_var + 0.75 * var
    expected = (h - mu[:, None, None]) / torch.sqrt(sigma2[:, None, None] + bn.eps) * bn.weight[
        :, None, None
    ] + bn.bias[:, None, None]
    torch.testing.assert_close(model(x), expected)
    assert "prior=0.25" in repr(bn)


@pytest.mark.parametrize("prior", [None, 0.5])
def test_use_batch_stats_gradients_flow_through_batch_statistics(prior):
    model = bn_model(nn.BatchNorm2d(4))
    reference = copy.deepcopy(model).train()
    use_batch_stats(model, prior=prior)
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    model(x).square().sum().backward()
    assert model[1].weight.grad is not None and model[1].bias.grad is not None
    if prior is None:
        x_ref = x.detach().clone().requires_grad_()
        reference(x_ref).square().sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(model[1].weight.grad, reference[1].weight.grad)


def test_use_batch_stats_keeps_state_dict_keys_and_switches_back():
    model = bn_model(nn.BatchNorm2d(4))
    keys = list(model.state_dict())
    params = list(model.parameters())
    x = torch.randn(2, 3, 8, 8)
    eval_out = model(x)
    use_batch_stats(model, prior=0.3)
    assert list(model.state_dict()) == keys and list(model.parameters()) == params
    use_batch_stats(model, enabled=False)
    assert type(model[1]) is nn.BatchNorm2d and not hasattr(model[1], "prior")
    torch.testing.assert_close(model(x), eval_out)


def test_use_batch_stats_on_root_survives_pickle_and_deepcopy():
    bn = use_batch_stats(nn.BatchNorm1d(3), prior=0.5)
    x = torch.randn(4, 3)
    buffer = io.BytesIO()
    torch.save(bn, buffer)
    buffer.seek(0)
    for clone in (torch.load(buffer, weights_only=False), copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))):
        assert isinstance(clone, BatchStatsNorm) and clone.prior == 0.5
        torch.testing.assert_close(clone(x), bn(x))


def test_use_batch_stats_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        use_batch_stats(bn_model(nn.BatchNorm2d(4)), prior=1.5)
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        use_batch_stats(nn.Sequential(nn.GroupNorm(1, 3)))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        use_batch_stats(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)), prior=0.5)
    with pytest.raises(ValueError, match="enabled=False"):
        use_batch_stats(nn.BatchNorm2d(3), prior=0.5, enabled=False)


def test_source_prior_is_n_over_n_plus_batch_size():
    assert source_prior(16, 16) == 0.5
    assert source_prior(0, 8) == 0.0
    with pytest.raises(ValueError, match="batch_size"):
        source_prior(16, 0)
    with pytest.raises(ValueError, match="n_source"):
        source_prior(-1, 4)


def test_layer_stats_unbiased_variance_needs_two_values():
    with pytest.raises(ValueError, match="more than 1 value"):
        _ = LayerStats(torch.zeros(2), torch.zeros(2), 1).unbiased_var


def test_recalibrate_and_use_batch_stats_name_the_statistics_layers_they_leave_alone():
    from normapps import norm

    mixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), norm.build("bgn", 4, groups=2))
    with pytest.warns(UserWarning, match=r"\['3'\]"):
        recalibrate(mixed, [torch.randn(4, 3, 8, 8)])
    with pytest.warns(UserWarning, match=r"\['3'\]"):
        use_batch_stats(mixed)
    only_bgn = nn.Sequential(nn.Conv2d(3, 4, 3), norm.build("bgn", 4, groups=2))
    with pytest.raises(ValueError, match=r"no BatchNorm layer.*\['1'\]"):
        recalibrate(only_bgn, [torch.randn(4, 3, 8, 8)])


@pytest.mark.parametrize("prior", [None, 0.5, 1.0])
def test_use_batch_stats_keeps_the_activation_of_timm_batchnorm_act(prior):
    timm_norm = pytest.importorskip("timm.layers")
    layer = timm_norm.BatchNormAct2d(4, act_layer=nn.ReLU).eval()
    reference = nn.BatchNorm2d(4).eval()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(6, 4, 3, 3)
    use_batch_stats(reference, prior=prior)
    use_batch_stats(layer, prior=prior)
    torch.testing.assert_close(layer(x), torch.relu(reference(x)))


@pytest.mark.parametrize("name", ["dbn", "iternorm", "cdwhiten"])
def test_recalibrate_exact_gives_whitening_layers_the_statistics_of_the_concatenated_data(name):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), build(name, 8, group_size=4)).double()
    batches = [torch.randn(5, 3, 6, 6, dtype=torch.float64) * 2 + 1 for _ in range(3)]
    recalibrate(model, batches)
    layer = model[1]
    with torch.no_grad():
        h = torch.cat([model[0](b) for b in batches])
    hg = h.transpose(0, 1).reshape(2, 4, -1)
    mean = hg.mean(-1, keepdim=True)
    cov = (hg - mean) @ (hg - mean).transpose(-1, -2) / hg.shape[-1] + layer.eps * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_whitening, layer.whitening_matrix(cov))
    assert layer.training and int(layer.num_batches_tracked) == 3  # mode restored, one call per batch
    if name != "iternorm":  # exact whitening: the eval output of all the data has identity covariance
        model.eval()
        with torch.no_grad():
            y = layer(h)
        y = (y - layer.bias.view(1, -1, 1, 1)) / layer.weight.view(1, -1, 1, 1)
        yg = y.transpose(0, 1).reshape(2, 4, -1)
        yc = yg - yg.mean(-1, keepdim=True)
        torch.testing.assert_close(yc @ yc.transpose(-1, -2) / yg.shape[-1], torch.eye(4, dtype=torch.float64).expand(2, 4, 4),
                                   atol=1e-4, rtol=0)


def test_recalibrate_ema_resets_whitening_statistics_and_runs_the_training_update():
    layer = build("dbn", 4, group_size=4)
    layer.running_whitening.mul_(5)
    batches = [torch.randn(16, 4) for _ in range(2)]
    recalibrate(layer, batches, mode="ema", momentum=None)
    reference = build("dbn", 4, group_size=4, momentum=None)
    for b in batches:
        reference(b)
    torch.testing.assert_close(layer.running_whitening, reference.running_whitening)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    assert layer.momentum == 0.1
