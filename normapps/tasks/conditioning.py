"""Conditioning analysis: does normalization make the optimization problem better conditioned?

The survey's account of *why normalization helps* (Huang et al., "Normalization Techniques in
Training DNNs: Methodology, Analysis and Application", TPAMI 2023) says that normalizing
activations improves the conditioning of the layer-input covariance and of the Fisher information
matrix, i.e. shrinks the spread of their eigenvalues. This module measures both, for networks that
differ only in their normalization, on the embedded digits.

**Second-moment matrices.** Every matrix studied here is ``M = (1/n) sum_i v_i v_i^T`` over ``n``
sample vectors ``v_i``; its eigenvalues are the squared singular values of ``V / sqrt(n)`` (``V``
holds the ``v_i`` as rows), computed in float64 with an SVD, which keeps the small eigenvalues
accurate where forming ``M`` would not (:func:`second_moment_spectrum`).

**Layer-input covariance** (Huang et al., "Layer-wise Conditioning Analysis in Exploring the
Learning Dynamics of DNNs", ECCV 2020). A layer ``y = W x`` multiplies vectors ``x``: for a linear
layer its input, for a convolution the ``C_in * kH * kW`` patches it slides over
(``torch.nn.functional.unfold``, with the layer's padding and stride). The layer-wise Fisher of the
weights is approximately ``E[x x^T] (x) E[d d^T]`` (K-FAC, Martens & Grosse 2015; ``d`` the gradient
w.r.t. the layer's output), whose condition number is the product of the two factors' condition
numbers: an ill-conditioned input makes gradient descent on ``W`` ill-conditioned.
:func:`layer_inputs` collects these vectors; the analysis reports both the centred covariance
``Cov[x]`` (``v = x - mean``) and the uncentred second moment ``E[x x^T]`` (``v = x``), the factor
K-FAC actually uses: a mean far from zero adds one large eigenvalue (LeCun et al., "Efficient
BackProp", 1998), which centring removes.

**Empirical Fisher** of a small MLP: ``F = (1/n) sum_i g_i g_i^T`` with ``g_i`` the gradient of
the log-likelihood of sample ``i``'s true label with respect to all parameters. Two variants:

* *frozen statistics* (:func:`per_sample_gradients`, ``torch.func.vmap`` of ``torch.func.grad``):
  the network in eval mode, its normalization layers holding the exact statistics of the samples
  (:func:`set_population_statistics`). Normalization is then a fixed affine map per unit: the
  Fisher of the function the network computes at inference.
* *batch statistics* (:func:`batch_per_sample_gradients`): the network in training mode on
  mini-batches; each ``g_i`` includes the dependence of the batch statistics on the weights, as
  the gradient the optimizer actually sees. This is where batch normalization's scale invariance
  shows (each hidden unit's incoming weight vector is orthogonal to its gradient, Ghorbani et al.,
  "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density", ICML 2019).

**Condition numbers** of a spectrum ``lambda_1 >= ... >= lambda_d >= 0``:

* numerical rank ``r``: the number of singular values of ``V`` above ``sigma_1 * max(n, d) * eps``
  (``eps`` of float64), the rule of ``numpy.linalg.matrix_rank``;
* ``kappa = lambda_1 / lambda_r``, the condition number over the nonzero spectrum (directions of
  zero variance leave the loss flat and are reported as the rank instead). It hangs on the single
  smallest eigenvalue, the one most affected by sampling noise;
* ``kappa@50% = lambda_1 / lambda_j`` with ``j = ceil(rank_fraction * r)`` (``rank_fraction`` 0.5:
  the median eigenvalue): how much slower than the fastest direction the median direction of the
  nonzero spectrum learns under gradient descent. Robust to the tail, and it compares every method
  at the same count of directions;
* ``kappa_share = lambda_1 / lambda_k`` with ``k`` the fewest leading eigenvalues that hold
  ``variance_share`` (99%) of the trace. Reported for comparison, not used for the verdicts: ``k``
  itself depends on the method, and a spectrum that collapses onto a few directions (a small ``k``)
  gets a *small* ``kappa_share`` although it is worse conditioned.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from normapps import norm
from normapps.data import DigitsDataModule
from normapps.io import atomic_path, atomic_write, check_overwrite
from normapps.models import SmallCNN, build_norm, check_norm_name

__all__ = [
    "NO_NORM", "WEIGHT_STANDARDIZATION", "OUTPUT_FILES", "STAGES", "FISHER_MODES",
    "ConditioningConfig", "Spectrum", "ConditioningResult", "check_method",
    "second_moment_spectrum", "layer_inputs", "layer_input_spectra", "per_sample_gradients",
    "batch_per_sample_gradients", "set_population_statistics", "norm_layer", "build_cnn", "build_mlp",
    "train", "accuracy", "analyze", "ratios_to_none", "reading", "markdown", "write_results",
]

NO_NORM = "none"
"""No normalization: the layers of the network are conv/linear and ReLU only."""
WEIGHT_STANDARDIZATION = "ws"
"""No activation normalization; weight standardization (Qiao et al. 2019) on the hidden layers."""
OUTPUT_FILES = ("conditioning.md", "conditioning.json", "conditioning.covariance.png", "conditioning.fisher.png")
"""The files :func:`write_results` writes into the output folder."""
STAGES = ("init", "trained")
"""When the matrices are measured: at initialization and after the short training."""
FISHER_MODES = ("frozen", "batch")
"""How the Fisher's per-sample gradients treat the normalization statistics (module docstring)."""


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_method(name: str) -> str:
    """Return ``name`` if the analysis can build it, else raise a ValueError naming the choices.

    Accepted: ``"none"``, ``"ws"`` and every method :func:`~normapps.models.check_norm_name`
    accepts (the registered activation and whitening methods).
    """
    if name in (NO_NORM, WEIGHT_STANDARDIZATION):
        return name
    try:
        return check_norm_name(name)
    except ValueError as err:
        raise ValueError(f"{err} Also accepted: 'none' (no normalization), 'ws' (weight standardization).") from None


