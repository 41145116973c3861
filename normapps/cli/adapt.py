"""``normapps adapt``: adapt a trained classifier to unlabelled target images, without writing code.

::

    normapps adapt --model MODEL [--weights FILE] [--num-classes K] --target TARGET [--split test]
                   --method adabn|norm|prior|tent [--batch-size 64] [--image-size N]
                   [--prior-strength 16] [--lr 1e-3] [--episodic] [--max-batches N]
                   --out DIR [--overwrite] [--seed 0]          (normapps adapt --help: every option)

``--model`` is a normapps checkpoint of :class:`~normapps.tasks.ClassificationTask` (rebuilt from its
hyper-parameters), or ``timm:<name>`` / ``torchvision:<name>`` built without downloading anything and
loaded from ``--weights`` (see :mod:`normapps.models.pretrained`). Images are preprocessed as the
model was trained: for a checkpoint, as the datamodule of its run -- recorded in the checkpoint's
datamodule hyper-parameters, else in the ``config.yaml`` that ``normapps fit`` writes next to its
``checkpoints/`` folder, else :class:`~normapps.data.DigitsDataModule` with its defaults -- does:
its ``image_size``, and its ``mean`` / ``std`` where it has them (DigitsDataModule: the training
split's pixel statistics; none: images in [0, 1]), grey when the model has one input channel; for
timm / torchvision, the model's default configuration. ``--image-size`` overrides the side.

``--target`` is an image folder (``<folder>/<class>/<image>``, ``<folder>/<split>/<class>/<image>``,
or a flat ``<folder>/<image>`` without labels) or a data set name of
:func:`normapps.data.available_domains` (``--corruption`` / ``--severity`` for ``digits_c`` and
``cifar10_c``, ``--root`` for real data sets). Class folders, in sorted order, are the model's
classes 0, 1, ...; their count must match the model's head (``--unlabelled`` ignores them). Image
files that do not decode are skipped with a warning. Embedded data sets are generated with their
default seed; ``--seed`` fixes the random order of the target batches, the same in every pass
(a batch of one image is merged into the one before it).

Writes into ``--out``, atomically, refusing to replace either file without ``--overwrite``:

``adapted.pt``
    a state dict with the keys of the input model (it loads into the same architecture: the
    report's ``checkpoint.load_with``). ``norm``, ``prior`` and ``tent`` adapt at test time, batch
    by batch; their checkpoint is the closest static model, to use in eval mode like any other:

    ``adabn``  the source weights with every BatchNorm's running statistics set to the exact pooled
               statistics of its input over the target set (AdaBN's adapted model itself).
    ``norm``   the same as ``adabn``: the whole-target-set limit of normalizing by batch statistics.
    ``prior``  running statistics ``p * source + (1 - p) * target`` with ``p = N / (N + n)``, the
               weight the method gives the source statistics in a full batch (``N`` =
               ``--prior-strength``, ``n`` = ``--batch-size``); ``target`` are the pooled
               statistics of each layer's input over the target set with the prior's own
               normalization at work (biased variance, as the method mixes it).
    ``tent``   the BatchNorm affine parameters after one online pass of tent over the target set
               (with ``--episodic``: the source ones, reset after every batch) and, as running
               statistics, the exact pooled target statistics of that model (AdaBN on it).

``report.json``
    ``command``; ``options`` (every option's value); ``method`` (name, summary, paper, the options it used); ``model`` (spec, weights or
    checkpoint file with its sha256, ``architecture``, ``num_classes``, BatchNorm layers,
    ``preprocessing``, device); ``target`` (name, split, ``images``, ``skipped_files``,
    ``used_images`` and ``batches`` after ``--max-batches``, ``batch_size``, ``labelled``,
    ``num_classes``, ``class_names``); ``checkpoint`` (file, ``contains``, ``load_with``);
    ``accuracy`` where labels exist: ``source`` (before adaptation), ``online`` (the method as it
    runs: each batch predicted as it arrives -- tent before its step on it; for adabn the adapted
    model) and ``checkpoint`` (``adapted.pt`` in eval mode), else null; ``statistics_shift`` per
    BatchNorm layer that keeps running statistics (below).

Statistics shift of a BatchNorm layer, averaged over its ``C`` channels: with ``mu_s``, ``v_s`` the
source running mean and variance and ``mu_t``, ``v_t`` the exact mean and (biased) variance of the
layer's input over the target set while every BatchNorm normalizes with batch statistics -- the
statistics AdaBN installs, from :func:`normapps.norm.capture` -- and the layer's ``eps`` added to
both variances::

    mean_shift     = mean_c |mu_t - mu_s| / sqrt(v_s)
    log_var_ratio  = mean_c log(v_t / v_s)
    symmetric_kl   = mean_c KL(N_s || N_t) + KL(N_t || N_s)
                   = mean_c (v_s / v_t + v_t / v_s - 2) / 2 + (mu_t - mu_s)^2 (1 / v_s + 1 / v_t) / 2

(nats; ``N_s``, ``N_t`` the per-channel Gaussians). Bad input -- a missing file, an empty,
unreadable or unfit target folder, a model without the BatchNorm the method needs, a class-count
mismatch, weights that do not fit the architecture, an unknown model name -- ends with exit status
2 and one line on stderr that says what was expected and what was found.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import json
import os
import shlex
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from pytorch_lightning import LightningDataModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from normapps.cli.arguments import InputError, nonnegative_float, nonnegative_int, positive_float, positive_int, torch_device
from normapps.data import DigitsDataModule, available_domains, load_domain
from normapps.data.real import FOLDER_LAYOUT, ImageFiles
from normapps.io import atomic_write, check_overwrite, sha256
from normapps.models.pretrained import LIBRARIES, Classifier, Preprocessing, check_logits, load_pretrained, load_weights
from normapps.norm import capture, source_prior, use_batch_stats
from normapps.norm.stats import LayerStats, is_norm_layer
from normapps.tasks import ClassificationTask
from normapps.tasks.adaptation import METHODS, Tent, adapt, applicable_methods, predict_stream, statistics_shift

T = TypeVar("T")
PROG = "normapps adapt"
CHOICES = ("adabn", "norm", "prior", "tent")
OUTPUT_FILES = ("adapted.pt", "report.json")
#: Classes of every named data set of :func:`normapps.data.available_domains` (digits or CIFAR-10).
NAMED_DOMAIN_CLASSES = 10

CONTENTS = {
    "adabn": "the source weights with every BatchNorm's running_mean / running_var set to the exact pooled statistics of "
             "its input over the target set (unbiased variance): AdaBN's adapted model itself",
    "norm": "norm normalizes each test batch with its own statistics, which no static model does; the checkpoint is its "
            "whole-target-set limit: the source weights with the exact pooled target statistics, the same as --method adabn",
    "prior": "the source weights with running statistics p * source + (1 - p) * target, p = N / (N + n) = {p:.4g} (N = "
             "--prior-strength {n_source:g}, n = batch size {n}), target = the pooled statistics of each layer's input over the "
             "target set under the prior's own normalization (biased variance): the mix the method applies to a full batch",
    "tent": "the BatchNorm affine parameters after one online pass of tent over the target set{episodic}, with the exact "
            "pooled target statistics of that model as running statistics (AdaBN on it)",
}


def _image_size(text: str) -> int:
    value = int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"expected an integer >= 8, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = argparse.ArgumentParser(prog=PROG, description="Adapt a trained classifier to unlabelled target images.",
                                     epilog="methods: " + "; ".join(f"{m}: {METHODS[m].summary}" for m in CHOICES)
                                     + ". adapted.pt is a state dict of the model's architecture; report.json says what it holds "
                                     "for the method (checkpoint.contains) and, where the target has labels, the accuracy "
                                     "before, online and with adapted.pt.")
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="a normapps ClassificationTask checkpoint, or timm:<name> / torchvision:<name>")
    model.add_argument("--weights", metavar="FILE", help="local weights file of a timm / torchvision model (a state dict)")
    model.add_argument("--num-classes", type=positive_int, metavar="K",
                       help="classes of a timm / torchvision head (default: the architecture's)")
    model.add_argument("--image-size", type=_image_size, metavar="N", help="side of the model's input images (default: the model's)")
    target = parser.add_argument_group("target")
    target.add_argument("--target", required=True,
                        help=f"an image folder ({FOLDER_LAYOUT}) or one of {', '.join(available_domains())}")
    target.add_argument("--split", default="test", choices=("train", "val", "test"), help="(default: %(default)s)")
    target.add_argument("--corruption", metavar="NAME", help="corruption of digits_c / cifar10_c")
    target.add_argument("--severity", type=int, choices=range(1, 6), help="severity of digits_c / cifar10_c (1-5)")
    target.add_argument("--root", metavar="DIR", help="folder of a real data set (mnist, usps, svhn, cifar10, cifar10_c)")
    target.add_argument("--unlabelled", action="store_true", help="ignore the target's labels (no accuracy, no class-count check)")
    method = parser.add_argument_group("method")
    method.add_argument("--method", required=True, choices=CHOICES)
    method.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="target images per batch (default: %(default)s)")
    method.add_argument("--max-batches", type=positive_int, metavar="N", help="use only the first N batches of the target set")
    method.add_argument("--prior-strength", type=nonnegative_float, default=16.0, metavar="N",
                        help="prior: pseudo sample size N of the source statistics (default: %(default)s)")
    method.add_argument("--lr", type=positive_float, default=1e-3, help="tent: Adam learning rate (default: %(default)s)")
    method.add_argument("--episodic", action="store_true", help="tent: reset the affine parameters after every batch")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help=f"folder of {' and '.join(OUTPUT_FILES)}")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs (else refuse)")
    run.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the target batch order (default: %(default)s)")
    run.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu", help="(default: %(default)s)")
    run.add_argument("--workers", type=nonnegative_int, default=0, metavar="N", help="data loading subprocesses (default: %(default)s)")
    return parser


# ---------------------------------------------------------------------------------------------- model


def _read_checkpoint(path: Path) -> Mapping[str, Any]:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # bytes that are no torch file make the unpickler fail in many ways (struct.error, EOFError, ...)
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(f"cannot read checkpoint {path}: expected a Lightning checkpoint of normapps.tasks.ClassificationTask "
                         f"({reason[:160]})") from err
    if not isinstance(content, Mapping) or not {"state_dict", "hyper_parameters"} <= set(content):
        found = f"a dict with keys {list(content)[:6]}" if isinstance(content, Mapping) else f"a {type(content).__name__}"
        raise InputError(
            f"{path} is not a normapps checkpoint: expected a Lightning checkpoint with 'state_dict' and 'hyper_parameters', "
            f"found {found}; for a timm / torchvision state dict use --model timm:<name> or torchvision:<name> --weights {path}"
        )
    return content


def _import_datamodule(class_path: str, origin: str) -> type[LightningDataModule]:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise InputError(f"the model was trained on {class_path} ({origin}), which cannot be imported: {err}") from err
    if not (isinstance(found, type) and issubclass(found, LightningDataModule)):
        raise InputError(f"the model was trained on {class_path} ({origin}), which is not a LightningDataModule")
    return found


def training_datamodule(checkpoint: Mapping[str, Any], path: Path) -> tuple[LightningDataModule, str]:
    """The datamodule of the run that wrote ``checkpoint``, built from its recorded settings (nothing is
    loaded), and where those come from: the checkpoint's datamodule hyper-parameters, else the
    ``config.yaml`` that ``normapps fit`` writes beside the ``checkpoints/`` folder, else
    :class:`~normapps.data.DigitsDataModule` with its defaults (the default data of ``normapps fit``)."""
    saved = checkpoint.get("datamodule_hyper_parameters")
    origin = f"the datamodule hyper-parameters in {path.name}"
    if not isinstance(saved, Mapping):
        config = path.parent.parent / "config.yaml"  # where normapps fit writes the run's config
        try:
            loaded = yaml.safe_load(config.read_text()) if config.is_file() else None
        except yaml.YAMLError as err:
            raise InputError(f"cannot read {config}, the config of the run that wrote {path.name}: {err}") from err
        data = loaded.get("data") if isinstance(loaded, Mapping) else None
        if not isinstance(data, Mapping):
            return DigitsDataModule(), "DigitsDataModule defaults (the checkpoint records no data settings)"
        saved = {"_class_path": data.get("class_path"), **(data.get("init_args") or {})}
        origin = f"the data section of {config}"
    class_path = str(saved.get("_class_path") or "normapps.data.DigitsDataModule")
    settings = {key: value for key, value in saved.items() if not key.startswith("_")}
    try:
        return _import_datamodule(class_path, origin)(**settings), f"{class_path.rsplit('.', 1)[-1]} settings from {origin}"
    except (TypeError, ValueError) as err:
        raise InputError(f"the data settings {settings} ({origin}) do not build {class_path}: {err}") from err


def _per_channel(value: Any, channels: int, what: str) -> tuple[float, ...]:
    values = (float(value),) * channels if isinstance(value, (int, float)) else tuple(map(float, value))
    if len(values) != channels:
        raise InputError(f"the training data's {what} has {len(values)} values but the model takes {channels} input channels")
    return values


def training_preprocessing(datamodule: LightningDataModule, channels: int, origin: str, image_size: int | None) -> Preprocessing:
    """The preprocessing of ``datamodule``: its ``image_size`` (or ``image_size``), and its ``mean`` / ``std``
    attributes, per channel (none: the images in [0, 1] are not standardized)."""
    side = image_size if image_size is not None else getattr(datamodule, "image_size", None)
    if not isinstance(side, int):
        raise InputError(f"{type(datamodule).__name__} ({origin}) has no image_size; give --image-size")
    if image_size is not None:
        origin = f"{origin}; side {image_size} from the command line"
    mean = _per_channel(getattr(datamodule, "mean", 0.0), channels, "mean")
    std = _per_channel(getattr(datamodule, "std", 1.0), channels, "std")
    return Preprocessing(side, mean, std, origin)


def load_checkpoint(path: Path, image_size: int | None = None) -> Classifier:
    """A :class:`~normapps.tasks.ClassificationTask` from its Lightning checkpoint, with the preprocessing it was trained with.

    The task is rebuilt from the checkpoint's hyper-parameters and must take its state dict exactly.
    The preprocessing is that of the run's datamodule (:func:`training_datamodule`,
    :func:`training_preprocessing`), for the model's input channels (1: grey); ``image_size``
    overrides the side only.

    Raises:
        InputError: for a missing or unreadable file, a checkpoint of another task, or hyper-parameters /
            data settings that do not build.
        ValueError: if the state dict does not fit (:func:`~normapps.models.pretrained.load_weights`).
    """
    if not path.is_file():
        raise InputError(f"--model {path} {'is a folder' if path.is_dir() else 'does not exist'}: expected a normapps checkpoint "
                         f"file, or {' / '.join(f'{lib}:<name>' for lib in LIBRARIES)} with --weights FILE")
    checkpoint = _read_checkpoint(path)
    saved = checkpoint["hyper_parameters"]
    class_path = saved.get("_class_path")
    if class_path and str(class_path).rsplit(".", 1)[-1] != ClassificationTask.__name__:
        raise InputError(f"{path} is a checkpoint of {class_path}; expected a checkpoint of normapps.tasks.ClassificationTask")
    hyper_parameters = {key: value for key, value in saved.items() if not key.startswith("_")}
    try:
        task = ClassificationTask(**hyper_parameters)
    except (TypeError, ValueError) as err:
        raise InputError(f"the hyper-parameters in {path} do not build a ClassificationTask: {err}") from err
    load_weights(task, checkpoint["state_dict"], f"checkpoint {path}", "the ClassificationTask of its hyper-parameters")
    channels = task.hparams.in_channels
    if channels not in (1, 3):
        raise InputError(f"{path}: the model takes {channels} input channels; expected 1 (grey) or 3 (RGB) images")
    datamodule, origin = training_datamodule(checkpoint, path)
    preprocessing = training_preprocessing(datamodule, channels, origin, image_size)
    num_classes = check_logits(task, preprocessing, f"checkpoint {path}")
    return Classifier(task.eval(), preprocessing, num_classes, f"normapps.tasks.ClassificationTask(**{hyper_parameters!r})",
                      lambda: ClassificationTask(**hyper_parameters))


def load_model(options: argparse.Namespace) -> tuple[Classifier, Path]:
    """The classifier ``--model`` names, and the file it was read from."""
    library, _, name = options.model.partition(":")
    if library in LIBRARIES:
        if not name:
            raise InputError(f"--model {options.model}: expected {library}:<name>, e.g. {library}:resnet18")
        if options.weights is None:
            raise InputError(f"--model {options.model} needs --weights FILE: a local state dict (nothing is downloaded)")
        weights = Path(options.weights)
        return load_pretrained(options.model, weights, options.num_classes, options.image_size), weights
    for flag, value in (("--weights", options.weights), ("--num-classes", options.num_classes)):
        if value is not None:
            raise InputError(f"{flag} applies to timm:<name> / torchvision:<name> models; a normapps checkpoint "
                             f"({options.model}) holds its own weights and head")
    path = Path(options.model)
    return load_checkpoint(path, options.image_size), path


def check_method(module: nn.Module, method: str, what: str) -> None:
    """Refuse ``method`` for a model without the BatchNorm layers it needs, naming the methods that still apply."""
    usable = [name for name in CHOICES if name in applicable_methods(module)]
    if method in usable:
        return
    needs = {"batch_norm": "a BatchNorm layer", "running_stats": "a BatchNorm layer that keeps running statistics"}
    kinds = Counter(type(m).__name__ for m in module.modules() if is_norm_layer(m))
    found = ", ".join(f"{count} {kind}" for kind, count in kinds.items()) or "none"
    still = ", ".join(usable) if usable else f"none of {', '.join(CHOICES)} (they all edit BatchNorm)"
    raise InputError(f"--method {method} needs {needs[METHODS[method].needs]}, but {what} has none "
                     f"(its normalization layers: {found}); methods that still apply: {still}")


# --------------------------------------------------------------------------------------------- target


@dataclass
class Target:
    """The target data set and what is known of its labels."""

    dataset: Dataset
    num_classes: int | None
    class_names: list[str]
    skipped_files: int


def load_target(options: argparse.Namespace, image_size: int) -> Target:
    """The ``--target`` data set at ``image_size``, labelled where its classes are known."""
    path = Path(options.target)
    if options.target not in available_domains() and path.exists() and not path.is_dir():
        raise InputError(f"--target {path} is a file; expected an image folder ({FOLDER_LAYOUT}) "
                         f"or one of {', '.join(available_domains())}")
    dataset = load_domain(options.target, split=options.split, image_size=image_size, corruption=options.corruption,
                          severity=options.severity, root=options.root)
    if isinstance(dataset, ImageFiles):
        known = len(dataset.classes) if dataset.classes else None
        target = Target(dataset, known, list(dataset.classes), len(dataset.skipped))
    else:
        target = Target(dataset, NAMED_DOMAIN_CLASSES, [], 0)
    if options.unlabelled:
        target.num_classes, target.class_names = None, []
    if len(dataset) < 2:
        raise InputError(f"--target {options.target} has {len(dataset)} image; batch statistics need at least 2")
    return target


def check_classes(classifier: Classifier, target: Target, name: str) -> None:
    """Refuse a labelled target whose class count differs from the model's head."""
    if target.num_classes is None or target.num_classes == classifier.num_classes:
        return
    names = f" ({', '.join(target.class_names[:5])}{', ...' if len(target.class_names) > 5 else ''})" if target.class_names else ""
    raise InputError(
        f"the model's head has {classifier.num_classes} classes but --target {name} has {target.num_classes}{names}; "
        "its labels index the model's outputs (class folders in sorted order), so the counts must match: pass --unlabelled "
        "to adapt without accuracy, or a model whose head has as many classes (--num-classes for timm / torchvision)"
    )


