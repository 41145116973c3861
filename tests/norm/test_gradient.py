"""Tests of normapps.norm.gradient: gradient centralization (GC) and block-normalized gradient (BNG)."""

import copy

import pytest
import torch
from torch import nn

from normapps.norm import gradient as G
from normapps.norm.registry import available, describe


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4),  # BN after ReLU: conv bias has a gradient
        nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.ReLU(), nn.Linear(6, 3),
    ).double()


def _batch(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _backward(model, seed=1):
    x, y = _batch(seed)
    nn.functional.cross_entropy(model(x), y).backward()


def _raw_grads(model, seed=1):
    ref = copy.deepcopy(model)
    ref.zero_grad(set_to_none=True)
    _backward(ref, seed)
    return {n: p.grad.clone() for n, p in ref.named_parameters()}


def _gc_manual(g):
    if g.dim() <= 1:
        return g
    flat = g.reshape(g.shape[0], -1)
    return (flat - flat.sum(1, keepdim=True) / flat.shape[1]).reshape(g.shape)


def _bng_manual(g, scale=1.0, eps=1e-8):
    return scale * g / (g.pow(2).sum().sqrt() + eps)


def test_available_gradient_lists_gc_and_bng_with_taxonomy():
    assert {"gc", "bng"} <= set(available("gradient"))
    assert describe("gc").year == 2020 and "Yong" in describe("gc").paper
    assert describe("bng").year == 2017 and "Yu" in describe("bng").paper


def test_centralized_gradients_have_zero_mean_per_output_filter_and_biases_untouched():
    model = _model()
    raw = _raw_grads(model)
    handle = G.apply(model, "gc")
    _backward(model)
    for name, p in model.named_parameters():
        if p.dim() > 1:  # conv (4,3,3,3) and linear (6,100), (3,6) weights
            means = p.grad.reshape(p.shape[0], -1).mean(1)
            assert torch.allclose(means, torch.zeros_like(means), atol=1e-12), name
            assert not torch.allclose(p.grad, raw[name])
        else:  # biases and BN affine parameters
            assert torch.equal(p.grad, raw[name]), name
    handle.remove()


def test_gc_equals_the_formula_computed_by_hand():
    model = _model()
    raw = _raw_grads(model)
    _backward(model)
    G.normalize_gradients_(model, "gc")
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, _gc_manual(raw[name]), atol=1e-14), name
    g = torch.randn(5, 2, 3, dtype=torch.float64)
    assert torch.allclose(G.GradientCentralization()(g), _gc_manual(g))


def test_bng_gives_unit_norm_gradient_per_tensor_and_scale_sets_the_norm():
    model = _model()
    with G.apply(model, "bng") as handle:
        _backward(model)
    assert not handle.active
    for name, p in model.named_parameters():
        assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0, abs=1e-6), name
    g = torch.randn(7, 3)
    out = G.BlockNormalizedGradient(scale=0.5)(g)
    assert torch.linalg.vector_norm(out).item() == pytest.approx(0.5, rel=1e-5)
    assert torch.allclose(out, _bng_manual(g, 0.5))
    zero = torch.zeros(4)
    assert torch.equal(G.BlockNormalizedGradient()(zero), zero)  # eps: no division by zero
    half = G.BlockNormalizedGradient()(torch.full((1000,), 100.0, dtype=torch.float16))
    assert half.dtype == torch.float16 and torch.isfinite(half).all()  # norm in float32: no overflow


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("name,manual", [("gc", _gc_manual), ("bng", _bng_manual)])
def test_an_optimizer_step_with_the_hook_equals_a_step_on_manually_transformed_gradients(opt, name, manual):
    def make(m):
        if opt == "sgd":
            return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        return torch.optim.Adam(m.parameters(), lr=1e-2)

    hooked, ref = _model(), _model()
    opt_h, opt_r = make(hooked), make(ref)
    handle = G.apply(hooked, name)
    for step in range(2):
        for m, o in ((hooked, opt_h), (ref, opt_r)):
            o.zero_grad()
            _backward(m, seed=step)
        for p in ref.parameters():
            if name == "bng" or p.dim() > 1:
                p.grad = manual(p.grad)
        opt_h.step()
        opt_r.step()
    before = _model()
    for (n, p), q, p0 in zip(hooked.named_parameters(), ref.parameters(), before.parameters()):
        assert torch.allclose(p, q, atol=1e-12), n
        assert not torch.equal(p, p0), n  # the step did change the weights
    handle.remove()


