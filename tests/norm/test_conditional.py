"""Tests of normapps.norm.conditional: cbn, cin, adain, spade, smbn (recovery from a condition)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normapps import norm

TOL = dict(atol=1e-5, rtol=1e-5)
C, K = 6, 4  # channels, classes / styles


def build(name: str, **kw) -> nn.Module:
    extra = {"cbn": {"num_classes": K}, "cin": {"num_styles": K}, "adain": {},
             "spade": {"label_channels": 3, "hidden": 8}, "smbn": {"latent_dim": 5, "hidden": 7}}[name]
    return norm.build(name, C, **{**extra, **kw})


def condition(name: str, n: int, dtype=torch.float32):
    if name in ("cbn", "cin"):
        return torch.randint(0, K, (n,))
    if name == "adain":
        return torch.randn(n, C, 3, 5, dtype=dtype) * 2 + 1
    if name == "spade":
        return F.one_hot(torch.randint(0, 3, (n, 4, 4)), 3).permute(0, 3, 1, 2).to(dtype)
    return torch.randn(n, 5, dtype=dtype)


def randomize_embeddings(layer: nn.Module) -> None:
    with torch.no_grad():
        rec = layer.recovery
        if hasattr(rec, "num_embeddings"):
            rec.weight.copy_(torch.rand_like(rec.weight) + 0.5)
            rec.bias.copy_(torch.randn_like(rec.bias))


CONDITIONAL = norm.available("conditional")
SPATIAL_ONLY = {"cin", "adain", "spade"}


def shapes(name):
    return [(5, C, 4, 3)] if name in SPATIAL_ONLY else [(5, C, 4, 3), (5, C)]


# --- formulas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, C, 4, 3), (7, C)])
def test_cbn_with_labels_equals_parameter_free_bn_times_class_gamma_plus_beta(shape):
    layer = build("cbn")
    randomize_embeddings(layer)
    bn = nn.BatchNorm2d(C, affine=False) if len(shape) == 4 else nn.BatchNorm1d(C, affine=False)
    view = (shape[0], C) + (1,) * (len(shape) - 2)
    for step in range(3):
        x, y = torch.randn(shape) * (step + 1) + step, torch.randint(0, K, (shape[0],))
        gamma, beta = layer.recovery.weight[y].view(view), layer.recovery.bias[y].view(view)
        torch.testing.assert_close(layer(x, y), bn(x) * gamma + beta, **TOL)
    torch.testing.assert_close(layer.running_mean, bn.running_mean, **TOL)
    torch.testing.assert_close(layer.running_var, bn.running_var, **TOL)
    layer.eval(), bn.eval()
    x, y = torch.randn(shape), torch.randint(0, K, (shape[0],))
    gamma, beta = layer.recovery.weight[y].view(view), layer.recovery.bias[y].view(view)
    torch.testing.assert_close(layer(x, y), bn(x) * gamma + beta, **TOL)


def test_cbn_one_hot_weights_equal_integer_labels():
    layer = build("cbn")
    randomize_embeddings(layer)
    layer.eval()
    x, y = torch.randn(5, C, 3, 3), torch.randint(0, K, (5,))
    torch.testing.assert_close(layer(x, F.one_hot(y, K).float()), layer(x, y), **TOL)


def test_cbn_single_label_for_the_whole_batch_broadcasts():
    layer = build("cbn")
    randomize_embeddings(layer)
    layer.eval()
    x = torch.randn(5, C, 3, 3)
    expected = layer(x, torch.full((5,), 2))
    for label in (2, torch.tensor(2), torch.tensor([2])):
        torch.testing.assert_close(layer(x, label), expected, **TOL)


def test_cbn_mixing_two_classes_interpolates_gamma_and_beta():
    layer = build("cbn")
    randomize_embeddings(layer)
    layer.eval()
    x = torch.randn(5, C, 3, 3)
    w = torch.tensor([0.25, 0.75, 0.0, 0.0])
    a, b = layer(x, 0), layer(x, 1)
    torch.testing.assert_close(layer(x, w), 0.25 * a + 0.75 * b, **TOL)


def test_cin_with_convex_weights_applies_the_weighted_sum_of_style_gamma_and_beta():
    layer = build("cin")
    randomize_embeddings(layer)
    x = torch.randn(5, C, 4, 3) * 2 + 1
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    gamma = (w[:, None] * layer.recovery.weight).sum(0).view(1, C, 1, 1)
    beta = (w[:, None] * layer.recovery.bias).sum(0).view(1, C, 1, 1)
    x_in = F.instance_norm(x, eps=1e-5)
    torch.testing.assert_close(layer(x, w), x_in * gamma + beta, **TOL)
    # per-sample convex weights, one row per sample
    ws = torch.softmax(torch.randn(5, K), dim=1)
    rows = torch.stack([layer(x[i:i + 1], ws[i]) for i in range(5)]).squeeze(1)
    torch.testing.assert_close(layer(x, ws), rows, **TOL)
    # a pure style index equals its one-hot weight vector
    torch.testing.assert_close(layer(x, 2), layer(x, F.one_hot(torch.tensor(2), K).float()), **TOL)


def test_cin_style_index_equals_in_with_that_styles_affine():
    layer = build("cin")
    randomize_embeddings(layer)
    x = torch.randn(5, C, 4, 3)
    s = torch.tensor([0, 3, 1, 1, 2])
    ref = F.instance_norm(x, eps=1e-5) * layer.recovery.weight[s].view(5, C, 1, 1) + \
        layer.recovery.bias[s].view(5, C, 1, 1)
    torch.testing.assert_close(layer(x, s), ref, **TOL)


@pytest.mark.parametrize("weights", [[0.5, 0.6, 0.0, -0.1], [0.2, 0.2, 0.2, 0.2], [1.5, -0.5, 0.0, 0.0]])
def test_cin_non_convex_weights_raise(weights):
    with pytest.raises(ValueError, match="convex"):
        build("cin")(torch.randn(2, C, 3, 3), torch.tensor(weights))


def test_adain_matches_formula_float64():
    layer = build("adain").double()
    x = torch.randn(5, C, 4, 3, dtype=torch.float64) * 3 + 2
    s = torch.randn(5, C, 6, 2, dtype=torch.float64) * 0.5 - 1
    mu_x, var_x = x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True, correction=0)
    mu_s, var_s = s.mean((2, 3), keepdim=True), s.var((2, 3), keepdim=True, correction=0)
    ref = (var_s + 1e-5).sqrt() * (x - mu_x) / (var_x + 1e-5).sqrt() + mu_s
    torch.testing.assert_close(layer(x, s), ref, atol=1e-10, rtol=1e-10)
    assert not list(layer.parameters())


def test_adain_output_carries_the_style_statistics():
    layer = build("adain")
    x = torch.randn(4, C, 8, 8) * 3 + 2
    s = torch.randn(4, C, 5, 7) * torch.rand(4, C, 1, 1) * 3 + torch.randn(4, C, 1, 1)
    y = layer(x, s)
    torch.testing.assert_close(y.mean((2, 3)), s.mean((2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y.std((2, 3), correction=0), s.std((2, 3), correction=0), atol=1e-3, rtol=1e-3)


def test_adain_single_style_broadcasts_to_the_batch_and_train_equals_eval():
    layer = build("adain")
    x, s = torch.randn(4, C, 5, 5), torch.randn(1, C, 3, 3)
    y = layer(x, s)
    torch.testing.assert_close(y, layer(x, s.expand(4, -1, -1, -1)), **TOL)
    layer.eval()
    torch.testing.assert_close(layer(x, s), y, **TOL)


def test_adain_equals_functional_adaptive_instance_norm():
    from normapps.norm.functional import adaptive_instance_norm
    x, s = torch.randn(3, C, 4, 4), torch.randn(3, C, 2, 5)
    torch.testing.assert_close(build("adain")(x, s), adaptive_instance_norm(x, s), **TOL)


def _zero_spade_convs(layer):
    with torch.no_grad():
        for conv in (layer.recovery.gamma, layer.recovery.beta):
            conv.weight.zero_(), conv.bias.zero_()


def test_spade_with_zero_gamma_beta_convs_equals_parameter_free_bn():
    layer = build("spade")
    _zero_spade_convs(layer)
    bn = nn.BatchNorm2d(C, affine=False)
    for step in range(2):
        x = torch.randn(4, C, 6, 5) * (step + 2) - step
        torch.testing.assert_close(layer(x, condition("spade", 4)), bn(x), **TOL)
    torch.testing.assert_close(layer.running_var, bn.running_var, **TOL)
    layer.eval(), bn.eval()
    x = torch.randn(4, C, 6, 5)
    torch.testing.assert_close(layer(x, condition("spade", 4)), bn(x), **TOL)


def test_spade_modulation_is_x_hat_times_one_plus_gamma_plus_beta():
    layer = build("spade")
    x, seg = torch.randn(3, C, 8, 6), condition("spade", 3)
    rec = layer.recovery
    h = rec.shared(F.interpolate(seg, size=(8, 6), mode="nearest"))
    x_hat = F.batch_norm(x, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(layer(x, seg), x_hat * (1 + rec.gamma(h)) + rec.beta(h), **TOL)


def test_spade_output_depends_on_the_segmentation_map_per_position():
    layer = build("spade")
    layer.eval()
    x = torch.randn(2, C, 4, 4)
    seg_a = condition("spade", 2)
    seg_b = seg_a.clone()
    seg_b[:, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0]) if seg_a[0, 0, 0, 0] == 0 else torch.tensor([0.0, 1.0, 0.0])
    ya, yb = layer(x, seg_a), layer(x, seg_b)
    assert not torch.allclose(ya[..., :2, :2], yb[..., :2, :2])
    torch.testing.assert_close(ya[..., 3:, 3:], yb[..., 3:, 3:])  # outside the 3x3 convs' reach (2 layers)


@pytest.mark.parametrize("shape", [(5, C, 4, 3), (5, C)])
def test_smbn_shape_formula_and_gradients_reach_the_latent_mlp(shape):
    layer = build("smbn")
    x, z = torch.randn(shape).requires_grad_(True), torch.randn(shape[0], 5).requires_grad_(True)
    y = layer(x, z)
    assert y.shape == x.shape
    view = (shape[0], C) + (1,) * (len(shape) - 2)
    rec = layer.recovery
    x_hat = F.batch_norm(x, None, None, training=True, eps=1e-5)
    ref = x_hat * (1 + rec.gamma(z)).view(view) + rec.beta(z).view(view)
    torch.testing.assert_close(y, ref, **TOL)
    (y * torch.randn(shape)).sum().backward()
    assert x.grad is not None and z.grad is not None and z.grad.abs().sum() > 0
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


# --- every conditional method ---------------------------------------------------------------------


@pytest.mark.parametrize("name", CONDITIONAL)
def test_every_conditional_method_runs_in_train_and_eval(name):
    for shape in shapes(name):
        layer = build(name)
        x, c = torch.randn(shape) * 2 + 1, condition(name, shape[0])
        for mode in ("train", "eval"):
            getattr(layer, mode)()
            y = layer(x, c)
            assert y.shape == x.shape and torch.isfinite(y).all(), (name, shape, mode)


@pytest.mark.parametrize("name", CONDITIONAL)
def test_eval_output_of_a_sample_is_independent_of_the_rest_of_the_batch(name):
    for shape in shapes(name):
        layer = build(name)
        layer(torch.randn(shape) * 2 + 1, condition(name, shape[0]))
        layer.eval()
        x, c = torch.randn(shape), condition(name, shape[0])
        y = layer(x, c)
        torch.testing.assert_close(layer(x[:2], c[:2]), y[:2], **TOL)
        torch.testing.assert_close(layer(x, c), y, atol=0, rtol=0)


@pytest.mark.parametrize("name", CONDITIONAL)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_float64(name, mode):
    kw = {"momentum": 0.0} if norm.describe(name).batch_statistics else {}
    layer = build(name, **kw).double()
    randomize_embeddings(layer)
    if hasattr(layer, "running_var"):
        with torch.no_grad():
            layer.running_mean.copy_(torch.randn(C)), layer.running_var.copy_(torch.rand(C) + 0.5)
    getattr(layer, mode)()
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]
    buffers = dict(layer.named_buffers())
    x = (torch.randn(3, C, 3, 2, dtype=torch.float64) * 1.5 + 0.3).requires_grad_(True)
    c = condition(name, 3, torch.float64)
    inputs = [x]
    if c.is_floating_point():
        inputs.append(c.requires_grad_(True))
    if name in ("cbn", "cin"):  # gradient through mixing weights too
        inputs.append(torch.softmax(torch.randn(3, K, dtype=torch.float64), 1).requires_grad_(True))

    def f(x, *rest):
        cond = rest[0] if len(inputs) > 1 else c
        if name in ("cbn", "cin"):
            cond = rest[0]
        ps = rest[len(inputs) - 1:]
        return torch.func.functional_call(layer, ({**dict(zip(names, ps)), **buffers},), (x, cond))

    if name == "spade":  # a one-hot map: gradient w.r.t. the (soft) map is fine away from ReLU kinks
        inputs[1] = inputs[1].detach().add(torch.rand_like(inputs[1]) * 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (*inputs, *params), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONDITIONAL)
def test_missing_condition_raises_and_says_what_is_needed(name):
    layer = build(name)
    with pytest.raises(TypeError, match=r"needs .*call layer\(x, "):
        layer(torch.randn(4, C, 3, 3))


WRONG = {
    "cbn": [torch.randint(0, K, (3,)), torch.randint(0, K, (4, 1)), torch.tensor([0, 1, 2, K]),
            torch.tensor([0, -1, 2, 1]), torch.rand(4, K + 1), torch.rand(3, K), torch.tensor(1.0)],
    "cin": [torch.randint(0, K, (3,)), torch.tensor([0, 1, 2, K]), torch.rand(3, K).softmax(1),
            torch.rand(K, 2).softmax(0)],
    "adain": [torch.randn(4, C + 1, 3, 3), torch.randn(3, C, 3, 3), torch.randn(4, C)],
    "spade": [torch.rand(4, 2, 3, 3), torch.rand(3, 3, 3, 3), torch.rand(4, 3, 3)],
    "smbn": [torch.randn(4, 6), torch.randn(3, 5), torch.randn(4, 5, 1)],
}
WRONG_CASES = [(n, i) for n, conds in WRONG.items() for i in range(len(conds))]


@pytest.mark.parametrize("name,i", WRONG_CASES, ids=[f"{n}-{i}" for n, i in WRONG_CASES])
def test_condition_of_wrong_shape_or_range_raises_a_clear_value_error(name, i):
    layer = build(name)
    cond = WRONG[name][i]
    with pytest.raises(ValueError, match=r"expected|must|lie in"):
        layer(torch.randn(4, C, 3, 3), cond)


@pytest.mark.parametrize("name", ["cin", "adain", "spade"])
def test_vector_input_to_spatial_conditional_methods_is_refused(name):
    with pytest.raises(ValueError, match="spatial|H, W"):
        build(name)(torch.randn(4, C), condition(name, 4))


@pytest.mark.parametrize("name", CONDITIONAL)
def test_channel_mismatch_names_the_layer(name):
    layer = build(name)
    layer.layer_name = "gen.block2.norm"
    with pytest.raises(ValueError, match=r"'gen\.block2\.norm'.*6 channels.*got 5 channels"):
        layer(torch.randn(4, 5, 3, 3), condition(name, 4))


@pytest.mark.parametrize("name", ["cbn", "spade", "smbn"])
def test_batch_conditional_methods_refuse_one_value_per_channel_in_training(name):
    layer = build(name)
    x = torch.randn(1, C, 1, 1) if name == "spade" else torch.randn(1, C)
    with pytest.raises(ValueError, match="more than one value"):
        layer(x, condition(name, 1))


def test_bad_build_arguments_name_the_method():
    with pytest.raises(TypeError, match="'spade'"):
        norm.build("spade", C)
    with pytest.raises(ValueError, match="num_embeddings"):
        norm.build("cbn", C, num_classes=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CONDITIONAL)
def test_cuda_matches_cpu(name):
    for shape in shapes(name):
        cpu = build(name)
        randomize_embeddings(cpu)
        gpu = build(name).cuda()
        gpu.load_state_dict(cpu.state_dict())
        for mode in ("train", "eval"):
            getattr(cpu, mode)(), getattr(gpu, mode)()
            x, c = torch.randn(shape) * 2 + 1, condition(name, shape[0])
            torch.testing.assert_close(gpu(x.cuda(), c.cuda()).cpu(), cpu(x, c), atol=1e-4, rtol=1e-4)
            if name in ("cbn", "cin"):  # python int and CPU label tensors as the condition
                torch.testing.assert_close(gpu(x.cuda(), 1).cpu(), cpu(x, 1), atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(gpu(x.cuda(), c).cpu(), cpu(x, c), atol=1e-4, rtol=1e-4)


def _check_low_precision(name: str, dtype: torch.dtype, device: str) -> None:
    """A model cast to ``dtype`` with a ``dtype`` input keeps the dtype and stays close to float32."""
    for shape in shapes(name):
        ref = build(name).to(device)
        randomize_embeddings(ref)
        layer = build(name).to(device)
        layer.load_state_dict(ref.state_dict())
        layer.to(dtype)
        for mode in ("train", "eval"):
            ref.train(mode == "train"), layer.train(mode == "train")
            x, c = (torch.randn(shape, device=device) * 2 + 1).to(dtype), condition(name, shape[0]).to(device)
            c_low = c.to(dtype) if c.is_floating_point() else c
            y = layer(x, c_low)
            assert y.dtype == dtype, (name, shape, mode)
            torch.testing.assert_close(y.float(), ref(x.float(), c_low.float() if c.is_floating_point() else c),
                                       atol=0.15, rtol=0.05)


@pytest.mark.parametrize("name", CONDITIONAL)
def test_every_conditional_method_in_bfloat16_keeps_dtype_and_matches_float32(name):
    _check_low_precision(name, torch.bfloat16, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", CONDITIONAL)
def test_cuda_half_precision_keeps_dtype_and_matches_float32(name, dtype):
    _check_low_precision(name, dtype, "cuda")