class TargetBatches:
    """The target set in one seeded random order, batch by batch, preprocessed for the model.

    Every call of :meth:`run` is one pass in the same order, with a progress bar on stderr. A last
    batch of one image is merged into the one before it: batch statistics need two values per channel.
    """

    def __init__(self, target: Target, preprocessing: Preprocessing, options: argparse.Namespace) -> None:
        order = torch.randperm(len(target.dataset), generator=torch.Generator().manual_seed(options.seed)).tolist()
        plan = [order[i:i + options.batch_size] for i in range(0, len(order), options.batch_size)]
        if len(plan) > 1 and len(plan[-1]) == 1:
            plan[-2].extend(plan.pop())
        self.plan = plan[:options.max_batches]
        self.preprocessing = preprocessing
        self.device = torch.device(options.device)
        self.loader = DataLoader(target.dataset, batch_sampler=self.plan, num_workers=options.workers,
                                 persistent_workers=options.workers > 0)

    @property
    def images(self) -> int:
        """Images in the planned batches."""
        return sum(len(batch) for batch in self.plan)

    def run(self, description: str) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass: ``(model input on the device, labels)`` per batch."""
        for images, labels in tqdm(self.loader, desc=description, total=len(self.plan), unit="batch", file=sys.stderr):
            yield self.preprocessing(images.to(self.device)), labels


# -------------------------------------------------------------------------------------------- methods


def _predictions(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    predicted, labels = [], []
    with torch.inference_mode():
        for x, y in batches:
            predicted.append(model(x).argmax(1).cpu())
            labels.append(y)
    return torch.cat(predicted), torch.cat(labels)


def _accuracy(predicted: Tensor, labels: Tensor) -> float:
    return float((predicted == labels).double().mean())


def _inputs_keeping_labels(batches: Iterable[tuple[Tensor, Tensor]], labels: list[Tensor]) -> Iterator[Tensor]:
    for x, y in batches:
        labels.append(y)
        yield x


def _online_accuracy(module: nn.Module, method: str, batches: TargetBatches, options: dict[str, Any]) -> float:
    labels: list[Tensor] = []
    stream = predict_stream(module, method, _inputs_keeping_labels(batches.run(f"{method} (online)"), labels), **options)
    predicted = [logits.argmax(1).cpu() for logits in stream]
    return _accuracy(torch.cat(predicted), torch.cat(labels))


def running_stats_layers(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that keep running statistics."""
    return [name for name, m in module.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]


