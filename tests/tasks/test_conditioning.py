import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from normapps import norm
from normapps.tasks.conditioning import (
    ConditioningConfig,
    batch_per_sample_gradients,
    build_cnn,
    build_mlp,
    layer_input_spectra,
    layer_inputs,
    per_sample_gradients,
    second_moment_spectrum,
    set_population_statistics,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _correlated(n, d, spread=100.0, dtype=torch.float64):
    """Rows with covariance of condition number about ``spread`` (random rotation, log-spaced scales)."""
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=dtype))
    scales = torch.logspace(0, -0.5 * np.log10(spread), d, dtype=dtype)
    return (torch.randn(n, d, dtype=dtype) * scales) @ q.T + 3.0


def _numpy_reference(rows, center, fraction, share):
    x = rows.numpy()
    m = np.cov(x.T, bias=True) if center else x.T @ x / len(x)
    eig = np.sort(np.linalg.eigvalsh(m))[::-1]
    j = int(np.ceil(fraction * len(eig)))
    k = int(np.argmax(np.cumsum(eig) / eig.sum() >= share)) + 1
    return eig / eig[0], eig[0] / eig[-1], eig[0] / eig[j - 1], eig[0] / eig[k - 1]


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize(("fraction", "share"), [(0.5, 0.9), (0.3, 0.99), (1.0, 1.0)])
def test_spectrum_and_condition_numbers_equal_numpy_eigenvalues(center, fraction, share):
    rows = _correlated(200, 7)
    spectrum = second_moment_spectrum(rows, fraction, share, center=center)
    eig, kappa, robust, by_share = _numpy_reference(rows, center, fraction, share)
    assert spectrum.dim == spectrum.rank == 7
    np.testing.assert_allclose(spectrum.eigenvalues, eig, rtol=1e-9)
    assert spectrum.condition == pytest.approx(kappa, rel=1e-9)
    assert spectrum.robust_condition == pytest.approx(robust, rel=1e-9)
    assert spectrum.share_condition == pytest.approx(by_share, rel=1e-9)
    if fraction == share == 1.0:
        assert spectrum.robust_condition == spectrum.share_condition == pytest.approx(spectrum.condition)


def test_median_condition_is_counted_within_the_rank():
    rows = torch.cat([_correlated(100, 4), torch.zeros(100, 4, dtype=torch.float64)], dim=1)
    spectrum = second_moment_spectrum(rows, rank_fraction=0.5)
    assert (spectrum.dim, spectrum.rank) == (8, 4)
    assert spectrum.robust_condition == pytest.approx(1 / spectrum.eigenvalues[1])


def test_condition_number_is_over_the_nonzero_spectrum():
    rows = _correlated(100, 5)
    rows = torch.cat([rows, rows[:, :2].sum(1, keepdim=True)], dim=1)  # an exactly dependent column
    spectrum = second_moment_spectrum(rows, center=True)
    assert (spectrum.dim, spectrum.rank) == (6, 5)
    eig = np.sort(np.linalg.eigvalsh(np.cov(rows.numpy().T, bias=True)))[::-1]
    assert spectrum.condition == pytest.approx(eig[0] / eig[4], rel=1e-6)


def test_layer_inputs_are_the_vectors_each_layer_multiplies():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 1), nn.Flatten(), nn.Linear(4 * 16, 6))
    x = torch.randn(2, 3, 8, 8)
    rows = layer_inputs(model, [x, x[:1]])
    assert list(rows) == ["0", "2", "4"]
    assert rows["0"].shape == (3 * 16, 27) and rows["2"].shape == (3 * 16, 5) and rows["4"].shape == (3, 64)
    out = model[0](x)  # each output position is the weight times its row (rows ordered by sample, then position)
    expected = (rows["0"][:32] @ model[0].weight.flatten(1).T + model[0].bias).reshape(2, 16, 5).permute(0, 2, 1)
    torch.testing.assert_close(out.flatten(2), expected)
    torch.testing.assert_close(rows["4"][:2], model[3](model[2](model[1](out))))


def test_whitened_input_of_a_1x1_conv_has_condition_number_close_to_one():
    torch.manual_seed(1)
    x = _correlated(64 * 4 * 4, 8, spread=100.0, dtype=torch.float32).reshape(64, 4, 4, 8).permute(0, 3, 1, 2)
    whitened = nn.Sequential(norm.build("dbn", 8, group_size=8), nn.Conv2d(8, 3, 1))
    standardized = nn.Sequential(norm.build("bn", 8), nn.Conv2d(8, 3, 1))
    raw = second_moment_spectrum(x.permute(0, 2, 3, 1).reshape(-1, 8), center=True)
    assert raw.condition > 50
    assert layer_input_spectra(whitened, [x])["1"]["covariance"].condition < 1.01
    assert layer_input_spectra(standardized, [x])["1"]["covariance"].condition > 10  # BN leaves correlations
    assert whitened[0].running_whitening.equal(torch.eye(8).unsqueeze(0))  # measured on a copy


