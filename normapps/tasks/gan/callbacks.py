"""Training callbacks of the GAN suite."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import Tensor
from torchvision.utils import make_grid

from normapps.data.images import save_image

__all__ = ["SampleGrid"]


class SampleGrid(Callback):
    """Write a PNG grid of generated images from fixed latents every ``every_n_epochs`` epochs and at the end of fit.

    The latents (and classes) are drawn once from ``seed``, so successive grids show the same samples as
    training goes on. A conditional GAN gets one row per class (``samples_per_class`` columns); an
    unconditional one ``num_samples`` images in a near-square grid. Files go to
    ``<log dir>/<dirname>/epoch=E-step=S.png`` (the trainer's log folder, else its ``default_root_dir``),
    written atomically; only the main process writes. The module must offer ``generate(z, y)`` (images in
    [-1, 1]) and the attributes ``conditional``, ``num_classes`` and ``hparams.z_dim``, as
    :class:`~normapps.tasks.gan.GANTask` does.
    """

    def __init__(self, every_n_epochs: int = 1, samples_per_class: int = 8, num_samples: int = 64, seed: int = 0,
                 dirname: str = "samples") -> None:
        """Initialize the callback.

        Args:
            every_n_epochs: write a grid after every ``every_n_epochs``-th training epoch.
            samples_per_class: columns of a conditional GAN's grid.
            num_samples: images of an unconditional GAN's grid.
            seed: seed of the fixed latents.
            dirname: folder of the grids under the log folder.

        Raises:
            ValueError: if a count is not a positive int or ``dirname`` is empty.
        """
        super().__init__()
        for name, value in (("every_n_epochs", every_n_epochs), ("samples_per_class", samples_per_class), ("num_samples", num_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not dirname:
            raise ValueError("dirname must name a folder, got an empty string")
        self.every_n_epochs = every_n_epochs
        self.samples_per_class = samples_per_class
        self.num_samples = num_samples
        self.seed = seed
        self.dirname = dirname
        self.written: list[Path] = []
        self._last_step: int | None = None

    def latents(self, pl_module: LightningModule) -> tuple[Tensor, Tensor | None, int]:
        """The fixed latents ``(M, z_dim)``, their classes (or None) and the number of grid columns."""
        for name in ("generate", "conditional", "num_classes"):
            if not hasattr(pl_module, name):
                raise TypeError(f"SampleGrid needs a GAN module with {name!r} (like GANTask), got {type(pl_module).__name__}")
        generator = torch.Generator().manual_seed(self.seed)
        if pl_module.conditional:
            columns = self.samples_per_class
            y = torch.arange(pl_module.num_classes).repeat_interleave(columns)
        else:
            columns = math.ceil(math.sqrt(self.num_samples))
            y = None
        count = columns * pl_module.num_classes if pl_module.conditional else self.num_samples
        return torch.randn(count, pl_module.hparams.z_dim, generator=generator), y, columns

    def write(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        """Generate the grid now and write it; return its path."""
        z, y, columns = self.latents(pl_module)
        images = pl_module.generate(z, y).float().cpu()
        grid = make_grid(images * 0.5 + 0.5, nrow=columns, padding=2, pad_value=1.0)
        folder = Path(trainer.log_dir or trainer.default_root_dir) / self.dirname
        path = save_image(grid, folder / f"epoch={trainer.current_epoch}-step={trainer.global_step}.png", overwrite=True)
        self.written.append(path)
        self._last_step = trainer.global_step
        return path

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write a grid after every ``every_n_epochs``-th epoch."""
        if trainer.is_global_zero and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the final grid, unless one was just written at this step."""
        if trainer.is_global_zero and self._last_step != trainer.global_step:
            self.write(trainer, pl_module)
