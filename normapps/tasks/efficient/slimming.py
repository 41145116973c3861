"""Network slimming (Liu et al., ICCV 2017, "Learning Efficient Convolutional Networks through Network Slimming").

BatchNorm's scale gamma measures how much each channel matters. Training adds an L1 penalty on
every gamma::

    L = sum_(x, y) loss(f(x), y) + lambda * sum_(gamma in BN layers) |gamma|

(:class:`BNSparsity` adds its subgradient ``lambda * sign(gamma)`` to each gamma's gradient), one
global threshold on ``|gamma|`` picks the channels to drop at a prune ratio
(:func:`global_threshold`), and :func:`prune` removes them physically: the producing
convolution's output channels, the BatchNorm's channels and the consuming layers' input channels,
found by dataflow with ``torch.fx``. Channels that feed an ``add`` (the residual stream of a ResNet),
a concatenation or the output are never pruned: only the inner channels of residual blocks.

What a pruned model computes: exactly the original model with the removed channels' gamma AND beta
set to 0 (their BatchNorm output is 0, so they contribute nothing downstream). The paper drops the
channels and ignores beta; a removed channel's constant ``relu(beta)`` is not carried into the next
layer because behind a zero-padded convolution it is not a constant (it differs at the borders).
The accuracy lost that way is what :func:`recalibrate_pruned` and :func:`finetune` recover.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from pytorch_lightning import Callback, LightningDataModule, LightningModule, Trainer
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from tqdm import tqdm

from normapps import norm

from .counting import count

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layers whose output channels a following BatchNorm can prune (and whose input channels it can)."""

#: Modules that act on each channel separately and map an all-zero channel to zero.
CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardswish, nn.Mish, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten,
)
#: Functions of the same kind (their first argument is the tensor).
CHANNELWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.mish, torch.relu, torch.tanh, F.dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.flatten,
}
CHANNELWISE_METHODS = {"relu", "relu_", "flatten", "contiguous"}


def bn_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """Every BatchNorm layer of ``model`` with an affine scale, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.weight is not None}


def _require_bn(model: nn.Module, caller: str) -> dict[str, _BatchNorm]:
    layers = bn_layers(model)
    if not layers:
        kinds = Counter(type(m).__name__ for m in model.modules() if norm.stats.is_norm_layer(m))
        found = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no normalization layer"
        raise ValueError(f"{caller} needs a model with BatchNorm layers that have an affine scale (gamma); found {found}")
    return layers


def init_bn_gamma(model: nn.Module, value: float = 0.5) -> nn.Module:
    """Set every BatchNorm scale gamma of ``model`` to ``value`` in place (0.5 in the network slimming code).

    Raises:
        ValueError: if ``model`` has no BatchNorm with an affine scale.
    """
    with torch.no_grad():
        for layer in _require_bn(model, "init_bn_gamma").values():
            layer.weight.fill_(value)
    return model


def sparsity_penalty(model: nn.Module) -> Tensor:
    """``sum |gamma|`` over every BatchNorm layer of ``model`` (a 0-dim tensor, differentiable)."""
    layers = _require_bn(model, "sparsity_penalty")
    return torch.stack([layer.weight.abs().sum() for layer in layers.values()]).sum()


@torch.no_grad()
def add_sparsity_subgradient(model: nn.Module, strength: float) -> None:
    """Add ``strength * sign(gamma)``, the subgradient of ``strength * sum |gamma|``, to every BN scale's gradient."""
    for layer in _require_bn(model, "add_sparsity_subgradient").values():
        gamma = layer.weight
        if not gamma.requires_grad:
            continue
        step = strength * torch.sign(gamma)
        if gamma.grad is None:
            gamma.grad = step
        else:
            gamma.grad.add_(step)


