"""The feature space of the generative metrics: a digit classifier that the project trains and ships.

Inception features need a download and describe natural photographs; for 32x32 digits the common
offline practice is the penultimate layer of a classifier trained on the real data. The shipped
``checkpoints/digit_features.pt`` is a :class:`DigitNet` trained by :mod:`normapps.metrics.train`
on the embedded ``digits`` and ``syndigits`` training splits; it takes RGB images ``(N, 3, 32, 32)``
in [-1, 1], the output range of the GAN generators.

A features file is one ``torch.save``'d dict::

    {"format": "normapps-digit-features", "version": 1,
     "architecture": {"type": "DigitNet", "num_classes": 10, "width": ..., "in_channels": 3, "norm": "bn"},
     "input": {"size": 32, "channels": 3, "range": [-1.0, 1.0]},
     "training": {"command": ..., "data": ..., "steps": ..., ...},
     "test_accuracy": {"digits": ..., "syndigits": ...},
     "state_dict": {...}}

::

    features = load_digit_features()                 # checkpoints/digit_features.pt of the repository
    real = features.features(real_images)            # (N, feature_dim), images in [-1, 1]
    fake = features.features(generator_samples)
    frechet_distance(real, fake)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import normapps
from normapps.io import atomic_path
from normapps.models import build_norm, check_norm_name

__all__ = ["FILE_NAME", "FORMAT", "TRAIN_COMMAND", "DigitFeatures", "DigitNet", "checkpoint_path", "load_digit_features",
           "save_digit_features", "standardize_grey"]

FORMAT = "normapps-digit-features"
VERSION = 1
#: Name of the shipped file in ``checkpoints/``.
FILE_NAME = "digit_features.pt"
#: How the shipped file is made.
TRAIN_COMMAND = "python -m normapps.metrics.train --out checkpoints/digit_features.pt"
_RANGE_SLACK = 1e-3


def standardize_grey(images: Tensor, eps: float = 1e-2) -> Tensor:
    """Grey level (channel mean) standardized per image: zero mean, unit standard deviation over its pixels.

    ``(N, C, H, W) -> (N, 1, H, W)``. The per-image contrast normalization of digit-recognition
    pipelines (e.g. the local contrast normalization of Sermanet et al. 2012 on SVHN, here global):
    the rendered digits come in any colours and contrasts, which the classifier should not have to
    learn. ``eps`` keeps flat images finite.
    """
    grey = images.mean(1, keepdim=True)
    std, mean = torch.std_mean(grey, dim=(2, 3), keepdim=True)
    return (grey - mean) / (std + eps)


class DigitNet(nn.Module):
    """Grey standardization, five conv blocks (conv 3x3 -> norm -> ReLU), global average pooling, a linear head.

    The input is first reduced to its grey level and standardized per image (:func:`standardize_grey`),
    so the network, and the features, ignore colour and global brightness and contrast.

    Widths ``w, w, 2w, 2w, 4w``; blocks 2, 4 and 5 halve the resolution (32 -> 16 -> 8 -> 4 on 32x32
    input), giving a receptive field that covers the whole digit. The pooled ``4w`` channels are the
    features (:meth:`features`); convolutions have no bias (the normalization adds its own).

    >>> DigitNet(width=8)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3, norm: str = "bn") -> None:
        """Initialize the network.

        Args:
            num_classes: outputs of the linear head.
            width: channels of the first block; the features have ``4 * width`` dimensions.
            in_channels: channels of the input images (checked by :class:`DigitFeatures`; reduced to grey).
            norm: normalization after every convolution, an activation or whitening method of
                :func:`normapps.norm.available`.
        """
        super().__init__()
        check_norm_name(norm)
        for name, value in (("num_classes", num_classes), ("width", width), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_classes, self.width, self.in_channels, self.norm = num_classes, width, in_channels, norm
        plan = [(1, width, 1), (width, width, 2), (width, 2 * width, 1), (2 * width, 2 * width, 2),
                (2 * width, 4 * width, 2)]
        blocks: list[nn.Module] = []
        for c_in, c_out, stride in plan:
            blocks += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), build_norm(norm, c_out), nn.ReLU()]
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    @property
    def feature_dim(self) -> int:
        """Dimension of :meth:`features`: ``4 * width``."""
        return 4 * self.width

    def architecture(self) -> dict[str, Any]:
        """The constructor arguments, as stored in a features file."""
        return {"type": "DigitNet", "num_classes": self.num_classes, "width": self.width, "in_channels": self.in_channels,
                "norm": self.norm}

    def features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(N, 4 * width)`` of images ``(N, in_channels, H, W)``."""
        return self.body(standardize_grey(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, num_classes)`` of images ``(N, in_channels, H, W)``."""
        return self.head(self.features(x))


