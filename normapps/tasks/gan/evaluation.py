"""Per-epoch generative metrics for GAN training: a Lightning callback.

:class:`GenerativeMetrics` samples the generator every ``every_n_epochs`` epochs and measures the
samples in the feature space of the shipped digit classifier (:mod:`normapps.metrics.features`):
Frechet distance and KID against real images and, for a conditional generator, the classifier's
accuracy on class-conditioned samples and the intra-class Frechet distance
(:mod:`normapps.metrics.generative`). The numbers depend on the sample counts, so the counts are
fixed by the arguments, printed on the same line as the numbers and logged next to them.

::

    trainer = Trainer(callbacks=[GenerativeMetrics(every_n_epochs=1, n_real=2000, n_fake=1000)])

The LightningModule must provide ``sample(n, y=None, *, generator=None) -> Tensor`` (images
``(n, 3, 32, 32)`` in [-1, 1]), ``conditional: bool`` and ``num_classes: int``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor

from normapps.data import load_domain
from normapps.metrics.features import DigitFeatures, load_digit_features
from normapps.metrics.generative import MetricResult, class_accuracy, distances, intra_class_frechet_distance

__all__ = ["GenerativeMetrics"]


class GenerativeMetrics(pl.Callback):
    """Log FD, KID and (conditional generators) class accuracy and intra-class FD during training.

    Every ``every_n_epochs`` training epochs, and at the end of fit when the last epoch was not
    measured (``at_fit_end``), the callback

    1. takes ``n_real`` real images with their labels, once (their features are cached): from
       ``trainer.datamodule.val_dataloader()`` (batches ``(images in [-1, 1], labels)``) when the
       trainer has a datamodule with one, else from ``load_domain(domain, split, 32)`` mapped to [-1, 1];
    2. draws ``n_fake`` samples through ``pl_module.sample`` with a generator seeded by ``seed``, in
       eval mode and without autograd (each module's mode is restored afterwards), so two
       evaluations of the same generator give the same numbers. A conditional module is asked for
       ``n_fake // num_classes`` samples of every class;
    3. computes the features of both with the digit classifier and logs ``metrics/fd``,
       ``metrics/kid`` (and ``metrics/kid_std``), and when conditional ``metrics/class_acc`` and
       ``metrics/intra_fd``, plus the counts ``metrics/n_real`` and ``metrics/n_fake``, through
       ``pl_module.log`` (at fit end, where Lightning forbids ``log``, straight to the loggers);
    4. prints one line with the numbers and the counts.

    Every evaluation's :class:`~normapps.metrics.generative.MetricResult` objects are kept in
    :attr:`history` (a list of ``{"epoch", "step", "fd", "kid", ...}`` dicts).

    Args:
        every_n_epochs: evaluate after every this many training epochs (0: only at fit end).
        n_real: real images (fewer when the source has fewer; the count used is printed).
        n_fake: generated images (conditional: rounded down to a multiple of the class count).
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size (capped at the smaller sample count).
        seed: seed of the latent draws and of the KID subsets.
        at_fit_end: also evaluate when fit ends, unless the last epoch was just evaluated.
        features_path: a digit features file; None for the shipped ``checkpoints/digit_features.pt``.
        domain: real data when the trainer has no datamodule, a name of :func:`normapps.data.load_domain`.
        split: the split of ``domain``.
        batch_size: images per ``sample`` call and per feature batch.
        verbose: print the line of each evaluation.
    """

    def __init__(self, every_n_epochs: int = 1, n_real: int = 2000, n_fake: int = 1000, kid_subsets: int = 50,
                 kid_subset_size: int = 500, seed: int = 0, at_fit_end: bool = True, features_path: str | Path | None = None,
                 domain: str = "digits", split: str = "val", batch_size: int = 250, verbose: bool = True) -> None:
        super().__init__()
        for name, value, least in (("every_n_epochs", every_n_epochs, 0), ("n_real", n_real, 2), ("n_fake", n_fake, 2),
                                   ("kid_subsets", kid_subsets, 1), ("kid_subset_size", kid_subset_size, 2),
                                   ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        self.every_n_epochs, self.n_real, self.n_fake = every_n_epochs, n_real, n_fake
        self.kid_subsets, self.kid_subset_size, self.seed = kid_subsets, kid_subset_size, seed
        self.at_fit_end, self.features_path, self.domain, self.split = at_fit_end, features_path, domain, split
        self.batch_size, self.verbose = batch_size, verbose
        self.history: list[dict[str, Any]] = []
        self._features: DigitFeatures | None = None
        self._real: tuple[Tensor, Tensor | None] | None = None
        self._last_step: int | None = None

    # ------------------------------------------------------------------------------------- inputs

    def _extractor(self, device: torch.device) -> DigitFeatures:
        if self._features is None:
            self._features = load_digit_features(self.features_path, batch_size=self.batch_size)
        return self._features.to(device)

    def _real_images(self, trainer: pl.Trainer) -> tuple[Tensor, Tensor | None]:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and is_overridden("val_dataloader", datamodule):
            images, labels, count = [], [], 0
            for batch in datamodule.val_dataloader():
                x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) and len(batch) > 1 else (batch, None)
                images.append(x.detach().cpu())
                labels.append(None if y is None else y.detach().cpu())
                count += len(x)
                if count >= self.n_real:
                    break
            if not images:
                raise ValueError("the datamodule's val_dataloader yielded no batches; GenerativeMetrics needs real images")
            real = torch.cat(images)[: self.n_real]
            real_labels = None if any(y is None for y in labels) else torch.cat(labels)[: self.n_real]
            return real, real_labels
        images, labels = load_domain(self.domain, self.split, self._features.image_size if self._features else 32).tensors
        return images[: self.n_real] * 2 - 1, labels[: self.n_real]

    def _samples(self, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor | None]:
        conditional = bool(getattr(pl_module, "conditional", False))
        if conditional:
            num_classes = int(pl_module.num_classes)
            per_class = self.n_fake // num_classes
            if per_class < 2:
                raise ValueError(f"n_fake={self.n_fake} gives {per_class} samples per class for {num_classes} classes; "
                                 f"class-conditioned metrics need at least 2 per class (n_fake >= {2 * num_classes})")
            labels: Tensor | None = torch.arange(num_classes, device=pl_module.device).repeat_interleave(per_class)
            total = num_classes * per_class
        else:
            labels, total = None, self.n_fake
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        modes = {module: module.training for module in pl_module.modules()}
        pl_module.eval()
        try:
            with torch.no_grad():
                parts = []
                for start in range(0, total, self.batch_size):
                    n = min(self.batch_size, total - start)
                    y = None if labels is None else labels[start:start + n]
                    parts.append(pl_module.sample(n, y, generator=generator).detach())
        finally:
            for module, mode in modes.items():
                module.training = mode
        return torch.cat(parts), None if labels is None else labels.cpu()

    # --------------------------------------------------------------------------------- evaluation

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, MetricResult]:
        """Measure the current generator (steps 1-3 of the class docstring, without logging); return the results by key."""
        features = self._extractor(pl_module.device)
        if self._real is None:
            real, real_labels = self._real_images(trainer)
            self._real = (features.features(real), real_labels)
        real_features, real_labels = self._real
        fake, fake_labels = self._samples(pl_module)
        fake_features = features.features(fake)
        results = distances(real_features, fake_features, self.kid_subsets, self.kid_subset_size, self.seed)
        if fake_labels is not None:
            results["class_acc"] = class_accuracy(features, fake, fake_labels)
            if real_labels is not None:
                results["intra_fd"] = intra_class_frechet_distance(real_features, real_labels, fake_features, fake_labels)
        return results

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, use_log: bool) -> None:
        results = self.evaluate(trainer, pl_module)
        self._last_step = trainer.global_step
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **results})
        fd = results["fd"]
        metrics = {f"metrics/{key}": float(result.value) for key, result in results.items()}
        metrics.update({"metrics/kid_std": float(results["kid"].std or 0.0), "metrics/n_real": float(fd.n_real or 0),
                        "metrics/n_fake": float(fd.n_fake)})
        if use_log:
            for name, value in metrics.items():
                pl_module.log(name, value, on_step=False, on_epoch=True, batch_size=1)
        else:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        if self.verbose and trainer.is_global_zero:
            print(self.line(results, trainer.current_epoch), flush=True)

    @staticmethod
    def line(results: dict[str, MetricResult], epoch: int) -> str:
        """The printed summary: every value, then the sample counts they were computed from."""
        fd, kid = results["fd"], results["kid"]
        values = [f"FD {fd.value:.4g}", f"KID {kid.value:.4g} +- {kid.std:.2g}"]
        counts = f"{fd.n_real} real / {fd.n_fake} fake"
        if "class_acc" in results:
            values.append(f"class accuracy {results['class_acc'].value:.3f}")
            counts += f" ({results['class_acc'].details})"
        if "intra_fd" in results:
            values.append(f"intra-class FD {results['intra_fd'].value:.4g}")
        return f"generative metrics, epoch {epoch}: {', '.join(values)} ({counts}, {fd.feature_dim}-d digit features, KID {kid.details})"

    # ------------------------------------------------------------------------------------ hooks

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate after every ``every_n_epochs``-th epoch."""
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, use_log=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate the final generator unless the last epoch was just evaluated."""
        if self.at_fit_end and self._last_step != trainer.global_step:
            self._run(trainer, pl_module, use_log=False)
