"""GANs: normalization makes the discriminator Lipschitz and the generator conditional (survey section 4).

Networks live in :mod:`normapps.models.gan`; this package holds the losses, the Lightning task and its
callbacks (sample grids, and the offline metrics of :mod:`normapps.metrics` per epoch).
"""

from .callbacks import SampleGrid
from .evaluation import GenerativeMetrics
from .lightning import SETTINGS, GANTask, ema_with_warmup
from .losses import (
    LOSSES,
    GANLoss,
    get_loss,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    ns_d_loss,
    ns_g_loss,
    wgan_d_loss,
    wgan_g_loss,
)

__all__ = [
    "LOSSES", "SETTINGS", "GANLoss", "GANTask", "GenerativeMetrics", "SampleGrid",
    "get_loss", "gradient_penalty", "hinge_d_loss", "hinge_g_loss",
    "ema_with_warmup", "ns_d_loss", "ns_g_loss", "wgan_d_loss", "wgan_g_loss",
]
