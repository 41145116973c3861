"""timm and torchvision classifiers with weights from a local file, and the preprocessing they expect.

Nothing is downloaded: architectures are built without weights (timm ``pretrained=False``,
torchvision ``weights=None``) and the weights are read from a file the user has::

    classifier = load_pretrained("torchvision:resnet18", "resnet18.pt", num_classes=4)
    logits = classifier.module(classifier.preprocessing(images))     # images (N, 3, S, S) in [0, 1]

A weights file is a state dict (parameter and buffer names -> tensors), or a dict holding one under
``"state_dict"`` or ``"model"``, read with ``torch.load(weights_only=True)`` (no code runs). It must
fit the architecture exactly; otherwise the error summarizes the missing, unexpected and
differently shaped entries (:func:`load_weights`).

:class:`Preprocessing` turns RGB images in [0, 1] of side ``image_size`` into the model's input:
grey for one-channel models, then standardized per channel. The side and the mean / std are the
model's defaults: timm's ``resolve_data_config`` (the architecture's pretrained configuration)
and, for torchvision, the crop size and mean / std of the architecture's default weights' eval
transform. Images are resized to the side directly, without the resize-then-center-crop of those
eval transforms.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import Tensor, nn

__all__ = [
    "LIBRARIES", "LUMA", "Classifier", "Preprocessing", "build_architecture", "check_logits",
    "default_preprocessing", "load_pretrained", "load_weights", "read_state_dict",
]

#: Weights of R, G, B in the grey value of a one-channel model's input (ITU-R 601-2 luma, PIL's ``convert("L")``).
LUMA = (0.299, 0.587, 0.114)
#: Prefixes of :func:`load_pretrained`'s ``spec``.
LIBRARIES = ("timm", "torchvision")


@dataclass(frozen=True)
class Preprocessing:
    """How RGB images in [0, 1] become a model's input.

    The loader resizes every image to ``image_size``; :meth:`__call__` makes it grey (:data:`LUMA`)
    when the model has one input channel, then computes ``(x - mean[c]) / std[c]`` per channel.

    Attributes:
        image_size: side of the square images the model takes.
        mean: per input channel (its length is the number of channels, 1 or 3).
        std: per input channel.
        origin: where these values come from, in words (for reports).
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str

    def __post_init__(self) -> None:
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise ValueError(f"mean and std need 1 or 3 values each, got mean={self.mean!r}, std={self.std!r}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")

    @property
    def channels(self) -> int:
        """Input channels of the model: 1 (grey) or 3 (RGB)."""
        return len(self.mean)

    def __call__(self, images: Tensor) -> Tensor:
        """Model input ``(N, channels, S, S)`` from RGB images ``(N, 3, S, S)`` in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (N, 3, S, S), got {tuple(images.shape)}")
        if self.channels == 1:
            images = torch.einsum("nchw,c->nhw", images, images.new_tensor(LUMA)).unsqueeze(1)
        shape = (1, self.channels, 1, 1)
        return (images - images.new_tensor(self.mean).view(shape)) / images.new_tensor(self.std).view(shape)


@dataclass
class Classifier:
    """A classifier ready to evaluate or adapt.

    Attributes:
        module: the network in eval mode; ``module(preprocessing(images))`` gives ``(N, num_classes)`` logits.
        preprocessing: what the network expects.
        num_classes: outputs of the head.
        architecture: how to build the same architecture in code (its state dict has the same keys).
        build: builds a fresh, randomly initialized instance of the architecture.
    """

    module: nn.Module
    preprocessing: Preprocessing
    num_classes: int
    architecture: str
    build: Callable[[], nn.Module]


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def build_architecture(library: str, name: str, num_classes: int | None = None) -> tuple[nn.Module, str]:
    """A randomly initialized ``timm`` or ``torchvision`` classifier ``name`` and the code that builds it.

    Never downloads: timm models are created with ``pretrained=False``, torchvision ones with
    ``weights=None``. ``num_classes`` (default: the architecture's, 1000 for ImageNet models)
    sets the head.

    Raises:
        ValueError: for an unknown library or name (with the closest names), or arguments the
            architecture refuses.
    """
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if library == "timm":
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}{_close(name, timm.list_models())} (timm.list_models() lists them)")
        try:
            module = timm.create_model(name, pretrained=False, **extra)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"timm cannot build {name!r}: {err}") from err
        code = f"timm.create_model({name!r}, pretrained=False, num_classes={module.num_classes})"
        return module, code
    if library == "torchvision":
        names = torchvision.models.list_models(module=torchvision.models)
        if name not in names:
            other = " (it is not an image classifier)" if name in torchvision.models.list_models() else ""
            raise ValueError(
                f"unknown torchvision classifier {name!r}{other}{_close(name, names)} "
                "(torchvision.models.list_models(module=torchvision.models) lists them)"
            )
        try:
            module = torchvision.models.get_model(name, weights=None, **extra)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"torchvision cannot build {name!r}: {err}") from err
        arguments = "" if num_classes is None else f", num_classes={num_classes}"
        return module, f"torchvision.models.get_model({name!r}, weights=None{arguments})"
    raise ValueError(f"unknown model library {library!r}; expected one of {', '.join(LIBRARIES)}")


def default_preprocessing(library: str, name: str, module: nn.Module, image_size: int | None = None) -> Preprocessing:
    """The model's default input side and mean / std (see the module docstring); ``image_size`` overrides the side."""
    if library == "timm":
        config = timm.data.resolve_data_config({}, model=module)
        side, mean, std = config["input_size"][1], config["mean"], config["std"]
        origin = f"timm resolve_data_config of {name}"
    else:  # every torchvision classifier has default weights, whose eval transform is built without a download
        transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        side, mean, std = transform.crop_size[0], transform.mean, transform.std
        origin = f"eval transform of torchvision's default {name} weights"
    if image_size is not None:
        side, origin = image_size, f"{origin}; side {image_size} from the command line"
    return Preprocessing(int(side), tuple(map(float, mean)), tuple(map(float, std)), origin)


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        return f"a {type(obj).__name__} with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
    return f"a {type(obj).__name__}"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in the weights file ``path``: the file's dict itself, or the one under ``"state_dict"`` or ``"model"``.

    Read with ``torch.load(map_location="cpu", weights_only=True)``: tensors and plain containers only.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: if the file is not one ``torch.save`` wrote, holds other objects, or has no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} {'is a folder' if path.is_dir() else 'does not exist'}; expected a file "
                                "written by torch.save(model.state_dict(), path)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # bytes that are no torch file make the unpickler fail in many ways (struct.error, EOFError, ...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"cannot read {path} as weights: expected a file written by torch.save(model.state_dict(), path) holding "
            f"only tensors and plain containers; torch.load(weights_only=True) refused it ({reason[:200]})"
        ) from err
    if _is_state_dict(content):
        return dict(content)
    if isinstance(content, Mapping):
        for key in ("state_dict", "model"):
            if _is_state_dict(content.get(key)):
                return dict(content[key])
    raise ValueError(
        f"{path} holds {_describe(content)}; expected a state dict (names -> tensors) or a dict holding one "
        "under 'state_dict' or 'model'"
    )


