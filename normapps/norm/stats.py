"""Read and edit the population statistics of normalization layers.

Three operations on the statistics a trained network keeps in its BatchNorm layers:

* :func:`capture` measures the exact per-channel mean and variance of each normalization layer's
  input over a set of batches.
* :func:`recalibrate` recomputes BatchNorm population statistics on new data, exactly (AdaBN,
  Li et al. 2016, "Revisiting Batch Normalization For Practical Domain Adaptation"; precise BN,
  Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm") or as a moving average.
* :func:`use_batch_stats` makes BatchNorm normalize with the statistics of the test batch, optionally
  mixed with the source statistics (Schneider et al. 2020, "Improving robustness against common
  corruptions by covariate shift adaptation"; TENT's "norm" baseline, Wang et al. 2021).

``batches`` is, everywhere, any iterable of input tensors, of ``(input, target, ...)`` tuples or
lists, or of dicts holding the input under ``"input"``, ``"image"`` or ``"x"`` -- a
``DataLoader`` included (see :func:`iter_inputs`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from . import functional as NF
from .activation import LocalContrastNorm, LocalResponseNorm
from .framework import Normalize
from .whitening import _BatchWhitening

INPUT_KEYS = ("input", "image", "x")
"""Keys under which :func:`iter_inputs` looks for the input of a dict batch, in this order."""

RECALIBRATION_MODES = ("exact", "ema")


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is an activation-normalization layer that :func:`capture` and
    :func:`~normapps.norm.surgery.convert` handle by default.

    These are torch's ``_BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm and every subclass, ours and
    timm's included), ``_InstanceNorm``, ``GroupNorm``, ``LayerNorm`` over one dimension,
    every :class:`~normapps.norm.framework.Normalize` and our LRN / LCN (torch's ``LocalResponseNorm``
    does not know its channel count, so it is left alone).
    """
    if isinstance(module, nn.LayerNorm):
        return len(module.normalized_shape) == 1
    return isinstance(module, (_BatchNorm, _InstanceNorm, nn.GroupNorm, Normalize, LocalResponseNorm,
                               LocalContrastNorm))


def num_channels(module: nn.Module) -> int:
    """The channel count of a normalization layer: ``num_features`` (BatchNorm, InstanceNorm,
    ours), ``num_channels`` (GroupNorm) or ``normalized_shape[0]`` (LayerNorm)."""
    for attribute in ("num_features", "num_channels"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0]
    raise ValueError(
        f"cannot tell the channel count of {type(module).__name__}: expected an int attribute "
        "num_features or num_channels, or a LayerNorm"
    )


def iter_inputs(batches: Iterable[Any], device: torch.device | str | None = None) -> Iterator[Tensor]:
    """Yield the input tensor of each batch, moved to ``device`` (if given).

    A batch is a tensor, a tuple or list whose element 0 is the input (``(input, target)``), or a
    mapping holding the input under one of :data:`INPUT_KEYS`.

    >>> [x.shape for x in iter_inputs([(torch.zeros(2, 3), torch.zeros(2))])]
    [torch.Size([2, 3])]
    """
    if isinstance(batches, Tensor):
        raise TypeError(
            "batches must be an iterable of batches, got a single tensor (iterating it would "
            "yield its rows); wrap it in a list: [x]"
        )
    for index, batch in enumerate(batches):
        x = _input_of(batch)
        if not isinstance(x, Tensor):
            raise TypeError(
                f"batch {index}: expected a tensor, an (input, target) tuple or list, or a dict "
                f"with key {' / '.join(map(repr, INPUT_KEYS))}; got {_describe_batch(batch)}"
            )
        yield x if device is None else x.to(device)


def _input_of(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)):
        return batch[0] if batch else None
    if isinstance(batch, Mapping):
        return next((batch[key] for key in INPUT_KEYS if key in batch), None)
    return batch


def _describe_batch(batch: Any) -> str:
    if isinstance(batch, Mapping):
        return f"a {type(batch).__name__} with keys {list(batch)}"
    if isinstance(batch, (tuple, list)):
        first = type(batch[0]).__name__ if batch else "nothing"
        return f"a {type(batch).__name__} of length {len(batch)} starting with {first}"
    return type(batch).__name__


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _nonempty_inputs(
    model: nn.Module, batches: Iterable[Any], max_batches: int | None, caller: str
) -> Iterator[Tensor]:
    """The model-device inputs of ``batches`` (at most ``max_batches``); raises before anything
    is changed if there is none."""
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    inputs = itertools.islice(iter_inputs(batches, _device_of(model)), max_batches)
    first = next(inputs, None)
    if first is None:
        raise ValueError(
            f"{caller} expected at least one batch of inputs (tensors, (input, target) pairs or "
            "dicts), got an empty iterable"
        )
    return itertools.chain([first], inputs)


