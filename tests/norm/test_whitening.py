"""Whitening methods: whitened covariance, gradients against float64 references, rank-deficient
batches, running statistics and errors."""

import pytest
import torch

from normapps import norm
from normapps.norm import whitening as Wh

BATCH = ["dbn", "pcawhiten", "cdwhiten", "iternorm"]
EXACT = ["dbn", "pcawhiten", "cdwhiten"]


def correlated(n: int, c: int, hw: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=torch.float64) / c**0.5 + torch.eye(c, dtype=torch.float64)
    x = torch.randn(n, hw, hw, c, generator=g, dtype=torch.float64) @ mix.T
    return (x + 2.0).permute(0, 3, 1, 2).contiguous()


def group_covariance(y: torch.Tensor, group_size: int) -> torch.Tensor:
    yg = y.transpose(0, 1).reshape(y.shape[1] // group_size, group_size, -1)
    yc = yg - yg.mean(-1, keepdim=True)
    return yc @ yc.transpose(-1, -2) / yg.shape[-1]


@pytest.mark.parametrize("name", EXACT)
def test_exact_whitening_gives_identity_covariance_in_float64(name):
    layer = norm.build(name, 8, group_size=4, eps=1e-10, affine=False).double()
    cov = group_covariance(layer(correlated(64, 8)), 4)
    torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64).expand_as(cov), atol=1e-4, rtol=0)


def test_iternorm_whitens_more_closely_as_iterations_grow():
    x = correlated(64, 8)
    errors = []
    for t in (1, 3, 5, 10):
        cov = group_covariance(norm.build("iternorm", 8, group_size=4, T=t, affine=False).double()(x), 4)
        errors.append(float((cov - torch.eye(4, dtype=torch.float64)).abs().max()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    assert errors[2] < 0.1  # T=5 whitens approximately (by design): max |cov - I| 0.08 on this data


def test_group_whitening_whitens_each_sample():
    layer = norm.build("gw", 8, group_size=4, T=10, eps=1e-10, affine=False).double()
    x = correlated(3, 8, hw=6)
    y = layer(x).reshape(3, 4, -1)
    yc = y - y.mean(-1, keepdim=True)
    cov = yc @ yc.transpose(-1, -2) / y.shape[-1]
    torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64).expand_as(cov), atol=5e-2, rtol=0)


