"""Tests of normapps.norm.weight: weight normalization methods as parametrizations."""

import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from normapps.norm import weight as W
from normapps.norm.registry import available, build, describe

NAMES = ["wn", "cwn", "ws", "own", "oni", "spectral"]


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _x():
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _gram_err(w, sizes):
    err = 0.0
    for z in torch.split(w.flatten(1), sizes, dim=0):
        err = max(err, (z @ z.t() - torch.eye(z.shape[0])).abs().max().item())
    return err


def test_the_six_weight_methods_are_registered_in_the_weight_family():
    assert set(NAMES) <= set(available("weight"))
    assert all(describe(n).family == "weight" for n in NAMES)


def test_wn_splits_direction_and_magnitude_rows_have_norm_g_and_g_scales_rows():
    lin = W.apply(nn.Linear(5, 4), "wn")
    g = lin.parametrizations.weight.original0
    assert torch.allclose(lin.weight.norm(dim=1), g, atol=1e-6)
    before = lin.weight.detach().clone()
    with torch.no_grad():
        g[1] *= 3.0
    assert torch.allclose(lin.weight[1], 3.0 * before[1], atol=1e-6)
    assert torch.allclose(lin.weight[0], before[0])


@pytest.mark.parametrize("name", ["wn", "spectral"])
def test_wn_keeps_the_model_function_and_spectral_only_rescales(name):
    net = _net()
    x = _x()
    ref = net(x)
    W.apply(net, name)
    if name == "wn":
        assert torch.allclose(net(x), ref, atol=1e-5)
    else:  # direction unchanged
        lin = net[3]
        cos = nn.functional.cosine_similarity(lin.weight.flatten(), lin.parametrizations.weight.original.flatten(), 0)
        assert cos.item() == pytest.approx(1.0, abs=1e-5)


def test_cwn_rows_are_zero_mean_and_unit_norm_with_optional_gain():
    conv = W.apply(nn.Conv2d(3, 6, 3), "cwn")
    rows = conv.weight.flatten(1)
    assert torch.allclose(rows.mean(1), torch.zeros(6), atol=1e-6)
    assert torch.allclose(rows.norm(dim=1), torch.ones(6), atol=1e-5)
    lin = W.apply(nn.Linear(5, 4), "cwn", gain=True)
    gain = lin.parametrizations.weight[0].gain
    with torch.no_grad():
        gain.fill_(2.0)
    assert torch.allclose(lin.weight.norm(dim=1), torch.full((4,), 2.0), atol=1e-5)


def test_ws_filters_have_zero_mean_and_unit_variance():
    conv = W.apply(nn.Conv2d(3, 8, 3), "ws")
    var, mean = torch.var_mean(conv.weight.flatten(1), dim=1, correction=0)
    assert torch.allclose(mean, torch.zeros(8), atol=1e-6)
    assert torch.allclose(var, torch.ones(8), atol=3e-3)  # eps=1e-5 against var(weight) ~ 1e-2
    exact = W.apply(nn.Conv2d(3, 8, 3), "ws", eps=0.0)
    var = exact.weight.flatten(1).var(dim=1, correction=0)
    assert torch.allclose(var, torch.ones(8), atol=1e-5)


@pytest.mark.parametrize("kw,sizes", [({}, [6]), ({"groups": 2}, [3, 3]), ({"group_size": 4}, [4, 2])])
def test_own_rows_are_orthonormal_per_group(kw, sizes):
    torch.manual_seed(0)
    conv = W.apply(nn.Conv2d(3, 6, 3), "own", **kw)  # fat groups: 6 rows x 27 columns
    assert _gram_err(conv.weight.double(), sizes) < 1e-3
    rows = conv.weight.flatten(1)
    assert torch.allclose(rows.mean(1), torch.zeros(6), atol=1e-5)  # centred


def test_own_square_group_without_centring_is_orthogonal_and_tall_group_has_orthonormal_columns():
    torch.manual_seed(0)
    sq = W.apply(nn.Linear(5, 5), "own", center=False)
    assert _gram_err(sq.weight, [5]) < 1e-3
    tall = W.apply(nn.Linear(4, 8), "own", center=False)  # 8 rows > 4 columns: columns orthonormal
    w = tall.weight
    assert (w.t() @ w - torch.eye(4)).abs().max().item() < 1e-3
    centred = W.apply(nn.Linear(5, 5), "own")  # square + centred: rank 4, W^T W = I - 11^T/5
    w = centred.weight
    proj = torch.eye(5) - torch.full((5, 5), 0.2)
    assert (w.t() @ w - proj).abs().max().item() < 1e-3


def test_oni_matches_the_papers_uncoupled_iteration():
    torch.manual_seed(0)
    v = torch.randn(6, 20, dtype=torch.float64)
    m = W.apply(nn.Linear(20, 6).double(), "oni", T=4)
    with torch.no_grad():
        m.parametrizations.weight.original.copy_(v)
    z = v - v.mean(1, keepdim=True)
    z = z / z.norm()
    s, b = z @ z.t(), torch.eye(6, dtype=torch.float64)
    for _ in range(4):
        b = 1.5 * b - 0.5 * b @ b @ b @ s
    assert torch.allclose(m.weight, b @ z, atol=1e-10)