def _loop_gradients(model, x, y):
    rows = []
    for xi, yi in zip(x, y):
        loss = F.cross_entropy(model(xi.unsqueeze(0)), yi.unsqueeze(0))
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["none", "bn", "dbn", "iternorm", "ws"])
def test_vmap_per_sample_gradients_equal_a_loop_of_autograd_grad(name):
    x, y = torch.randn(24, 64, dtype=torch.float64), torch.randint(0, 10, (24,))
    model = set_population_statistics(build_mlp(name, [8, 8], group_size=4).double(), x)
    grads = per_sample_gradients(model, x, y)
    assert grads.shape == (24, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(grads, _loop_gradients(model, x, y))


def test_per_sample_gradients_refuse_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        per_sample_gradients(build_mlp("bn", [4], 4), torch.randn(3, 64), torch.zeros(3, dtype=torch.long))


def test_batch_per_sample_gradients_sum_to_the_batch_gradient_and_respect_bn_scale_invariance():
    x, y = torch.randn(16, 64, dtype=torch.float64), torch.randint(0, 10, (16,))
    model = build_mlp("bn", [8], group_size=4).double().train()
    model[1].eps = 1e-30  # (near-)exact scale invariance; torch refuses eps = 0
    grads = batch_per_sample_gradients(model, x, y, batch_size=8)
    for chunk in (slice(0, 8), slice(8, 16)):
        model.zero_grad()
        F.cross_entropy(model(x[chunk]), y[chunk], reduction="sum").backward()
        total = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(grads[chunk].sum(0), total)
    # the loss is invariant to the scale of each unit's weights before BN: every sample's gradient
    # w.r.t. those weights is orthogonal to them
    w = model[0].weight
    per_unit = grads[:, : w.numel()].reshape(16, *w.shape)
    assert (per_unit * w.detach()).sum(-1).abs().max() < 1e-10


def test_set_population_statistics_gives_the_statistics_of_the_data():
    x = _correlated(300, 8, dtype=torch.float32)
    bn, dbn = norm.build("bn", 8), norm.build("dbn", 8, group_size=8)
    for layer in (bn, dbn):
        assert set_population_statistics(layer, x) is layer and not layer.training and layer.momentum == 0.1
    torch.testing.assert_close(bn.running_mean, x.mean(0))
    torch.testing.assert_close(bn.running_var, x.var(0))
    assert second_moment_spectrum(dbn(x).detach(), center=True).condition < 1.01


def test_networks_have_the_norm_and_weight_standardization_asked_for():
    bn = build_cnn("bn", width=4, group_size=4)
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in bn.modules()) == 3
    ws = build_cnn("ws", width=4, group_size=4)
    assert [parametrize.is_parametrized(m, "weight") for m in ws.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == [
        True, True, True, False]
    assert sum(isinstance(m, nn.Identity) for m in build_cnn("none", 4, 4).modules()) == 3
    mlp = build_mlp("dbn", [8, 4], group_size=4)
    assert [type(m).__name__ for m in mlp] == ["Linear", "DecorrelatedBatchNorm", "ReLU", "Linear",
                                              "DecorrelatedBatchNorm", "ReLU", "Linear"]
    assert mlp[0].bias is None and build_mlp("none", [8], 4)[0].bias is not None
    assert mlp[1].group_size == 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"norms": ["bnn"]}, "unknown norm 'bnn'.*Did you mean 'bn'"),
        ({"norms": ["bn", "bn"]}, "must not repeat"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"steps": -1}, "steps must be an int >= 0"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"image_size": 4}, "image_size must be an int >= 8"),
        ({"mlp_hidden": [8, 0]}, "every mlp_hidden width must be a positive int"),
        ({"covariance_samples": 100}, r"covariance_samples \(100\) must be a multiple of batch_size \(64\)"),
        ({"fisher_samples": 64 * 20}, r"fisher_samples \(1280\) exceeds the 1077 samples of the train split"),
        ({"variance_share": 0.0}, r"variance_share must be in \(0, 1\]"),
        ({"rank_fraction": 1.5}, r"rank_fraction must be in \(0, 1\]"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        ConditioningConfig(**changes)