def _with_target_statistics(module: nn.Module, batches: TargetBatches, description: str) -> nn.Module:
    """AdaBN on ``module`` (a copy); a plain copy if no BatchNorm keeps running statistics (they use batch statistics anyway)."""
    if not running_stats_layers(module):
        return copy.deepcopy(module)
    return adapt(module, "adabn", batches.run(description))


def _mixed_with_source(module: nn.Module, target: dict[str, LayerStats], p: float) -> nn.Module:
    """A copy of ``module`` whose BatchNorm statistics are ``p * source + (1 - p) * target``."""
    mixed = copy.deepcopy(module)
    with torch.no_grad():
        for name, stats in target.items():
            bn = mixed.get_submodule(name)
            bn.running_mean.copy_(p * bn.running_mean.double() + (1 - p) * stats.mean)
            bn.running_var.copy_(p * bn.running_var.double() + (1 - p) * stats.var)
    return mixed


def run_method(module: nn.Module, method: str, batches: TargetBatches, options: argparse.Namespace,
               labelled: bool) -> tuple[nn.Module, float | None, dict[str, Any], str]:
    """Adapt ``module`` with ``method``: the static model to save, the online accuracy (None without
    labels; for adabn computed with the checkpoint), the method's options and what the checkpoint holds."""
    if method == "adabn":
        return adapt(module, "adabn", batches.run("adabn")), None, {}, CONTENTS["adabn"]
    if method == "norm":
        online = _online_accuracy(module, "norm", batches, {}) if labelled else None
        return _with_target_statistics(module, batches, "norm: static checkpoint"), online, {}, CONTENTS["norm"]
    if method == "prior":
        method_options = {"n_source": options.prior_strength}
        online = _online_accuracy(module, "prior", batches, method_options) if labelled else None
        prior_model = adapt(module, "prior", **method_options)
        statistics = capture(prior_model, batches.run("prior: static checkpoint"), layers=running_stats_layers(module))
        n = len(batches.plan[0])
        p = source_prior(options.prior_strength, n)
        contents = CONTENTS["prior"].format(p=p, n_source=options.prior_strength, n=n)
        return _mixed_with_source(module, statistics, p), online, {**method_options, "source_weight": p}, contents
    tent = Tent(copy.deepcopy(module), lr=options.lr, episodic=options.episodic)
    predicted, labels = [], []
    for x, y in batches.run("tent (online)"):
        predicted.append(tent(x).argmax(1).cpu())
        labels.append(y)
    online = _accuracy(torch.cat(predicted), torch.cat(labels)) if labelled else None
    adapted = use_batch_stats(tent.model, enabled=False)
    static = _with_target_statistics(adapted, batches, "tent: static checkpoint")
    episodic = " (--episodic: the source ones, reset after every batch)" if options.episodic else ""
    return static, online, {"lr": options.lr, "episodic": options.episodic}, CONTENTS["tent"].format(episodic=episodic)