def test_remove_restores_the_plain_gradient():
    model = _model()
    raw = _raw_grads(model)
    handle = G.apply(model, "bng")
    assert handle.active and len(handle.params) == len(list(model.parameters()))
    handle.remove()
    handle.remove()  # idempotent
    _backward(model)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, raw[name]), name


@pytest.mark.parametrize("name,kw", [("gc", {}), ("bng", {"scale": 2.0})])
def test_explicit_function_equals_the_hook(name, kw):
    hooked, explicit = _model(), _model()
    handle = G.apply(hooked, name, **kw)
    _backward(hooked)
    _backward(explicit)
    done = G.normalize_gradients_(explicit, name, **kw)
    assert len(done) == (len(list(explicit.parameters())) if name == "bng" else 3)
    for (n, p), q in zip(hooked.named_parameters(), explicit.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-14), n
    handle.remove()


def test_gradient_accumulation_gc_hook_is_exact_but_bng_needs_the_explicit_function():
    for name, hook_is_exact in (("gc", True), ("bng", False)):
        hooked, explicit = _model(), _model()
        handle = G.apply(hooked, name)
        for seed in (1, 2):  # two micro-batches accumulated into .grad
            _backward(hooked, seed)
            _backward(explicit, seed)
        G.normalize_gradients_(explicit, name)
        w_h, w_e = hooked[4].weight.grad, explicit[4].weight.grad
        assert torch.allclose(w_h, w_e, atol=1e-12) is hook_is_exact, name
        handle.remove()


def test_parameters_without_grad_are_skipped():
    model = _model()
    model[0].weight.requires_grad_(False)  # frozen
    unused = nn.Parameter(torch.randn(3, 3, dtype=torch.float64))  # never reaches the loss
    params = list(model.parameters()) + [unused]
    handle = G.apply(params, "bng")
    assert all(p is not model[0].weight for p in handle.params)
    _backward(model)
    assert model[0].weight.grad is None and unused.grad is None
    handle.remove()
    model.zero_grad(set_to_none=True)
    _backward(model)
    done = G.normalize_gradients_(params, "bng")
    assert len(done) == len(params) - 2
    assert model[0].weight.grad is None and unused.grad is None


def test_selection_by_param_groups_and_custom_select():
    model = _model()
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[4].parameters(), "lr": 0.5}], lr=0.1)
    handle = G.apply(opt.param_groups, "gc")
    assert [p.shape for p in handle.params] == [model[0].weight.shape, model[4].weight.shape]
    handle.remove()
    only_linear = G.apply(model, "bng", select=lambda p: p.dim() == 2)
    assert len(only_linear.params) == 2
    only_linear.remove()
    shared = G.apply([model[6].weight, model[6].weight], "bng")  # duplicates counted once
    assert len(shared.params) == 1
    shared.remove()


def test_unknown_or_wrong_family_names_and_bad_arguments_are_rejected():
    model = _model()
    with pytest.raises(ValueError, match=r"unknown normalization method 'gcc'.*Did you mean 'gc'"):
        G.apply(model, "gcc")
    with pytest.raises(ValueError, match=r"'bn' is a activation method.*gc"):
        G.normalize_gradients_(model, "bn")
    with pytest.raises(TypeError, match="bad arguments for gradient method 'gc'"):
        G.apply(model, "gc", scale=2.0)
    with pytest.raises(ValueError, match="eps must be"):
        G.apply(model, "bng", eps=-1.0)
