"""Rewrite a model's normalization layers.

* :func:`convert` swaps every normalization layer of a model (torchvision and timm models
  included) for one of ours, carrying over affine parameters and running statistics where they fit,
  like timm's ``convert_sync_batchnorm`` / ``freeze_batch_norm_2d``.
* :func:`fold` makes an inference copy in which each BatchNorm is folded into the convolution or
  linear layer feeding it (exact in eval mode)::

      W' = W * gamma / sqrt(var + eps)                 (per output channel)
      b' = (b - mean) * gamma / sqrt(var + eps) + beta
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from .distributed import supports_sync
from .framework import Normalize
from .registry import build, describe
from .stats import BatchStatsNorm, is_norm_layer, num_channels

Targets = type | tuple[type, ...] | Callable[[nn.Module], bool]

FOLD_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layer types a following BatchNorm can be folded into."""


@dataclass(frozen=True)
class ConvertedLayer:
    """One replaced layer: where it was, what it was and became, and what was carried over."""

    name: str
    old_type: str
    new_type: str
    channels: int
    kept_affine: bool
    kept_stats: bool


@dataclass
class ConversionReport:
    """What :func:`convert` did. ``model`` is the converted model (a new object only if the root
    module itself was a normalization layer); ``len(report)`` is the number of replaced layers."""

    model: nn.Module = field(repr=False)
    replaced: list[ConvertedLayer] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.replaced)

    def __str__(self) -> str:
        header = ("layer", "was", "now", "channels", "affine", "stats")
        rows = [
            (
                row.name or "(root)",
                row.old_type,
                row.new_type,
                str(row.channels),
                "kept" if row.kept_affine else "-",
                "kept" if row.kept_stats else "-",
            )
            for row in self.replaced
        ]
        return f"{len(rows)} normalization layers replaced\n" + _table(header, rows)


@dataclass(frozen=True)
class FoldedLayer:
    """A BatchNorm (``norm``) folded into the conv/linear layer ``into``."""

    norm: str
    into: str


