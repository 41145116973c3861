"""Saving and loading pruned and folded classifiers in files that ``torch.load(weights_only=True)`` reads.

A file holds no pickled class, only plain data and tensors::

    {"format": "normapps.efficient/1",
     "task": "normapps.tasks.ClassificationTask",
     "hyper_parameters": {...},          # the ClassificationTask's, which build the original network
     "keep": {bn_name: [channel, ...]},  # kept channels of each pruned BatchNorm ({} if not pruned)
     "folded": bool,                     # BatchNorm folded into the convolutions (normapps.norm.fold)
     "preprocessing": {"image_size", "mean", "std", "origin"},
     "info": {...},                      # provenance: source file and sha256, ratio, data set, accuracy
     "state_dict": {...}}                # of the network (ClassificationTask.model), pruned / folded

Loading rebuilds the network from the hyper-parameters, removes the channels not kept
(:func:`~normapps.tasks.efficient.slimming.remove_channels`), folds if needed and loads the state
dict, which must fit exactly.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normapps import norm
from normapps.io import atomic_write
from normapps.models.pretrained import Preprocessing

from .slimming import remove_channels

FORMAT = "normapps.efficient/1"
TASK = "normapps.tasks.ClassificationTask"
DEFAULT_DOMAIN = "digits"


@dataclass
class PrunedFile:
    """A classifier read by :func:`load_model`.

    Attributes:
        model: the network in eval mode; ``model(preprocessing(images))`` gives ``(N, num_classes)`` logits.
        preprocessing: what the network expects (from the training run's datamodule).
        hyper_parameters: the ClassificationTask's, which build the unpruned network.
        keep: kept channel indices of each pruned BatchNorm (empty if not pruned).
        folded: whether BatchNorm is folded into the convolutions.
        domain: the data set the model was trained on (``digits``, ``syndigits``, ...), for evaluation.
        info: provenance recorded when the file was written (empty for a Lightning checkpoint).
    """

    model: nn.Module
    preprocessing: Preprocessing
    hyper_parameters: dict[str, Any]
    keep: dict[str, list[int]]
    folded: bool
    domain: str
    info: dict[str, Any] = field(default_factory=dict)



def build_network(hyper_parameters: Mapping[str, Any]) -> nn.Module:
    """The (unpruned, randomly initialized) network of a :class:`~normapps.tasks.ClassificationTask` with these hyper-parameters.

    Raises:
        ValueError: if the hyper-parameters do not build a ClassificationTask.
    """
    from normapps.tasks import ClassificationTask

    settings = {key: value for key, value in hyper_parameters.items() if not key.startswith("_")}
    try:
        return ClassificationTask(**settings).model
    except (TypeError, ValueError) as err:
        raise ValueError(f"the hyper-parameters {settings} do not build a ClassificationTask: {err}") from err


def rebuild(hyper_parameters: Mapping[str, Any], keep: Mapping[str, Sequence[int]], folded: bool) -> nn.Module:
    """The architecture of a saved model: built, pruned to ``keep`` and folded if ``folded`` (weights random)."""
    network = build_network(hyper_parameters)
    if keep:
        network = remove_channels(network, keep)
    return norm.fold(network) if folded else network.eval()


def check_state_dict(model: nn.Module, state: Mapping[str, Any], what: str) -> None:
    """Raise a ValueError naming the missing, unexpected and mis-shaped keys if ``state`` does not fit ``model`` exactly."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    shapes = [f"{key}: file {found[key]}, architecture {expected[key]}" for key in expected
              if key in found and found[key] != expected[key]]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            problems.append(f"{label} ({len(items)}): {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}")
    if problems:
        raise ValueError(f"{what} does not match its architecture: " + "; ".join(problems))


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    hyper_parameters: Mapping[str, Any],
    keep: Mapping[str, Sequence[int]],
    folded: bool,
    preprocessing: Preprocessing,
    domain: str = DEFAULT_DOMAIN,
    info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (a pruned and / or folded ClassificationTask network) atomically in the format above.

    The file is checked before it is written: it loads with ``weights_only=True`` and rebuilds into
    an architecture that takes the state dict exactly.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
        ValueError: if ``model`` does not match the architecture of ``hyper_parameters``, ``keep`` and ``folded``.
    """
    payload = {
        "format": FORMAT,
        "task": TASK,
        "hyper_parameters": {key: value for key, value in hyper_parameters.items() if not key.startswith("_")},
        "keep": {name: [int(i) for i in indices] for name, indices in keep.items()},
        "folded": bool(folded),
        "preprocessing": {**asdict(preprocessing), "mean": list(preprocessing.mean), "std": list(preprocessing.std)},
        "domain": domain,
        "info": dict(info or {}),
        "state_dict": {key: value.detach().cpu().clone() for key, value in model.state_dict().items()},
    }
    check_state_dict(rebuild(payload["hyper_parameters"], payload["keep"], payload["folded"]), payload["state_dict"],
                     "the model to save")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, buffer.getvalue(), overwrite=overwrite)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}: expected a normapps "
                                "ClassificationTask checkpoint or a file written by normapps slim / fold")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # bytes that are no torch file make the unpickler fail in many ways
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read {path} as a torch file ({reason[:160]})") from err


def _load_saved(path: Path, content: Mapping[str, Any]) -> PrunedFile:
    required = ("hyper_parameters", "keep", "folded", "preprocessing", "state_dict")
    missing = [key for key in required if key not in content]
    if missing or content.get("task") != TASK:
        raise ValueError(f"{path} is a {content.get('format')} file for {content.get('task')!r} without {missing}; "
                         f"expected a file of {TASK} with {', '.join(required)}")
    try:
        network = rebuild(content["hyper_parameters"], content["keep"], content["folded"])
    except ValueError as err:
        raise ValueError(f"{path} does not match its architecture: {err}") from err
    check_state_dict(network, content["state_dict"], str(path))
    network.load_state_dict(content["state_dict"])
    saved = content["preprocessing"]
    preprocessing = Preprocessing(int(saved["image_size"]), tuple(saved["mean"]), tuple(saved["std"]), str(saved["origin"]))
    return PrunedFile(network.eval(), preprocessing, dict(content["hyper_parameters"]),
                      {k: list(v) for k, v in content["keep"].items()}, bool(content["folded"]),
                      str(content.get("domain", DEFAULT_DOMAIN)), dict(content.get("info") or {}))


def _load_lightning(path: Path, content: Mapping[str, Any]) -> PrunedFile:
    from normapps.cli.adapt import load_checkpoint, training_datamodule  # raise InputError, a ValueError

    classifier = load_checkpoint(path)
    datamodule, _ = training_datamodule(content, path)
    task = classifier.module
    domain = getattr(datamodule, "source", DEFAULT_DOMAIN)
    return PrunedFile(task.model.eval(), classifier.preprocessing, dict(task.hparams), {}, False,
                      domain if isinstance(domain, str) else DEFAULT_DOMAIN)


def load_model(path: str | os.PathLike[str]) -> PrunedFile:
    """A classifier from a ``normapps fit`` checkpoint of ClassificationTask or a file of :func:`save_model`.

    A Lightning checkpoint is read with :func:`normapps.cli.adapt.load_checkpoint` (the network and
    the preprocessing of its training run); its data set is the datamodule's ``source`` domain, else
    ``digits``.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: for a file that is neither, or whose weights do not match its architecture
            (names the missing, unexpected and mis-shaped keys).
    """
    path = Path(path)
    content = _read(path)
    if isinstance(content, Mapping) and content.get("format") == FORMAT:
        return _load_saved(path, content)
    if isinstance(content, Mapping) and {"state_dict", "hyper_parameters"} <= set(content):
        return _load_lightning(path, content)
    found = f"a dict with keys {list(content)[:6]}" if isinstance(content, Mapping) else f"a {type(content).__name__}"
    raise ValueError(f"{path} is neither a normapps ClassificationTask checkpoint nor a {FORMAT} file: found {found}")
