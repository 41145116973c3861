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