@dataclass
class FoldReport:
    """What :func:`fold` did: the folded copy, the folded pairs, the BatchNorm layers left in place
    with the reason, and how pairs were found (``"fx"`` dataflow or the ``"sequential"`` fallback)."""

    model: nn.Module = field(repr=False)
    folded: list[FoldedLayer] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    method: str = "fx"

    def __len__(self) -> int:
        return len(self.folded)

    def __str__(self) -> str:
        rows = [(f.norm, f"folded into {f.into}") for f in self.folded]
        rows += [(name, f"kept: {why}") for name, why in self.kept.items()]
        title = (
            f"{len(self.folded)} BatchNorm layers folded, {len(self.kept)} kept "
            f"(pairs found by {self.method})"
        )
        return title + "\n" + _table(("layer", "result"), rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, tuple("-" * w for w in widths), *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _matcher(targets: Targets | None) -> Callable[[nn.Module], bool]:
    if targets is None:
        return is_norm_layer
    if isinstance(targets, type) or (
        isinstance(targets, tuple) and all(isinstance(t, type) for t in targets)
    ):
        return lambda module: isinstance(module, targets)
    if callable(targets):
        return targets
    raise TypeError(f"targets must be a module type, a tuple of types or a predicate, got {targets!r}")


def _locations(
    module: nn.Module, match: Callable[[nn.Module], bool], prefix: str = ""
) -> Iterator[tuple[nn.Module, str, str, nn.Module]]:
    """``(parent, attribute, qualified name, child)`` for every matching submodule, at every place
    it is registered (shared modules more than once), not looking inside matches."""
    for attribute, child in module._modules.items():
        if child is None:
            continue
        name = f"{prefix}.{attribute}" if prefix else attribute
        if match(child):
            yield module, attribute, name, child
        else:
            yield from _locations(child, match, name)


def convert(
    model: nn.Module,
    name: str | type | Callable[..., nn.Module] | None = None,
    *,
    targets: Targets | None = None,
    sync: bool = False,
    **kwargs: Any,
) -> ConversionReport:
    """Replace, in place, every normalization layer of ``model`` by ``build(name, C, **kwargs)``.

    ``C`` is the old layer's channel count (``num_features``, ``num_channels`` or
    ``normalized_shape[0]``). The new layer gets the old one's ``weight`` and ``bias`` where it has
    parameters of the same shape, and its ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` where it has buffers of the same shape (``bn`` -> ``brn`` keeps the
    statistics); it is moved to the old layer's device and dtype, takes its train/eval mode and
    gets ``layer_name`` = its qualified name. Every new layer is built before any is installed, so
    an unknown name or bad ``kwargs`` leave the model untouched. A layer registered at several
    places is replaced by one shared new layer. A subclass of a torch normalization layer that
    applies submodules after normalizing (timm's ``BatchNormAct2d``, ``GroupNormAct``: ``drop``,
    ``act``) becomes ``nn.Sequential(new layer, *those submodules)``, so the activation stays (its
    state-dict keys gain a ``0.``).

    Note: ``nn.LayerNorm`` normalizes the last dimension; in a transformer (tokens ``(N, L, C)``)
    a channels-first replacement such as ``"gn"`` would normalize a different dimension.

    Args:
        model: any network; its root may itself be a normalization layer.
        name: a registered method name (``"gn"``), a class or a partial (see ``build``).
        targets: which modules to replace: a type, a tuple of types or a predicate; default
            :func:`~normapps.norm.stats.is_norm_layer` (BatchNorm, InstanceNorm, GroupNorm,
            LayerNorm over one dimension, our ``Normalize`` layers).
        sync: pool batch statistics over all processes under ``torch.distributed`` (DDP), like
            ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``. With ``name``, it is passed to
            ``build`` (the method must support it: bn, ghostbn, brn, bgn, switchnorm, bin, dbn,
            pcawhiten, cdwhiten, iternorm). Without ``name``, each layer keeps its method: ours
            that support it switch to synchronized statistics in place, torch's BatchNorm layers
            become our ``bn(sync=True)`` with their parameters and statistics (``process_group=``
            in ``kwargs`` picks the processes); other layers are left as they are.
        **kwargs: passed to ``build`` (e.g. ``groups=32``).

    Returns:
        A :class:`ConversionReport` (empty if nothing matched); the converted model is
        ``report.model``.

    Example::

        report = convert(torchvision.models.resnet18(), "gn", groups=32)
        print(report)
    """
    if name is None:
        if not sync:
            raise TypeError("convert() needs the method to convert to (e.g. convert(model, 'gn', groups=32)), "
                            "or sync=True to synchronize the model's own batch statistics")
        return _synchronize(model, _matcher(targets) if targets is not None else lambda m: True, **kwargs)
    if sync:
        kwargs["sync"] = True
    if isinstance(name, str):
        describe(name)  # an unknown name raises here, with suggestions
    match = _matcher(targets)
    if match(model):
        new, row = _replacement(model, "", model, name, kwargs)
        return ConversionReport(new, [row])
    places = list(_locations(model, match))
    new_layers: dict[int, nn.Module] = {}
    rows = []
    for _, _, qualified, old in places:
        if id(old) not in new_layers:
            new_layers[id(old)], row = _replacement(old, qualified, model, name, kwargs)
            rows.append(row)
    for parent, attribute, _, old in places:
        setattr(parent, attribute, new_layers[id(old)])
    return ConversionReport(model, rows)


def _synchronize(model: nn.Module, match: Callable[[nn.Module], bool], process_group: Any = None) -> ConversionReport:
    """``convert(model, sync=True)``: our batch-statistics layers switch to pooled statistics in
    place; torch's BatchNorm layers (not already ``SyncBatchNorm``) become our ``bn(sync=True)``."""
    def replaceable(m: nn.Module) -> bool:
        return (isinstance(m, _BatchNorm) and not supports_sync(m)
                and not isinstance(m, nn.SyncBatchNorm) and match(m))

    rows = []
    for qualified, layer in model.named_modules():
        partition = getattr(layer, "partition", None)
        if supports_sync(layer) and (partition is None or partition.uses_batch) and match(layer):
            layer.sync, layer.process_group = True, process_group
            kind = f"{type(layer).__name__} (sync)"
            rows.append(ConvertedLayer(qualified, type(layer).__name__, kind, num_channels(layer), True, True))
    if replaceable(model):
        new, row = _replacement(model, "", model, "bn", _sync_bn_kwargs(model, process_group))
        return ConversionReport(new, rows + [row])
    for parent, attribute, qualified, old in list(_locations(model, replaceable)):
        new, row = _replacement(old, qualified, model, "bn", _sync_bn_kwargs(old, process_group))
        setattr(parent, attribute, new)
        rows.append(row)
    return ConversionReport(model, rows)


def _sync_bn_kwargs(old: _BatchNorm, process_group: Any) -> dict[str, Any]:
    return {"eps": old.eps, "momentum": old.momentum, "affine": old.affine,
            "track_running_stats": old.track_running_stats, "sync": True, "process_group": process_group}


def _replacement(
    old: nn.Module, qualified: str, model: nn.Module, name: Any, kwargs: dict[str, Any]
) -> tuple[nn.Module, ConvertedLayer]:
    channels = num_channels(old)
    new = build(name, channels, **kwargs)
    after = (
        [] if isinstance(old, Normalize) else [c for c in old.children() if not isinstance(c, nn.Identity)]
    )
    tensors = itertools.chain(old.parameters(), old.buffers(), model.parameters(), model.buffers())
    placement = next((t for t in tensors if t.is_floating_point()), None)
    if placement is not None:
        new.to(device=placement.device, dtype=placement.dtype)
    kept_affine = _copy_matching(old, new, ("weight", "bias"))
    kept_stats = _copy_running_statistics(old, new)
    new.train(old.training)
    new.layer_name = qualified
    new_type = " + ".join(type(m).__name__ for m in (new, *after))
    row = ConvertedLayer(qualified, type(old).__name__, new_type, channels, kept_affine, kept_stats)
    return (nn.Sequential(new, *after) if after else new), row


@torch.no_grad()
def _copy_matching(old: nn.Module, new: nn.Module, names: tuple[str, ...]) -> bool:
    """Copy each named tensor that both modules have with the same shape; True if ``old`` has at
    least one of them and every one it has was copied."""
    present = [n for n in names if isinstance(getattr(old, n, None), torch.Tensor)]
    copied = 0
    for n in present:
        source, target = getattr(old, n), getattr(new, n, None)
        if isinstance(target, torch.Tensor) and target.shape == source.shape:
            target.copy_(source)
            copied += 1
    return bool(present) and copied == len(present)


@torch.no_grad()
def _copy_running_statistics(old: nn.Module, new: nn.Module) -> bool:
    """Copy the running statistics only if the new layer keeps exactly the same ones (names and
    shapes): a partial copy (bn -> l1bn shares running_mean but not running_mad) would leave a layer
    whose eval output matches neither the old statistics nor fresh ones."""
    def running(m: nn.Module) -> dict[str, torch.Tensor]:
        return {n: b for n, b in m.named_buffers(recurse=False)
                if (n.startswith("running_") or n == "num_batches_tracked") and b is not None}

    source, target = running(old), running(new)
    if not source or source.keys() != target.keys() or any(source[n].shape != target[n].shape for n in source):
        return False
    for n, b in source.items():
        target[n].copy_(b)
    return True


@overload
def fold(model: nn.Module, *, return_report: Literal[False] = ...) -> nn.Module: ...
@overload
def fold(model: nn.Module, *, return_report: Literal[True]) -> FoldReport: ...
def fold(model: nn.Module, *, return_report: bool = False) -> nn.Module | FoldReport:
    """An eval-mode deep copy of ``model`` with each BatchNorm folded into the layer feeding it.

    For a BatchNorm whose input is the output of a ``Conv1d``/``Conv2d``/``Conv3d`` (grouped and
    depthwise included) or ``Linear`` used nowhere else, the layer's weight and bias become::

        W' = W * gamma / sqrt(running_var + eps)            (per output channel)
        b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta

    (``b = 0`` without bias, ``gamma = 1, beta = 0`` without affine; computed in float64, cast
    back) and the BatchNorm becomes ``nn.Identity()``. Eval-mode outputs are unchanged up to
    rounding. Pairs are found by dataflow with ``torch.fx`` symbolic tracing; if the model cannot be
    traced, by adjacency inside ``nn.Sequential`` containers. A ``Linear`` is assumed to produce
    ``(N, C)`` (channels at dimension 1, as BatchNorm1d normalizes). BatchNorm layers that cannot
    be folded stay (still correct in eval mode): those without running statistics, those using
    test-batch statistics (:func:`~normapps.norm.stats.use_batch_stats`), those with submodules
    (timm's ``BatchNormAct2d``), and those whose producer is shared, parametrized or absent.

    ``model`` itself is not changed (parameters, buffers, mode).

    Args:
        model: any network.
        return_report: return a :class:`FoldReport` (folded pairs, kept layers and why; the model
            is ``report.model``) instead of the model.

    Example::

        report = fold(model, return_report=True)
        print(report)
        fast = report.model
    """
    folded = copy.deepcopy(model).eval()
    report = FoldReport(folded)
    bns = {name: m for name, m in folded.named_modules() if isinstance(m, _BatchNorm)}
    shared_params = {
        pid
        for pid, n in Counter(id(p) for _, p in folded.named_parameters(remove_duplicate=False)).items()
        if n > 1
    }
    try:
        graph = _LeafTracer().trace(folded)
    except Exception as error:  # any failure to trace (value-dependent control flow, unsupported ops)
        pairs, reasons = _sequential_pairs(folded, shared_params, error)
        report.method = "sequential"
    else:
        pairs, reasons = _traced_pairs(folded, graph, shared_params)
    for bn_name, into_name in pairs:
        _fold_into(folded.get_submodule(into_name), bns[bn_name])
        report.folded.append(FoldedLayer(bn_name, into_name))
    done = {id(bns[bn_name]) for bn_name, _ in pairs}
    for parent, attribute, _, _ in list(_locations(folded, lambda m: id(m) in done)):
        setattr(parent, attribute, nn.Identity())
    folded_names = {bn_name for bn_name, _ in pairs}
    report.kept = {
        name: reasons.get(name, "the forward pass never calls it") for name in bns if name not in folded_names
    }
    return report if return_report else report.model


def _unfoldable(bn: _BatchNorm) -> str | None:
    if isinstance(bn, BatchStatsNorm):
        return "normalizes with test-batch statistics (use_batch_stats)"
    if bn.running_mean is None or bn.running_var is None:
        return "has no running statistics (track_running_stats=False)"
    if any(not isinstance(child, nn.Identity) for child in bn.children()):
        return "has submodules (e.g. timm's BatchNormAct2d activation) that folding would drop"
    return None


def _producer_problem(
    producer_name: str, producer: nn.Module, bn: _BatchNorm, shared_params: set[int]
) -> str | None:
    if not isinstance(producer, FOLD_INTO):
        return (
            f"its input comes from {producer_name} ({type(producer).__name__}), not a Conv1d/2d/3d or Linear"
        )
    out = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if out != bn.num_features:
        return f"{producer_name} has {out} outputs but the BatchNorm {bn.num_features} channels"
    if parametrize.is_parametrized(producer):
        return f"{producer_name} has a parametrized weight"
    if any(id(p) in shared_params for p in producer.parameters(recurse=False)):
        return f"{producer_name} shares parameters with another module"
    return None


class _LeafTracer(fx.Tracer):
    """Keeps every BatchNorm (ours and timm's too) and every foldable layer as one graph node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (_BatchNorm, *FOLD_INTO)) or super().is_leaf_module(m, module_qualified_name)


def _traced_pairs(
    model: nn.Module, graph: fx.Graph, shared_params: set[int]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(BatchNorm, producer) pairs by dataflow, and why each other called BatchNorm is not folded."""
    modules = dict(model.named_modules())
    calls = Counter(str(node.target) for node in graph.nodes if node.op == "call_module")
    pairs: list[tuple[str, str]] = []
    reasons: dict[str, str] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[str(node.target)], _BatchNorm):
            producer, reason = _traced_producer(node, modules, calls, shared_params)
            if reason is None:
                pairs.append((str(node.target), producer))
            else:
                reasons[str(node.target)] = reason
    return pairs, reasons