class DigitFeatures(nn.Module):
    """A trained :class:`DigitNet` as a fixed feature extractor: eval mode, batched, no autograd.

    Inputs are checked against what the network was trained on (``image_size``, three channels,
    values in [-1, 1]); outputs come back on the CPU in float32, inputs may live anywhere (they are
    moved to the network's device batch by batch). Move the extractor with ``.to(device)``.

    Args:
        network: the trained network (put in eval mode, parameters frozen).
        image_size: side of the square training images.
        info: the file's metadata (``training``, ``test_accuracy``, ...), kept as :attr:`info`.
        batch_size: images per forward pass.
    """

    def __init__(self, network: DigitNet, image_size: int = 32, info: Mapping[str, Any] | None = None, batch_size: int = 500) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.image_size, self.batch_size = image_size, batch_size
        self.info = dict(info or {})
        self.eval()

    @property
    def feature_dim(self) -> int:
        """Dimension of :meth:`features`."""
        return self.network.feature_dim

    def train(self, mode: bool = True) -> DigitFeatures:
        """Stay in eval mode: the extractor's batch norm always uses its running statistics."""
        return super().train(False)

    def _check(self, images: Tensor) -> None:
        expected = (self.network.in_channels, self.image_size, self.image_size)
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected images (N, {', '.join(map(str, expected))}) in [-1, 1], got {shape}; "
                             f"resize to {self.image_size}x{self.image_size} first")
        if images.numel() and (float(images.min()) < -1 - _RANGE_SLACK or float(images.max()) > 1 + _RANGE_SLACK):
            raise ValueError(f"expected images in [-1, 1] (the generators' output range), got values in "
                             f"[{float(images.min()):.3g}, {float(images.max()):.3g}]; map [0, 1] images with 2 * x - 1")

    def _batched(self, images: Tensor, fn: Any) -> Tensor:
        self._check(images)
        device = next(self.network.parameters()).device
        with torch.inference_mode():
            parts = [fn(batch.to(device, torch.float32)).float().cpu() for batch in images.split(self.batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.feature_dim)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features ``(N, feature_dim)`` of images ``(N, 3, S, S)`` in [-1, 1]."""
        return self._batched(images, self.network.features)

    def logits(self, images: Tensor) -> Tensor:
        """Class logits ``(N, num_classes)`` of images ``(N, 3, S, S)`` in [-1, 1]."""
        return self._batched(images, self.network)

    def forward(self, images: Tensor) -> Tensor:
        """Same as :meth:`features`."""
        return self.features(images)


def checkpoint_path() -> Path:
    """Where the shipped features file lives: ``checkpoints/digit_features.pt`` of the repository."""
    return Path(normapps.__file__).resolve().parents[1] / "checkpoints" / FILE_NAME


def save_digit_features(path: str | Path, network: DigitNet, training: Mapping[str, Any], test_accuracy: Mapping[str, float],
                        image_size: int = 32, overwrite: bool = False) -> Path:
    """Write ``network`` as a features file (see the module docstring), atomically, in float32.

    Args:
        path: the file to write.
        network: the trained network.
        training: how it was trained (command, data, steps, ...), stored as is.
        test_accuracy: accuracy on each held-out test split, by domain name.
        image_size: side of the training images.
        overwrite: replace an existing file (else :class:`FileExistsError`).
    """
    payload = {
        "format": FORMAT, "version": VERSION, "architecture": network.architecture(),
        "input": {"size": image_size, "channels": network.in_channels, "range": [-1.0, 1.0]},
        "training": dict(training), "test_accuracy": dict(test_accuracy),
        "state_dict": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_digit_features(path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 500) -> DigitFeatures:
    """Load a features file: the shipped ``checkpoints/digit_features.pt`` by default.

    Args:
        path: a file written by :func:`save_digit_features` (``python -m normapps.metrics.train``).
        device: where the network runs.
        batch_size: images per forward pass.

    Raises:
        FileNotFoundError: when the file is missing (for the shipped one, with the command that makes it).
        ValueError: when the file is not a features file.
    """
    if path is None:
        path = checkpoint_path()
        if not path.is_file():
            raise FileNotFoundError(f"the shipped digit classifier {path} is missing; train it with: {TRAIN_COMMAND}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"digit features file {path} not found")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, Mapping) else type(payload).__name__
        raise ValueError(f"{path} is not a digit features file (expected format {FORMAT!r}, found {found!r}); write one with "
                         f"{TRAIN_COMMAND}")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path} has features-file version {payload.get('version')!r}; this normapps reads version {VERSION}")
    arguments = {k: v for k, v in payload["architecture"].items() if k != "type"}
    if payload["architecture"].get("type") != "DigitNet":
        raise ValueError(f"{path} holds an unknown architecture {payload['architecture'].get('type')!r} (expected 'DigitNet')")
    network = DigitNet(**arguments)
    network.load_state_dict(payload["state_dict"])
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["path"] = str(path)
    return DigitFeatures(network, image_size=int(payload["input"]["size"]), info=info, batch_size=batch_size).to(device)
