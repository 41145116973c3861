"""Tests of normapps.norm.activation: every activation method against torch.nn references, its
defining invariant, float64 gradients, and the errors it raises on bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normapps import norm

ATOL = 1e-5
TOL = dict(atol=ATOL, rtol=ATOL)
METHODS = norm.available("activation")
SPATIAL_ONLY = {"in", "lcn", "evonorm_b0", "switchnorm", "bin"}
BATCH_METHODS = {"bn", "ghostbn", "brn", "bgn", "l1bn", "evonorm_b0", "switchnorm", "bin"}
GROUPED = {"gn", "bgn", "evonorm_s0"}


def make(name: str, C: int, **kw) -> nn.Module:
    if name in GROUPED:
        kw.setdefault("groups", 2)
    if name == "ghostbn":
        kw.setdefault("virtual_batch_size", 2)
    return norm.build(name, C, **kw)


def randomize_params(layer: nn.Module) -> None:
    """Non-trivial parameters: weights in [0.5, 1.5], everything else N(0, 1)."""
    with torch.no_grad():
        for pname, p in layer.named_parameters():
            if pname == "weight":
                p.copy_(torch.rand_like(p) + 0.5)
            elif pname == "rho":
                p.copy_(torch.rand_like(p) * 0.8 + 0.1)  # inside (0, 1), away from the clamp's kinks
            elif pname != "eps_param":
                p.copy_(torch.randn_like(p))


def copy_affine(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight.reshape(dst.weight.shape))
        dst.bias.copy_(src.bias.reshape(dst.bias.shape))


def forward_and_grads(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor, params=("weight", "bias")):
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    ps = [getattr(layer, p) for p in params]
    grads = torch.autograd.grad(y, [x, *ps], upstream)
    return y.detach(), grads


def assert_same(a, b):
    """Assert two (output, (grad_input, grad_weight, ...)) pairs are equal to 1e-5."""
    torch.testing.assert_close(a[0], b[0], **TOL)
    for u, v in zip(a[1], b[1]):
        torch.testing.assert_close(u, v.reshape(u.shape), **TOL)


# ====================================================================================================
# 1. equivalence with torch.nn


@pytest.mark.parametrize("shape", [(5, 7, 3, 9), (6, 12), (3, 6, 5, 1), (4, 5, 7)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_equals_torch_batchnorm_over_training_steps_then_eval(shape, momentum):
    C = shape[1]
    ref = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)](C, momentum=momentum)
    ours = norm.build("bn", C, momentum=momentum)
    randomize_params(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for step in range(4):
        x, g = torch.randn(shape) * (1 + step) + 2 * step - 1, torch.randn(shape)
        assert_same(forward_and_grads(ours, x, g), forward_and_grads(ref, x, g))
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
    ours.eval(), ref.eval()
    x, g = torch.randn(shape) * 2, torch.randn(shape)
    assert_same(forward_and_grads(ours, x, g), forward_and_grads(ref, x, g))


def test_bn_loads_batchnorm2d_state_dict_with_identical_keys():
    ref = nn.BatchNorm2d(6)
    randomize_params(ref)
    ref(torch.randn(4, 6, 3, 3) * 3 + 1)
    ours = norm.build("bn", 6)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    assert isinstance(ours, nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("N", [6, 1])
def test_ln_on_vectors_equals_torch_layernorm(N):
    ours, ref = norm.build("ln", 12), nn.LayerNorm(12)
    randomize_params(ref)
    copy_affine(ref, ours)
    x, g = torch.randn(N, 12) * 3 + 1, torch.randn(N, 12)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        assert_same(forward_and_grads(ours, x, g), forward_and_grads(ref, x, g))


@pytest.mark.parametrize("shape", [(5, 7, 3, 9), (3, 6, 5, 1)])
def test_ln_on_images_equals_groupnorm_1_and_layernorm_over_chw_with_channel_affine(shape):
    C = shape[1]
    ours, gn1 = norm.build("ln", C), nn.GroupNorm(1, C)
    randomize_params(gn1)
    copy_affine(gn1, ours)
    x, g = torch.randn(shape) * 2 - 1, torch.randn(shape)
    assert_same(forward_and_grads(ours, x, g), forward_and_grads(gn1, x, g))

    ln = nn.LayerNorm(shape[1:], elementwise_affine=False)
    view = (1, C) + (1,) * (len(shape) - 2)

    class ChannelAffineLN(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(ours.weight.detach().clone())
            self.bias = nn.Parameter(ours.bias.detach().clone())

        def forward(self, x):
            return ln(x) * self.weight.view(view) + self.bias.view(view)

    assert_same(forward_and_grads(ours, x, g), forward_and_grads(ChannelAffineLN(), x, g))


@pytest.mark.parametrize("shape", [(5, 7, 3, 9), (3, 6, 5, 1), (2, 4, 6)])
def test_in_equals_torch_instancenorm_with_affine(shape):
    C = shape[1]
    ref = (nn.InstanceNorm2d if len(shape) == 4 else nn.InstanceNorm1d)(C, affine=True)
    ours = norm.build("in", C)
    randomize_params(ref)
    copy_affine(ref, ours)
    x, g = torch.randn(shape) * 2 + 1, torch.randn(shape)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        assert_same(forward_and_grads(ours, x, g), forward_and_grads(ref, x, g))


@pytest.mark.parametrize("shape,groups", [((5, 12, 3, 9), 4), ((3, 6, 5, 1), 3), ((6, 12), 3), ((2, 7, 3, 3), 7)])
def test_gn_equals_torch_groupnorm(shape, groups):
    C = shape[1]
    ours, ref = norm.build("gn", C, groups=groups), nn.GroupNorm(groups, C)
    randomize_params(ref)
    copy_affine(ref, ours)
    x, g = torch.randn(shape) * 3 + 2, torch.randn(shape)
    assert_same(forward_and_grads(ours, x, g), forward_and_grads(ref, x, g))


@pytest.mark.parametrize("shape", [(5, 7, 3, 9), (3, 6, 5, 1), (6, 12)])
@pytest.mark.parametrize("size", [1, 2, 5])
def test_lrn_equals_torch_local_response_norm(shape, size):
    ours = norm.build("lrn", shape[1], size=size, alpha=0.1, beta=0.6, k=1.5)
    ref = nn.LocalResponseNorm(size, alpha=0.1, beta=0.6, k=1.5)
    x = torch.randn(shape) * 2
    y_ref = ref(x[..., None])[..., 0] if x.dim() == 2 else ref(x)
    torch.testing.assert_close(ours(x), y_ref, **TOL)
    xg = x.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    g = torch.randn(shape)
    (gx,) = torch.autograd.grad(ours(xg), xg, g)
    (gr,) = torch.autograd.grad(ref(xr[..., None])[..., 0] if x.dim() == 2 else ref(xr), xr, g)
    torch.testing.assert_close(gx, gr, **TOL)


@pytest.mark.parametrize("N", [6, 1])
def test_rmsnorm_on_vectors_equals_torch_rmsnorm(N):
    ours, ref = norm.build("rmsnorm", 12, eps=1e-6), nn.RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(12) + 0.5)
        ours.weight.copy_(ref.weight)
    x, g = torch.randn(N, 12) * 3 + 1, torch.randn(N, 12)
    assert_same(forward_and_grads(ours, x, g, ("weight",)), forward_and_grads(ref, x, g, ("weight",)))


@pytest.mark.parametrize("shape", [(5, 7, 3, 9), (3, 6, 5, 1)])
def test_rmsnorm_on_images_matches_float64_formula_over_chw_with_channel_gain(shape):
    C = shape[1]
    ours = norm.build("rmsnorm", C)
    assert ours.bias is None
    randomize_params(ours)
    x = torch.randn(shape) * 2 + 1
    xd = x.double()
    ms = xd.square().mean(dim=(1, 2, 3), keepdim=True)
    ref = xd / (ms + 1e-6).sqrt() * ours.weight.double().view(1, C, 1, 1)
    torch.testing.assert_close(ours(x).double(), ref, **TOL)


# ====================================================================================================
# 2. invariants


def _batch_dims(x):
    return (0,) + tuple(range(2, x.dim()))


@pytest.mark.parametrize("shape", [(8, 6, 4, 5), (10, 6)])
def test_bn_family_output_has_zero_mean_unit_variance_per_channel_at_init(shape):
    x = torch.randn(shape) * 3 + 2
    for name in ("bn", "brn", "l1bn"):
        y = norm.build(name, 6)(x)
        torch.testing.assert_close(y.mean(_batch_dims(x)), torch.zeros(6), atol=1e-5, rtol=0)
        if name != "l1bn":
            torch.testing.assert_close(y.var(_batch_dims(x), correction=0), torch.ones(6), atol=1e-3, rtol=0)


@pytest.mark.parametrize("shape", [(8, 6, 4, 5), (10, 6)])
def test_l1bn_output_has_zero_mean_and_mean_abs_deviation_sqrt_2_over_pi(shape):
    x = torch.randn(shape) * 3 + 2
    y = norm.build("l1bn", 6)(x)
    dims = _batch_dims(x)
    torch.testing.assert_close(y.mean(dims), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.abs().mean(dims), torch.full((6,), 1 / math.sqrt(math.pi / 2)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,dims", [("ln", (1, 2, 3)), ("in", (2, 3)), ("pn", (1,))])
def test_per_sample_standardizers_give_zero_mean_unit_variance_per_partition(name, dims):
    x = torch.randn(4, 6, 5, 3) * 3 + 2
    y = norm.build(name, 6)(x)
    torch.testing.assert_close(y.mean(dims), torch.zeros_like(y.mean(dims)), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dims, correction=0), torch.ones_like(y.mean(dims)), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["gn", "bgn"])
def test_group_standardizers_give_zero_mean_unit_variance_per_group(name):
    x = torch.randn(4, 6, 5, 3) * 3 + 2
    y = norm.build(name, 6, groups=3)(x).view(4, 3, 2, 5, 3)
    dims = (2, 3, 4) if name == "gn" else (0, 2, 3, 4)
    torch.testing.assert_close(y.mean(dims), torch.zeros_like(y.mean(dims)), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dims, correction=0), torch.ones_like(y.mean(dims)), atol=1e-3, rtol=0)


@pytest.mark.parametrize("shape", [(5, 7, 3, 9), (6, 12)])
def test_rmsnorm_output_has_unit_root_mean_square_per_sample(shape):
    x = torch.randn(shape) * 3 + 2
    y = norm.build("rmsnorm", shape[1])(x)
    rms = y.square().flatten(1).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.ones(shape[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("vbs,sizes", [(4, (4, 4, 4)), (4, (4, 3, 3)), (3, (3, 2))])
def test_ghostbn_normalizes_each_virtual_batch_and_updates_running_stats_per_virtual_batch(vbs, sizes):
    layer = norm.build("ghostbn", 5, virtual_batch_size=vbs)
    ref = nn.BatchNorm2d(5)
    x = torch.randn(sum(sizes), 5, 3, 3) * 2 + 1
    y = layer(x)
    for chunk_y, chunk_x in zip(y.split(sizes), x.split(sizes)):
        torch.testing.assert_close(chunk_y.mean((0, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
        torch.testing.assert_close(chunk_y.var((0, 2, 3), correction=0), torch.ones(5), atol=1e-3, rtol=0)
        torch.testing.assert_close(chunk_y, ref(chunk_x), **TOL)
    torch.testing.assert_close(layer.running_mean, ref.running_mean, **TOL)
    torch.testing.assert_close(layer.running_var, ref.running_var, **TOL)
    assert int(layer.num_batches_tracked) == len(sizes)
    layer.eval(), ref.eval()
    torch.testing.assert_close(layer(x), ref(x), **TOL)


def test_ghostbn_with_batch_not_larger_than_virtual_batch_is_bn():
    layer, ref = norm.build("ghostbn", 5, virtual_batch_size=8), nn.BatchNorm1d(5)
    x = torch.randn(8, 5) * 2
    torch.testing.assert_close(layer(x), ref(x), **TOL)
    torch.testing.assert_close(layer.running_var, ref.running_var, **TOL)


def test_brn_equals_bn_at_step_zero_in_training():
    brn, bn = norm.build("brn", 6, warmup_steps=0, ramp_steps=1), nn.BatchNorm2d(6)
    randomize_params(bn)
    copy_affine(bn, brn)
    x, g = torch.randn(5, 6, 3, 4) * 3 + 2, torch.randn(5, 6, 3, 4)
    assert_same(forward_and_grads(brn, x, g), forward_and_grads(bn, x, g))
    torch.testing.assert_close(brn.running_mean, bn.running_mean, **TOL)
    torch.testing.assert_close(brn.running_var, bn.running_var, **TOL)


def test_brn_during_warmup_equals_bn():
    brn, bn = norm.build("brn", 6, warmup_steps=5), nn.BatchNorm1d(6)
    for _ in range(5):
        x = torch.randn(8, 6) * 3 + 2
        torch.testing.assert_close(brn(x), bn(x), **TOL)
    assert brn.limits() == (1.0, 0.0)


def test_brn_applies_clipped_r_and_d_once_active_and_running_stats_still_follow_bn():
    brn = norm.build("brn", 4, rmax=2.0, dmax=1.0, warmup_steps=0, ramp_steps=1)
    randomize_params(brn)
    brn(torch.randn(8, 4, 2, 2))  # step 0 -> 1: the ramp is complete from now on
    assert brn.limits() == (2.0, 1.0)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.0, 3.0, -0.5, 0.2]))
        brn.running_var.copy_(torch.tensor([1.0, 1.0, 16.0, 0.04]))
    rm, rv = brn.running_mean.clone(), brn.running_var.clone()
    x = torch.randn(8, 4, 2, 2)
    y = brn(x)
    xd = x.double()
    var_b, mean_b = torch.var_mean(xd, dim=(0, 2, 3), correction=0)
    sigma = (rv.double() + 1e-5).sqrt()
    r = ((var_b + 1e-5).sqrt() / sigma).clamp(0.5, 2.0)
    d = ((mean_b - rm.double()) / sigma).clamp(-1.0, 1.0)
    assert (r != 1).any() and (d != 0).any()
    c = lambda t: t.view(1, 4, 1, 1)  # noqa: E731
    xhat = (xd - c(mean_b)) / c((var_b + 1e-5).sqrt())
    ref = c(brn.weight.double()) * (xhat * c(r) + c(d)) + c(brn.bias.double())
    torch.testing.assert_close(y.double(), ref, **TOL)
    bn_out = F.batch_norm(x, None, None, brn.weight, brn.bias, True, 0.0, 1e-5)
    assert not torch.allclose(y, bn_out, atol=1e-3)
    n = 8 * 4
    torch.testing.assert_close(brn.running_mean.double(), 0.9 * rm.double() + 0.1 * mean_b, **TOL)
    torch.testing.assert_close(brn.running_var.double(), 0.9 * rv.double() + 0.1 * var_b * n / (n - 1), **TOL)


def test_brn_r_and_d_carry_no_gradient():
    """The paper treats r and d as constants in backprop: the gradient equals that of BN with
    weight gamma*r and bias gamma*d + beta (fixed tensors)."""
    brn = norm.build("brn", 3, warmup_steps=0, ramp_steps=1)
    brn(torch.randn(6, 3))
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.5, -0.5, 0.0]))
        brn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    x = torch.randn(6, 3) * 1.5
    var_b, mean_b = torch.var_mean(x, dim=0, correction=0)
    sigma = (brn.running_var + 1e-5).sqrt()
    r = ((var_b + 1e-5).sqrt() / sigma).clamp(1 / 3, 3)
    d = ((mean_b - brn.running_mean) / sigma).clamp(-5, 5)
    g = torch.randn(6, 3)
    xa = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(brn(xa), xa, g)
    xb = x.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(F.batch_norm(xb, None, None, r, d, True, 0.0, 1e-5), xb, g)
    torch.testing.assert_close(ga, gb, **TOL)


def _set_logits(layer, which: int):
    logits = torch.zeros(3)
    logits[which] = 50.0
    with torch.no_grad():
        layer.mean_weight.copy_(logits), layer.var_weight.copy_(logits)


@pytest.mark.parametrize("kind,which", [("in", 0), ("ln", 1)])
def test_switchnorm_with_one_hot_weights_equals_in_or_ln_in_train_and_eval(kind, which):
    sn, ref = norm.build("switchnorm", 6), norm.build(kind, 6)
    randomize_params(ref)
    copy_affine(ref, sn)
    _set_logits(sn, which)
    x = torch.randn(4, 6, 5, 3) * 2 + 1
    torch.testing.assert_close(sn(x), ref(x), **TOL)
    sn.eval(), ref.eval()
    torch.testing.assert_close(sn(x), ref(x), **TOL)


def test_switchnorm_with_one_hot_bn_weights_equals_bn_in_train_and_eval():
    sn, bn = norm.build("switchnorm", 6), nn.BatchNorm2d(6)
    randomize_params(bn)
    copy_affine(bn, sn)
    _set_logits(sn, 2)
    for step in range(3):
        x = torch.randn(4, 6, 5, 3) * (step + 1) + step
        torch.testing.assert_close(sn(x), bn(x), **TOL)
    torch.testing.assert_close(sn.running_mean, bn.running_mean, **TOL)
    torch.testing.assert_close(sn.running_var, bn.running_var, **TOL)
    sn.eval(), bn.eval()
    x = torch.randn(4, 6, 5, 3)
    torch.testing.assert_close(sn(x), bn(x), **TOL)


def test_switchnorm_default_mixes_the_three_moments_equally():
    sn = norm.build("switchnorm", 4)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2 + 1
    sn = sn.double()
    mi, vi = x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True, correction=0)
    ml, vl = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), keepdim=True, correction=0)
    mb, vb = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), keepdim=True, correction=0)
    mean, var = (mi + ml + mb) / 3, (vi + vl + vb) / 3
    torch.testing.assert_close(sn(x), (x - mean) / (var + 1e-5).sqrt(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ["switchnorm", "bin"])
def test_mixed_moment_methods_stay_accurate_for_inputs_with_a_large_mean(name):
    """BN-mode switchnorm / rho=1 BIN must equal BN also when |mean| >> std (e.g. un-centred pixel
    values in the first layer). E[x^2] - E[x]^2 in float32 cancels catastrophically there."""
    layer, bn = norm.build(name, 4), nn.BatchNorm2d(4)
    if name == "switchnorm":
        _set_logits(layer, 2)
    x = torch.randn(8, 4, 6, 6) + 300.0
    torch.testing.assert_close(layer(x), bn(x), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(layer.running_var, bn.running_var, atol=1e-3, rtol=1e-3)


def test_bin_with_rho_one_equals_bn_and_rho_zero_equals_in_train_and_eval():
    b1, b0 = norm.build("bin", 6), norm.build("bin", 6)
    bn, inn = nn.BatchNorm2d(6), norm.build("in", 6)
    for ref, layer, rho in ((bn, b1, 1.0), (inn, b0, 0.0)):
        randomize_params(ref)
        copy_affine(ref, layer)
        with torch.no_grad():
            layer.rho.fill_(rho)
    for step in range(3):
        x = torch.randn(4, 6, 3, 5) * (step + 1) - step
        torch.testing.assert_close(b1(x), bn(x), **TOL)
        torch.testing.assert_close(b0(x), inn(x), **TOL)
    torch.testing.assert_close(b1.running_var, bn.running_var, **TOL)
    for m in (b1, b0, bn, inn):
        m.eval()
    x = torch.randn(4, 6, 3, 5)
    torch.testing.assert_close(b1(x), bn(x), **TOL)
    torch.testing.assert_close(b0(x), inn(x), **TOL)


def test_bin_rho_is_clipped_to_unit_interval():
    a, b = norm.build("bin", 3), norm.build("bin", 3)
    with torch.no_grad():
        a.rho.copy_(torch.tensor([1.7, -0.4, 0.3]))
        b.rho.copy_(torch.tensor([1.0, 0.0, 0.3]))
    x = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("shape", [(4, 6, 3, 5), (5, 6)])
def test_frn_matches_formula_with_tlu(shape):
    layer = norm.build("frn", 6).double()
    randomize_params(layer)
    x = torch.randn(shape, dtype=torch.float64) * 2
    c = lambda t: t.view((1, 6) + (1,) * (len(shape) - 2))  # noqa: E731
    nu2 = x.square().mean(tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x.square()
    ref = torch.maximum(c(layer.weight) * x / (nu2 + 1e-6).sqrt() + c(layer.bias), c(layer.tau))
    torch.testing.assert_close(layer(x), ref, atol=1e-10, rtol=1e-10)
    assert (layer(x) == c(layer.tau).expand_as(x)).any(), "the TLU should clip somewhere"


def test_evonorm_b0_matches_formula_in_training_and_eval():
    layer = norm.build("evonorm_b0", 6).double()
    randomize_params(layer)
    x = torch.randn(4, 6, 3, 5, dtype=torch.float64) * 2 + 0.5
    c = lambda t: t.view(1, 6, 1, 1)  # noqa: E731
    var_b = x.var((0, 2, 3), keepdim=True, correction=0)
    var_i = x.var((2, 3), keepdim=True, correction=0)
    den = torch.maximum((var_b + 1e-5).sqrt(), c(layer.v) * x + (var_i + 1e-5).sqrt())
    torch.testing.assert_close(layer(x), x / den * c(layer.weight) + c(layer.bias), atol=1e-10, rtol=1e-10)
    n = 4 * 3 * 5
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * var_b.flatten() * n / (n - 1), atol=1e-10, rtol=1e-10)
    layer.eval()
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    var_i = x.var((2, 3), keepdim=True, correction=0)
    den = torch.maximum(c(layer.running_var + 1e-5).sqrt(), c(layer.v) * x + (var_i + 1e-5).sqrt())
    torch.testing.assert_close(layer(x), x / den * c(layer.weight) + c(layer.bias), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shape", [(4, 6, 3, 5), (5, 6)])
def test_evonorm_s0_matches_formula(shape):
    layer = norm.build("evonorm_s0", 6, groups=3).double()
    randomize_params(layer)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    c = lambda t: t.view((1, 6) + (1,) * (len(shape) - 2))  # noqa: E731
    xg = x.view((shape[0], 3, 2) + tuple(shape[2:]))
    var_g = xg.var(tuple(range(2, xg.dim())), keepdim=True, correction=0)
    std = (var_g + 1e-5).sqrt().expand_as(xg).reshape(shape)
    ref = x * torch.sigmoid(c(layer.v) * x) / std * c(layer.weight) + c(layer.bias)
    torch.testing.assert_close(layer(x), ref, atol=1e-10, rtol=1e-10)


def test_lcn_of_a_constant_image_is_zero():
    # float32 round-off of x - local_mean (~1 ulp of x) is divided by sqrt(eps): ~1e-4, hence float64 for 0
    x = torch.full((2, 3, 9, 8), 4.2)
    layer = norm.build("lcn", 3)
    torch.testing.assert_close(layer(x), torch.zeros_like(x), atol=1e-3, rtol=0)
    torch.testing.assert_close(layer.double()(x.double()), torch.zeros_like(x.double()), atol=1e-10, rtol=0)


def test_lcn_is_invariant_to_adding_a_constant_and_positive_scaling():
    layer = norm.build("lcn", 3, eps=1e-8).double()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(layer(x + 7.5), y, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(layer(x * 3.0), y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer(x * 0.2 - 1.0), y, atol=1e-6, rtol=1e-6)


def _lcn_reference(x: torch.Tensor, k: int, sigma: float, eps: float) -> torch.Tensor:
    """Jarrett et al.'s LCN written out pixel by pixel: weights w_pq (a normalized Gaussian) over the
    part of the window inside the image, renormalized to sum 1 there; channel mean inside the sums."""
    N, C, H, W = x.shape
    r = k // 2
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma**2))
    w = g[:, None] * g[None, :]

    def window_mean(t):  # t: (N, H, W)
        out = torch.empty_like(t)
        for i in range(H):
            for j in range(W):
                i0, i1, j0, j1 = max(i - r, 0), min(i + r + 1, H), max(j - r, 0), min(j + r + 1, W)
                ww = w[i0 - i + r:i1 - i + r, j0 - j + r:j1 - j + r]
                out[:, i, j] = (t[:, i0:i1, j0:j1] * ww).sum((1, 2)) / ww.sum()
        return out

    v = x - window_mean(x.mean(1))[:, None]
    s = (window_mean(v.square().mean(1)) + eps).sqrt()[:, None]
    c = s.mean((2, 3), keepdim=True)
    return v / torch.maximum(s, c)


@pytest.mark.parametrize("k,sigma", [(3, 1.0), (5, 2.0)])
def test_lcn_matches_pixelwise_jarrett_formula_with_border_renormalization(k, sigma):
    layer = norm.build("lcn", 3, kernel_size=k, sigma=sigma).double()
    randomize_params(layer)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64) * 2 + 1
    ref = _lcn_reference(x, k, sigma, 1e-5) * layer.weight.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), ref, atol=1e-10, rtol=1e-10)


# ---- per-sample independence, eval determinism -------------------------------------------------------


def _shapes(name):
    return [(6, 8, 4, 3)] if name in SPATIAL_ONLY else [(6, 8, 4, 3), (6, 8)]


@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_in_train_and_eval_and_keeps_shape_and_dtype(name):
    for shape in _shapes(name):
        layer = make(name, 8)
        x = torch.randn(shape) * 2 + 1
        for mode in ("train", "eval"):
            getattr(layer, mode)()
            y = layer(x)
            assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all(), (name, shape, mode)
        layer.double()
        assert layer(x.double()).dtype == torch.float64


@pytest.mark.parametrize("name", METHODS)
def test_every_method_backpropagates_to_input_and_all_parameters(name):
    for shape in _shapes(name):
        layer = make(name, 8)
        randomize_params(layer)
        x = (torch.randn(shape) * 2 + 1).requires_grad_(True)
        (layer(x) * torch.randn(shape)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        for pname, p in layer.named_parameters():
            if name == "frn" and pname == "eps_param":
                continue
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, pname)


@pytest.mark.parametrize("name", METHODS)
def test_eval_output_is_deterministic_and_independent_of_the_rest_of_the_batch(name):
    for shape in _shapes(name):
        layer = make(name, 8)
        randomize_params(layer)
        for _ in range(2):
            layer(torch.randn(shape) * 2 + 1)  # move running estimates away from their init
        layer.eval()
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        x = torch.randn(shape)
        y = layer(x)
        torch.testing.assert_close(layer(x), y, atol=0, rtol=0)
        other = torch.cat([x[:2], torch.randn((3,) + shape[1:]) * 5 + 3])
        torch.testing.assert_close(layer(other)[:2], y[:2], **TOL)
        torch.testing.assert_close(layer(x[1:2]), y[1:2], **TOL)
        for k, v in layer.state_dict().items():
            torch.testing.assert_close(v, state[k], atol=0, rtol=0, msg=f"{name}: eval changed {k}")


@pytest.mark.parametrize("name", [n for n in METHODS if n not in BATCH_METHODS])
def test_per_sample_methods_output_is_independent_of_the_batch_in_training(name):
    for shape in _shapes(name):
        layer = make(name, 8)
        randomize_params(layer)
        x = torch.randn(shape)
        y = layer(x)
        other = torch.cat([x[:2], torch.randn((3,) + shape[1:]) * 5 + 3])
        torch.testing.assert_close(layer(other)[:2], y[:2], **TOL)
        torch.testing.assert_close(layer(x[3:4]), y[3:4], **TOL)


@pytest.mark.parametrize("name", sorted(BATCH_METHODS))
def test_batch_methods_use_running_stats_in_eval_not_batch_stats(name):
    layer = make(name, 8)
    x = torch.randn(6, 8, 4, 3) * 3 + 5
    train_out = layer(x)
    layer.eval()
    assert not torch.allclose(layer(x), train_out, atol=1e-2), name


@pytest.mark.parametrize("name", sorted(BATCH_METHODS))
def test_batch_methods_update_running_stats_in_training_only(name):
    layer = make(name, 8)
    buffers = {k: v.clone() for k, v in layer.named_buffers()}
    running = [k for k in buffers if k.startswith("running_")]
    assert running and "num_batches_tracked" in buffers
    x = torch.randn(6, 8, 4, 3) * 3 + 5
    layer.eval()
    layer(x)
    for k, v in layer.named_buffers():
        assert torch.equal(v, buffers[k]), f"{name}: eval changed {k}"
    layer.train()
    layer(x)
    for k in running:
        assert not torch.equal(getattr(layer, k), buffers[k]), f"{name}: training left {k} unchanged"
    assert int(layer.num_batches_tracked) >= 1


@pytest.mark.parametrize("name", sorted(BATCH_METHODS))
def test_reset_running_stats_restores_initial_buffers(name):
    layer = make(name, 8)
    initial = {k: v.clone() for k, v in layer.named_buffers()}
    layer(torch.randn(6, 8, 4, 3) * 3 + 5)
    layer.reset_running_stats()
    for k, v in layer.named_buffers():
        assert torch.equal(v, initial[k]), f"{name}: {k} not reset"


@pytest.mark.parametrize("name", ["ghostbn", "brn"])
def test_bn_variants_load_batchnorm2d_state_dicts(name):
    ref = nn.BatchNorm2d(6)
    randomize_params(ref)
    ref(torch.randn(4, 6, 3, 3) * 3 + 1)
    layer = norm.build(name, 6)
    layer.load_state_dict(ref.state_dict(), strict=True)
    layer.eval(), ref.eval()
    x = torch.randn(3, 6, 4, 4)
    torch.testing.assert_close(layer(x), ref(x), **TOL)


def test_bn_without_running_stats_uses_batch_stats_in_eval_like_torch():
    ours = norm.build("bn", 4, track_running_stats=False).eval()
    ref = nn.BatchNorm2d(4, track_running_stats=False).eval()
    x = torch.randn(5, 4, 3, 3) * 2 + 1
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    with pytest.raises(ValueError, match="more than one value"):
        ours(torch.randn(1, 4))


# ====================================================================================================
# 4. float64 gradcheck


def _gradcheck_layer(layer: nn.Module, x: torch.Tensor) -> None:
    """gradcheck with respect to the input and every parameter (random projections: fast_mode)."""
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters() if p.requires_grad]
    buffers = dict(layer.named_buffers())

    def f(x, *ps):
        return torch.func.functional_call(layer, ({**dict(zip(names, ps)), **buffers},), (x,))

    assert torch.autograd.gradcheck(f, (x.requires_grad_(True), *params), eps=1e-6, atol=1e-5, rtol=1e-4,
                                    fast_mode=True)


GRADCHECK_CASES = [(name, shape) for name in METHODS for shape in ((4, 6, 3, 2), (5, 6))
                   if not (name in SPATIAL_ONLY and len(shape) == 2)]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,shape", GRADCHECK_CASES, ids=[f"{n}-{len(s)}d" for n, s in GRADCHECK_CASES])
def test_gradcheck_float64(name, shape, mode):
    kw = {"momentum": 0.0} if name in BATCH_METHODS else {}
    if name == "brn":
        # r and d are constants in backprop by design (see test_brn_r_and_d_carry_no_gradient), so the
        # numerical Jacobian differs once they are active; gradcheck the warm-up phase (r=1, d=0)
        kw["warmup_steps"] = 10
    if name == "ghostbn":
        kw["virtual_batch_size"] = 3  # 4 or 5 samples -> virtual batches of 2 and 2 / 3 and 2
    layer = make(name, 6, **kw).double()
    randomize_params(layer)
    with torch.no_grad():
        for buf in ("running_mean", "running_var", "running_mad"):
            if getattr(layer, buf, None) is not None:
                getattr(layer, buf).copy_(torch.rand(getattr(layer, buf).shape) + 0.5)
    getattr(layer, mode)()
    x = torch.randn(shape, dtype=torch.float64) * 1.5 + 0.3
    _gradcheck_layer(layer, x)


FUSED = [("frn", {}, (3, 4, 2, 3)), ("frn", {}, (5, 4)), ("frn", {"learnable_eps": True}, (3, 4, 2, 2)),
         ("frn", {"learnable_eps": True}, (5, 4)), ("evonorm_b0", {"momentum": 0.0}, (3, 4, 2, 3)),
         ("evonorm_s0", {"groups": 2}, (3, 4, 2, 3)), ("evonorm_s0", {"groups": 2}, (5, 4)),
         ("lrn", {"size": 3, "alpha": 0.5}, (3, 4, 2, 3)), ("lrn", {"size": 2, "alpha": 0.5, "beta": 0.5}, (5, 4))]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,kw,shape", FUSED, ids=[f"{n}-{'-'.join(k)}-{len(s)}d" for n, k, s in FUSED])
def test_hand_written_backward_full_jacobian_float64(name, kw, shape, mode):
    """The fused autograd functions (FRN, EvoNorm, LRN) against the full numerical Jacobian."""
    layer = norm.build(name, 4, **kw).double()
    randomize_params(layer)
    if name == "evonorm_b0":
        with torch.no_grad():
            layer.v.mul_(0.3)  # both branches of the max occur
            layer.running_var.copy_(torch.rand(4) + 0.5)
    getattr(layer, mode)()
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]
    buffers = dict(layer.named_buffers())

    def f(x, *ps):
        return torch.func.functional_call(layer, ({**dict(zip(names, ps)), **buffers},), (x,))

    x = (torch.randn(shape, dtype=torch.float64) * 1.5 + 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def _check_low_precision(name: str, dtype: torch.dtype, device: str) -> None:
    """A model cast to ``dtype`` (parameters, buffers and input all in ``dtype``), in train and eval:
    the output keeps ``dtype`` and is close to the float32 layer's; then the float32 layer under
    autocast stays close too."""
    for shape in _shapes(name):
        ref = make(name, 8).to(device)
        randomize_params(ref)
        layer = make(name, 8).to(device)
        layer.load_state_dict(ref.state_dict())
        layer.to(dtype)
        auto = make(name, 8).to(device)
        auto.load_state_dict(ref.state_dict())
        for mode in ("train", "eval"):
            for m in (ref, layer, auto):
                getattr(m, mode)()
            x = (torch.randn(shape, device=device) * 2 + 1).to(dtype)
            y32 = ref(x.float())
            y = layer(x)
            assert y.dtype == dtype, (name, shape, mode)
            torch.testing.assert_close(y.float(), y32, atol=0.1, rtol=0.05)
            with torch.autocast(device, dtype=dtype):
                ya = auto(x.float())
            assert torch.isfinite(ya).all()
            torch.testing.assert_close(ya.float(), y32, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_in_bfloat16_keeps_dtype_and_matches_float32(name):
    _check_low_precision(name, torch.bfloat16, "cpu")


# ====================================================================================================
# 5. property tests over shapes and groups


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), groups=st.sampled_from([1, 2, 4]), k=st.integers(1, 3),
       h=st.integers(1, 5), w=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_grouped_methods_over_shapes_and_groups(n, groups, k, h, w, seed):
    torch.manual_seed(seed)
    C = groups * k
    x = torch.randn(n, C, h, w) * 2 + 1
    gn = norm.build("gn", C, groups=groups)
    randomize_params(gn)
    torch.testing.assert_close(gn(x), F.group_norm(x, groups, gn.weight, gn.bias, 1e-5), **TOL)
    for name in ("bgn", "evonorm_s0"):
        layer = norm.build(name, C, groups=groups)
        for mode in ("train", "eval"):
            getattr(layer, mode)()
            y = layer(x)
            assert y.shape == x.shape and torch.isfinite(y).all()
    bgn = norm.build("bgn", C, groups=groups)
    y = bgn(x).view(n, groups, -1).transpose(0, 1).reshape(groups, -1)
    xv = x.double().view(n, groups, -1).transpose(0, 1).reshape(groups, -1)
    var = xv.var(-1, correction=0)
    torch.testing.assert_close(y.mean(-1).double(), torch.zeros(groups, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, correction=0).double(), var / (var + 1e-5), atol=1e-4, rtol=1e-4)


# ====================================================================================================
# 6. errors


@pytest.mark.parametrize("name", sorted(BATCH_METHODS))
def test_batch_statistics_with_one_value_per_channel_in_training_is_refused(name):
    C = 6
    kw = {"groups": C} if name == "bgn" else {}
    layer = make(name, C, **kw)
    x = torch.randn(1, C, 1, 1) if name in SPATIAL_ONLY else torch.randn(1, C)
    with pytest.raises(ValueError, match="more than one value"):
        layer(x)
    layer.eval()
    assert layer(x).shape == x.shape


@pytest.mark.parametrize("name", METHODS)
def test_channel_mismatch_names_expected_and_given_counts_and_layer_name(name):
    layer = make(name, 8)
    x = torch.randn(4, 6, 3, 3)
    with pytest.raises(ValueError, match=r"8 channels.*got 6 channels"):
        layer(x)
    layer.layer_name = "features.3"
    with pytest.raises(ValueError, match=r"'features\.3'"):
        layer(x)


@pytest.mark.parametrize("name", sorted(GROUPED))
def test_groups_that_do_not_divide_channels_name_the_divisors(name):
    with pytest.raises(ValueError, match=r"groups=4 does not divide num_features=6.*\[1, 2, 3, 6\]"):
        norm.build(name, 6, groups=4)


@pytest.mark.parametrize("name", sorted(SPATIAL_ONLY))
def test_vector_input_to_spatial_methods_explains_spatial_dims_are_needed(name):
    layer = make(name, 8)
    layer.layer_name = "head.norm"
    with pytest.raises(ValueError, match=r"'head\.norm'.*spatial.*\(4, 8\)"):
        layer(torch.randn(4, 8))


@pytest.mark.parametrize("name", METHODS)
def test_one_dimensional_input_is_refused_with_its_shape(name):
    with pytest.raises(ValueError, match=r"1-D tensor"):
        make(name, 8)(torch.randn(8))


@pytest.mark.parametrize("name,kw", [("brn", dict(rmax=0.5)), ("brn", dict(dmax=-1.0)),
                                     ("ghostbn", dict(virtual_batch_size=1)), ("lcn", dict(kernel_size=4))])
def test_invalid_hyper_parameters_are_rejected(name, kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        norm.build(name, 8, **kw)


# ====================================================================================================
# 7. accelerator


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", METHODS)
def test_cuda_matches_cpu_in_train_and_eval_with_gradients_and_running_stats(name):
    for shape in _shapes(name):
        cpu = make(name, 8)
        randomize_params(cpu)
        gpu = make(name, 8).cuda()
        gpu.load_state_dict(cpu.state_dict())
        for mode in ("train", "train", "eval"):
            getattr(cpu, mode)(), getattr(gpu, mode)()
            x, g = torch.randn(shape) * 2 + 1, torch.randn(shape)
            xc, xg = x.clone().requires_grad_(True), x.cuda().requires_grad_(True)
            yc, yg = cpu(xc), gpu(xg)
            (yc * g).sum().backward()
            (yg * g.cuda()).sum().backward()
            torch.testing.assert_close(yg.cpu(), yc, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(xg.grad.cpu(), xc.grad, atol=1e-4, rtol=1e-4)
            for (k, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters()):
                torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-3, rtol=1e-3, msg=f"{name}.{k}")
        for k, v in cpu.state_dict().items():
            torch.testing.assert_close(gpu.state_dict()[k].cpu(), v, atol=1e-5, rtol=1e-5, msg=f"{name}.{k}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", METHODS)
def test_cuda_half_precision_keeps_dtype_and_matches_float32(name, dtype):
    _check_low_precision(name, dtype, "cuda")


def test_bin_gate_learns_from_its_initial_value_and_is_clipped_to_the_unit_interval():
    layer = norm.build("bin", 4)
    x = torch.randn(6, 4, 3, 3)
    (layer(x) * torch.randn(6, 4, 3, 3)).sum().backward()
    assert layer.rho.grad is not None and layer.rho.grad.abs().sum() > 0  # rho starts at the bound 1
    with torch.no_grad():
        layer.rho.copy_(torch.tensor([1.5, -0.5, 0.3, 1.0]))
    layer(x)
    torch.testing.assert_close(layer.rho.detach(), torch.tensor([1.0, 0.0, 0.3, 1.0]))


@pytest.mark.parametrize("name", ["frn", "evonorm_b0", "evonorm_s0", "lrn", "lcn"])
def test_hand_written_backward_refuses_a_second_derivative(name):
    layer = norm.build(name, 4, **({"groups": 2} if name == "evonorm_s0" else {}))
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


def test_moments_support_second_derivatives():
    from normapps.norm.functional import moments

    x = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: moments(t, (0, 2, 3)), (x,))