@pytest.mark.parametrize("name", BATCH + ["gw"])
def test_gradients_match_float64_numerical_jacobian(name):
    layer = norm.build(name, 4, group_size=2, eps=1e-3).double()
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn(4, dtype=torch.float64))
    x = correlated(5, 4, hw=2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_zca_backward_equals_eigh_autograd_and_is_finite_for_repeated_eigenvalues():
    a = torch.randn(3, 5, 5, dtype=torch.float64)
    s = (a @ a.transpose(-1, -2) + torch.eye(5, dtype=torch.float64)).requires_grad_(True)
    g = torch.randn(3, 5, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(Wh.zca_matrix(s), s, g)
    lam, u = torch.linalg.eigh(s)
    (ref,) = torch.autograd.grad(u @ torch.diag_embed(lam.rsqrt()) @ u.transpose(-1, -2), s, g)
    torch.testing.assert_close((ours + ours.transpose(-1, -2)) / 2, (ref + ref.transpose(-1, -2)) / 2)
    eye = torch.eye(4, dtype=torch.float64, requires_grad=True)
    Wh.zca_matrix(eye).sum().backward()
    assert torch.isfinite(eye.grad).all()


@pytest.mark.parametrize("name", BATCH + ["gw"])
@pytest.mark.parametrize("x", [torch.zeros(2, 8, 1, 1), torch.randn(2, 8, 1, 1), torch.ones(3, 8, 2, 1)],
                         ids=["zeros", "two-samples", "constant"])
def test_rank_deficient_batches_give_finite_forward_and_backward(name, x):
    layer = norm.build(name, 8, group_size=4)
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("name", BATCH)
def test_eval_uses_the_running_whitening_matrix(name):
    layer = norm.build(name, 8, group_size=4, momentum=None).double()
    xs = [correlated(32, 8, seed=s) for s in range(3)]
    for x in xs:
        layer(x)
    layer.eval()
    probe = correlated(4, 8, seed=9)
    yg = probe.transpose(0, 1).reshape(2, 4, -1)
    expected = (layer.running_whitening @ (yg - layer.running_mean)).reshape(8, 4, 3, 3).transpose(0, 1)
    torch.testing.assert_close(layer(probe), expected)
    assert int(layer.num_batches_tracked) == 3


def test_build_with_group_size_and_iterations_and_clear_errors():
    layer = norm.build("iternorm", 256, group_size=64, T=5)
    assert layer.group_size == 64 and layer.T == 5 and layer.running_whitening.shape == (4, 64, 64)
    assert layer(torch.randn(8, 256, 2, 2)).shape == (8, 256, 2, 2)
    with pytest.raises(ValueError, match="group_size=48 does not divide num_features=64"):
        norm.build("dbn", 64, group_size=48)
    with pytest.raises(ValueError, match="expected input .* 8 channels"):
        norm.build("dbn", 8, group_size=4)(torch.randn(4, 6, 2, 2))
    with pytest.raises(ValueError, match="more than one value"):
        norm.build("dbn", 8, group_size=4)(torch.randn(1, 8))
    assert set(norm.available("whitening")) == {"dbn", "pcawhiten", "cdwhiten", "iternorm", "gw"}


def plain_newton(s: torch.Tensor, iterations: int) -> torch.Tensor:
    trace = s.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    s_n = s / trace
    p = torch.eye(s.shape[-1], dtype=s.dtype).expand_as(s)
    for _ in range(iterations):
        p = 1.5 * p - 0.5 * (p @ p @ p @ s_n)
    return p / trace.sqrt()


def spd(*shape: int, seed: int = 0) -> torch.Tensor:
    """Symmetric positive definite matrices ``(*shape, d)`` for ``shape = (*batch, d)``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, 2 * shape[-1], generator=g, dtype=torch.float64)
    return a @ a.mT / shape[-1] + 0.1 * torch.eye(shape[-1], dtype=torch.float64)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_newton_hand_written_backward_equals_autograd_and_gradcheck(iterations):
    s = spd(2, 3, 5).requires_grad_(True)
    torch.testing.assert_close(Wh.newton_matrix(s, iterations), plain_newton(s, iterations))
    g = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(Wh.newton_matrix(s, iterations), s, g)
    (ref,) = torch.autograd.grad(plain_newton(s, iterations), s, g)
    torch.testing.assert_close(ours, ref)
    assert torch.autograd.gradcheck(lambda t: Wh.newton_matrix(t, iterations), (spd(2, 4).requires_grad_(True),))
    with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
        Wh.newton_matrix(s, 0)


def test_newton_matrix_is_vmappable():
    s = spd(3, 4)
    torch.testing.assert_close(torch.func.vmap(lambda t: Wh.newton_matrix(t, 3))(s), plain_newton(s, 3))


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few values: the block loops run several times even on small test tensors."""
    monkeypatch.setattr(Wh, "_BLOCK_VALUES", 4)


def plain_moments(x: torch.Tensor, group_size: int):
    xg = x.transpose(0, 1).reshape(x.shape[1] // group_size, group_size, -1)
    mean = xg.mean(-1, keepdim=True)
    return mean, (xg - mean) @ (xg - mean).mT / xg.shape[-1]


def plain_whiten(x, mean, matrix, bias):
    c, g = x.shape[1], matrix.shape[-1]
    xg = x.transpose(0, 1).reshape(c // g, g, -1)
    y = matrix @ (xg - mean) + (0 if bias is None else bias)
    return y.reshape((c, x.shape[0]) + x.shape[2:]).transpose(0, 1)


@pytest.mark.parametrize("shape", [(7, 8, 3, 2), (9, 8)], ids=["4d", "2d"])
def test_group_moments_equal_the_plain_formula_and_gradcheck(small_blocks, shape):
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).requires_grad_(True)
    mean, cov, m = Wh.group_moments(x, 4)
    ref_mean, ref_cov = plain_moments(x, 4)
    assert m == x.numel() // 8
    torch.testing.assert_close((mean, cov), (ref_mean, ref_cov))
    assert torch.autograd.gradcheck(lambda t: Wh.group_moments(t, 4)[:2], (x,))


@pytest.mark.parametrize("shape", [(7, 8, 3, 2), (9, 8)], ids=["4d", "2d"])
def test_group_whiten_equals_the_plain_formula_and_gradcheck(small_blocks, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(2, 4, 1, dtype=torch.float64, requires_grad=True)
    matrix = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 4, 1, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(Wh.group_whiten(x, mean, matrix, bias), plain_whiten(x, mean, matrix, bias))
    torch.testing.assert_close(Wh.group_whiten(x, mean, matrix), plain_whiten(x, mean, matrix, None))
    assert torch.autograd.gradcheck(Wh.group_whiten, (x, mean, matrix, bias))
    assert torch.autograd.gradcheck(Wh.group_whiten, (x, mean, matrix, None))


@pytest.mark.parametrize("groups", [1, 3, Wh._FEW_GROUPS + 2], ids=["one", "few", "many"])
@pytest.mark.parametrize("shape", [(5, 3, 2), (5,)], ids=["4d", "2d"])
def test_grouped_matmul_equals_the_plain_formula(groups, shape):
    x = torch.randn(shape[0], 2 * groups, *shape[1:], dtype=torch.float64)
    matrix, shift = torch.randn(groups, 2, 2, dtype=torch.float64), torch.randn(groups, 2, 1, dtype=torch.float64)
    expected = plain_whiten(x, torch.zeros(groups, 2, 1, dtype=torch.float64), matrix, shift)
    torch.testing.assert_close(Wh.grouped_matmul(x, matrix, shift), expected)


def randomize(layer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


@pytest.mark.parametrize("coloring", [False, True], ids=["affine", "coloring"])
@pytest.mark.parametrize("name", BATCH)
def test_training_and_eval_equal_the_plain_formula_with_recovery(small_blocks, name, coloring):
    layer = randomize(norm.build(name, 8, group_size=4, coloring=coloring).double())
    x = correlated(16, 8)
    mean, cov = plain_moments(x, 4)
    w = layer.whitening_matrix(cov + layer.eps * torch.eye(4, dtype=torch.float64))
    gamma = layer.weight if coloring else torch.diag_embed(layer.weight.view(2, 4))
    expected = plain_whiten(x, mean, gamma @ w, layer.bias.view(2, 4, 1))
    torch.testing.assert_close(layer(x), expected)
    layer.eval()
    probe = correlated(4, 8, seed=9)
    expected = plain_whiten(probe, layer.running_mean, gamma @ layer.running_whitening, layer.bias.view(2, 4, 1))
    torch.testing.assert_close(layer(probe), expected)
    layer.bias = None
    torch.testing.assert_close(layer(probe), plain_whiten(probe, layer.running_mean, gamma @ layer.running_whitening, None))


@pytest.mark.parametrize("name", BATCH + ["gw"])
def test_coloring_at_initialization_equals_the_affine_version(name):
    x = correlated(16, 8)
    plain, colored = (norm.build(name, 8, group_size=4, coloring=c).double() for c in (False, True))
    torch.testing.assert_close(colored(x), plain(x))
    if name != "gw":
        plain.eval(), colored.eval()
        torch.testing.assert_close(colored(x), plain(x))


@pytest.mark.parametrize("name", BATCH + ["gw"])
def test_coloring_gradients_match_float64_numerical_jacobian(name):
    layer = randomize(norm.build(name, 4, group_size=2, eps=1e-3, coloring=True).double())
    x = correlated(5, 4, hw=2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (t,)),
                                    (x, layer.weight.detach().requires_grad_(True), layer.bias.detach().requires_grad_(True)),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", BATCH + ["gw"])
def test_coloring_state_dict_round_trip_and_repr(name):
    layer = randomize(norm.build(name, 8, group_size=4, coloring=True))
    groups = 1 if name == "gw" else 2
    assert layer.weight.shape == ((4, 4) if name == "gw" else (groups, 4, 4)) and layer.bias.shape == (8,)
    x = torch.randn(6, 8, 3, 3)
    layer(x)
    copy = norm.build(name, 8, group_size=4, coloring=True)
    copy.load_state_dict(layer.state_dict())
    layer.eval(), copy.eval()
    torch.testing.assert_close(copy(x), layer(x))
    assert "coloring=True" in repr(layer) and "coloring" not in repr(norm.build(name, 8, group_size=4))
    assert "affine=False" in repr(norm.build(name, 8, group_size=4, affine=False))
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        norm.build(name, 8, group_size=4).load_state_dict(layer.state_dict())
    with pytest.raises(ValueError, match="coloring=True .* needs affine=True, got affine=False"):
        norm.build(name, 8, group_size=4, coloring=True, affine=False)


class PooledMoments(Wh.DecorrelatedBatchNorm):
    """Statistics pooled with a second batch, as a cross-process version would pool them."""

    other: torch.Tensor

    def _batch_moments(self, x):
        return super()._batch_moments(torch.cat([x, self.other]))


def test_batch_moments_is_the_only_source_of_training_statistics():
    x, other = correlated(6, 8, seed=1), correlated(10, 8, seed=2)
    pooled = PooledMoments(8, group_size=4).double()
    pooled.other = other
    whole = norm.build("dbn", 8, group_size=4).double()
    randomize(pooled), randomize(whole)
    torch.testing.assert_close(pooled(x), whole(torch.cat([x, other]))[:6])
    torch.testing.assert_close(pooled.running_whitening, whole.running_whitening)
    torch.testing.assert_close(pooled.running_mean, whole.running_mean)
    pooled.other = correlated(3, 8, seed=3)[:, :, :1, :1]
    assert pooled(x[:1, :, :1, :1]).shape == (1, 8, 1, 1)  # the count that matters is the pooled one


@pytest.mark.parametrize("name", BATCH)
def test_batch_whitening_is_differentiable_once(name):
    layer = norm.build(name, 8, group_size=4)
    x = torch.randn(6, 8, 3, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", BATCH + ["gw"])
def test_half_input_gets_float32_statistics_and_keeps_its_dtype(name, dtype):
    layer = norm.build(name, 8, group_size=4)
    ref = norm.build(name, 8, group_size=4)
    x = (torch.randn(16, 8, 3, 3) * 30 + 100).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref(x.float()), atol=0.05, rtol=0.02)
    if name != "gw":
        assert layer.running_whitening.dtype == torch.float32
        torch.testing.assert_close(layer.running_whitening, ref.running_whitening)
        layer.eval(), ref.eval()
        torch.testing.assert_close(layer(x).float(), ref(x.float()), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("name", BATCH + ["gw"])
def test_channels_last_input_gives_the_same_output_and_gradient(name):
    layer = norm.build(name, 8, group_size=4).double()
    x = correlated(6, 8)
    outs = []
    for t in (x, x.to(memory_format=torch.channels_last)):
        t = t.clone().requires_grad_(True)
        y = layer(t)
        y.backward(torch.ones_like(y) + y.detach())
        outs.append((y.detach(), t.grad))
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("group_size", [4, 1], ids=["few-groups", "many-groups"])
@pytest.mark.parametrize("name", BATCH + ["gw"])
def test_eval_per_sample_gradients_with_vmap(name, group_size):
    layer = randomize(norm.build(name, 8, group_size=group_size).double())
    layer(correlated(16, 8))
    layer.eval()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = correlated(3, 8, seed=5)

    def loss(p, xi):
        return torch.func.functional_call(layer, p, (xi.unsqueeze(0),)).square().sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i in range(3):
        expected = torch.func.grad(loss)(params, x[i])
        torch.testing.assert_close({k: v[i] for k, v in grads.items()}, expected)


@pytest.mark.parametrize("name", ["dbn", "cdwhiten", "iternorm"])
def test_float32_statistics_stay_exact_far_from_zero(small_blocks, name):
    x = correlated(64, 8).float() + 1000.0  # the input itself is rounded to 3e-5 (half an ulp of 1000)
    expected = norm.build(name, 8, group_size=4, affine=False).double()(x.double())
    torch.testing.assert_close(norm.build(name, 8, group_size=4, affine=False)(x).double(), expected, atol=5e-5, rtol=0)


def test_cholesky_backward_equals_autograd_through_cholesky_and_solve():
    s = spd(3, 5).requires_grad_(True)
    eye = torch.eye(5, dtype=torch.float64).expand(3, 5, 5)
    ref_w = torch.linalg.solve_triangular(torch.linalg.cholesky(s), eye, upper=False)
    torch.testing.assert_close(Wh.cholesky_matrix(s), ref_w)
    g = torch.randn(3, 5, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(Wh.cholesky_matrix(s), s, g)
    (ref,) = torch.autograd.grad(ref_w, s, g)
    torch.testing.assert_close(ours, ref)
