import math

import pytest
import torch
from torch import nn

from normapps.tasks.gan import (
    LOSSES,
    get_loss,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    ns_d_loss,
    ns_g_loss,
    wgan_d_loss,
    wgan_g_loss,
)

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-3.0, 0.0, 1.5])


def test_hinge_losses_equal_their_formulas():
    # relu(1 - real) = (0, 0.5, 2), relu(1 + fake) = (0, 1, 2.5)
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert hinge_g_loss(FAKE).item() == pytest.approx(-(1.5 - 3.0) / 3)


def test_non_saturating_losses_equal_minus_log_sigmoid():
    sig = lambda t: 1.0 / (1.0 + math.exp(-t))
    d = sum(-math.log(sig(r)) for r in REAL.tolist()) / 3 + sum(-math.log(1.0 - sig(f)) for f in FAKE.tolist()) / 3
    g = sum(-math.log(sig(f)) for f in FAKE.tolist()) / 3
    assert ns_d_loss(REAL, FAKE).item() == pytest.approx(d, rel=1e-6)
    assert ns_g_loss(FAKE).item() == pytest.approx(g, rel=1e-6)


def test_non_saturating_losses_are_finite_for_large_logits():
    big = torch.tensor([1e4, -1e4])
    assert torch.isfinite(ns_d_loss(big, big)) and torch.isfinite(ns_g_loss(big))


def test_wasserstein_losses_equal_their_formulas():
    assert wgan_d_loss(REAL, FAKE).item() == pytest.approx(FAKE.mean().item() - REAL.mean().item())
    assert wgan_g_loss(FAKE).item() == pytest.approx(-FAKE.mean().item())


def test_gradient_penalty_of_a_linear_critic_equals_the_formula():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1, bias=False))
    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    norm = critic[1].weight.norm()
    # the gradient of a linear critic is its weight everywhere: penalty (||w|| - 1)^2
    assert gradient_penalty(lambda x: critic(x).squeeze(1), real, fake).item() == pytest.approx((norm.item() - 1.0) ** 2, rel=1e-5)
    with torch.no_grad():
        critic[1].weight /= norm
    assert gradient_penalty(lambda x: critic(x).squeeze(1), real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_is_taken_at_the_interpolates_and_trains_only_the_critic():
    """Critic ||x||^2 / 2 has gradient x: the penalty is mean((||alpha x + (1 - alpha) G|| - 1)^2)."""
    real, fake = torch.randn(3, 5), torch.randn(3, 5, requires_grad=True)
    alpha = torch.tensor([0.0, 0.3, 1.0])
    scale = nn.Parameter(torch.tensor(1.0))
    critic = lambda x: scale * 0.5 * (x**2).sum(dim=1)
    gp = gradient_penalty(critic, real, fake, alpha=alpha)
    x_hat = alpha[:, None] * real + (1 - alpha[:, None]) * fake.detach()
    assert gp.item() == pytest.approx(((x_hat.norm(dim=1) - 1) ** 2).mean().item(), rel=1e-5)
    gp.backward()
    assert scale.grad is not None and scale.grad != 0  # create_graph: the penalty reaches the critic
    assert fake.grad is None


def test_gradient_penalty_passes_labels_to_a_conditional_critic():
    seen = []
    critic = lambda x, y: seen.append(y) or x.flatten(1).sum(dim=1)
    y = torch.tensor([1, 2])
    gradient_penalty(critic, torch.randn(2, 4), torch.randn(2, 4), y)
    assert seen[0] is y


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(lambda x: x.sum(1), torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"alpha must have shape \(2,\)"):
        gradient_penalty(lambda x: x.sum(1), torch.randn(2, 3), torch.randn(2, 3), alpha=torch.rand(3))
    with pytest.raises(ValueError, match="expected one of 'hinge', 'ns', 'wgan_gp'"):
        get_loss("lsgan")


def test_only_wgan_gp_adds_the_penalty():
    assert {name for name, loss in LOSSES.items() if loss.gradient_penalty} == {"wgan_gp"}
