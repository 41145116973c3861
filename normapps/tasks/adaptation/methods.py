"""Adapt a trained classifier to an unlabelled target domain by editing its normalization statistics.

Test-time and post-hoc methods for any classifier ``nn.Module`` (ours, torchvision's, timm's) and any
iterable of unlabelled target batches (tensors, ``(input, target)`` pairs or dicts, as
:func:`normapps.norm.stats.iter_inputs` reads them). Each is built on :mod:`normapps.norm.stats`:

``source``     the model unchanged.
``adabn``      AdaBN (Li et al. 2016): every BatchNorm gets the exact pooled statistics of its input
               over the whole target set, ``mu = sum(x) / m``, ``var = sum((x - mu)^2) / (m - 1)``
               with ``m`` the values per channel over all batches (:func:`normapps.norm.recalibrate`,
               ``mode="exact"``; the pass normalizes with batch statistics, as in training).
``adabn_ema``  the moving average some public code calls AdaBN (``model.train()`` and forward
               passes over the target set): starting from the source statistics, updated batch by
               batch, ``running = (1 - momentum) * running + momentum * batch`` (``mode="ema"``,
               ``reset=False``; ``reset=True`` starts from reset statistics); for comparison, not
               the paper's estimate.
``norm``       test-time normalization: every BatchNorm normalizes each test batch with that batch's
               mean and biased variance (:func:`normapps.norm.use_batch_stats`; TENT's "norm" baseline).
``prior``      Schneider et al. 2020: each test batch of size ``n`` is normalized with
               ``mu = p * mu_source + (1 - p) * mu_batch`` and likewise the variance, with
               ``p = N / (N + n)`` (:func:`normapps.norm.source_prior`), ``N = n_source`` a pseudo
               sample size expressing trust in the source statistics.
``tent``       Wang et al. 2021: test-batch statistics and one entropy-minimization step per batch
               on the BatchNorm affine parameters (:class:`~normapps.tasks.adaptation.tent.Tent`).

``dsbn`` and ``transnorm`` are trained on labelled source and unlabelled target data: see
:class:`~normapps.tasks.adaptation.lightning.DSBNTask` and
:class:`~normapps.tasks.adaptation.lightning.TransNormTask`.

:func:`adapt` returns an adapted deep copy; :func:`predict_stream` adapts online and yields the
logits of each batch as it comes. Neither changes the model it is given.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.norm import recalibrate, source_prior, use_batch_stats
from normapps.norm.stats import is_norm_layer, iter_inputs

from .tent import Tent

Requirement = Literal["nothing", "batch_norm", "running_stats"]


@dataclass(frozen=True)
class Method:
    """An adaptation method of the :data:`METHODS` registry.

    Attributes:
        name: the key in :data:`METHODS` (``normapps adapt --method``).
        summary: one line on what it does.
        paper: where it comes from.
        needs: what the model must have: ``"nothing"``, ``"batch_norm"`` (a ``_BatchNorm`` layer) or
            ``"running_stats"`` (a ``_BatchNorm`` that keeps running statistics).
        stage: ``"test"`` (applies to a trained model: :func:`adapt`) or ``"training"`` (a
            LightningModule trained on both domains, named by ``task``).
        online: predictions can be made batch by batch while adapting (:func:`predict_stream`).
        task: the LightningModule of a training-stage method.
    """

    name: str
    summary: str
    paper: str
    needs: Requirement
    stage: Literal["test", "training"] = "test"
    online: bool = False
    task: str | None = None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("source", "the source model unchanged", "-", "nothing", online=True),
        Method("adabn", "BatchNorm statistics replaced by the exact pooled statistics of the target set",
               "Li et al. 2016, Revisiting Batch Normalization For Practical Domain Adaptation", "running_stats"),
        Method("adabn_ema", "BatchNorm statistics moved towards the target set's as a moving average from the "
               "source statistics (what some public code calls AdaBN; for comparison)", "-", "running_stats"),
        Method("norm", "each test batch normalized with its own statistics",
               "Wang et al. 2021 (TENT's baseline); Schneider et al. 2020", "batch_norm", online=True),
        Method("prior", "test-batch statistics mixed with the source statistics, weight N/(N+n) on the source",
               "Schneider et al. 2020, Improving robustness against common corruptions by covariate shift adaptation",
               "running_stats", online=True),
        Method("tent", "test-batch statistics and one entropy-minimization step per batch on the BatchNorm affine",
               "Wang et al. 2021, Tent: Fully Test-Time Adaptation by Entropy Minimization", "batch_norm", online=True),
        Method("dsbn", "one BatchNorm per domain with shared weights, trained on source labels and target "
               "pseudo-labels", "Chang et al. 2019, Domain-Specific Batch Normalization for Unsupervised Domain "
               "Adaptation", "batch_norm", stage="training", task="DSBNTask"),
        Method("transnorm", "source and target statistics, shared affine, channels weighted by transferability",
               "Wang et al. 2019, Transferable Normalization", "batch_norm", stage="training", task="TransNormTask"),
    )
}
"""Every adaptation method by name."""

_NEEDS = {
    "nothing": "nothing",
    "batch_norm": "a BatchNorm layer (torch.nn.modules.batchnorm._BatchNorm)",
    "running_stats": "a BatchNorm layer that keeps running statistics (track_running_stats=True)",
}


def _satisfies(model: nn.Module, needs: Requirement) -> bool:
    batch_norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if needs == "batch_norm":
        return bool(batch_norms)
    if needs == "running_stats":
        return any(m.running_mean is not None for m in batch_norms)
    return True


def applicable_methods(model: nn.Module) -> list[str]:
    """Names of the :data:`METHODS` whose requirements ``model`` meets."""
    return [name for name, method in METHODS.items() if _satisfies(model, method.needs)]


def _method(name: str, model: nn.Module) -> Method:
    """The registered method ``name``, after checking that ``model`` meets its requirement."""
    if name not in METHODS:
        raise ValueError(f"unknown adaptation method {name!r}; expected one of {list(METHODS)}")
    method = METHODS[name]
    if not _satisfies(model, method.needs):
        layers = [f"{layer_name} ({type(m).__name__})" for layer_name, m in model.named_modules() if is_norm_layer(m)]
        found = f"its normalization layers are {layers}" if layers else "it has no normalization layer"
        applicable = [n for n in applicable_methods(model) if METHODS[n].stage == method.stage] or ["none"]
        raise ValueError(
            f"method {name!r} needs {_NEEDS[method.needs]}, but {type(model).__name__} has none ({found}); "
            f"methods that apply to this model: {', '.join(applicable)}"
        )
    if method.stage == "training":
        raise ValueError(
            f"method {name!r} is trained on labelled source and unlabelled target data: use "
            f"normapps.tasks.adaptation.{method.task} with a DomainPairDataModule, not adapt()"
        )
    return method


class SourcePriorPerBatch:
    """Forward pre-hook that sets every BatchNorm's source weight to ``p = N / (N + n)`` for the
    batch size ``n`` of each input (Schneider et al. 2020), through :func:`normapps.norm.use_batch_stats`."""

    def __init__(self, n_source: float) -> None:
        source_prior(n_source, 1)  # validates n_source
        self.n_source = n_source

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], Tensor) or args[0].dim() < 1:
            raise ValueError(f"the prior adaptation expects a batch tensor as first input, got {args[:1]!r}")
        use_batch_stats(module, prior=source_prior(self.n_source, args[0].shape[0]))


def _require(batches: Iterable[Any] | None, name: str) -> Iterable[Any]:
    if batches is None:
        raise ValueError(f"method {name!r} adapts on target batches; got batches=None")
    return batches


def _source(model: nn.Module, batches: Iterable[Any] | None) -> nn.Module:
    return model


def _adabn(model: nn.Module, batches: Iterable[Any] | None, max_batches: int | None = None) -> nn.Module:
    return recalibrate(model, _require(batches, "adabn"), mode="exact", max_batches=max_batches)


def _adabn_ema(
    model: nn.Module,
    batches: Iterable[Any] | None,
    momentum: float | None = 0.1,
    max_batches: int | None = None,
    reset: bool = False,
) -> nn.Module:
    return recalibrate(model, _require(batches, "adabn_ema"), mode="ema", momentum=momentum, max_batches=max_batches,
                       reset=reset)


def _norm(model: nn.Module, batches: Iterable[Any] | None) -> nn.Module:
    return use_batch_stats(model)


def _prior(model: nn.Module, batches: Iterable[Any] | None, n_source: float = 16.0) -> nn.Module:
    hook = SourcePriorPerBatch(n_source)
    use_batch_stats(model, prior=source_prior(n_source, 1))  # checks every BatchNorm keeps running statistics
    model.register_forward_pre_hook(hook)
    return model


def _tent(
    model: nn.Module,
    batches: Iterable[Any] | None,
    lr: float = 1e-3,
    steps: int = 1,
    episodic: bool = False,
    optimizer: Literal["adam", "sgd"] = "adam",
    momentum: float = 0.9,
) -> nn.Module:
    batches = _require(batches, "tent")
    requires_grad = [p.requires_grad for p in model.parameters()]
    tent = Tent(model, lr=lr, steps=steps, episodic=episodic, optimizer=optimizer, momentum=momentum)
    inputs = iter_inputs(batches, _device_of(model))
    first = next(inputs, None)
    if first is None:
        raise ValueError("method 'tent' expected at least one target batch, got an empty iterable")
    for x in itertools.chain([first], inputs):
        tent(x)
    for parameter, flag in zip(model.parameters(), requires_grad):
        parameter.requires_grad_(flag)
    return tent.model


_ADAPTERS: dict[str, Callable[..., nn.Module]] = {
    "source": _source, "adabn": _adabn, "adabn_ema": _adabn_ema, "norm": _norm, "prior": _prior, "tent": _tent,
}


def _check_options(name: str, options: dict[str, Any]) -> None:
    accepted = list(inspect.signature(_ADAPTERS[name]).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"method {name!r} got unknown options {unknown}; it accepts {accepted or 'none'}")


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def adapt(model: nn.Module, method: str, batches: Iterable[Any] | None = None, **options: Any) -> nn.Module:
    """An adapted deep copy of ``model``, in eval mode; ``model`` itself is never changed.

    Args:
        model: a trained classifier (any ``nn.Module``).
        method: a test-stage name of :data:`METHODS`: ``source``, ``adabn``, ``adabn_ema``, ``norm``,
            ``prior`` or ``tent``.
        batches: unlabelled target batches (see :func:`normapps.norm.stats.iter_inputs`); needed by
            ``adabn``, ``adabn_ema`` and ``tent``, unused by the others. Moved to the model's device.
        **options: per method --
            ``adabn``: ``max_batches=None``;
            ``adabn_ema``: ``momentum=0.1`` (``None``: cumulative average), ``max_batches=None``,
            ``reset=False`` (True: from reset statistics instead of the source ones);
            ``prior``: ``n_source=16.0`` (the pseudo sample size ``N``);
            ``tent``: ``lr=1e-3``, ``steps=1``, ``episodic=False``, ``optimizer="adam"``,
            ``momentum=0.9`` (SGD).

    Returns:
        The adapted copy. ``norm`` and ``tent`` copies normalize every batch with its own statistics
        (:class:`normapps.norm.BatchStatsNorm` layers); a ``prior`` copy sets ``p = N / (N + n)``
        from the size ``n`` of each batch it is given (a forward pre-hook,
        :class:`SourcePriorPerBatch`). The state dict keeps the input model's keys.

    Raises:
        ValueError: for an unknown method, a model without the BatchNorm layers the method needs
            (the message names the methods that apply), or missing / empty ``batches``.
        TypeError: for an option the method does not take.

    Example::

        adapted = adapt(model, "adabn", target_loader)
        accuracy = (adapted(x).argmax(1) == y).float().mean()
    """
    _method(method, model)
    _check_options(method, options)
    adapted = copy.deepcopy(model)
    adapted = _ADAPTERS[method](adapted, batches, **options)
    return adapted.eval()


def predict_stream(model: nn.Module, method: str, batches: Iterable[Any], **options: Any) -> Iterator[Tensor]:
    """Adapt online and yield the logits of each target batch, in order (detached, on the model's device).

    For the online methods ``source``, ``norm``, ``prior`` and ``tent`` (``options`` as for
    :func:`adapt`). ``tent`` predicts each batch with the forward pass it then takes its
    entropy-minimization step from, so the adaptation on a batch serves the batches after it (the
    paper's protocol). The model is deep-copied first and never changed. Checks run at the call,
    before the first batch is read.

    Raises:
        ValueError: for an unknown or offline method (``adabn``, ``adabn_ema`` need the whole
            target set first: ``adapt``, then predict), or a model without the layers it needs.
        TypeError: for an option the method does not take.

    Example::

        errors = [(logits.argmax(1) != y).sum() for logits, (x, y) in zip(predict_stream(model, "tent", loader), loader)]
    """
    if not _method(method, model).online:
        raise ValueError(
            f"method {method!r} needs the whole target set before it predicts; use adapt(model, {method!r}, batches) "
            f"and then predict. Online methods: {[n for n, m in METHODS.items() if m.online]}"
        )
    _check_options(method, options)
    if method == "tent":
        tent = Tent(copy.deepcopy(model), **options)
        return (tent(x) for x in iter_inputs(batches, _device_of(model)))
    adapted = adapt(model, method, None, **options)
    return _inference(adapted, iter_inputs(batches, _device_of(model)))


def _inference(model: nn.Module, inputs: Iterator[Tensor]) -> Iterator[Tensor]:
    for x in inputs:
        with torch.inference_mode():
            yield model(x)