def _listed(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items) - limit} more)" if len(items) > limit else shown


def _head_hint(module: nn.Module, mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> str:
    """A hint when only the last layer with parameters differs, in its output size: the head has another class count."""
    owners = [name for name, m in module.named_modules() if next(m.parameters(recurse=False), None) is not None]
    if not owners or not all(key.rsplit(".", 1)[0] == owners[-1] for key, _, _ in mismatched):
        return ""
    outputs = {found[0] for _, found, _ in mismatched if found}
    if len(outputs) != 1 or any(found[1:] != wanted[1:] for _, found, wanted in mismatched):
        return ""
    count = outputs.pop()
    return f"; the file's head ({owners[-1]}) has {count} outputs: build the model with num_classes={count} (--num-classes {count})"


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """A hint when the file's keys are the model's keys behind one extra prefix (``module.``, ``model.``)."""
    prefixes = {key.split(".", 1)[0] for key in unexpected}
    if len(prefixes) != 1 or not missing or not all("." in key for key in unexpected):
        return ""
    if not set(missing) <= {key.split(".", 1)[1] for key in unexpected}:
        return ""
    return f"; the file's keys carry the prefix {prefixes.pop() + '.'!r}: save the inner model's state dict"


def load_weights(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, target: str) -> None:
    """Load ``state_dict`` into ``module`` if it fits exactly (names and shapes), else raise a summary.

    A missing ``num_batches_tracked`` is allowed (older state dicts lack it; torch sets it to 0).

    Args:
        module: the model to load into.
        state_dict: the weights.
        source: what the weights are, for the message (``"weights file resnet.pt"``).
        target: what the model is, for the message (``"torchvision:resnet18"``).

    Raises:
        ValueError: naming the counts and the first keys missing from the file, unexpected in it,
            and of another shape, with a hint when the head size or a key prefix explains them.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [(key, tuple(state_dict[key].shape), tuple(value.shape)) for key, value in expected.items()
                  if key in state_dict and state_dict[key].shape != value.shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_listed(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_listed(unexpected)})")
        if mismatched:
            shapes = [f"{key}: file {list(found)}, model {list(wanted)}" for key, found, wanted in mismatched]
            parts.append(f"{len(mismatched)} of another shape ({_listed(shapes)})")
        hint = _head_hint(module, mismatched) if mismatched and not (missing or unexpected) else _prefix_hint(missing, unexpected)
        raise ValueError(f"{source} does not fit {target}: {'; '.join(parts)}{hint}")
    module.load_state_dict(state_dict)


def check_logits(module: nn.Module, preprocessing: Preprocessing, what: str) -> int:
    """The class count of ``module``, from one forward pass of a blank image of the expected shape.

    Raises:
        ValueError: if the model refuses that input or does not return ``(N, num_classes)`` logits.
    """
    x = torch.zeros(1, preprocessing.channels, preprocessing.image_size, preprocessing.image_size)
    try:
        with torch.no_grad():
            out = module.eval()(x)
    except RuntimeError as err:
        raise ValueError(f"{what} does not take images of shape {list(x.shape)}: {str(err).splitlines()[0]}") from err
    if not isinstance(out, Tensor) or out.dim() != 2:
        found = f"a tensor of shape {list(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        raise ValueError(f"{what} returns {found} for one image; expected class logits of shape [1, num_classes]")
    return int(out.shape[1])


def load_pretrained(spec: str, weights: str | Path, num_classes: int | None = None, image_size: int | None = None) -> Classifier:
    """A ``timm:<name>`` or ``torchvision:<name>`` classifier with the weights in the local file ``weights``.

    Args:
        spec: ``"timm:<name>"`` (any ``timm.list_models()`` name, with an optional ``.tag``) or
            ``"torchvision:<name>"`` (a classifier of ``torchvision.models``).
        weights: the weights file (see :func:`read_state_dict`).
        num_classes: classes of the head, if not the architecture's default.
        image_size: input side, if not the model's default.

    Raises:
        ValueError: for a bad ``spec``, an unknown name, a weights file that cannot be read or
            does not fit, or a model that does not give class logits for the input size.
        FileNotFoundError: if the weights file does not exist.
    """
    library, _, name = spec.partition(":")
    if library not in LIBRARIES or not name:
        raise ValueError(f"expected a model as timm:<name> or torchvision:<name>, got {spec!r}")
    state_dict = read_state_dict(weights)
    module, code = build_architecture(library, name, num_classes)
    load_weights(module, state_dict, f"weights file {weights}", f"{spec} ({code})")
    preprocessing = default_preprocessing(library, name, module, image_size)
    classes = check_logits(module, preprocessing, spec)
    return Classifier(module.eval(), preprocessing, classes, code, lambda: build_architecture(library, name, num_classes)[0])