@dataclass(frozen=True)
class LayerStats:
    """Exact per-channel statistics of one layer's input, pooled over every batch.

    ``mean`` and ``var`` (biased, i.e. divided by ``count``) have shape ``(C,)`` and dtype float64;
    ``count`` is the number of values per channel (N times the spatial size, summed over batches).
    """

    mean: Tensor
    var: Tensor
    count: int

    @property
    def unbiased_var(self) -> Tensor:
        """The variance divided by ``count - 1``: what BatchNorm stores as ``running_var``."""
        if self.count < 2:
            raise ValueError(f"the unbiased variance needs more than 1 value per channel, got {self.count}")
        return self.var * (self.count / (self.count - 1))


class _ChannelMoments:
    """Per-channel count, mean and sum of squared deviations, accumulated in float64 with the
    pairwise update of Chan, Golub & LeVeque (1979): exact pooled statistics over batches, without
    the cancellation of a raw sum-of-squares formula."""

    def __init__(self) -> None:
        self.count = 0
        self.calls = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, x: Tensor, channel_dim: int) -> None:
        """Pool in the per-channel moments of ``x`` (two-pass, in its precision, at least float32)."""
        n = x.numel() // x.shape[channel_dim]
        if n == 0:
            self.calls += 1
            return
        dims = [d for d in range(x.dim()) if d != channel_dim]
        mean, var = NF.moments(x.detach(), tuple(dims), keepdim=False)
        self.add(n, mean, var)

    def add(self, n: int, mean: Tensor, var: Tensor) -> None:
        """Pool in the moments of ``n`` values per channel with this ``mean`` and biased ``var``."""
        self.calls += 1
        mean, var = mean.detach().double(), var.detach().double()
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = mean, var * n
        else:
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + var * n + delta.square() * (self.count * n / total)
        self.count += n

    def stats(self) -> LayerStats:
        assert self.mean is not None and self.m2 is not None
        return LayerStats(self.mean, self.m2 / self.count, self.count)


def _channel_dim(module: nn.Module, x: Tensor, name: str) -> int:
    if x.dim() < 2:
        raise ValueError(f"layer {name!r}: expected an input of shape (N, C, ...), got {tuple(x.shape)}")
    # nn.LayerNorm normalizes the last dimension (tokens (N, L, C)); subclasses such as timm's
    # LayerNorm2d permute channels-first input, so their channels are at dimension 1.
    if isinstance(module, nn.LayerNorm) and x.shape[-1] == module.normalized_shape[0]:
        return x.dim() - 1
    return 1


def _first_input(module: nn.Module, args: tuple[Any, ...], name: str) -> Tensor:
    if not args or not isinstance(args[0], Tensor):
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) was called without a positional input tensor"
        )
    return args[0]


def _select_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    if layers is None:
        return {name: m for name, m in model.named_modules() if is_norm_layer(m)}
    if isinstance(layers, str):
        raise TypeError(
            f"layers must be a sequence of qualified module names, got the string {layers!r}; "
            f"use [{layers!r}]"
        )
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        known = [name for name, m in modules.items() if is_norm_layer(m)]
        raise ValueError(
            f"no module named {unknown} in {type(model).__name__}; its normalization layers are {known}"
        )
    return {name: modules[name] for name in layers}


