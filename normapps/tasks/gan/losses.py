"""GAN losses on discriminator logits, and the WGAN-GP gradient penalty.

Every loss is a mean over the batch. ``real`` and ``fake`` are the discriminator's outputs ``D(x)`` and
``D(G(z))``, shape ``(N,)`` (any shape works: the mean is over all elements).

- hinge (Lim & Ye 2017; Miyato et al. 2018, Eq. 16-17): ``L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``,
  ``L_G = -E[D(G(z))]``.
- non-saturating (Goodfellow et al. 2014): ``L_D = E[softplus(-D(x))] + E[softplus(D(G(z)))]``
  (``-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))``), ``L_G = E[softplus(-D(G(z)))]``.
- WGAN (Arjovsky et al. 2017): ``L_D = E[D(G(z))] - E[D(x)]``, ``L_G = -E[D(G(z))]``; with
  :func:`gradient_penalty` (Gulrajani et al. 2017, weight 10) the Lipschitz constraint without normalization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES", "GANLoss", "get_loss", "gradient_penalty", "hinge_d_loss", "hinge_g_loss", "ns_d_loss", "ns_g_loss",
    "wgan_d_loss", "wgan_g_loss",
]


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Hinge discriminator loss ``mean(relu(1 - real)) + mean(relu(1 + fake))``."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g_loss(fake: Tensor) -> Tensor:
    """Hinge generator loss ``-mean(fake)``."""
    return -fake.mean()


def ns_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Non-saturating (standard) discriminator loss ``mean(softplus(-real)) + mean(softplus(fake))``."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def ns_g_loss(fake: Tensor) -> Tensor:
    """Non-saturating generator loss ``mean(softplus(-fake)) = -mean(log sigmoid(fake))``."""
    return F.softplus(-fake).mean()


def wgan_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Wasserstein critic loss ``mean(fake) - mean(real)`` (add :func:`gradient_penalty`)."""
    return fake.mean() - real.mean()


def wgan_g_loss(fake: Tensor) -> Tensor:
    """Wasserstein generator loss ``-mean(fake)``."""
    return -fake.mean()


def gradient_penalty(discriminator: Callable[..., Tensor], real: Tensor, fake: Tensor, y: Tensor | None = None, *,
                     alpha: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP's penalty (Gulrajani et al., Improved Training of Wasserstein GANs, NeurIPS 2017, Eq. 3), unweighted.

    ``mean((||grad_x D(x_hat)||_2 - 1)^2)`` at ``x_hat = alpha x + (1 - alpha) G(z)``, one ``alpha ~ U[0, 1]``
    per sample. The graph is kept (``create_graph``) so the penalty can be back-propagated into ``D``; ``fake``
    is detached (the penalty trains the critic only). Multiply by the weight (10 in the paper).

    Args:
        discriminator: called as ``discriminator(x_hat)`` or, with ``y``, ``discriminator(x_hat, y)``; one
            output per sample.
        real: real images ``(N, ...)``.
        fake: generated images of the same shape.
        y: class labels passed to a conditional discriminator (the same for the real and the fake sample).
        alpha: the mixing weights ``(N,)``; drawn uniformly when None.
        generator: random generator of ``alpha``.

    Raises:
        ValueError: if ``real`` and ``fake`` differ in shape or ``alpha`` is not ``(N,)``.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    n = real.shape[0]
    if alpha is None:
        alpha = torch.rand(n, generator=generator, device=real.device if generator is None else generator.device)
    if alpha.shape != (n,):
        raise ValueError(f"alpha must have shape ({n},), got {tuple(alpha.shape)}")
    alpha = alpha.to(device=real.device, dtype=real.dtype).view((n,) + (1,) * (real.dim() - 1))
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = discriminator(x_hat) if y is None else discriminator(x_hat, y)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


class GANLoss(NamedTuple):
    """The discriminator and generator losses of one objective, and whether it adds the gradient penalty."""

    d_loss: Callable[[Tensor, Tensor], Tensor]
    g_loss: Callable[[Tensor], Tensor]
    gradient_penalty: bool


#: The objectives by name: ``"hinge"``, ``"ns"`` (non-saturating), ``"wgan_gp"``.
LOSSES: dict[str, GANLoss] = {
    "hinge": GANLoss(hinge_d_loss, hinge_g_loss, False),
    "ns": GANLoss(ns_d_loss, ns_g_loss, False),
    "wgan_gp": GANLoss(wgan_d_loss, wgan_g_loss, True),
}


def get_loss(name: str) -> GANLoss:
    """The objective ``name`` of :data:`LOSSES`; a clear error lists the valid names."""
    if name not in LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}: expected one of {', '.join(map(repr, LOSSES))}")
    return LOSSES[name]
