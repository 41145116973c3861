"""Tests of normapps.norm.framework: Normalize(partition, operation, recovery) and its native dispatch."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normapps.norm import framework
from normapps.norm.framework import (
    L1,
    RMS,
    Affine,
    Batch,
    BatchGroup,
    Center,
    Group,
    Instance,
    Layer,
    NoRecovery,
    Normalize,
    Position,
    Standardize,
)

ATOL = 1e-5


def randomize_affine(layer: nn.Module) -> None:
    with torch.no_grad():
        if getattr(layer, "weight", None) is not None:
            layer.weight.copy_(torch.rand_like(layer.weight) + 0.5)
        if getattr(layer, "bias", None) is not None:
            layer.bias.copy_(torch.randn_like(layer.bias))


def forward_and_grads(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    params = [p for p in (getattr(layer, "weight", None), getattr(layer, "bias", None)) if p is not None]
    grads = torch.autograd.grad(y, [x, *params], upstream)
    return y.detach(), grads


# --- user-defined compositions ---------------------------------------------------------------------


def test_group_rms_gain_composition_matches_float64_formula():
    C, G = 16, 4
    layer = Normalize(Group(G), RMS(), Affine(bias=False), num_features=C)
    assert layer.bias is None and layer.weight.shape == (C,)
    randomize_affine(layer)
    x = torch.randn(3, C, 5, 7)
    xd = x.double().view(3, G, C // G, 5, 7)
    ms = xd.square().mean(dim=(2, 3, 4), keepdim=True)
    ref = (xd / (ms + 1e-5).sqrt()).view(3, C, 5, 7) * layer.weight.double().view(1, C, 1, 1)
    torch.testing.assert_close(layer(x).double(), ref, atol=ATOL, rtol=ATOL)


def test_group_rms_composition_on_vectors_matches_formula():
    C, G = 12, 3
    layer = Normalize(Group(G), RMS(eps=1e-6), NoRecovery, num_features=C)
    x = torch.randn(5, C)
    xd = x.double().view(5, G, C // G)
    ref = (xd / (xd.square().mean(-1, keepdim=True) + 1e-6).sqrt()).view(5, C)
    torch.testing.assert_close(layer(x).double(), ref, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("shape", [(5, 7, 3, 9), (6, 7), (3, 7, 5, 1)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_standardize_affine_composition_matches_batchnorm_with_running_stats(shape, momentum):
    C = shape[1]
    ours = Normalize(Batch(), Standardize(), Affine(), num_features=C, momentum=momentum)
    ref = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(C, momentum=momentum)
    randomize_affine(ref)
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(shape) * (step + 1) + step
        g = torch.randn(shape)
        (y1, g1), (y2, g2) = forward_and_grads(ours, x, g), forward_and_grads(ref, x, g)
        torch.testing.assert_close(y1, y2, atol=ATOL, rtol=ATOL)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(ours.running_var, ref.running_var, atol=ATOL, rtol=ATOL)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
    ours.eval(), ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=ATOL)


def test_string_shortcuts_build_the_same_layer_as_instances():
    x = torch.randn(4, 6, 3, 3)
    for p_name, p_cls in (("batch", Batch), ("layer", Layer), ("instance", Instance), ("position", Position)):
        for o_name, o_cls in (("standardize", Standardize), ("center", Center), ("rms", RMS), ("l1", L1)):
            a = Normalize(p_name, o_name, Affine(), num_features=6)
            b = Normalize(p_cls(), o_cls(), Affine(), num_features=6)
            assert type(a.partition) is p_cls and type(a.operation) is o_cls
            torch.testing.assert_close(a(x), b(x))


def test_layer_standardize_string_shortcut_equals_layer_norm():
    layer = Normalize("layer", "standardize", Affine(), num_features=10)
    randomize_affine(layer)
    x = torch.randn(4, 10)
    torch.testing.assert_close(layer(x), F.layer_norm(x, (10,), layer.weight, layer.bias, 1e-5))


def test_unknown_string_shortcut_lists_choices():
    with pytest.raises(ValueError, match=r"unknown partition 'batches'.*'batch'"):
        Normalize("batches", "standardize", num_features=4)
    with pytest.raises(ValueError, match=r"unknown operation 'whiten'.*'standardize'"):
        Normalize("batch", "whiten", num_features=4)


def test_non_partition_or_operation_objects_are_rejected():
    with pytest.raises(TypeError, match="partition must be a Partition"):
        Normalize(3, "standardize", num_features=4)
    with pytest.raises(TypeError, match="operation must be an Operation"):
        Normalize("batch", Batch(), num_features=4)
    with pytest.raises(TypeError, match="recovery must be"):
        Normalize("batch", "standardize", "affine", num_features=4)


# --- native dispatch vs the generic path ------------------------------------------------------------


class GenericBatch(Batch):
    pass


class GenericBatchGroup(BatchGroup):
    pass


class GenericLayer(Layer):
    pass


class GenericInstance(Instance):
    pass


class GenericGroup(Group):
    pass


class GenericPosition(Position):
    pass


PAIRS = [
    (Batch, GenericBatch, ()), (BatchGroup, GenericBatchGroup, (3,)), (Layer, GenericLayer, ()),
    (Instance, GenericInstance, ()), (Group, GenericGroup, (3,)), (Position, GenericPosition, ()),
]


def test_generic_subclasses_really_take_the_generic_path():
    for _, generic, _ in PAIRS:
        assert (generic, Standardize) not in framework._NATIVE


CASES = [(pair, shape) for pair in PAIRS for shape in ((5, 6, 3, 4), (4, 6), (3, 6, 5, 1))
         if not (pair[0] is Instance and len(shape) == 2)]  # the instance partition needs spatial dims


@pytest.mark.parametrize("pair,shape", CASES, ids=[f"{p[0].__name__}-{s}" for p, s in CASES])
def test_native_dispatch_equals_generic_path_forward_grads_and_running_stats(pair, shape):
    native, generic, args = pair
    # float64, so that the comparison is exact up to round-off even where a gradient is ~0 by cancellation
    # (two values per group: x_hat = +-1 whatever x is)
    a = Normalize(native(*args), Standardize(), Affine(), num_features=6).double()
    b = Normalize(generic(*args), Standardize(), Affine(), num_features=6).double()
    randomize_affine(a)
    b.load_state_dict(a.state_dict())
    tol = dict(atol=1e-10, rtol=1e-10)
    for _ in range(2):
        x = torch.randn(shape, dtype=torch.float64) * 2 + 1
        g = torch.randn(shape, dtype=torch.float64)
        (y1, g1), (y2, g2) = forward_and_grads(a, x, g), forward_and_grads(b, x, g)
        torch.testing.assert_close(y1, y2, **tol)
        for u, v in zip(g1, g2):
            torch.testing.assert_close(u, v, **tol)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], **tol, msg=key)
    a.eval(), b.eval()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x), **tol)


@pytest.mark.parametrize("generic", [False, True])
def test_batch_group_with_one_channel_per_group_equals_batchnorm(generic):
    C = 6
    part = (GenericBatchGroup if generic else BatchGroup)(C)
    ours = Normalize(part, Standardize(), Affine(), num_features=C)
    ref = nn.BatchNorm2d(C)
    randomize_affine(ref)
    with torch.no_grad():
        ours.weight.copy_(ref.weight), ours.bias.copy_(ref.bias)
    for _ in range(2):
        x = torch.randn(4, C, 3, 5) * 3 - 1
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=ATOL, rtol=ATOL)
    ours.eval(), ref.eval()
    x = torch.randn(4, C, 3, 5)
    torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=ATOL)


# --- generic operations and their running statistics ------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_generic_batch_running_stats_update_with_momentum(momentum):
    layer = Normalize(Batch(), L1(), Affine(), num_features=4, momentum=momentum)
    assert set(dict(layer.named_buffers())) == {"running_mean", "running_mad", "num_batches_tracked"}
    mean, mad = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for step in range(3):
        x = torch.randn(6, 4, 3, 3) * (step + 1) + step
        layer(x)
        xd = x.double()
        bm = xd.mean(dim=(0, 2, 3))
        bmad = (xd - bm.view(1, 4, 1, 1)).abs().mean(dim=(0, 2, 3))
        mean, mad = (1 - momentum) * mean + momentum * bm, (1 - momentum) * mad + momentum * bmad
        torch.testing.assert_close(layer.running_mean.double(), mean, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(layer.running_mad.double(), mad, atol=ATOL, rtol=ATOL)
    assert int(layer.num_batches_tracked) == 3


def test_generic_batch_running_stats_cumulative_average_when_momentum_is_none():
    layer = Normalize(Batch(), RMS(), NoRecovery, num_features=3, momentum=None)
    batches = [torch.randn(5, 3) * (k + 1) for k in range(4)]
    for x in batches:
        layer(x)
    expected = torch.stack([x.double().square().mean(0) for x in batches]).mean(0)
    torch.testing.assert_close(layer.running_ms.double(), expected, atol=ATOL, rtol=ATOL)


def test_generic_batch_eval_uses_running_stats():
    layer = Normalize(Batch(), L1(eps=0.0), NoRecovery, num_features=3)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        layer.running_mad.copy_(torch.tensor([2.0, 0.5, 1.0]))
    layer.eval()
    x = torch.randn(4, 3, 2, 2)
    scale = 1.0 / (math.sqrt(math.pi / 2) * layer.running_mad.view(1, 3, 1, 1))
    torch.testing.assert_close(layer(x), (x - layer.running_mean.view(1, 3, 1, 1)) * scale)


def test_track_running_stats_false_uses_batch_stats_in_eval_and_keeps_no_buffers():
    layer = Normalize(Batch(), Standardize(), NoRecovery, num_features=3, track_running_stats=False)
    assert dict(layer.named_buffers()) == {}
    layer.eval()
    x = torch.randn(8, 3) * 4 + 2
    torch.testing.assert_close(layer(x), F.batch_norm(x, None, None, training=True), atol=ATOL, rtol=ATOL)


def test_per_sample_partitions_keep_no_running_stats():
    for part in (Layer(), Instance(), Group(2), Position()):
        assert dict(Normalize(part, Standardize(), num_features=4).named_buffers()) == {}


def test_reset_running_stats_restores_initial_buffers():
    layer = Normalize(Batch(), L1(), num_features=3)
    layer(torch.randn(4, 3) * 5 + 3)
    layer.reset_running_stats()
    assert torch.equal(layer.running_mean, torch.zeros(3)) and torch.equal(layer.running_mad, torch.ones(3))
    assert int(layer.num_batches_tracked) == 0


@pytest.mark.parametrize("op", [Center(), RMS(), L1(), Standardize()])
@pytest.mark.parametrize("part", [Layer(), Position(), Group(2)], ids=repr)
def test_generic_operations_match_float64_formulas(op, part):
    C = 4
    layer = Normalize(part, op, NoRecovery, num_features=C)
    x = torch.randn(3, C, 4, 5)
    xd = x.double()
    if isinstance(part, Group):
        xd = xd.view(3, 2, 2, 4, 5)
        dims = (2, 3, 4)
    else:
        dims = (1, 2, 3) if isinstance(part, Layer) else (1,)
    mean = xd.mean(dims, keepdim=True)
    if isinstance(op, Center):
        ref = xd - mean
    elif isinstance(op, RMS):
        ref = xd / (xd.square().mean(dims, keepdim=True) + op.eps).sqrt()
    elif isinstance(op, L1):
        ref = (xd - mean) / (math.sqrt(math.pi / 2) * (xd - mean).abs().mean(dims, keepdim=True) + op.eps)
    else:
        ref = (xd - mean) / (xd.var(dims, keepdim=True, correction=0) + op.eps).sqrt()
    torch.testing.assert_close(layer(x).double(), ref.reshape(3, C, 4, 5), atol=ATOL, rtol=ATOL)


def test_affine_weight_init_sets_initial_gamma():
    layer = Normalize(Batch(), Standardize(), Affine(weight_init=0.5), num_features=3)
    assert torch.equal(layer.weight.detach(), torch.full((3,), 0.5))


# --- errors -------------------------------------------------------------------------------------------


def test_group_that_does_not_divide_channels_names_the_divisors():
    with pytest.raises(ValueError, match=r"groups=4 does not divide num_features=6.*\[1, 2, 3, 6\]"):
        Normalize(Group(4), Standardize(), num_features=6)
    with pytest.raises(ValueError, match=r"groups must be a positive int"):
        Group(0)


def test_channel_mismatch_names_expected_given_and_layer_name():
    layer = Normalize(Layer(), Standardize(), num_features=8)
    layer.layer_name = "features.3"
    with pytest.raises(ValueError, match=r"'features\.3'.*8 channels.*got 5 channels"):
        layer(torch.randn(2, 5, 3, 3))


def test_batch_partition_with_one_value_per_channel_in_training_is_refused():
    layer = Normalize(Batch(), RMS(), num_features=4)
    with pytest.raises(ValueError, match="more than one value"):
        layer(torch.randn(1, 4))
    layer.eval()
    assert layer(torch.randn(1, 4)).shape == (1, 4)


def test_condition_given_to_unconditional_layer_is_refused():
    with pytest.raises(TypeError, match="takes no condition"):
        Normalize(Layer(), Standardize(), num_features=4)(torch.randn(2, 4), torch.zeros(2))


# --- property tests -----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), groups=st.sampled_from([1, 2, 4]), k=st.integers(1, 3),
       h=st.integers(1, 5), w=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_group_standardize_gives_per_group_zero_mean_and_unit_variance(n, groups, k, h, w, seed):
    torch.manual_seed(seed)
    C, eps = groups * k, 1e-5
    layer = Normalize(Group(groups), Standardize(eps), NoRecovery, num_features=C)
    x = torch.randn(n, C, h, w, dtype=torch.float64) * 3 + 1
    y = layer(x).view(n, groups, -1)
    xv = x.view(n, groups, -1)
    var_in = xv.var(-1, correction=0)
    torch.testing.assert_close(y.mean(-1), torch.zeros(n, groups, dtype=torch.float64), atol=1e-9, rtol=0)
    # a single value per group has variance 0; otherwise var(y) = var(x) / (var(x) + eps)
    torch.testing.assert_close(y.var(-1, correction=0), var_in / (var_in + eps), atol=1e-9, rtol=1e-9)