def capture(
    model: nn.Module, batches: Iterable[Any], layers: Sequence[str] | None = None
) -> dict[str, LayerStats]:
    """Exact per-channel statistics of the input of each normalization layer over ``batches``.

    The model runs under ``torch.no_grad()`` in its current train/eval mode; buffers it changes on
    the way (BatchNorm running statistics in train mode) are restored afterwards. Channels are
    dimension 1, except for ``nn.LayerNorm`` whose last dimension is the channel dimension;
    statistics pool over every other dimension and every batch (accumulated in float64).

    Args:
        model: any network.
        batches: see :func:`iter_inputs`; inputs are moved to the model's device.
        layers: qualified module names (``"layer1.0.bn1"``); default: every layer
            :func:`is_norm_layer` accepts. By default, layers the forward pass never calls are
            left out of the result; a named layer that is never called is an error.

    Returns:
        ``{qualified name: LayerStats}`` in module order.

    Example::

        stats = capture(model, loader)
        shift = (stats["bn1"].mean - model.bn1.running_mean).abs()
    """
    selected = _select_layers(model, layers)
    inputs = _nonempty_inputs(model, batches, None, "capture")
    moments = {name: _ChannelMoments() for name in selected}

    def record(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = _first_input(module, args, name)
        moments[name].update(x, _channel_dim(module, x, name))

    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    handles = [module.register_forward_pre_hook(partial(record, name)) for name, module in selected.items()]
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])
    if layers is not None:
        unused = [name for name in layers if moments[name].count == 0]
        if unused:
            raise ValueError(f"layers {unused} received no input: the forward pass never called them")
    return {name: m.stats() for name, m in moments.items() if m.count > 0}


def unsupported_statistics_layers(model: nn.Module) -> list[str]:
    """Layers that keep running statistics but are not BatchNorm layers (``bgn``, ``l1bn``,
    ``switchnorm``, ``bin``, ``evonorm_b0``, ``cbn``, ``spade``, ``smbn``): :func:`recalibrate` and
    :func:`use_batch_stats` leave them as they are."""
    return [name for name, m in model.named_modules()
            if isinstance(m, Normalize) and getattr(m, "track_running_stats", False)]


def _batch_norm_layers(model: nn.Module, caller: str, wanted: str, *, tracked: bool) -> dict[str, _BatchNorm]:
    """The model's BatchNorm layers (with running statistics if ``tracked``) for ``caller``; raises if
    there are none, and warns with the names of the other statistics layers it leaves alone."""
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and (m.running_mean is not None or not tracked)
    }
    skipped = unsupported_statistics_layers(model)
    found = f"; its layers {skipped} keep statistics of other kinds, which {caller} does not handle" if skipped else ""
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer ({wanted}){found}")
    if skipped:
        warnings.warn(f"{caller}: layers {skipped} keep running statistics but are not BatchNorm layers; "
                      "they are left as they are", stacklevel=3)
    return layers


def _recalibration_layers(model: nn.Module) -> tuple[dict[str, _BatchNorm], dict[str, _BatchWhitening]]:
    whitening = {name: m for name, m in model.named_modules() if isinstance(m, _BatchWhitening)}
    if whitening and not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return {}, whitening
    return _batch_norm_layers(
        model, "recalibrate", "torch.nn.modules.batchnorm._BatchNorm with track_running_stats=True, "
        "or a batch whitening layer, is needed to recalibrate", tracked=True), whitening


def _native_batch_norm(bn: _BatchNorm) -> bool:
    """Whether ``bn``'s training forward is torch's (or our ``bn``'s, unsynchronized), which
    leaves the batch's mean and unbiased variance in the running buffers when momentum is 1."""
    forward = type(bn).forward
    if bn.running_mean is None or bn.running_mean.dtype not in (torch.float32, torch.float64):
        return False  # half-precision buffers: the hook computes the moments in float32
    if forward is _BatchNorm.forward:
        return True
    from .activation import BatchNorm

    return forward is BatchNorm.forward and not getattr(bn, "sync", False)


def _recalibration_pass(
    model: nn.Module, inputs: Iterator[Tensor], channels_last: bool | None, restart: Any
) -> None:
    """``model(x)`` for every input; 4-D inputs in channels-last format when ``channels_last`` is
    True, or when it is None and they are on the CPU. If the model fails on the first
    channels-last batch (a ``view`` of it, say), ``restart()`` clears what that batch recorded and
    the pass goes on in the inputs' own format."""
    convert = channels_last
    for index, x in enumerate(inputs):
        wanted = x.dim() == 4 and (convert or (convert is None and x.device.type == "cpu"))
        if not wanted:
            model(x)
            continue
        fast = x.contiguous(memory_format=torch.channels_last)
        if index > 0 or convert:
            model(fast)
            continue
        try:
            model(fast)
        except RuntimeError:
            restart()
            convert = False
            model(x)