@dataclass
class ConditioningConfig:
    """What ``normapps analyze`` measures (the keys of ``configs/analyze/*.yaml``).

    Args:
        norms: methods compared: ``none``, ``ws`` (weight standardization, no activation
            normalization) or a registered activation / whitening method (``bn``, ``iternorm``,
            ``dbn``, ``gn``, ...), placed after every hidden conv / linear layer.
        group_size: channels per whitening group of the methods that take ``group_size``
            (``iternorm``, ``dbn``, ...).
        seeds: one run per seed (initialization and data order); tables show the median over seeds.
        steps: Adam steps of the short training after which the matrices are measured again.
        batch_size: mini-batch size of training and of every batch-statistics measurement.
        lr: Adam learning rate.
        width: channels of the CNN's first block (:class:`~normapps.models.SmallCNN`).
        image_size: side of the CNN's input images (the 8x8 digits upsampled bilinearly).
        covariance_samples: validation samples over which the layer-input matrices are measured;
            a multiple of ``batch_size``.
        mlp_hidden: widths of the MLP's hidden layers (input: the 64 pixels of an 8x8 digit).
        fisher_samples: training samples over which the empirical Fisher is measured; a multiple
            of ``batch_size``.
        rank_fraction: ``kappa@50%`` divides by the eigenvalue at this fraction of the rank (0.5:
            the median nonzero eigenvalue).
        variance_share: share of the trace that ``kappa_share`` keeps (0.99: 99% of the variance).
        out: folder of the tables and plots.
    """

    norms: list[str] = field(default_factory=lambda: [NO_NORM, "bn", "iternorm", "dbn", WEIGHT_STANDARDIZATION])
    group_size: int = 16
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    image_size: int = 16
    covariance_samples: int = 320
    mlp_hidden: list[int] = field(default_factory=lambda: [32, 32])
    fisher_samples: int = 1024
    rank_fraction: float = 0.5
    variance_share: float = 0.99
    out: str = "runs/analyze"

    def __post_init__(self) -> None:
        """Check every value; raise a ValueError that names the key, the value and what is allowed."""
        if not self.norms:
            raise ValueError("norms must name at least one method")
        for name in self.norms:
            check_method(name)
        if len(set(self.norms)) != len(self.norms):
            raise ValueError(f"norms must not repeat a method, got {self.norms}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct ints, got {self.seeds}")
        for key in ("group_size", "batch_size", "width", "covariance_samples", "fisher_samples"):
            _check_positive_int(key, getattr(self, key))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (batch statistics of one sample are undefined), got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an int >= 8 (the digits are 8x8), got {self.image_size!r}")
        if not self.mlp_hidden:
            raise ValueError("mlp_hidden must list at least one hidden width")
        for width in self.mlp_hidden:
            _check_positive_int("every mlp_hidden width", width)
        for key in ("rank_fraction", "variance_share"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in (0, 1], got {getattr(self, key)!r}")
        sizes = DigitsDataModule(image_size=self.image_size).split_sizes()
        for key, split in (("covariance_samples", "val"), ("fisher_samples", "train")):
            value = getattr(self, key)
            if value % self.batch_size:
                raise ValueError(f"{key} ({value}) must be a multiple of batch_size ({self.batch_size})")
            if value > sizes[split]:
                raise ValueError(f"{key} ({value}) exceeds the {sizes[split]} samples of the {split} split")


@dataclass
class Spectrum:
    """Eigenvalues of a second-moment matrix and its condition numbers (see the module docstring).

    Attributes:
        dim: size ``d`` of the matrix.
        rank: numerical rank ``r``.
        condition: ``lambda_1 / lambda_r``.
        robust_condition: ``lambda_1 / lambda_j``, ``j = ceil(rank_fraction * r)``.
        share_condition: ``lambda_1 / lambda_k``, ``k`` the fewest eigenvalues holding
            ``variance_share`` of the trace.
        eigenvalues: the ``min(n, d)`` largest eigenvalues in descending order, divided by the
            largest.
    """

    dim: int
    rank: int
    condition: float
    robust_condition: float
    share_condition: float
    eigenvalues: list[float]


def second_moment_spectrum(
    vectors: Tensor, rank_fraction: float = 0.5, variance_share: float = 0.99, center: bool = False
) -> Spectrum:
    """Spectrum of ``(1/n) sum_i v_i v_i^T`` for the rows ``v_i`` of ``vectors`` (shape ``(n, d)``).

    With ``center=True`` the mean row is subtracted first: the (biased) covariance. The eigenvalues
    are the squared singular values of ``vectors / sqrt(n)``, in float64; rank and condition
    numbers as defined in the module docstring.
    """
    if vectors.dim() != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise ValueError(f"expected a non-empty (n, d) matrix of sample vectors, got shape {tuple(vectors.shape)}")
    v = vectors.detach().to(torch.float64)
    if center:
        v = v - v.mean(0, keepdim=True)
    n, d = v.shape
    sigma = torch.linalg.svdvals(v / math.sqrt(n))
    if not bool(torch.isfinite(sigma).all()):
        raise ValueError("the sample vectors contain inf or nan")
    rank = int((sigma > sigma[0] * max(n, d) * torch.finfo(torch.float64).eps).sum()) if sigma[0] > 0 else 0
    if rank == 0:
        raise ValueError("every sample vector is zero: the spectrum has no nonzero eigenvalue")
    eig = sigma.square()
    share = torch.cumsum(eig, 0) / eig.sum()
    k = min(int(torch.searchsorted(share, torch.tensor(variance_share, dtype=share.dtype) - 1e-12)) + 1, rank)
    j = max(1, math.ceil(rank_fraction * rank - 1e-9))
    return Spectrum(
        dim=d,
        rank=rank,
        condition=float(eig[0] / eig[rank - 1]),
        robust_condition=float(eig[0] / eig[j - 1]),
        share_condition=float(eig[0] / eig[k - 1]),
        eigenvalues=(eig / eig[0]).tolist(),
    )


def _layer_vectors(module: nn.Module, x: Tensor) -> Tensor:
    """The vectors ``module`` multiplies by its weight: rows of shape ``(count, fan_in)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros" or module.groups != 1:
            raise ValueError(f"{module}: only zero padding given as numbers and groups=1 are supported")
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise TypeError(f"expected nn.Linear or nn.Conv2d, got {type(module).__name__}")


def layer_inputs(model: nn.Module, batches: Sequence[Tensor]) -> dict[str, Tensor]:
    """Input vectors of every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` over ``batches``.

    For a linear layer the rows are its inputs; for a convolution the unfolded patches it
    multiplies (``C_in * kH * kW`` values each, one row per output position). The model runs under
    ``torch.no_grad()`` in its current train/eval mode (set it before calling).

    Returns:
        ``{module name: (rows, fan_in) tensor}`` in module order, rows of all batches concatenated.
    """
    targets = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if not targets:
        raise ValueError("the model has no nn.Conv2d or nn.Linear layer")
    rows: dict[str, list[Tensor]] = {name: [] for name in targets}

    def record(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        rows[name].append(_layer_vectors(module, args[0]).detach())

    handles = [m.register_forward_pre_hook(functools.partial(record, name)) for name, m in targets.items()]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in rows.items() if parts}


def layer_input_spectra(
    model: nn.Module, batches: Sequence[Tensor], rank_fraction: float = 0.5, variance_share: float = 0.99
) -> dict[str, dict[str, Spectrum]]:
    """``{layer: {"covariance": Spectrum, "second_moment": Spectrum}}`` of every layer's input vectors.

    The model runs on a float64 copy (its running statistics are left alone) in training mode: batch
    statistics of each of ``batches``, the activations the optimizer sees.
    """
    probe = copy.deepcopy(model).double().train()
    return {
        name: {
            "covariance": second_moment_spectrum(rows, rank_fraction, variance_share, center=True),
            "second_moment": second_moment_spectrum(rows, rank_fraction, variance_share),
        }
        for name, rows in layer_inputs(probe, [x.double() for x in batches]).items()
    }


def _log_likelihood_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample negative log-likelihood of the true label (its gradient is ``-g_i``; ``F`` is unchanged)."""
    return F.cross_entropy(logits, target, reduction="none")


def per_sample_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of each sample's log-likelihood w.r.t. all parameters, as rows ``(n, num_parameters)``.

    ``torch.func.vmap`` over ``torch.func.grad`` of a one-sample forward pass; the model must be in
    eval mode (a one-sample batch has no batch statistics). Columns follow ``model.named_parameters()``.
    """
    if model.training:
        raise ValueError("per_sample_gradients needs the model in eval mode; see batch_per_sample_gradients")
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return _log_likelihood_loss(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))[0]

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g.reshape(len(x), -1) for g in grads.values()], dim=1)


def batch_per_sample_gradients(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Per-sample gradients as the optimizer sees them: each sample's log-likelihood is computed in
    a forward pass over its mini-batch (consecutive chunks of ``batch_size``), in the model's
    current mode, and differentiated with the dependence of the batch statistics on the weights.

    One backward pass per sample (``torch.autograd.grad``): no vmap, so it works for any layer,
    including whitening with a custom backward. Running statistics are updated by the forward
    passes, as in training; pass a copy to keep them. Rows ``(n, num_parameters)``.
    """
    params = [p for _, p in model.named_parameters()]
    rows = []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        losses = _log_likelihood_loss(model(xb), yb)
        for i in range(len(losses)):
            grads = torch.autograd.grad(losses[i], params, retain_graph=i + 1 < len(losses), allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    return torch.stack(rows).detach()


def set_population_statistics(model: nn.Module, x: Tensor) -> nn.Module:
    """Set every running statistic of ``model`` to the exact statistics of ``x``, then switch to eval mode.

    One forward pass in training mode over all of ``x`` as a single batch, with every layer that
    keeps running statistics given ``momentum = 1`` for that pass (restored afterwards): the
    running mean / variance of BN and the running whitening matrix of DBN / IterNorm become those
    of ``x`` (BN stores the unbiased variance, as torch does). Works for any layer with
    ``running_*`` buffers and a ``momentum`` attribute, whitening included, which
    :func:`normapps.norm.recalibrate` (BatchNorm only) does not cover.
    """
    layers = [m for m in model.modules() if hasattr(m, "momentum") and any(n.startswith("running_") for n, _ in m.named_buffers())]
    saved = [m.momentum for m in layers]
    try:
        for m in layers:
            m.momentum = 1.0
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
    return model.eval()


def _identity(num_features: int) -> nn.Module:
    return nn.Identity()


def norm_layer(name: str, group_size: int) -> Callable[[int], nn.Module]:
    """``channels -> layer`` for method ``name``: identity for ``none`` and ``ws``, else the
    registered method (with ``group_size`` where it takes one, default groups for grouped methods)."""
    check_method(name)
    if name in (NO_NORM, WEIGHT_STANDARDIZATION):
        return _identity
    kwargs = {"group_size": group_size} if "group_size" in norm.signature(name).parameters else {}
    return functools.partial(build_norm, name, **kwargs)


def build_cnn(name: str, width: int, group_size: int) -> SmallCNN:
    """:class:`~normapps.models.SmallCNN` with method ``name`` after each convolution (``ws``:
    weight standardization on the convolutions, Qiao et al. 2019; the linear head is left as is)."""
    model = SmallCNN(num_classes=10, norm=norm_layer(name, group_size), width=width)
    if name == WEIGHT_STANDARDIZATION:
        norm.weight.apply(model, WEIGHT_STANDARDIZATION, include=(nn.Conv2d,))
    return model


def build_mlp(name: str, hidden: Sequence[int], group_size: int, in_features: int = 64, num_classes: int = 10) -> nn.Sequential:
    """MLP ``in -> hidden... -> classes``: each hidden linear is followed by method ``name`` and ReLU.

    Hidden linears have a bias only when no activation normalization follows (``none``, ``ws``),
    which would remove it or add its own; ``ws`` standardizes the hidden linears' weights.
    """
    layer = norm_layer(name, group_size)
    bias = name in (NO_NORM, WEIGHT_STANDARDIZATION)
    blocks: list[nn.Module] = []
    for fan_in, fan_out in zip([in_features, *hidden], hidden):
        blocks += [nn.Linear(fan_in, fan_out, bias=bias), layer(fan_out), nn.ReLU()]
    model = nn.Sequential(*blocks, nn.Linear(hidden[-1], num_classes))
    if name == WEIGHT_STANDARDIZATION:
        for module in model[:-1]:
            if isinstance(module, nn.Linear):
                norm.weight.apply(module, WEIGHT_STANDARDIZATION)
    return model


def _batches(dataset: TensorDataset, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled full training batches forever, in an order fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)


def train(model: nn.Module, data: TensorDataset, steps: int, batch_size: int, lr: float, seed: int) -> nn.Module:
    """``steps`` Adam steps of cross-entropy on shuffled mini-batches of ``data``; returns the model."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    batches = _batches(data, batch_size, seed)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged (loss {float(loss)}); lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    """Accuracy of ``model`` in eval mode on all of ``data``."""
    x, y = data.tensors
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _digits(image_size: int) -> dict[str, TensorDataset]:
    data = DigitsDataModule(image_size=image_size)
    data.setup()
    return data.splits


def _flat(dataset: TensorDataset) -> TensorDataset:
    x, y = dataset.tensors
    return TensorDataset(x.flatten(1), y)


@dataclass
class ConditioningResult:
    """Everything :func:`analyze` measured, per norm and seed (seeds as strings, as in the JSON file).

    Attributes:
        config: the configuration, as a dict.
        layer_info: CNN layer name -> what it is and what its input vectors are.
        layers: per norm and seed, ``{stage: {layer: {matrix: Spectrum}}}`` for the CNN, with
            stage in ``("init", "trained")`` and matrix in ``("covariance", "second_moment")``.
        fisher: per norm and seed, ``{stage: {mode: Spectrum}}`` for the MLP, mode in
            ``("frozen", "batch")``.
        accuracy: per norm and seed, validation accuracy after training of ``cnn`` and ``mlp``
            in eval mode with their running statistics, and of ``cnn_exact`` and ``mlp_exact``
            with running statistics set to those of the whole training split
            (:func:`set_population_statistics`).
        parameters: per norm, the number of parameters of the MLP (the Fisher's size).
    """

    config: dict[str, Any]
    layer_info: dict[str, str] = field(default_factory=dict)
    layers: dict[str, dict[str, dict[str, dict[str, dict[str, Spectrum]]]]] = field(default_factory=dict)
    fisher: dict[str, dict[str, dict[str, dict[str, Spectrum]]]] = field(default_factory=dict)
    accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)


def batch_dependent(name: str) -> bool:
    """Whether method ``name`` normalizes with batch statistics in training (bn, iternorm, dbn, ...)."""
    return name not in (NO_NORM, WEIGHT_STANDARDIZATION) and norm.describe(name).batch_statistics


def _fisher_spectra(name: str, model: nn.Module, x: Tensor, y: Tensor, config: ConditioningConfig) -> dict[str, Spectrum]:
    """Frozen- and batch-statistics Fisher spectra of ``model`` over ``(x, y)``, computed on float64 copies.

    Without batch statistics the two are the same matrix (the network is the same function in
    training and eval mode), computed once.
    """
    x = x.double()
    frozen_model = set_population_statistics(copy.deepcopy(model).double(), x)
    frozen = second_moment_spectrum(per_sample_gradients(frozen_model, x, y), config.rank_fraction, config.variance_share)
    if not batch_dependent(name):
        return {"frozen": frozen, "batch": frozen}
    batch_model = copy.deepcopy(model).double().train()
    batch = batch_per_sample_gradients(batch_model, x, y, config.batch_size)
    return {"frozen": frozen, "batch": second_moment_spectrum(batch, config.rank_fraction, config.variance_share)}


def _describe_layers(model: nn.Module) -> dict[str, str]:
    """Layer name -> "conv 3x3, 16->32, stride 2; input: 3x3x16 patches (d=144)" for every conv / linear."""
    info = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            info[name] = (f"conv {kh}x{kw}, {m.in_channels}->{m.out_channels}, stride {m.stride[0]}; "
                          f"input: {kh}x{kw}x{m.in_channels} patches (d={m.in_channels * kh * kw})")
        elif isinstance(m, nn.Linear):
            info[name] = f"linear {m.in_features}->{m.out_features}; input: pooled features (d={m.in_features})"
    return info


def _accuracies(model: nn.Module, data: dict[str, TensorDataset], key: str) -> dict[str, float]:
    exact = set_population_statistics(copy.deepcopy(model), data["train"].tensors[0])
    return {key: accuracy(model, data["val"]), f"{key}_exact": accuracy(exact, data["val"])}


def analyze(config: ConditioningConfig, progress: Callable[[str], None] = lambda message: None) -> ConditioningResult:
    """Measure the layer-input spectra of the CNN and the Fisher spectra of the MLP for every norm and seed.

    Per norm and seed, from the same initialization seed: the CNN's layer-input covariance and
    second moment over ``covariance_samples`` validation images (training mode, batches of
    ``batch_size``) at initialization and after ``steps`` Adam steps; the MLP's empirical Fisher
    over ``fisher_samples`` training digits, frozen and batch statistics, at the same two stages.
    All measurements run in float64; training runs in float32.
    """
    result = ConditioningResult(config=asdict(config))
    images = _digits(config.image_size)
    pixels = {split: _flat(data) for split, data in _digits(8).items()}
    probe = images["val"].tensors[0][: config.covariance_samples].split(config.batch_size)
    fx, fy = (t[: config.fisher_samples] for t in pixels["train"].tensors)
    for name in config.norms:
        result.layers[name], result.fisher[name], result.accuracy[name] = {}, {}, {}
        for seed in config.seeds:
            torch.manual_seed(seed)
            cnn = build_cnn(name, config.width, config.group_size)
            torch.manual_seed(seed)
            mlp = build_mlp(name, config.mlp_hidden, config.group_size)
            result.layer_info = _describe_layers(cnn)
            result.parameters[name] = sum(p.numel() for p in mlp.parameters())
            layers, fisher = {}, {}
            progress(f"{name}, seed {seed}: spectra at initialization")
            layers["init"] = layer_input_spectra(cnn, probe, config.rank_fraction, config.variance_share)
            fisher["init"] = _fisher_spectra(name, mlp, fx, fy, config)
            progress(f"{name}, seed {seed}: training the CNN and the MLP for {config.steps} steps")
            train(cnn, images["train"], config.steps, config.batch_size, config.lr, seed)
            train(mlp, pixels["train"], config.steps, config.batch_size, config.lr, seed)
            progress(f"{name}, seed {seed}: spectra after training")
            layers["trained"] = layer_input_spectra(cnn, probe, config.rank_fraction, config.variance_share)
            fisher["trained"] = _fisher_spectra(name, mlp, fx, fy, config)
            result.layers[name][str(seed)] = layers
            result.fisher[name][str(seed)] = fisher
            result.accuracy[name][str(seed)] = {**_accuracies(cnn, images, "cnn"), **_accuracies(mlp, pixels, "mlp")}
    return result


# ---- summaries --------------------------------------------------------------------------------

SUMMARY_COLUMNS = tuple(
    [(f"cov {stage}", "layers", "covariance", stage) for stage in STAGES]
    + [(f"E[xx^T] {stage}", "layers", "second_moment", stage) for stage in STAGES]
    + [(f"Fisher {mode} {stage}", "fisher", mode, stage) for mode in FISHER_MODES for stage in STAGES]
)
"""Columns of the summary: (title, source, matrix or Fisher mode, stage)."""
KEYS = ("condition", "robust_condition", "share_condition")
"""The condition numbers of a :class:`Spectrum`, in the order the tables show them."""


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def layer_median(result: ConditioningResult, name: str, stage: str, layer: str, matrix: str, key: str) -> float:
    """Median over seeds of ``key`` (a :class:`Spectrum` field: ``"condition"``, ...) of one CNN layer's matrix."""
    return _median([getattr(seeds[stage][layer][matrix], key) for seeds in result.layers[name].values()])


def fisher_median(result: ConditioningResult, name: str, stage: str, mode: str, key: str) -> float:
    """Median over seeds of ``key`` of the MLP's Fisher."""
    return _median([getattr(seeds[stage][mode], key) for seeds in result.fisher[name].values()])


def compared_layers(result: ConditioningResult) -> list[str]:
    """CNN layers whose input depends on the normalization: all but the first, whose input is the image."""
    return list(result.layer_info)[1:]


def ratios_to_none(result: ConditioningResult, key: str = "robust_condition") -> dict[str, dict[str, float]]:
    """Per norm and summary column, ``key`` (median over seeds) divided by that of ``none``.

    For the CNN columns, the geometric mean of the ratios over :func:`compared_layers`. Below 1: a
    smaller eigenvalue spread than without normalization. Empty if ``none`` was not run.
    """
    if NO_NORM not in result.layers:
        return {}
    ratios: dict[str, dict[str, float]] = {}
    for name in result.layers:
        ratios[name] = {}
        for title, source, what, stage in SUMMARY_COLUMNS:
            if source == "layers":
                ratios[name][title] = _geometric_mean([
                    layer_median(result, name, stage, layer, what, key) / layer_median(result, NO_NORM, stage, layer, what, key)
                    for layer in compared_layers(result)
                ])
            else:
                ratios[name][title] = fisher_median(result, name, stage, what, key) / fisher_median(result, NO_NORM, stage, what, key)
    return ratios


def _geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _pairs_below_one(ratios: dict[str, dict[str, float]], columns: Sequence[str]) -> tuple[int, int]:
    """How many (norm other than ``none``, column) ratios are below 1, out of how many."""
    others = [n for n in ratios if n != NO_NORM]
    return sum(ratios[n][t] < 1.0 for n in others for t in columns), len(others) * len(columns)


def reading(result: ConditioningResult) -> list[str]:
    """Sentences that say, from the ``kappa@50%`` ratios, for which matrix and stage each norm shrinks the spread."""
    ratios = ratios_to_none(result)
    others = [n for n in ratios if n != NO_NORM]
    if not others:
        return ["There is nothing to compare: the verdicts need `none` and at least one other norm."]
    lines = []
    for title, _, _, _ in SUMMARY_COLUMNS:
        smaller = [n for n in others if ratios[n][title] < 1.0]
        if len(smaller) == len(others):
            verdict = "smaller spread than `none` for every norm"
        elif not smaller:
            verdict = "**no** norm has a smaller spread than `none`"
        else:
            verdict = f"smaller spread than `none` for {', '.join(smaller)} only"
        lines.append(f"- {title}: {verdict}.")
    for stage in STAGES:
        when = "at initialization" if stage == "init" else "after training"
        columns = [title for title, _, _, s in SUMMARY_COLUMNS if s == stage]
        held, total = _pairs_below_one(ratios, columns)
        means = {n: _geometric_mean([ratios[n][t] for t in columns]) for n in ratios}
        ranked = ", ".join(f"{n} ({means[n]:.3g})" for n in sorted(means, key=means.get))
        lines.append(f"- {when.capitalize()}: a smaller spread than `none` in {held} of {total} "
                     f"(norm, column) pairs; geometric mean of the ratios, smallest first: {ranked}.")
    return lines


def accuracy_notes(result: ConditioningResult, gap: float = 0.1) -> list[str]:
    """A note for each norm whose running statistics cost more than ``gap`` validation accuracy
    compared with statistics recomputed on the training split (median over seeds)."""
    notes = []
    for name, seeds in result.accuracy.items():
        for net in ("cnn", "mlp"):
            running = _median([acc[net] for acc in seeds.values()])
            exact = _median([acc[f"{net}_exact"] for acc in seeds.values()])
            if exact - running > gap:
                notes.append(f"- **{name}** ({net.upper()}): {running:.3f} with its running statistics, {exact:.3f} with "
                             "statistics recomputed on the training split: the moving average kept during training "
                             "does not describe the trained network. The spectra above do not depend on it "
                             "(they are measured with batch statistics, or with recomputed ones).")
    return notes


# ---- output files -----------------------------------------------------------------------------

def _fmt(value: float) -> str:
    """3 significant digits, exponent without padding: 707, 24.7, 6.08e3, 1.5e22."""
    if not math.isfinite(value):
        return str(value)
    if value < 1e3:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ratio_table(result: ConditioningResult, key: str) -> list[str]:
    ratios = ratios_to_none(result, key)
    titles = [title for title, _, _, _ in SUMMARY_COLUMNS]
    return _md_table(["norm", *titles], [[n, *(f"{ratios[n][t]:.3g}" for t in titles)] for n in ratios]) + [""]


def markdown(result: ConditioningResult, command: str) -> str:
    """The tables and the reading as a Markdown document; ``command`` is how the results were made."""
    config = ConditioningConfig(**result.config)
    norms = list(result.layers)
    seeds = ", ".join(map(str, config.seeds))
    at = f"kappa@{100 * config.rank_fraction:g}%"
    share = f"kappa_{100 * config.variance_share:g}"
    lines = [
        "# Conditioning of layer inputs and of the Fisher information, per normalization",
        "",
        f"Made by `{command}` (`normapps.tasks.conditioning`). Norms: {', '.join(norms)}; "
        f"whitening group size {config.group_size}; seeds {seeds} (tables: median over seeds); "
        f"{config.steps} Adam steps (lr {config.lr:g}, batch {config.batch_size}) between the two measurements.",
        "",
        "Question (the survey's RQ4): does normalization shrink the spread of the eigenvalues of the "
        "layer-input covariance and of the Fisher information matrix?",
        "",
        "Definitions. For a matrix `M = (1/n) sum_i v_i v_i^T` with eigenvalues `l_1 >= l_2 >= ...`, all "
        "computed in float64 (squared singular values of the sample matrix):",
        "",
        "- `r`: numerical rank, singular values above `s_1 * max(n, d) * eps` (the rule of `numpy.linalg.matrix_rank`);",
        "- `kappa = l_1 / l_r`: condition number over the nonzero spectrum; it hangs on the one smallest eigenvalue;",
        f"- `{at} = l_1 / l_j`, `j = ceil({config.rank_fraction:g} r)`: for a quadratic loss with curvature `M`, how "
        "much slower than the fastest direction the median direction converges under gradient descent; robust to "
        "the tail and counted at the same number of directions for every method. **The verdicts use this one.**",
        f"- `{share} = l_1 / l_k`, `k` the fewest eigenvalues holding {100 * config.variance_share:g}% of the trace: "
        "shown for comparison only, because `k` depends on the method: a spectrum that collapses onto a few "
        "directions gets a small `k` and so a *small* value although it is worse conditioned.",
        "",
        f"- CNN: `SmallCNN(width={config.width})` on {config.image_size}x{config.image_size} digits, the norm after "
        "every convolution (`ws`: weight standardization on the convolutions, no activation normalization). "
        f"Each layer's input vectors (for a convolution: the patches it multiplies, via `unfold`) over "
        f"{config.covariance_samples} validation images, network in training mode (batch statistics of "
        f"batches of {config.batch_size}), at initialization and after training. `cov`: the centred covariance; "
        "`E[xx^T]`: the uncentred second moment (the input factor of K-FAC's layer-wise Fisher).",
        f"- MLP: 64 -> {' -> '.join(map(str, config.mlp_hidden))} -> 10 on the 8x8 digits, the norm after every hidden "
        f"linear. Empirical Fisher `F = mean_i g_i g_i^T` (`g_i`: gradient of the log-likelihood of sample i's true "
        f"label w.r.t. all parameters) over {config.fisher_samples} training digits. `frozen`: eval mode, "
        "normalization statistics set to those of these samples (per-sample gradients by `vmap(grad)`); `batch`: "
        f"training mode on batches of {config.batch_size}, so `g_i` includes the batch statistics' dependence on "
        "the weights (the gradient the optimizer sees). Without batch statistics (`none`, `ws`) both are the same.",
        "",
        f"Figures (first seed, eigenvalues divided by the largest, up to the rank): `{OUTPUT_FILES[2]}`, the CNN "
        f"layer-input covariances (rows: at initialization, after training; columns: layers); `{OUTPUT_FILES[3]}`, "
        "the MLP's Fisher (rows: the same; columns: frozen, batch statistics).",
        "",
    ]
    if NO_NORM in norms:
        layers = ", ".join(f"`{n}`" for n in compared_layers(result))
        lines += [
            f"## Summary: `{at}` relative to `none`",
            "",
            f"Median `{at}` divided by that of `none`; for the CNN the geometric mean of these ratios over the layers "
            f"{layers} (the first layer's input is the image, the same for every norm). Below 1: smaller spread than "
            "without normalization.",
            "",
            *_ratio_table(result, "robust_condition"),
            "Reading (computed from this table):",
            "",
            *reading(result),
            "",
            f"The same ratios for `{share}` (not used for the verdicts, see the definitions):",
            "",
            *_ratio_table(result, "share_condition"),
            "With `{}` a smaller spread than `none` shows in {} of {} (norm, column) pairs.".format(
                share, *_pairs_below_one(ratios_to_none(result, "share_condition"), [t for t, _, _, _ in SUMMARY_COLUMNS])),
            "",
        ]
    for matrix, title in (("covariance", "covariance `Cov[x]`"), ("second_moment", "second moment `E[x x^T]`")):
        for stage in STAGES:
            lines += [f"## CNN layer-input {title}, {'at initialization' if stage == 'init' else 'after training'}", "",
                      f"Cells: `kappa / {at} / {share}` (medians over seeds).", ""]
            rows = [[f"`{layer}`", info, *(" / ".join(_fmt(layer_median(result, n, stage, layer, matrix, key)) for key in KEYS)
                                          for n in norms)]
                    for layer, info in result.layer_info.items()]
            lines += _md_table(["layer", "what", *norms], rows) + [""]
    lines += ["## MLP empirical Fisher", "",
              f"Cells: `kappa / {at} / {share}` (medians over seeds); rank: the smallest numerical rank over seeds, "
              "stages and modes, out of min(samples, parameters).", ""]
    header = ["norm", "parameters", "rank", *(f"{mode} {stage}" for stage in STAGES for mode in FISHER_MODES)]
    rows = []
    for n in norms:
        ranks = [s.rank for seeds in result.fisher[n].values() for stage in seeds.values() for s in stage.values()]
        cells = [" / ".join(_fmt(fisher_median(result, n, stage, mode, key)) for key in KEYS)
                 for stage in STAGES for mode in FISHER_MODES]
        rows.append([n, str(result.parameters[n]), f"{min(ranks)}/{min(config.fisher_samples, result.parameters[n])}", *cells])
    lines += _md_table(header, rows) + [""]
    lines += ["## Validation accuracy after training (median over seeds)", "",
              "`running`: eval mode with the running statistics kept during training; `exact`: with statistics "
              "recomputed on the whole training split.", ""]
    keys = ("cnn", "cnn_exact", "mlp", "mlp_exact")
    rows = [[n, *(f"{_median([acc[k] for acc in result.accuracy[n].values()]):.3f}" for k in keys)] for n in norms]
    lines += _md_table(["norm", "CNN running", "CNN exact", "MLP running", "MLP exact"], rows) + [""]
    notes = accuracy_notes(result)
    lines += [*notes, ""] if notes else []
    lines += [
        "## Caveats",
        "",
        "- `kappa` of the empirical Fisher is set by its smallest nonzero eigenvalue, i.e. by the sample whose "
        "gradient is least represented by the others, typically one the network already fits with confidence "
        "(its gradient is tiny). It grows as training fits the data and is huge whenever the softmax saturates. "
        "After training the same holds for the bulk: a network that fits many training samples with near "
        "certainty has as many Fisher eigenvalues near zero, so the trained Fisher columns mix conditioning "
        "with how confidently each network fits its samples.",
        "- With fewer samples than parameters the empirical Fisher has rank at most the number of samples; its "
        "spectrum is that of the samples' gradient Gram matrix.",
        "- A convolution's input vectors are patches: neighbouring positions are correlated, and normalizing "
        "or whitening channels does not decorrelate positions, so no method here makes a patch covariance "
        "the identity (the pooled input of the linear head is where channel whitening shows fully).",
        "- The inputs of the layers after a norm pass through ReLU, so they are not centred: normalization before "
        "the ReLU controls their scale, not their mean (compare `cov` with `E[xx^T]`).",
        "- One small data set, short training, "
        f"{len(config.seeds)} seed(s): the direction of an effect is meaningful, its size is not.",
        "",
    ]
    return "\n".join(lines)


def _keep_eigenvalues(spectrum: dict[str, Any], keep: bool) -> None:
    """Round a spectrum's eigenvalues to 3 significant digits in place, or drop them."""
    if keep:
        spectrum["eigenvalues"] = [float(f"{v:.3g}") for v in spectrum["eigenvalues"]]
    else:
        del spectrum["eigenvalues"]


def _json_ready(result: ConditioningResult) -> dict[str, Any]:
    """The result as JSON data: the numbers of every seed; eigenvalues (3 significant digits) only
    of the plotted spectra (first seed; the covariances and the Fisher)."""
    data = asdict(result)
    first = str(result.config["seeds"][0])
    for seeds in data["layers"].values():
        for seed, stages in seeds.items():
            for layers in stages.values():
                for matrices in layers.values():
                    for matrix, spectrum in matrices.items():
                        _keep_eigenvalues(spectrum, seed == first and matrix == "covariance")
    for seeds in data["fisher"].values():
        for seed, stages in seeds.items():
            for modes in stages.values():
                for spectrum in modes.values():
                    _keep_eigenvalues(spectrum, seed == first)
    data["ratios_to_none"] = ratios_to_none(result)
    data["reading"] = reading(result)
    return data


def _json_text(data: dict[str, Any]) -> str:
    """Indented JSON with every list of numbers on one line."""
    text = json.dumps(data, indent=1)
    number = r"-?[0-9][0-9.eE+-]*"
    return re.sub(rf"\[\s+({number}(?:,\s+{number})*)\s+\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text) + "\n"


def _spectrum_figure(panels: dict[tuple[str, str], dict[str, Spectrum]], rows: Sequence[str], cols: Sequence[str],
                     titles: dict[tuple[str, str], str]) -> Figure:
    """Grid of log-scale plots of normalized eigenvalues (up to the numerical rank), one line per norm."""
    fig = Figure(figsize=(3.2 * len(cols), 2.8 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            for name, spectrum in panels[row, col].items():
                values = spectrum.eigenvalues[: spectrum.rank]
                ax.plot(np.arange(1, len(values) + 1), values, label=name, linewidth=1.2)
            ax.set_yscale("log")
            ax.set_title(titles[row, col], fontsize=9)
            ax.set_xlabel("eigenvalue index", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        axes[i][0].set_ylabel("eigenvalue / largest", fontsize=8)
    axes[0][0].legend(fontsize=7)
    return fig


def _save_png(fig: Figure, path: Path, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_results(result: ConditioningResult, out: str | Path, command: str, overwrite: bool = False) -> list[Path]:
    """Write :data:`OUTPUT_FILES` into ``out``: the Markdown tables, the JSON data and two PNG plots.

    The plots show the normalized eigenvalues of the first seed: the CNN layer-input covariances
    (rows: stage, columns: layer) and the MLP's Fisher (rows: stage, columns: frozen / batch).
    Every file is written atomically; nothing is written if one exists and ``overwrite`` is false.

    Raises:
        FileExistsError: naming the first existing file, unless ``overwrite``.
    """
    out = Path(out)
    paths = [out / name for name in OUTPUT_FILES]
    for path in paths:
        check_overwrite(path, overwrite)
    first = str(result.config["seeds"][0])
    norms = list(result.layers)
    md, js, cov_png, fisher_png = paths
    atomic_write(md, markdown(result, command), overwrite=overwrite)
    atomic_write(js, _json_text(_json_ready(result)), overwrite=overwrite)
    layers = list(result.layer_info)
    panels = {(stage, layer): {n: result.layers[n][first][stage][layer]["covariance"] for n in norms}
              for stage in STAGES for layer in layers}
    titles = {(stage, layer): f"{layer} ({stage}), d={result.layers[norms[0]][first][stage][layer]['covariance'].dim}"
              for stage in STAGES for layer in layers}
    _save_png(_spectrum_figure(panels, STAGES, layers, titles), cov_png, overwrite)
    panels = {(stage, mode): {n: result.fisher[n][first][stage][mode] for n in norms}
              for stage in STAGES for mode in FISHER_MODES}
    titles = {(stage, mode): f"Fisher, {mode} statistics ({stage})" for stage in STAGES for mode in FISHER_MODES}
    _save_png(_spectrum_figure(panels, STAGES, FISHER_MODES, titles), fisher_png, overwrite)
    return paths