class BNSparsity(Callback):
    """Lightning callback: sparsity training of network slimming (Liu et al. 2017, Eq. 1).

    Before every optimizer step it adds ``strength * sign(gamma)`` to the gradient of each BatchNorm
    scale gamma of the trained module -- the subgradient of ``strength * sum |gamma|`` the authors
    use -- so any optimizer and config gets the penalty; ``bn_l1`` (``sum |gamma|``) is logged per
    epoch. The paper uses 1e-4 (VGG) and 1e-5 (ResNet) with SGD over 160 CIFAR epochs; a short digits
    run has about 100x fewer steps, so it needs a larger ``strength`` (the configs use 1e-3 to 2e-3)
    for gamma to separate within the run.

    Args:
        strength: lambda, the weight of ``sum |gamma|``.
    """

    def __init__(self, strength: float = 1e-3) -> None:
        if not strength >= 0:
            raise ValueError(f"strength must be >= 0, got {strength!r}")
        self.strength = strength

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse a module without BatchNorm before training starts."""
        _require_bn(pl_module, "BNSparsity")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        """Add the subgradient to every BatchNorm scale's gradient."""
        add_sparsity_subgradient(pl_module, self.strength)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log ``bn_l1``, the penalty without its weight."""
        pl_module.log("bn_l1", sparsity_penalty(pl_module).detach(), prog_bar=False)


# ------------------------------------------------------------------------------------------ dataflow


@dataclass(frozen=True)
class PruneGroup:
    """A BatchNorm whose channels can be removed: the layer producing them and the layers consuming them."""

    norm: str
    producer: str
    consumers: tuple[str, ...]


class _Tracer(fx.Tracer):
    """Keeps every BatchNorm and every conv / linear layer as one graph node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (_BatchNorm, *PRODUCERS)) or super().is_leaf_module(m, module_qualified_name)


def _channelwise(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], CHANNELWISE_MODULES)
    if node.op == "call_function":
        return node.target in CHANNELWISE_FUNCTIONS
    return node.op == "call_method" and node.target in CHANNELWISE_METHODS


def _groups_problem(name: str, layer: nn.Module) -> str | None:
    groups = getattr(layer, "groups", 1)
    return None if groups == 1 else f"{name} is a grouped convolution (groups={groups}); grouped and depthwise layers are not pruned"


def _consumers(start: fx.Node, modules: Mapping[str, nn.Module], channels: int) -> tuple[list[str], str | None]:
    """Conv / linear layers that read the output of ``start`` through channel-wise ops only, or why there are none."""
    found: list[str] = []
    frontier = list(start.users)
    seen: set[fx.Node] = set()
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules[str(node.target)], PRODUCERS):
            layer = modules[str(node.target)]
            width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            if width != channels:
                return [], f"its channels reach {node.target} with {width} inputs for {channels} channels"
            problem = _groups_problem(str(node.target), layer)
            if problem:
                return [], problem
            found.append(str(node.target))
        elif _channelwise(node, modules):
            frontier.extend(node.users)
        else:
            what = {"output": "the model's output", "call_function": getattr(node.target, "__name__", str(node.target))}
            if node.target in (operator.add, torch.add, operator.iadd):
                return [], "its channels feed an add (a residual stream keeps its width)"
            return [], f"its channels reach {what.get(node.op, f'{node.op} {node.target}')}, which is not channel-wise"
    return found, None


def prunable_groups(model: nn.Module) -> tuple[list[PruneGroup], dict[str, str]]:
    """The BatchNorm layers of ``model`` whose channels :func:`prune` can remove, and why each other one cannot.

    A BatchNorm is prunable when it has an affine scale, it and its producer (a Conv1d/2d/3d or Linear
    with ``groups == 1`` whose output only it reads) are called once, and its output reaches only
    conv / linear layers (``groups == 1``, called once) through channel-wise ops that map zero to zero
    (:data:`CHANNELWISE_MODULES`, ...). Channels feeding an ``add`` (residual streams), a concatenation,
    another op or the output are kept. Grouped and depthwise convolutions are refused (not pruned), on
    either side.

    Raises:
        ValueError: if ``model`` has no BatchNorm with an affine scale, or ``torch.fx`` cannot trace it.
    """
    layers = _require_bn(model, "prune")
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # any failure to trace: value-dependent control flow, unsupported ops
        raise ValueError(f"prune follows the data flow with torch.fx, which cannot trace {type(model).__name__}: {err}") from err
    modules = dict(model.named_modules())
    calls = Counter(str(node.target) for node in graph.nodes if node.op == "call_module")
    groups: list[PruneGroup] = []
    reasons: dict[str, str] = {}
    for node in graph.nodes:
        name = str(node.target)
        if node.op != "call_module" or name not in layers:
            continue
        reason, producer, consumers = _group_of(node, modules, calls, layers[name])
        if reason is None:
            groups.append(PruneGroup(name, producer, tuple(consumers)))
        else:
            reasons[name] = reason
    found = {g.norm for g in groups}
    for name in layers:
        if name not in found:
            reasons.setdefault(name, "the forward pass never calls it")
    return groups, reasons


