"""Training the style-transfer networks with Lightning: AdaIN and WCT decoders, fast (Johnson) and CIN networks.

Every task trains on :class:`~normapps.data.style.StyleDataModule` batches
``{"content", "style", "style_index"}`` and measures its losses with a frozen VGG-19 encoder
(:func:`~normapps.tasks.style.checkpoints.load_encoder`: ``encoder: random`` is a fixed random-weight
encoder of width ``encoder_width``, ``torchvision`` or a weights file a pretrained one):

* :class:`AdaINTask` -- the AdaIN decoder (Huang & Belongie, ICCV 2017): content loss of the decoded
  image's relu4_1 features against the AdaIN target plus ``style_weight`` times the mean / std style
  loss over relu1_1 .. relu4_1;
* :class:`WCTDecoderTask` -- the decoder of one encoder level for WCT (Li et al., NeurIPS 2017):
  pixel reconstruction plus ``feature_weight`` times feature reconstruction, on content and style images;
* :class:`FastStyleTask` -- Johnson et al.'s network (ECCV 2016) for one style, ``norm`` "in" or "bn":
  content loss at ``content_layer`` plus ``style_weight`` times the Gram loss over ``style_layers``
  (plus optional total variation);
* :class:`CINTask` -- the same network with conditional instance norm over all styles of the data
  (Dumoulin et al., ICLR 2017), each sample stylized with its ``style_index``.

Logged: ``train_loss`` and its parts per step and epoch, ``val_*`` per epoch. At the end of every
validation run a grid of the first validation pairs and their outputs is written to
``<log dir>/samples/epoch=E-step=S.png``. :meth:`StyleTask.stylizer_parts` gives what
:func:`~normapps.tasks.style.checkpoints.save_stylizer` stores (see
:func:`~normapps.tasks.style.checkpoints.export_from_lightning`).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import Tensor
from torchvision.utils import make_grid

from normapps.data.images import load_image, save_image
from normapps.data.style import style_image as generated_style
from normapps.data.style import style_names
from normapps.models import VGG19_LAYERS, TransformerNet, VGGDecoder
from normapps.models.vgg import DECODER_LEVELS

from .checkpoints import load_encoder
from .losses import content_loss, gram_matrix, style_loss_moments
from .transfer import adain_target

__all__ = ["AdaINTask", "CINTask", "FastStyleTask", "StyleTask", "WCTDecoderTask", "total_variation"]

_STYLE_LEVELS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
_SAMPLES = 4


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic total variation), a smoothness prior."""
    return (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (images[..., :, 1:] - images[..., :, :-1]).abs().mean()


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a number {'>=' if allow_zero else '>'} 0, got {value!r}")


def _check_layers(name: str, layers: list[str]) -> None:
    bad = [layer for layer in layers if layer not in VGG19_LAYERS[: VGG19_LAYERS.index("relu4_1") + 1]]
    if not layers or bad:
        raise ValueError(f"{name} must be a non-empty list of encoder layers up to relu4_1, got {layers!r}")


class StyleTask(LightningModule):
    """Shared frame: the frozen encoder, Adam on the trainable modules, logging and sample grids.

    Subclasses build their trainable modules, compute ``{"loss": ..., part: ...}`` in :meth:`losses`,
    show a batch in :meth:`sample_rows` and say what a stylizer file stores in :meth:`stylizer_parts`.
    """

    def __init__(self, encoder: str = "random", encoder_width: float = 0.25, encoder_seed: int = 0, lr: float = 1e-4,
                 lr_decay: float = 0.0) -> None:
        super().__init__()
        _check_positive("lr", lr)
        _check_positive("lr_decay", lr_decay, allow_zero=True)
        self.encoder = load_encoder(encoder, width=encoder_width, seed=encoder_seed).eval()
        self._sample_batch: dict[str, Tensor] | None = None

    def train(self, mode: bool = True) -> StyleTask:
        """Switch the trainable modules' mode; the encoder stays in eval mode (it is a fixed feature extractor)."""
        super().train(mode)
        self.encoder.eval()
        return self

    @abstractmethod
    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The training objective ``"loss"`` of a batch and its parts (logged with the split's prefix)."""

    @abstractmethod
    def sample_rows(self, batch: dict[str, Tensor]) -> list[Tensor]:
        """Rows of images ``(n, 3, S, S)`` for the sample grid: inputs, then outputs."""

    @abstractmethod
    def stylizer_parts(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """``(method, modules, config)`` as :func:`~normapps.tasks.style.checkpoints.save_stylizer` takes them."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The loss of one batch; logs ``train_<part>`` per step and epoch."""
        losses = self.losses(batch)
        self.log_dict({f"train_{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=True,
                      prog_bar=False, batch_size=len(batch["content"]))
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulate ``val_<part>``; keep the first pairs for the sample grid."""
        losses = self.losses(batch)
        self.log_dict({f"val_{k}": v for k, v in losses.items()}, on_epoch=True, prog_bar=True, batch_size=len(batch["content"]))
        if batch_idx == 0:
            self._sample_batch = {k: v[:_SAMPLES] for k, v in batch.items()}

    def on_validation_epoch_end(self) -> None:
        """Write the sample grid into the logger's folder (not in the sanity check, not without a logger)."""
        batch, self._sample_batch = self._sample_batch, None
        trainer = self.trainer
        if batch is None or trainer.sanity_checking or trainer.logger is None or trainer.log_dir is None:
            return
        with torch.no_grad():
            rows = [row.clamp(0, 1).cpu() for row in self.sample_rows(batch)]
        grid = make_grid(torch.cat(rows), nrow=len(rows[0]), padding=2, pad_value=1.0)
        path = Path(trainer.log_dir) / "samples" / f"epoch={trainer.current_epoch}-step={trainer.global_step}.png"
        save_image(grid, path, overwrite=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task's class, for :func:`~normapps.tasks.style.checkpoints.export_from_lightning`."""
        checkpoint["normapps_style_task"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam on the trainable parameters; the learning rate decays as ``lr / (1 + lr_decay * step)`` (the AdaIN port's schedule)."""
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)
        decay = self.hparams.lr_decay
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + decay * step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class AdaINTask(StyleTask):
    """Train the AdaIN decoder for a frozen encoder (Huang & Belongie, ICCV 2017, Sec. 6).

    ``t = AdaIN(f(c), f(s))``; the decoder ``g`` maps ``t`` to an image; the loss is
    ``MSE(f(g(t)), t) + style_weight * sum_l [MSE(mu(phi_l(g(t))), mu(phi_l(s))) + MSE(sigma(...), sigma(...))]``
    over ``phi_l`` = relu1_1, relu2_1, relu3_1, relu4_1. The decoder has the encoder's width.

    ``identity_weight`` adds ``MSE(g(f(c)), c)``, the pixel identity loss of Park & Lee (SANet, CVPR 2019):
    decoding the content's own features must give the content back. The paper's loss has none (0, the
    default). With a fixed *random* encoder it is needed: feature losses alone let the decoder satisfy
    them with images that match the random features but not the picture (stripes, no content).
    """

    def __init__(self, encoder: str = "random", encoder_width: float = 0.25, encoder_seed: int = 0, style_weight: float = 10.0,
                 identity_weight: float = 0.0, lr: float = 1e-4, lr_decay: float = 5e-5) -> None:
        """Initialize the task.

        Args:
            encoder: ``"random"``, ``"torchvision"`` or a weights file (see :func:`~normapps.tasks.style.checkpoints.load_encoder`).
            encoder_width: width of the random encoder (and so of the decoder).
            encoder_seed: seed of the random encoder.
            style_weight: lambda of the style loss (the paper: 10).
            identity_weight: weight of the pixel identity loss ``MSE(g(f(c)), c)`` (the paper: 0).
            lr: Adam learning rate (the paper: 1e-4).
            lr_decay: ``lr / (1 + lr_decay * step)`` (the authors' port: 5e-5).
        """
        super().__init__(encoder, encoder_width, encoder_seed, lr, lr_decay)
        _check_positive("style_weight", style_weight, allow_zero=True)
        _check_positive("identity_weight", identity_weight, allow_zero=True)
        self.save_hyperparameters()
        self.decoder = VGGDecoder(self.encoder.width, "relu4_1")

    def forward(self, content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        """Stylized images (not clamped) of the same size as ``content``."""
        target = adain_target(self.encoder(content), self.encoder(style), alpha=alpha)
        return self.decoder(target, size=content.shape[-2:])

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hp = self.hparams
        with torch.no_grad():
            style_features = self.encoder.features(batch["style"], _STYLE_LEVELS)
            content_features = self.encoder(batch["content"])
            target = adain_target(content_features, style_features["relu4_1"])
        features = self.encoder.features(self.decoder(target), _STYLE_LEVELS)
        content = content_loss(features["relu4_1"], target)
        style = style_loss_moments(features, style_features)
        losses = {"loss": content + hp.style_weight * style, "content_loss": content, "style_loss": style}
        if hp.identity_weight > 0:
            identity = F.mse_loss(self.decoder(content_features, size=batch["content"].shape[-2:]), batch["content"])
            losses["loss"] = losses["loss"] + hp.identity_weight * identity
            losses["identity_loss"] = identity
        return losses

    def sample_rows(self, batch: dict[str, Tensor]) -> list[Tensor]:
        return [batch["content"], batch["style"], self(batch["content"], batch["style"])]

    def stylizer_parts(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return "adain", {"encoder": self.encoder, "decoder": self.decoder}, {}


class WCTDecoderTask(StyleTask):
    """Train the decoder of one encoder level for WCT (Li et al., NeurIPS 2017, Sec. 3.1).

    Loss ``MSE(g(f(x)), x) + feature_weight * MSE(f(g(f(x))), f(x))`` with ``f`` the encoder to
    ``level``, on the content and the style images of each batch (the decoder must invert features
    of both, and of their mixtures).
    """

    def __init__(self, level: str = "relu4_1", encoder: str = "random", encoder_width: float = 0.25, encoder_seed: int = 0,
                 feature_weight: float = 1.0, lr: float = 1e-4, lr_decay: float = 0.0) -> None:
        """Initialize the task.

        Args:
            level: the encoder level the decoder inverts, one of relu1_1, relu2_1, relu3_1, relu4_1.
            encoder: ``"random"``, ``"torchvision"`` or a weights file.
            encoder_width: width of the random encoder (and so of the decoder).
            encoder_seed: seed of the random encoder.
            feature_weight: weight of the feature reconstruction loss (Li et al.: 1).
            lr: Adam learning rate.
            lr_decay: ``lr / (1 + lr_decay * step)``.
        """
        super().__init__(encoder, encoder_width, encoder_seed, lr, lr_decay)
        if level not in DECODER_LEVELS:
            raise ValueError(f"level must be one of {', '.join(DECODER_LEVELS)}, got {level!r}")
        _check_positive("feature_weight", feature_weight, allow_zero=True)
        self.save_hyperparameters()
        self.decoder = VGGDecoder(self.encoder.width, level)

    def forward(self, images: Tensor) -> Tensor:
        """Reconstructions of ``images`` through the encoder level and the decoder."""
        level = self.hparams.level
        return self.decoder(self.encoder.features(images, [level])[level], size=images.shape[-2:])

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        level = self.hparams.level
        images = torch.cat([batch["content"], batch["style"]])
        with torch.no_grad():
            features = self.encoder.features(images, [level])[level]
        decoded = self.decoder(features, size=images.shape[-2:])
        pixel = F.mse_loss(decoded, images)
        feature = content_loss(self.encoder.features(decoded, [level])[level], features)
        return {"loss": pixel + self.hparams.feature_weight * feature, "pixel_loss": pixel, "feature_loss": feature}

    def sample_rows(self, batch: dict[str, Tensor]) -> list[Tensor]:
        images = torch.cat([batch["content"][:2], batch["style"][:2]])
        return [images, self(images)]

    def stylizer_parts(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return "wct", {"encoder": self.encoder, "decoders": {self.hparams.level: self.decoder}}, {}


class _PerceptualTask(StyleTask):
    """Johnson et al.'s perceptual loss: content at one layer, Gram style loss over several, total variation."""

    def __init__(self, encoder: str, encoder_width: float, encoder_seed: int, lr: float, lr_decay: float, content_layer: str,
                 style_layers: list[str], content_weight: float, style_weight: float, tv_weight: float) -> None:
        super().__init__(encoder, encoder_width, encoder_seed, lr, lr_decay)
        _check_layers("content_layer", [content_layer])
        _check_layers("style_layers", list(style_layers))
        for name, value in (("content_weight", content_weight), ("style_weight", style_weight), ("tv_weight", tv_weight)):
            _check_positive(name, value, allow_zero=True)

    def style_grams(self, images: Tensor) -> dict[str, Tensor]:
        """Gram matrices ``(N, C, C)`` of ``images``' features at every style layer (the style targets)."""
        with torch.no_grad():
            return {level: gram_matrix(f) for level, f in self.encoder.features(images, self.hparams.style_layers).items()}

    def perceptual(self, content: Tensor, stylized: Tensor, style_grams: dict[str, Tensor]) -> dict[str, Tensor]:
        """The loss parts; ``style_grams`` are the targets ``(1 or N, C, C)`` per style layer.

        The style part is :func:`~normapps.tasks.style.losses.style_loss_gram` on precomputed targets:
        the sum over layers of the mean squared difference of the Gram matrices, averaged over the batch.
        """
        hp = self.hparams
        layers = list(dict.fromkeys([*hp.style_layers, hp.content_layer]))
        with torch.no_grad():
            content_target = self.encoder.features(content, [hp.content_layer])[hp.content_layer]
        features = self.encoder.features(stylized, layers)
        content_part = content_loss(features[hp.content_layer], content_target)
        style_part = sum((gram_matrix(features[level]) - style_grams[level]).square().flatten(1).mean(1)
                         for level in hp.style_layers).mean()
        tv = total_variation(stylized)
        loss = hp.content_weight * content_part + hp.style_weight * style_part + hp.tv_weight * tv
        return {"loss": loss, "content_loss": content_part, "style_loss": style_part, "tv_loss": tv}


class FastStyleTask(_PerceptualTask):
    """Johnson et al.'s feed-forward network for one style (ECCV 2016), ``norm`` "in" (Ulyanov et al.) or "bn".

    The Gram targets come from the whole style image at ``style_size`` pixels, encoded once. Its scale
    matters: the network learns the style's patterns at the size they have in that image.
    """

    def __init__(self, style_image: str = "mosaic", style_size: int = 256, norm: str = "in", width: float = 0.25,
                 content_layer: str = "relu2_1", style_layers: list[str] | None = None, content_weight: float = 1.0,
                 style_weight: float = 10.0, tv_weight: float = 0.0, encoder: str = "random", encoder_width: float = 0.25,
                 encoder_seed: int = 0, lr: float = 1e-3, lr_decay: float = 0.0) -> None:
        """Initialize the task.

        Args:
            style_image: the name of a generated style (:func:`~normapps.data.style.style_names`) or an image file
                (not ``style``: that key is the datamodule's style folder).
            style_size: side (generated) or shorter side (file) of the style image in pixels.
            norm: ``"in"`` or ``"bn"`` (or another activation normalization) in the network.
            width: channel multiplier of the network (base 32 / 64 / 128).
            content_layer: encoder layer of the content loss.
            style_layers: encoder layers of the Gram loss (default relu1_1 .. relu4_1).
            content_weight, style_weight, tv_weight: weights of the loss terms.
            encoder, encoder_width, encoder_seed: the loss network (see :class:`AdaINTask`).
            lr: Adam learning rate (Johnson et al.: 1e-3).
            lr_decay: ``lr / (1 + lr_decay * step)``.
        """
        style_layers = list(style_layers) if style_layers is not None else list(_STYLE_LEVELS)
        super().__init__(encoder, encoder_width, encoder_seed, lr, lr_decay, content_layer, style_layers, content_weight,
                         style_weight, tv_weight)
        if norm == "cin":
            raise ValueError("FastStyleTask trains one style; use CINTask for a conditional-IN network")
        self.save_hyperparameters()
        self.hparams.style_layers = style_layers
        self.network = TransformerNet(width, norm)
        for level, gram in self.style_grams(self._read_style(style_image, style_size)).items():
            self.register_buffer(f"gram_{level}", gram, persistent=False)

    @staticmethod
    def _read_style(style: str, size: int) -> Tensor:
        if style in style_names():
            return generated_style(style, size=size)[None]
        path = Path(style)
        if not path.is_file():
            raise ValueError(f"style_image must be a generated style ({', '.join(style_names())}) or an image file; got {style!r}")
        return load_image(path, size=size)[None]

    @property
    def style_name(self) -> str:
        """The style's name: the generated style's, or the image file's stem."""
        style = self.hparams.style_image
        return style if style in style_names() else Path(style).stem

    def forward(self, content: Tensor) -> Tensor:
        return self.network(content)

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        grams = {level: getattr(self, f"gram_{level}") for level in self.hparams.style_layers}
        return self.perceptual(batch["content"], self.network(batch["content"]), grams)

    def sample_rows(self, batch: dict[str, Tensor]) -> list[Tensor]:
        return [batch["content"], self(batch["content"])]

    def stylizer_parts(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return "fast", {"network": self.network}, {"styles": [self.style_name]}


class CINTask(_PerceptualTask):
    """Johnson et al.'s network with conditional instance norm over several styles (Dumoulin et al., ICLR 2017).

    Each sample is stylized with its batch ``style_index``. Its Gram targets come from the whole style
    image at ``style_size`` pixels (generated styles by name, or the datamodule's style files), encoded
    once when training starts, as in :class:`FastStyleTask`; with ``style_size=None`` from the batch's
    crop of the style image (at the datamodule's ``resize``: the patterns are then learned at that
    smaller scale, and a random encoder's Gram loss drives the network to fine horizontal scan lines).
    ``style_names`` (the names of the style indices) default to the datamodule's ``style_labels``,
    read when training starts and saved with the checkpoint.
    """

    def __init__(self, style_names: list[str] | None = None, style_size: int | None = 256, width: float = 0.25,
                 content_layer: str = "relu2_1",
                 style_layers: list[str] | None = None, content_weight: float = 1.0, style_weight: float = 10.0,
                 tv_weight: float = 0.0, encoder: str = "random", encoder_width: float = 0.25, encoder_seed: int = 0,
                 lr: float = 1e-3, lr_decay: float = 0.0) -> None:
        """Initialize the task.

        Args:
            style_names: the style names, one per style index; None: the datamodule's ``style_labels`` (not
                ``styles``: that key is the datamodule's).
            style_size: side (generated) or shorter side (file) of the style images of the Gram targets;
                None: the batch's style crops.
            width: channel multiplier of the network.
            content_layer, style_layers, content_weight, style_weight, tv_weight: the loss (see :class:`FastStyleTask`).
            encoder, encoder_width, encoder_seed: the loss network.
            lr: Adam learning rate.
            lr_decay: ``lr / (1 + lr_decay * step)``.
        """
        style_layers = list(style_layers) if style_layers is not None else list(_STYLE_LEVELS)
        super().__init__(encoder, encoder_width, encoder_seed, lr, lr_decay, content_layer, style_layers, content_weight,
                         style_weight, tv_weight)
        if style_names is not None and (isinstance(style_names, str) or not style_names or len(set(style_names)) != len(style_names)):
            raise ValueError(f"style_names must be a non-empty list of distinct names, got {style_names!r}")
        self.save_hyperparameters()
        self.hparams.style_layers = style_layers
        self.network: TransformerNet | None = None
        if style_names is not None:
            self._build(list(style_names))

    def _build(self, names: list[str]) -> None:
        self.hparams.style_names = names
        self.network = TransformerNet(self.hparams.width, "cin", num_styles=len(names))

    def setup(self, stage: str) -> None:
        """Take the style names from the datamodule (if not given) and build the network."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        labels = getattr(datamodule, "style_labels", None)
        if self.network is None:
            if labels is None:
                raise ValueError("CINTask needs style_names=[...] or a datamodule with style_labels (e.g. StyleDataModule)")
            self._build(list(labels))
        elif labels is not None and list(labels) != list(self.hparams.style_names):
            raise ValueError(f"the network was built for styles {self.hparams.style_names}, the data has {list(labels)}")
        if stage == "fit" and self.hparams.style_size is not None and not hasattr(self, "gram_" + self.hparams.style_layers[0]):
            files = getattr(datamodule, "style_files", None)
            sources = [str(path) for path in files] if files is not None else list(self.hparams.style_names)
            images = [FastStyleTask._read_style(source, self.hparams.style_size) for source in sources]
            grams = [self.style_grams(image) for image in images]  # one image at a time: file sizes differ
            for level in self.hparams.style_layers:
                self.register_buffer(f"gram_{level}", torch.cat([g[level] for g in grams]).to(self.device), persistent=False)

    def forward(self, content: Tensor, style: int | Tensor) -> Tensor:
        if self.network is None:
            raise RuntimeError("the network is built when training starts (or give style_names=)")
        return self.network(content, style)

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        index = batch["style_index"]
        if hasattr(self, "gram_" + self.hparams.style_layers[0]):
            grams = {level: getattr(self, f"gram_{level}")[index] for level in self.hparams.style_layers}
        else:
            grams = self.style_grams(batch["style"])
        return self.perceptual(batch["content"], self(batch["content"], index), grams)

    def sample_rows(self, batch: dict[str, Tensor]) -> list[Tensor]:
        return [batch["content"], batch["style"], self(batch["content"], batch["style_index"])]

    def stylizer_parts(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return "cin", {"network": self.network}, {"styles": list(self.hparams.style_names)}