# ------------------------------------------------------------------------------------------ the command



def _check_outputs_spare_inputs(outputs: list[Path], model_file: Path, target: str) -> None:
    folder = Path(target).resolve() if Path(target).is_dir() else None
    for output in outputs:
        resolved = output.resolve()
        if resolved == model_file.resolve():
            raise InputError(f"output {output} is the model file {model_file}; choose another --out (inputs are never changed)")
        if folder is not None and resolved.is_relative_to(folder):
            raise InputError(f"--out {output.parent} is inside the target folder {target}; choose a folder outside it "
                             "(inputs are never changed)")


def _with_warnings_on_stderr(load: Callable[..., T], *args: Any) -> T:
    """Call ``load(*args)``, printing each warning it raises as one ``normapps adapt: warning:`` line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return load(*args)
        finally:
            for warning in caught:
                print(f"{PROG}: warning: {warning.message}", file=sys.stderr)


def adapt_command(options: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run the command; returns the report written."""
    out = Path(options.out)
    outputs = [out / name for name in OUTPUT_FILES]
    for output in outputs:
        check_overwrite(output, options.overwrite)
    classifier, model_file = _with_warnings_on_stderr(load_model, options)
    _check_outputs_spare_inputs(outputs, model_file, options.target)
    check_method(classifier.module, options.method, options.model)
    target = _with_warnings_on_stderr(load_target, options, classifier.preprocessing.image_size)
    check_classes(classifier, target, options.target)
    labelled = target.num_classes is not None
    module = classifier.module.to(options.device).eval()
    batches = TargetBatches(target, classifier.preprocessing, options)

    source_accuracy = _accuracy(*_predictions(module, batches.run("source"))) if labelled else None
    layers = running_stats_layers(module)
    shift = statistics_shift(module, capture(use_batch_stats(copy.deepcopy(module)), batches.run("target statistics"),
                                             layers=layers)) if layers else []
    static, online, method_options, contents = run_method(module, options.method, batches, options, labelled)

    state = {key: value.detach().cpu() for key, value in static.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    reloaded = classifier.build()
    reloaded.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True))
    checkpoint_accuracy = _accuracy(*_predictions(reloaded.to(options.device).eval(), batches.run("checkpoint"))) if labelled else None
    if options.method == "adabn":
        online = checkpoint_accuracy

    report = {
        "command": command,
        "options": vars(options),
        "method": {"name": options.method, "summary": METHODS[options.method].summary, "paper": METHODS[options.method].paper,
                   "options": method_options},
        "model": {
            "spec": options.model, "file": str(model_file), "sha256": sha256(model_file),
            "architecture": classifier.architecture, "num_classes": classifier.num_classes,
            "batch_norm_layers": len(layers), "preprocessing": asdict(classifier.preprocessing), "device": options.device,
        },
        "target": {
            "name": options.target, "split": options.split, "corruption": options.corruption, "severity": options.severity,
            "images": len(target.dataset), "skipped_files": target.skipped_files, "used_images": batches.images,
            "batches": len(batches.plan), "batch_size": options.batch_size, "seed": options.seed, "labelled": labelled,
            "num_classes": target.num_classes, "class_names": target.class_names,
        },
        "checkpoint": {"file": OUTPUT_FILES[0], "contains": contents,
                       "load_with": f"{classifier.architecture}.load_state_dict(torch.load('{OUTPUT_FILES[0]}'))"},
        "accuracy": None if not labelled else {"source": source_accuracy, "online": online, "checkpoint": checkpoint_accuracy},
        "statistics_shift": shift,
    }
    atomic_write(outputs[0], buffer.getvalue(), overwrite=options.overwrite)
    atomic_write(outputs[1], json.dumps(report, indent=2) + "\n", overwrite=options.overwrite)
    return report


def main(args: Sequence[str]) -> int:
    """Entry point of ``normapps adapt``; returns the exit status (2 for bad input, with one line on stderr)."""
    options = build_parser().parse_args(list(args))
    try:
        report = adapt_command(options, shlex.join(["normapps", "adapt", *args]))
    except (ValueError, OSError) as err:  # InputError, FileNotFoundError, FileExistsError, and what loaders raise
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    accuracy = report["accuracy"]
    summary = "" if accuracy is None else (
        f"; target accuracy {accuracy['source']:.1%} before, {accuracy['online']:.1%} online, "
        f"{accuracy['checkpoint']:.1%} with {OUTPUT_FILES[0]}")
    print(f"{PROG}: wrote {os.path.join(options.out, OUTPUT_FILES[0])} and {OUTPUT_FILES[1]}{summary}", file=sys.stderr)
    return 0