def _group_of(
    node: fx.Node, modules: Mapping[str, nn.Module], calls: Counter[str], bn: _BatchNorm
) -> tuple[str | None, str, list[str]]:
    name = str(node.target)
    if calls[name] > 1:
        return "is called more than once", "", []
    source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    if not isinstance(source, fx.Node) or source.op != "call_module" or not isinstance(modules[str(source.target)], PRODUCERS):
        return "its input is not the output of a Conv1d/2d/3d or Linear", "", []
    producer = str(source.target)
    layer = modules[producer]
    problem = _groups_problem(producer, layer)
    if problem:
        return problem, producer, []
    if len(source.users) > 1 or calls[producer] > 1:
        return f"the output of {producer} is also used elsewhere", producer, []
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out != bn.num_features:
        return f"{producer} has {out} outputs but the BatchNorm {bn.num_features} channels", producer, []
    consumers, reason = _consumers(node, modules, bn.num_features)
    if reason is None and not consumers:
        reason = "no conv / linear layer reads its channels"
    if reason is None:
        shared = [c for c in consumers if calls[c] > 1]
        if shared:
            reason = f"{shared[0]}, which reads its channels, is called more than once"
    return reason, producer, consumers


# ------------------------------------------------------------------------------------------ pruning


def global_threshold(model: nn.Module, ratio: float, groups: Sequence[PruneGroup] | None = None) -> float:
    """The one threshold on ``|gamma|`` that prunes a fraction ``ratio`` of the prunable channels.

    With the ``n`` prunable channels' ``|gamma|`` sorted ascending as ``g_(1) <= ... <= g_(n)`` and
    ``k = floor(ratio * n)``, the threshold is ``g_(k+1)`` (``inf`` when ``k = n``): the channels
    with ``|gamma| < threshold`` are pruned, ``k`` of them when the values are distinct (fewer on ties).

    Args:
        model: a network with BatchNorm layers.
        ratio: fraction of the prunable channels to remove, in [0, 1].
        groups: the prunable layers (default: :func:`prunable_groups`).

    Raises:
        ValueError: for a ratio outside [0, 1], or a model without prunable BatchNorm.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
    if groups is None:
        groups, reasons = prunable_groups(model)
        if not groups:
            raise ValueError(f"no BatchNorm layer of {type(model).__name__} can be pruned: {reasons}")
    modules = dict(model.named_modules())
    gammas = torch.cat([modules[g.norm].weight.detach().abs().flatten().float().cpu() for g in groups]).sort().values
    k = math.floor(ratio * len(gammas))
    return math.inf if k >= len(gammas) else float(gammas[k])


@dataclass(frozen=True)
class PrunedLayer:
    """Channels of one prunable BatchNorm after pruning (``kept`` of ``total``) and the layers resized with it."""

    norm: str
    producer: str
    consumers: tuple[str, ...]
    kept: int
    total: int
    clamped: bool = False


@dataclass
class PruneReport:
    """What :func:`prune` did. FLOPs are those ``torch.utils.flop_counter`` counts for one example
    (2 per multiply-add, convolutions and matrix products only)."""

    model: nn.Module = field(repr=False)
    ratio: float
    threshold: float
    keep: dict[str, list[int]]
    layers: list[PrunedLayer]
    skipped: dict[str, str]
    params: tuple[int, int]
    flops: tuple[int, int]

    @property
    def channels(self) -> tuple[int, int]:
        """Prunable channels (kept, total) over every pruned layer."""
        return sum(row.kept for row in self.layers), sum(row.total for row in self.layers)

    def table(self) -> str:
        """A text table: per prunable layer, the kept and total channels; then the kept layers; then params and FLOPs."""
        rows = [(row.norm, f"{row.kept}/{row.total}" + (" (clamped)" if row.clamped else ""), ", ".join(row.consumers))
                for row in self.layers]
        rows += [(name, "kept", why) for name, why in self.skipped.items()]
        kept, total = self.channels
        lines = [f"prune ratio {self.ratio:g}, |gamma| threshold {self.threshold:.4g}: {kept}/{total} prunable channels kept",
                 _table(("layer", "channels", "consumers / reason"), rows), "",
                 _table(("", "before", "after", "ratio"), [
                     ("params", f"{self.params[0]:,}", f"{self.params[1]:,}", f"{self.params[1] / self.params[0]:.3f}"),
                     ("FLOPs", f"{self.flops[0]:,}", f"{self.flops[1]:,}", f"{self.flops[1] / max(self.flops[0], 1):.3f}"),
                 ])]
        return "\n".join(lines)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in (header, tuple("-" * w for w in widths), *rows))


def remove_channels(model: nn.Module, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """A deep copy of ``model`` keeping only the channels ``keep[bn_name]`` (sorted indices) of each named BatchNorm.

    Each named BatchNorm's producer loses its other output channels (weight rows, bias), the BatchNorm
    its other channels (affine parameters and running statistics), and every consumer the matching
    input channels (weight columns). Layers not named keep every channel. This is the physical step of
    :func:`prune`, also used to rebuild a pruned architecture from its kept indices.

    Raises:
        ValueError: if a name is not a prunable BatchNorm of ``model`` or the indices are empty,
            repeated or out of range.
    """
    pruned = copy.deepcopy(model)
    groups, reasons = prunable_groups(pruned)
    by_name = {g.norm: g for g in groups}
    modules = dict(pruned.named_modules())
    for name, indices in keep.items():
        if name not in by_name:
            why = reasons.get(name, "no such BatchNorm layer")
            raise ValueError(f"cannot keep channels of {name!r} in {type(model).__name__}: {why}")
        total = modules[name].num_features
        index = sorted(int(i) for i in indices)
        if not index or len(set(index)) != len(index) or index[0] < 0 or index[-1] >= total:
            raise ValueError(f"kept channels of {name!r} must be distinct indices in [0, {total}), at least one; "
                             f"got {len(index)} indices in [{index[0] if index else '-'}, {index[-1] if index else '-'}]")
        _shrink(modules, by_name[name], torch.tensor(index, dtype=torch.long))
    return pruned


@torch.no_grad()
def _shrink(modules: Mapping[str, nn.Module], group: PruneGroup, index: Tensor) -> None:
    def take(owner: nn.Module, attribute: str, dim: int) -> None:
        value = getattr(owner, attribute)
        if value is None:
            return
        selected = value.index_select(dim, index.to(value.device)).clone()
        if isinstance(value, nn.Parameter):
            setattr(owner, attribute, nn.Parameter(selected, requires_grad=value.requires_grad))
        else:
            setattr(owner, attribute, selected)

    width = len(index)
    producer = modules[group.producer]
    take(producer, "weight", 0)
    take(producer, "bias", 0)
    if isinstance(producer, nn.Linear):
        producer.out_features = width
    else:
        producer.out_channels = width
    bn = modules[group.norm]
    for attribute in ("weight", "bias", "running_mean", "running_var"):
        take(bn, attribute, 0)
    bn.num_features = width
    for consumer_name in group.consumers:
        consumer = modules[consumer_name]
        take(consumer, "weight", 1)
        if isinstance(consumer, nn.Linear):
            consumer.in_features = width
        else:
            consumer.in_channels = width


def prune(
    model: nn.Module, ratio: float, example_input: Tensor, *, min_channels: int = 1
) -> tuple[nn.Module, PruneReport]:
    """Network slimming's pruning step: remove the channels whose ``|gamma|`` is below the global threshold.

    ``model`` is not modified: the pruned model is a new one. Channels with ``|gamma| <``
    :func:`global_threshold` are removed from every prunable BatchNorm (:func:`prunable_groups`),
    physically (:func:`remove_channels`). A layer never keeps fewer than ``min_channels`` channels:
    there the ``min_channels`` largest ``|gamma|`` are kept, with a warning naming the layers. In eval
    mode the pruned model computes what the original computes with the removed channels' gamma and
    beta set to 0 (see the module docstring).

    Args:
        model: a network with BatchNorm layers that ``torch.fx`` can trace.
        ratio: fraction of the prunable channels to remove, in [0, 1).
        example_input: a batch ``(N, ...)`` of model input, for the parameter and FLOP counts
            (:func:`~normapps.tasks.efficient.counting.count` with its first example).
        min_channels: fewest channels a layer keeps.

    Returns:
        The pruned model and a :class:`PruneReport`.

    Raises:
        ValueError: for a model without BatchNorm (or none prunable), a ratio outside [0, 1) or
            ``min_channels < 1``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (the fraction of prunable channels removed), got {ratio!r}")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be an int >= 1, got {min_channels!r}")
    groups, reasons = prunable_groups(model)
    if not groups:
        raise ValueError(f"no BatchNorm layer of {type(model).__name__} can be pruned: "
                         + "; ".join(f"{name}: {why}" for name, why in reasons.items()))
    threshold = global_threshold(model, ratio, groups)
    modules = dict(model.named_modules())
    keep: dict[str, list[int]] = {}
    rows: list[PrunedLayer] = []
    clamped: list[str] = []
    for group in groups:
        gamma = modules[group.norm].weight.detach().abs().float().cpu()
        total = len(gamma)
        index = torch.nonzero(gamma >= threshold).flatten()
        floor = min(min_channels, total)
        was_clamped = len(index) < floor
        if was_clamped:
            index = torch.argsort(gamma, descending=True, stable=True)[:floor].sort().values
            clamped.append(f"{group.norm} ({floor} of {total})")
        keep[group.norm] = index.tolist()
        rows.append(PrunedLayer(group.norm, group.producer, group.consumers, len(index), total, was_clamped))
    if clamped:
        warnings.warn(f"prune ratio {ratio:g} would leave fewer than {min_channels} channel(s) in {len(clamped)} layer(s); "
                      f"kept the largest |gamma| there: {', '.join(clamped)}", stacklevel=2)
    pruned = remove_channels(model, keep)
    size = tuple(example_input.shape[1:])
    before, after = count(model, size), count(pruned, size)
    report = PruneReport(pruned, ratio, threshold, keep, rows, reasons,
                         (before[0], after[0]), (before[1], after[1]))
    return pruned, report


