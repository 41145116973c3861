"""GAN training as a LightningModule: a generator, a discriminator, n_dis, and sampling helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from pytorch_lightning import LightningModule
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from normapps.models.gan import GENERATOR_NORMS, Generator, build_discriminator, build_generator

from .losses import get_loss, gradient_penalty

__all__ = ["SETTINGS", "GANTask", "ema_with_warmup"]

#: The optimizer settings A-F of Miyato et al. 2018 (table 1): Adam's learning rate and betas, and the
#: number of discriminator updates per generator update. A: WGAN-GP's; B: Warde-Farley & Bengio's;
#: C: DCGAN's; D-F: aggressive learning rates and momenta, where only spectral normalization stays stable.
SETTINGS: dict[str, dict[str, Any]] = {
    "A": {"lr": 1e-4, "betas": (0.5, 0.9), "n_dis": 5},
    "B": {"lr": 1e-4, "betas": (0.5, 0.999), "n_dis": 1},
    "C": {"lr": 2e-4, "betas": (0.5, 0.999), "n_dis": 1},
    "D": {"lr": 1e-3, "betas": (0.5, 0.9), "n_dis": 5},
    "E": {"lr": 1e-3, "betas": (0.5, 0.999), "n_dis": 5},
    "F": {"lr": 1e-3, "betas": (0.9, 0.999), "n_dis": 5},
}


def ema_with_warmup(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """The ``multi_avg_fn`` of :class:`~torch.optim.swa_utils.AveragedModel` for an exponential moving average
    whose decay warms up: ``ema <- d ema + (1 - d) p`` with ``d = min(decay, (1 + n) / (10 + n))`` after ``n``
    earlier updates (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so a short run is not
    dominated by the initial weights."""

    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        for a, p in zip(averaged, current):
            a.lerp_(p, 1.0 - d)

    return update


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode without autograd; its previous mode is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


class GANTask(LightningModule):
    """Adversarial training with manual optimization (SN-GAN defaults: hinge loss, Adam lr 2e-4, betas (0, 0.9), n_dis 5).

    Every training batch makes one discriminator update on the real images and as many generated ones;
    after every ``n_dis`` discriminator updates the generator makes one update on a fresh batch of
    latents (the ``n_critic`` loop of Gulrajani et al. 2017, Algorithm 1: each discriminator update sees
    new real data).
    Generated images of a conditional GAN take the class labels of the real batch, so fake classes follow
    the data's class frequencies. ``trainer.max_steps`` counts the updates of both networks
    (``n_dis + 1`` per generator update), as Lightning counts optimizer steps in manual optimization.

    The discriminator sees the real and the generated batch in one forward pass, except with
    ``d_norm="bn"``, where the two batches are normalized separately (as usual for BN discriminators).

    Logged per step: ``d_loss`` (with the gradient penalty term for ``wgan_gp``), ``gp`` (unweighted) and,
    on generator updates, ``g_loss``.

    >>> task = GANTask(width=0.125, image_size=16, conditional=True, num_classes=10)
    >>> task.sample(4, torch.tensor([0, 1, 2, 3])).shape
    torch.Size([4, 3, 16, 16])
    """

    def __init__(
        self,
        generator: str = "dcgan",
        discriminator: str = "dcgan",
        g_norm: str | None = None,
        d_norm: str = "spectral",
        loss: str = "hinge",
        gp_weight: float = 10.0,
        conditional: bool = False,
        num_classes: int | None = None,
        z_dim: int = 128,
        width: float = 1.0,
        image_size: int = 32,
        channels: int = 3,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        n_dis: int = 5,
        setting: str | None = None,
        ema: float | None = None,
    ) -> None:
        """Initialize the task.

        Args:
            generator: ``"dcgan"`` (the SN paper's standard CNN) or ``"resnet"``.
            discriminator: ``"dcgan"`` or ``"resnet"``.
            g_norm: the generator's normalization, one of :data:`~normapps.models.gan.GENERATOR_NORMS`;
                None: ``"cbn"`` if ``conditional`` else ``"bn"``.
            d_norm: the discriminator's normalization, one of :data:`~normapps.models.gan.DISCRIMINATOR_NORMS`.
            loss: ``"hinge"``, ``"ns"`` (non-saturating) or ``"wgan_gp"`` (Wasserstein with gradient penalty).
            gp_weight: weight of the gradient penalty (``wgan_gp`` only; 10 in Gulrajani et al. 2017).
            conditional: class-conditional GAN: conditional-BN generator and projection discriminator.
            num_classes: number of classes (linked from the datamodule by ``normapps fit``); used only
                when ``conditional``.
            z_dim: dimension of the latent ``z ~ N(0, I)``.
            width: multiplier of the paper's channel counts in both networks.
            image_size: side of the square images (a multiple of 8).
            channels: channels of the images.
            lr: Adam's learning rate (both networks).
            betas: Adam's (beta1, beta2).
            n_dis: discriminator updates per generator update.
            setting: one of :data:`SETTINGS` ("A" to "F"): replaces ``lr``, ``betas`` and ``n_dis``.
            ema: decay of an exponential moving average of the generator's weights used for sampling
                (e.g. 0.999, warmed up by :func:`ema_with_warmup`; its BN statistics are the generator's);
                None for none.

        Raises:
            ValueError: for an unknown name, an argument out of range, or ``g_norm`` not matching ``conditional``.
        """
        super().__init__()
        if g_norm is None:
            g_norm = "cbn" if conditional else "bn"
        if g_norm not in GENERATOR_NORMS:
            raise ValueError(f"unknown generator normalization g_norm {g_norm!r}: expected one of "
                             f"{', '.join(map(repr, GENERATOR_NORMS))}")
        if conditional and g_norm != "cbn":
            raise ValueError(f"a conditional GAN gets the class through conditional BN: set g_norm='cbn' (got {g_norm!r})")
        if not conditional and g_norm == "cbn":
            raise ValueError("g_norm='cbn' needs class labels: set conditional=True (or use g_norm 'bn' or 'smbn')")
        if conditional and (num_classes is None or isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"a conditional GAN needs num_classes >= 1 (linked from the data by normapps fit), got {num_classes!r}")
        self.objective = get_loss(loss)
        if setting is not None:
            if setting not in SETTINGS:
                raise ValueError(f"unknown setting {setting!r}: expected one of {', '.join(SETTINGS)} (Miyato et al. 2018, table 1)")
            lr, betas, n_dis = SETTINGS[setting]["lr"], SETTINGS[setting]["betas"], SETTINGS[setting]["n_dis"]
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        betas = (float(betas[0]), float(betas[1]))
        if isinstance(n_dis, bool) or not isinstance(n_dis, int) or n_dis < 1:
            raise ValueError(f"n_dis must be an int >= 1, got {n_dis!r}")
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight!r}")
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError(f"ema must be a decay in (0, 1) or None, got {ema!r}")
        self.save_hyperparameters()
        self.hparams.update(g_norm=g_norm, lr=lr, betas=betas, n_dis=n_dis)
        self.automatic_optimization = False
        self.conditional = conditional
        self.num_classes = num_classes if conditional else None
        self.generator = build_generator(generator, z_dim=z_dim, width=width, g_norm=g_norm, num_classes=self.num_classes,
                                         image_size=image_size, channels=channels)
        self.discriminator = build_discriminator(discriminator, width=width, d_norm=d_norm, num_classes=self.num_classes,
                                                 image_size=image_size, channels=channels)
        self.generator_ema: AveragedModel | None = None
        if ema is not None:
            self.generator_ema = AveragedModel(self.generator, multi_avg_fn=ema_with_warmup(ema))
            self.generator_ema.requires_grad_(False)
        self.d_steps = 0
        self.g_steps = 0

    # ---------------------------------------------------------------------------------------------
    # generation

    @property
    def sampler(self) -> Generator:
        """The generator used for sampling: the moving average if ``ema`` is set, else the trained one."""
        return self.generator if self.generator_ema is None else self.generator_ema.module

    def forward(self, z: Tensor, y: Tensor | int | None = None) -> Tensor:
        """The trained generator in its current mode: images ``(N, C, S, S)`` in [-1, 1] from ``z`` ``(N, z_dim)``."""
        return self.generator(z, y)

    def generate(self, z: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Images ``(N, C, S, S)`` in [-1, 1] from latents ``(N, z_dim)``: :attr:`sampler` in eval mode, no autograd.

        ``y``: class indices ``(N,)`` (or one int) or class weights ``(N, num_classes)`` for a conditional
        GAN; None for an unconditional one.
        """
        if isinstance(y, Tensor):
            y = y.to(self.device)
        with _evaluating(self.sampler) as g:
            return g(z.to(self.device), y)

    def sample(self, n: int, y: Tensor | int | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images ``(n, C, S, S)`` in [-1, 1] from ``z ~ N(0, I)`` (see :meth:`generate`).

        A conditional GAN given no ``y`` draws the classes uniformly. ``generator`` draws ``z`` (and those classes).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        device = self.device if generator is None else generator.device
        z = torch.randn(n, self.hparams.z_dim, generator=generator, device=device)
        if self.conditional and y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator, device=device)
        return self.generate(z, y)

    def morph(self, z: Tensor, class_a: int, class_b: int, steps: int) -> Tensor:
        """Class morphing: images ``(N, steps, C, S, S)`` from latents ``(N, z_dim)`` with the class weights going
        linearly from one-hot ``class_a`` to one-hot ``class_b`` (so the conditional-BN parameters are mixed,
        ``(1 - t) gamma_a + t gamma_b``; Miyato & Koyama 2018, figure 6)."""
        if not self.conditional:
            raise ValueError("morph needs a conditional GAN (conditional=True)")
        steps = self._check_steps(steps)
        for name, c in (("class_a", class_a), ("class_b", class_b)):
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < self.num_classes:
                raise ValueError(f"{name} must be a class index in [0, {self.num_classes - 1}], got {c!r}")
        z = self._check_latent(z)
        t = torch.linspace(0.0, 1.0, steps, device=self.device)
        weights = torch.zeros(steps, self.num_classes, device=self.device)
        weights[:, class_a] += 1.0 - t
        weights[:, class_b] += t
        images = self.generate(z.repeat_interleave(steps, dim=0), weights.repeat(z.shape[0], 1))
        return images.view(z.shape[0], steps, *images.shape[1:])

    def interpolate(self, z_a: Tensor, z_b: Tensor, steps: int, y: Tensor | int | None = None) -> Tensor:
        """Latent interpolation: images ``(N, steps, C, S, S)`` at ``(1 - t) z_a + t z_b`` for ``steps`` values of
        ``t`` from 0 to 1; ``z_a``, ``z_b`` ``(N, z_dim)``. ``y`` (class indices ``(N,)`` or one int) is required
        by a conditional GAN and kept along each row."""
        steps = self._check_steps(steps)
        z_a, z_b = self._check_latent(z_a), self._check_latent(z_b)
        if z_a.shape != z_b.shape:
            raise ValueError(f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        n = z_a.shape[0]
        if self.conditional and y is None:
            raise ValueError(f"a conditional GAN needs class labels y (an int or shape ({n},)) to interpolate")
        t = torch.linspace(0.0, 1.0, steps, device=self.device).view(1, steps, 1)
        z = ((1.0 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)).reshape(n * steps, -1)
        if isinstance(y, Tensor) and y.dim() == 1:
            if y.shape != (n,):
                raise ValueError(f"y must be an int or class indices of shape ({n},), got {tuple(y.shape)}")
            y = y.to(self.device).repeat_interleave(steps)
        images = self.generate(z, y)
        return images.view(n, steps, *images.shape[1:])

    def _check_latent(self, z: Tensor) -> Tensor:
        z_dim = self.hparams.z_dim
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != z_dim:
            raise ValueError(f"expected latents of shape (N, {z_dim}), got {tuple(z.shape) if isinstance(z, Tensor) else z!r}")
        return z.to(self.device)

    @staticmethod
    def _check_steps(steps: int) -> int:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an int >= 2, got {steps!r}")
        return steps

    # ---------------------------------------------------------------------------------------------
    # training

    def _discriminate(self, real: Tensor, fake: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """``D(real)`` and ``D(fake)``: one forward pass on both, except for a BN discriminator."""
        d = self.discriminator
        if self.hparams.d_norm == "bn":
            return d(real, y), d(fake, y)
        out = d(torch.cat([real, fake]), None if y is None else torch.cat([y, y]))
        return out[: real.shape[0]], out[real.shape[0]:]

    def _check_batch(self, real: Tensor) -> None:
        hp = self.hparams
        expected = (hp.channels, hp.image_size, hp.image_size)
        if tuple(real.shape[1:]) != expected:
            raise ValueError(f"the data's images have shape {tuple(real.shape[1:])} but the model was built for {expected}: "
                             "give the model the data's image_size and channels")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """One discriminator update; a generator update after every ``n_dis`` of them."""
        real, labels = batch
        self._check_batch(real)
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        y = labels if self.conditional else None
        n = real.shape[0]

        with torch.no_grad():
            fake = self.generator(torch.randn(n, hp.z_dim, device=self.device), y)
        d_real, d_fake = self._discriminate(real, fake, y)
        d_loss = self.objective.d_loss(d_real, d_fake)
        if self.objective.gradient_penalty:
            gp = gradient_penalty(self.discriminator, real, fake, y)
            d_loss = d_loss + hp.gp_weight * gp
            self.log("gp", gp.detach())
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.d_steps += 1
        self.log("d_loss", d_loss.detach(), prog_bar=True)

        if self.d_steps % hp.n_dis:
            return
        self.toggle_optimizer(opt_g)
        g_loss = self.objective.g_loss(self.discriminator(self.generator(torch.randn(n, hp.z_dim, device=self.device), y), y))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self.g_steps += 1
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
            for b_ema, b in zip(self.generator_ema.module.buffers(), self.generator.buffers()):
                b_ema.copy_(b)
        self.log("g_loss", g_loss.detach(), prog_bar=True)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the generator, then for the discriminator (same ``lr`` and ``betas``)."""
        hp = self.hparams
        return [
            torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=(float(hp.betas[0]), float(hp.betas[1]))),
            torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=(float(hp.betas[0]), float(hp.betas[1]))),
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the update counters (the n_dis schedule resumes where it stopped)."""
        checkpoint["gan_steps"] = {"d": self.d_steps, "g": self.g_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the update counters."""
        steps = checkpoint.get("gan_steps", {"d": 0, "g": 0})
        self.d_steps, self.g_steps = steps["d"], steps["g"]