def test_oni_rows_approach_orthonormal_and_error_shrinks_as_T_grows():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    errs = []
    for T in (1, 5, 10):
        m = W.apply(nn.Linear(64, 16), "oni", T=T, groups=2)
        with torch.no_grad():
            m.parametrizations.weight.original.copy_(lin.weight)
        errs.append(_gram_err(m.weight, [8, 8]))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.05


def test_oni_square_group_without_centring_converges():
    torch.manual_seed(0)
    m = W.apply(nn.Linear(8, 8), "oni", T=30, center=False)  # stays converged for large T
    with torch.no_grad():
        m.parametrizations.weight.original.copy_(torch.eye(8) + 0.1 * torch.randn(8, 8))
    assert _gram_err(m.weight, [8]) < 1e-3


def test_oni_tall_group_gets_orthonormal_columns():
    torch.manual_seed(0)
    m = W.apply(nn.Linear(4, 8), "oni", T=15, center=False)
    w = m.weight
    assert (w.t() @ w - torch.eye(4)).abs().max().item() < 1e-3


def test_build_by_name_gives_the_parametrization_for_out_features():
    assert isinstance(build("wn", 4), W.WeightNorm)
    assert isinstance(build("oni", 4, groups=2, T=3), W.ONI)
    sn = build("spectral", 4, in_features=6)
    assert sn._u.shape == (4,) and sn._v.shape == (6,)


def test_apply_keeps_dtype():
    lin = W.apply(nn.Linear(5, 4).double(), "cwn", gain=True)
    assert lin.weight.dtype == torch.float64 and lin.parametrizations.weight[0].gain.dtype == torch.float64
    sn = W.apply(nn.Linear(5, 4).double(), "spectral")
    assert sn.parametrizations.weight[0]._u.dtype == torch.float64


def test_spectral_sigma_max_is_close_to_one_after_warm_up_in_train_mode_and_u_frozen_in_eval():
    torch.manual_seed(0)
    lin = W.apply(nn.Linear(20, 10), "spectral")
    sn = lin.parametrizations.weight[0]
    lin.train()
    for _ in range(20):
        lin(torch.randn(1, 20))
    sigma = torch.linalg.matrix_norm(lin.weight.detach(), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=1e-3)
    conv = W.apply(nn.Conv2d(3, 5, 3), "spectral")
    for _ in range(20):
        conv(torch.randn(1, 3, 5, 5))
    assert torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item() == pytest.approx(1.0, abs=1e-3)
    lin.eval()
    u, v = sn._u.clone(), sn._v.clone()
    with torch.no_grad():
        lin.parametrizations.weight.original.mul_(2.0)
    lin(torch.randn(1, 20))
    assert torch.equal(sn._u, u) and torch.equal(sn._v, v)
    lin.train()
    lin(torch.randn(1, 20))
    assert not torch.equal(sn._v, v) or not torch.equal(sn._u, u)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips_into_a_fresh_model(name):
    kw = {"gain": True} if name == "cwn" else {}
    net = W.apply(_net(0), name, **kw)
    net.train()
    net(_x())  # moves spectral's u/v
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    fresh = W.apply(_net(1), name, **kw)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    net.eval()
    fresh.eval()
    assert torch.allclose(net(_x()), fresh(_x()), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_remove_leaves_plain_weights_with_the_same_values(name):
    net = W.apply(_net(), name).eval()
    weights = [net[0].weight.detach().clone(), net[3].weight.detach().clone()]
    out = net(_x())
    W.remove(net)
    assert not parametrize.is_parametrized(net[0]) and not parametrize.is_parametrized(net[3])
    assert isinstance(net[0].weight, nn.Parameter)
    assert torch.allclose(net[0].weight, weights[0]) and torch.allclose(net[3].weight, weights[1])
    assert torch.allclose(net(_x()), out, atol=1e-6)


def test_remove_by_name_only_removes_that_method():
    net = _net()
    W.apply(net[0], "ws")
    W.apply(net[3], "wn")
    W.remove(net, "wn")
    assert parametrize.is_parametrized(net[0], "weight") and not parametrize.is_parametrized(net[3])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_to_the_underlying_parameters(name):
    net = W.apply(_net(), name).train()
    net(_x()).square().sum().backward()
    for mod in (net[0], net[3]):
        params = [p for p in mod.parametrizations.weight.parameters()]
        assert params
        for p in params:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_apply_targets_the_module_itself_and_gives_clear_errors():
    lin = W.apply(nn.Linear(3, 2), "ws")
    assert parametrize.is_parametrized(lin, "weight")
    with pytest.raises(ValueError, match="already parametrized"):
        W.apply(lin, "ws")
    with pytest.raises(ValueError, match="no weight"):
        W.apply(nn.ReLU(), "wn")
    with pytest.raises(ValueError, match="Did you mean"):
        W.apply(nn.Linear(3, 2), "wnn")
    with pytest.raises(ValueError, match="groups"):
        W.apply(nn.Linear(3, 5), "own", groups=2)


def test_apply_include_selects_the_layers():
    net = W.apply(_net(), "wn", include=(nn.Linear,))
    assert not parametrize.is_parametrized(net[0]) and parametrize.is_parametrized(net[3], "weight")