def recalibrate(
    model: nn.Module,
    batches: Iterable[Any],
    mode: str = "exact",
    momentum: float | None = 0.1,
    max_batches: int | None = None,
    reset: bool = True,
    channels_last: bool | None = None,
) -> nn.Module:
    """Recompute the population statistics of every BatchNorm layer on ``batches``.

    ``mode="exact"`` is AdaBN (Li et al. 2016) / precise BN (Wu & Johnson 2021): one pass in which
    every BatchNorm normalizes with its batch statistics, as in training, and every other module is
    in eval mode (dropout off). Each batch's per-channel moments (two-pass, in the input's precision,
    at least float32) are pooled over batches in float64, and the layer gets the statistics of all
    its inputs pooled together::

        running_mean = sum(x) / n
        running_var  = sum((x - running_mean)^2) / (n - 1)      (unbiased, as torch stores it)

    with ``n`` the number of values per channel over all batches; ``num_batches_tracked`` grows by
    the number of calls. This is the exact statistic of the concatenated data, which torch's
    ``momentum=None`` cumulative average is not (it averages per-batch variances and drops the
    variance of the batch means).

    ``mode="ema"`` runs the same pass updating the statistics as in training,
    ``running = (1 - momentum) * running + momentum * batch_statistic`` (``momentum=None``: the
    cumulative average, as in torch), from reset statistics (``reset=True``) or from the current
    ones (``reset=False``: what ``model.train()`` followed by forward passes does, the moving
    average that several public AdaBN implementations compute instead of the target statistics).

    Speed: the batch moments of a plain torch BatchNorm are the ones its own training kernel
    computes (read back through ``momentum=1``), so the pass costs about one training-mode
    forward. On CPU, 4-D inputs are passed in channels-last memory format by default
    (``channels_last=None``): torch's CPU batch-norm training kernel is about three times faster
    there, which makes an exact pass over a target set about as fast as an eval-mode inference
    pass in the default format; if the model rejects channels-last input (e.g. ``x.view`` on
    it), the pass restarts in the input's own format. ``channels_last=False`` never converts,
    ``True`` always does (on any device).

    Affine parameters never change; each module's train/eval mode and each BatchNorm's momentum
    are restored. Layers the pass never reaches keep their statistics (with a warning); if the pass
    fails, every statistic is restored. The batch whitening layers (``dbn``, ``pcawhiten``,
    ``cdwhiten``, ``iternorm``) are recalibrated too: ``exact`` pools each group's mean and
    covariance and sets the running whitening matrix to that of the pooled covariance (after
    training this is what makes ``dbn`` usable in eval on rank-deficient layers, where the moving
    average of ZCA matrices is not; see the whitening module). Our ``Normalize`` layers that keep
    running statistics (e.g. ``bgn``, ``switchnorm``) are not recalibrated.

    Args:
        model: a network with at least one ``_BatchNorm`` that tracks running statistics.
        batches: see :func:`iter_inputs`; inputs are moved to the model's device.
        mode: ``"exact"`` or ``"ema"``.
        momentum: the moving-average factor of ``mode="ema"`` (ignored by ``"exact"``).
        max_batches: use at most this many batches.
        reset: ``mode="ema"`` only: start the moving average from reset statistics.
        channels_last: pass 4-D inputs in channels-last memory format (``None``: on CPU).

    Returns:
        ``model``, recalibrated in place.

    Example::

        recalibrate(model, target_loader, max_batches=50)   # AdaBN to the target domain
    """
    if mode not in RECALIBRATION_MODES:
        raise ValueError(f"unknown recalibration mode {mode!r}; expected one of {RECALIBRATION_MODES}")
    if mode == "ema" and momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
    layers, whitening = _recalibration_layers(model)
    inputs = _nonempty_inputs(model, batches, max_batches, "recalibrate")
    white = {name: _WhiteningRecalibration(layer, name, mode, momentum, reset) for name, layer in whitening.items()}
    # Layers whose batch moments torch's own kernel computes; the others get them from a hook.
    native = {name for name, bn in layers.items() if mode == "exact" and _native_batch_norm(bn)}
    saved = {name: _snapshot(bn) for name, bn in layers.items()}
    accumulators: dict[str, _ChannelMoments | _MovingAverage] = {}

    def start() -> None:
        accumulators.clear()
        for name, bn in layers.items():
            if mode == "ema" and reset:
                bn.reset_running_stats()
            elif mode == "ema":
                _restore(bn, saved[name])
            accumulators[name] = _ChannelMoments() if mode == "exact" else _MovingAverage(bn, name, momentum)
        for w in white.values():
            w.start()

    # Runs after the layer, like torch's own update: batch renorm's forward reads the running statistics.
    def record(name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        accumulators[name].update(_first_input(module, args, name), 1)

    def record_native(name: str, module: _BatchNorm, args: tuple[Any, ...], output: Any) -> None:
        x = _first_input(module, args, name)
        n = x.numel() // x.shape[1]  # momentum 1: the running buffers hold this batch's moments
        accumulators[name].add(n, module.running_mean, module.running_var * ((n - 1) / n))

    training = {m: m.training for m in model.modules()}
    momenta = {name: bn.momentum for name, bn in layers.items()}
    handles = [bn.register_forward_hook(partial(record_native if name in native else record, name))
               for name, bn in layers.items()]
    handles += [w.layer.register_forward_pre_hook(w.record) for w in white.values()]
    try:
        model.eval()
        for name, bn in layers.items():
            bn.train()
            # 1: torch's update leaves the batch moments in the buffers; 0: the hooks do the updating.
            bn.momentum = 1.0 if name in native else 0.0
        start()
        with torch.no_grad():
            _recalibration_pass(model, inputs, False if white else channels_last, start)
            for name, bn in layers.items():
                _write_statistics(bn, name, accumulators[name], saved[name], reset)
            for w in white.values():
                w.finish()
    except BaseException:
        with torch.no_grad():
            for name, bn in layers.items():
                _restore(bn, saved[name])
            for w in white.values():
                w.restore()
        raise
    finally:
        for handle in handles:
            handle.remove()
        for module, was_training in training.items():
            module.training = was_training
        for name, bn in layers.items():
            bn.momentum = momenta[name]
        for w in white.values():
            w.layer.momentum = w.momentum_saved
    unused = [name for name, acc in accumulators.items() if acc.calls == 0]
    unused += [name for name, w in white.items() if w.calls == 0]
    if unused:
        warnings.warn(
            f"recalibrate: BatchNorm layers {unused} were never called; their statistics are unchanged",
            stacklevel=2,
        )
    return model


class _WhiteningRecalibration:
    """Recalibration of a batch whitening layer (dbn, pcawhiten, cdwhiten, iternorm).

    ``exact``: the layer's input is pooled per group in float64 (Chan et al.'s update of the mean and
    the co-moment matrix), then ``running_mean`` is the pooled mean and ``running_whitening`` the
    layer's whitening matrix of the pooled covariance plus ``eps I``. ``ema``: the running buffers are
    reset (mean 0, matrix I; unless ``reset=False``) and the layer's own training update runs with ``momentum``."""

    def __init__(self, layer: _BatchWhitening, name: str, mode: str, momentum: float | None,
                 reset: bool = True) -> None:
        self.layer, self.name, self.mode, self.momentum, self.reset = layer, name, mode, momentum, reset
        self.momentum_saved = layer.momentum
        self.saved = {k: b.detach().clone() for k, b in layer.named_buffers(recurse=False)}
        self.calls, self.count = 0, 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def start(self) -> None:
        self.layer.train()
        if self.mode == "exact":
            self.layer.momentum = 0.0  # the pre-hook pools the input; the layer's own update is a no-op
        elif not self.reset:
            self.layer.momentum = self.momentum
        else:
            self.layer.momentum = self.momentum
            self.layer.running_mean.zero_()
            self.layer.running_whitening.copy_(torch.eye(self.layer.group_size).expand_as(self.layer.running_whitening))
            self.layer.num_batches_tracked.zero_()

    def record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.calls += 1
        if self.mode != "exact":
            return
        x = _first_input(module, args, self.name).detach().double()
        groups, g = self.layer.num_features // self.layer.group_size, self.layer.group_size
        xg = x.transpose(0, 1).reshape(groups, g, -1)
        n = xg.shape[-1]
        mean = xg.mean(-1, keepdim=True)
        xc = xg - mean
        m2 = xc @ xc.transpose(-1, -2)
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = mean, m2
        else:
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + (delta @ delta.transpose(-1, -2)) * (self.count * n / total)
        self.count += n

    def finish(self) -> None:
        if self.calls == 0:
            self.restore()
            return
        if self.mode != "exact":
            return
        if self.count < 2:
            raise ValueError(f"layer {self.name!r}: exact statistics need more than 1 value per channel, got {self.count}")
        assert self.mean is not None and self.m2 is not None
        layer = self.layer
        cov = self.m2 / self.count + layer.eps * torch.eye(layer.group_size, dtype=torch.float64)
        layer.running_mean.copy_(self.mean)
        layer.running_whitening.copy_(layer.whitening_matrix(cov))
        layer.num_batches_tracked.copy_(self.saved["num_batches_tracked"] + self.calls)

    def restore(self) -> None:
        for k, b in self.layer.named_buffers(recurse=False):
            b.copy_(self.saved[k])


class _MovingAverage:
    """Training-style update of a BatchNorm's statistics, in place::

        running = (1 - f) * running + f * batch_statistic      (batch variance unbiased)

    with ``f = momentum``, or ``f = 1/k`` at the k-th call when ``momentum`` is None (torch's
    cumulative average)."""

    def __init__(self, bn: _BatchNorm, name: str, momentum: float | None) -> None:
        self.bn = bn
        self.name = name
        self.momentum = momentum
        self.calls = 0

    def update(self, x: Tensor, channel_dim: int) -> None:
        n = x.numel() // x.shape[channel_dim]
        if n < 2:
            raise ValueError(
                f"layer {self.name!r}: a moving-average update needs more than 1 value per channel, "
                f"got input of shape {tuple(x.shape)}"
            )
        dims = [d for d in range(x.dim()) if d != channel_dim]
        mean, var = NF.moments(x.detach().double(), tuple(dims), keepdim=False)
        var = var * (n / (n - 1))
        self.calls += 1
        f = 1.0 / self.calls if self.momentum is None else self.momentum
        running_mean, running_var = self.bn.running_mean, self.bn.running_var
        assert running_mean is not None and running_var is not None
        running_mean.copy_((1 - f) * running_mean.double() + f * mean)
        running_var.copy_((1 - f) * running_var.double() + f * var)


_Snapshot = tuple[Tensor, Tensor, "Tensor | None"]


def _snapshot(bn: _BatchNorm) -> _Snapshot:
    tracked = None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone()
    return bn.running_mean.clone(), bn.running_var.clone(), tracked


def _restore(bn: _BatchNorm, saved: _Snapshot) -> None:
    bn.running_mean.copy_(saved[0])
    bn.running_var.copy_(saved[1])
    if bn.num_batches_tracked is not None and saved[2] is not None:
        bn.num_batches_tracked.copy_(saved[2])


def _write_statistics(
    bn: _BatchNorm, name: str, accumulator: _ChannelMoments | _MovingAverage, saved: _Snapshot, reset: bool = True
) -> None:
    """Set ``bn``'s statistics from a finished pass (or restore them if it was never called)."""
    if accumulator.calls == 0:
        _restore(bn, saved)
        return
    if isinstance(accumulator, _ChannelMoments):
        if accumulator.count < 2:
            raise ValueError(
                f"layer {name!r}: exact statistics need more than 1 value per channel, "
                f"got {accumulator.count}"
            )
        stats = accumulator.stats()
        bn.running_mean.copy_(stats.mean)
        bn.running_var.copy_(stats.unbiased_var)
        start = saved[2]
    else:  # the moving average is already in place, from reset or from the saved statistics
        start = None if saved[2] is None else torch.zeros_like(saved[2]) if reset else saved[2]
    if bn.num_batches_tracked is not None and start is not None:
        bn.num_batches_tracked.copy_(start + accumulator.calls)


def source_prior(n_source: float, batch_size: int) -> float:
    """The weight of the source statistics, ``p = N / (N + n)`` (Schneider et al. 2020).

    ``N`` (``n_source``) is a pseudo sample size expressing trust in the source statistics (e.g.
    16), ``n`` the test batch size.

    >>> source_prior(16, 16)
    0.5
    """
    if not (isinstance(n_source, (int, float)) and math.isfinite(n_source) and n_source >= 0):
        raise ValueError(f"n_source must be a finite number >= 0, got {n_source!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return n_source / (n_source + batch_size)


class BatchStatsNorm(_BatchNorm):
    """BatchNorm that normalizes with the statistics of the current batch in train and eval mode,
    optionally mixed with its stored (source) statistics (Schneider et al. 2020)::

        mean = p * running_mean + (1 - p) * batch_mean
        var  = p * running_var  + (1 - p) * batch_var          (batch_var biased, as in training)

    with ``p = prior`` (``None`` or 0: batch statistics only, TENT's "norm"; 1: the stored
    statistics, i.e. plain eval-mode BatchNorm). Running statistics are never updated; gradients
    flow through the batch statistics, so the affine parameters can be trained (TENT).

    Not built directly: :func:`use_batch_stats` turns a BatchNorm layer into one in place by
    switching its class to a subclass of both ``BatchStatsNorm`` and its own class (like
    ``torch.nn.utils.parametrize``), so its parameters, buffers, hooks and state-dict keys are the
    very same objects. ``use_batch_stats(model, enabled=False)`` switches back. Submodules of the
    layer run after the normalization in their registration order (timm's ``BatchNormAct2d``: its
    ``drop`` and ``act``), as in the layer's own forward.
    """

    prior: float | None
    _source_class: type[_BatchNorm]

    def forward(self, input: Tensor) -> Tensor:
        out = self._normalize(input)
        for after in self.children():  # timm's BatchNormAct2d: drop, then activation
            out = after(out)
        return out

    def _normalize(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.prior:
            return F.batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if self.prior == 1:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        dims = (0,) + tuple(range(2, input.dim()))
        mean, var = NF.moments(input, dims, keepdim=False)
        p = self.prior
        mean = p * self.running_mean + (1 - p) * mean
        var = p * self.running_var + (1 - p) * var
        scale = torch.rsqrt(var + self.eps)
        shape = (1, -1) + (1,) * (input.dim() - 2)
        return NF.scale_shift_apply(input, scale.reshape(shape), (-mean * scale).reshape(shape), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prior={self.prior}"

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # The class is made at run time: pickle (torch.save, deepcopy) by the source class instead.
        return (_new_batch_stats_module, (self._source_class,), self.__dict__)


_BATCH_STATS_CLASSES: dict[type[_BatchNorm], type[BatchStatsNorm]] = {}


def _batch_stats_class(source: type[_BatchNorm]) -> type[BatchStatsNorm]:
    if source not in _BATCH_STATS_CLASSES:
        _BATCH_STATS_CLASSES[source] = type(
            f"BatchStats{source.__name__}", (BatchStatsNorm, source), {"_source_class": source}
        )
    return _BATCH_STATS_CLASSES[source]


def _new_batch_stats_module(source: type[_BatchNorm]) -> BatchStatsNorm:
    cls = _batch_stats_class(source)
    return cls.__new__(cls)


def use_batch_stats(model: nn.Module, prior: float | None = None, *, enabled: bool = True) -> nn.Module:
    """Make every BatchNorm layer normalize with the statistics of the test batch, even in eval
    mode, optionally mixed with the stored source statistics (see :class:`BatchStatsNorm`).

    Test-time normalization: TENT's "norm" baseline (Wang et al. 2021) with ``prior=None``; the
    source prior of Schneider et al. 2020 with ``prior=p``, e.g. ``p = source_prior(16, n)``.
    Calling it again changes ``prior``; ``enabled=False`` restores plain BatchNorm behaviour.
    Running statistics are never modified.

    Args:
        model: a network with ``_BatchNorm`` layers (changed in place; the root may be one).
        prior: weight ``p`` in [0, 1] of the source statistics; ``None`` is the same as 0.
        enabled: ``False`` turns every :class:`BatchStatsNorm` back into its original class.

    Returns:
        ``model``.

    Example::

        use_batch_stats(model.eval(), prior=source_prior(16, batch_size))
        logits = model(test_batch)
    """
    if not enabled:
        if prior is not None:
            raise ValueError(f"prior has no meaning with enabled=False, got prior={prior!r}")
        for module in model.modules():
            if isinstance(module, BatchStatsNorm):
                module.__class__ = module._source_class
                del module.prior
        return model
    if prior is not None and (
        isinstance(prior, bool) or not isinstance(prior, (int, float)) or not 0.0 <= prior <= 1.0
    ):
        raise ValueError(f"prior must be a number in [0, 1] or None, got {prior!r}")
    layers = _batch_norm_layers(
        model, "use_batch_stats", "torch.nn.modules.batchnorm._BatchNorm to switch to batch statistics",
        tracked=False)
    if prior:
        untracked = [name for name, m in layers.items() if m.running_mean is None]
        if untracked:
            raise ValueError(
                f"prior={prior} mixes in running statistics, but layers {untracked} keep none "
                "(track_running_stats=False); use prior=None"
            )
    for module in layers.values():
        if not isinstance(module, BatchStatsNorm):
            module.__class__ = _batch_stats_class(type(module))
        module.prior = None if prior is None else float(prior)
    return model