def _traced_producer(
    node: fx.Node, modules: dict[str, nn.Module], calls: Counter[str], shared_params: set[int]
) -> tuple[str, str | None]:
    """The module feeding the BatchNorm call ``node``, and why it cannot be folded into it (or None)."""
    name = str(node.target)
    bn = modules[name]
    assert isinstance(bn, _BatchNorm)
    reason = _unfoldable(bn)
    if reason is not None:
        return "", reason
    if calls[name] > 1:
        return "", "is called more than once"
    source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    if not isinstance(source, fx.Node) or source.op != "call_module":
        return "", f"its input ({source}) is not the output of a Conv1d/2d/3d or Linear module"
    producer = str(source.target)
    if len(source.users) > 1:
        return producer, f"the output of {producer} is also used elsewhere"
    if calls[producer] > 1:
        return producer, f"{producer} is called more than once"
    return producer, _producer_problem(producer, modules[producer], bn, shared_params)


def _sequential_pairs(
    model: nn.Module, shared_params: set[int], error: Exception
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(BatchNorm, producer) pairs of adjacent modules inside ``nn.Sequential`` containers."""
    pairs: list[tuple[str, str]] = []
    reasons: dict[str, str] = {}
    used: set[int] = set()
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = [
            (f"{seq_name}.{k}" if seq_name else k, m) for k, m in seq._modules.items() if m is not None
        ]
        for (producer_name, producer), (name, bn) in itertools.pairwise(children):
            if not isinstance(bn, _BatchNorm) or id(bn) in used or id(producer) in used:
                continue
            reason = _unfoldable(bn) or _producer_problem(producer_name, producer, bn, shared_params)
            if reason is None:
                pairs.append((name, producer_name))
                used.update((id(bn), id(producer)))
            else:
                reasons[name] = reason
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and id(m) not in used:
            reasons.setdefault(
                name,
                "no Conv/Linear right before it in an nn.Sequential "
                f"(torch.fx could not trace the model: {error})",
            )
    return pairs, reasons


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor) and bn.running_mean is not None and bn.running_var is not None
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if layer.bias is not None:
        shift = shift + layer.bias.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight.copy_(weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1))))
    if layer.bias is None:
        layer.bias = nn.Parameter(shift.to(weight.dtype), requires_grad=weight.requires_grad)
    else:
        layer.bias.copy_(shift)