# ----------------------------------------------------------------------------------- recovery


def recalibrate_pruned(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> nn.Module:
    """Recompute every BatchNorm's running statistics on ``batches`` after pruning, in place.

    This is :func:`normapps.norm.recalibrate` with ``mode="exact"`` (precise BN): each layer gets the
    exact mean and unbiased variance of its input over all the batches, with every BatchNorm
    normalizing by batch statistics as in training. Affine parameters do not change.

    Args:
        model: the pruned network.
        batches: model inputs, or ``(input, label)`` batches (a DataLoader).
        max_batches: use at most this many batches.
    """
    return norm.recalibrate(model, batches, mode="exact", max_batches=max_batches)


def finetune(
    model: nn.Module,
    data: LightningDataModule | Iterable[tuple[Tensor, Tensor]],
    epochs: int,
    lr: float = 1e-3,
    *,
    progress: bool = True,
) -> nn.Module:
    """Fine-tune ``model`` in place with Adam on cross-entropy, ``epochs`` passes over the training batches.

    Args:
        model: a classifier returning ``(N, num_classes)`` logits.
        data: a datamodule (its ``train_dataloader()``) or a re-iterable of ``(images, labels)`` batches.
        epochs: passes over the data (0: nothing happens).
        lr: Adam's learning rate.
        progress: show a progress bar per epoch (on stderr).

    Returns:
        ``model``, in eval mode.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if isinstance(data, LightningDataModule):
        data.setup("fit")
        batches: Iterable[tuple[Tensor, Tensor]] = data.train_dataloader()
    else:
        batches = data
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        bar = tqdm(batches, desc=f"fine-tune {epoch + 1}/{epochs}", leave=False, disable=not progress)
        for x, y in bar:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()
