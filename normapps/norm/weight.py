"""Weight normalization methods (the survey's section on normalizing weights) as
``torch.nn.utils.parametrize`` parametrizations.

Each class is an ``nn.Module`` whose ``forward`` maps the raw (underlying) weight to the normalized
weight; :func:`apply` registers one on the ``weight`` of every conv / linear layer of a model and
:func:`remove` bakes the normalized values back into plain weights.

The first dimension of a weight is its output units (rows); a conv weight ``(out, in, *k)`` is viewed
as the matrix ``(out, in * prod(k))``. Every class takes ``out_features`` first so that
``norm.build(name, out_features, **kw)`` works; :func:`apply` fills it (and ``in_features`` for
spectral norm) from each layer's weight.

Methods (registered in family ``"weight"``):

- ``wn``: weight normalization, ``W = g * V / ||V||`` per row (Salimans & Kingma 2016).
- ``cwn``: centered weight normalization, rows zero-mean and unit-norm (Huang et al. 2017).
- ``ws``: weight standardization, per filter zero mean / unit variance (Qiao et al. 2019).
- ``own``: orthogonal weight normalization, ``W = (Z Z^T)^{-1/2} Z`` per row group (Huang et al. 2018).
- ``oni``: orthogonalization by Newton iterations (Huang et al. 2020).
- ``spectral``: spectral normalization ``W / sigma_max(W)`` by power iteration (Miyato et al. 2018).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .registry import _lookup, register

__all__ = [
    "WeightNorm", "CenteredWeightNorm", "WeightStandardization", "OrthogonalWeightNorm",
    "ONI", "SpectralNorm", "apply", "remove", "DEFAULT_INCLUDE",
]

DEFAULT_INCLUDE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _shape_view(v: Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-row vector over a weight of ``v``'s shape."""
    return (-1,) + (1,) * (v.dim() - 1)


class _WeightParametrization(nn.Module):
    """Base class: ``from_weight`` builds the parametrization for a given weight."""

    @classmethod
    def from_weight(cls, weight: Tensor, **kwargs: Any) -> "_WeightParametrization":
        return cls(weight.shape[0], **kwargs)


@register("wn", family="weight", partition="per output unit (row)", operation="L2 scale (direction)",
          recovery="learnable magnitude g", paper="Salimans & Kingma, Weight Normalization, NeurIPS 2016",
          year=2016)
class WeightNorm(_WeightParametrization):
    """Weight normalization: ``W = g * V / ||V||`` with ``||.||`` the L2 norm of each output row.

    Registered with ``right_inverse``, so the underlying parameters are ``original0 = g`` (shape
    ``(out,)``, initialized to the row norms of the original weight) and ``original1 = V``
    (initialized to the original weight): the layer computes the same function right after
    registration.
    """

    def __init__(self, out_features: int, *, eps: float = 1e-12) -> None:
        super().__init__()
        self.out_features = out_features
        self.eps = eps

    def forward(self, g: Tensor, v: Tensor) -> Tensor:
        norms = v.flatten(1).norm(dim=1).clamp_min(self.eps)
        return v * (g / norms).view(_shape_view(v))

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        g = weight.flatten(1).norm(dim=1)
        return g, weight


@register("cwn", family="weight", partition="per output unit (row)", operation="center + L2 scale",
          recovery="none (optional learnable gain)",
          paper="Huang et al., Centered Weight Normalization in Accelerating Training of Deep Neural "
                "Networks, ICCV 2017", year=2017)
class CenteredWeightNorm(_WeightParametrization):
    """Centered weight normalization: each row ``v`` becomes ``(v - mean(v)) / ||v - mean(v)||``.

    With ``gain=True`` a learnable per-row gain ``g`` (initialized to 1) multiplies the rows.
    """

    def __init__(self, out_features: int, *, gain: bool = False, eps: float = 1e-12) -> None:
        super().__init__()
        self.out_features = out_features
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(out_features)) if gain else None

    def forward(self, v: Tensor) -> Tensor:
        m = v.flatten(1)
        m = m - m.mean(dim=1, keepdim=True)
        w = m / m.norm(dim=1, keepdim=True).clamp_min(self.eps)
        if self.gain is not None:
            w = w * self.gain.unsqueeze(1)
        return w.view_as(v)


@register("ws", family="weight", partition="per output filter (in, *kernel)", operation="standardize",
          recovery="none", paper="Qiao et al., Micro-Batch Training with Batch-Channel Normalization and "
                                 "Weight Standardization, arXiv 2019", year=2019)
class WeightStandardization(_WeightParametrization):
    """Weight standardization: ``(v - mean(v)) / sqrt(var(v) + eps)`` per output filter, statistics over
    ``(in, *kernel)`` (biased variance). ``out_features`` is unused (kept for ``build``)."""

    def __init__(self, out_features: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.out_features = out_features
        self.eps = eps

    def forward(self, v: Tensor) -> Tensor:
        m = v.flatten(1)
        var, mean = torch.var_mean(m, dim=1, keepdim=True, correction=0)
        return ((m - mean) * torch.rsqrt(var + self.eps)).view_as(v)


def _group_sizes(out_features: int, groups: int | None, group_size: int | None) -> list[int]:
    if groups is not None and group_size is not None:
        raise ValueError("give groups= or group_size=, not both")
    if group_size is not None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        full, rest = divmod(out_features, group_size)
        return [group_size] * full + ([rest] if rest else [])
    groups = 1 if groups is None else groups
    if groups < 1 or out_features % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide out_features={out_features}")
    return [out_features // groups] * groups


class _GroupOrthogonal(_WeightParametrization, metaclass=ABCMeta):
    """Shared machinery of OWN and ONI: split the rows into groups, orthonormalize each group.

    A group of ``G`` rows and ``n`` columns (``n`` = fan-in) can have orthonormal rows only if
    ``G <= rank``, where ``rank = n - 1`` when the rows are centred (centring removes the all-ones
    direction) and ``n`` otherwise. Such *fat* groups get ``W W^T = I``. A *tall* group
    (``G > rank``, including the square centred case) is orthonormalized by columns instead:
    ``W = Z (Z^T Z)^{-1/2}``, so ``W^T W = I`` (``I - 11^T/n``, the projection off the all-ones
    direction, when centred) -- the best that is attainable.
    """

    def __init__(self, out_features: int, *, groups: int | None = None, group_size: int | None = None,
                 center: bool = True) -> None:
        super().__init__()
        self.out_features = out_features
        self.sizes = _group_sizes(out_features, groups, group_size)
        self.center = center

    @abstractmethod
    def _orthonormal_rows(self, z: Tensor) -> Tensor:
        """A fat ``(G, n)`` group ``Z`` -> ``W`` with ``W W^T`` (close to) ``I``."""

    def forward(self, v: Tensor) -> Tensor:
        if v.shape[0] != self.out_features:
            raise ValueError(f"weight has {v.shape[0]} rows, parametrization built for {self.out_features}")
        m = v.flatten(1)
        if self.center:
            m = m - m.mean(dim=1, keepdim=True)
        rank = m.shape[1] - int(self.center)
        out = []
        for z in torch.split(m, self.sizes, dim=0):
            if z.shape[0] <= rank:
                out.append(self._orthonormal_rows(z))
            else:
                out.append(self._orthonormal_rows(z.t()).t())
        return torch.cat(out, dim=0).view_as(v)


@register("own", family="weight", partition="groups of output units",
          operation="orthogonalize (eigendecomposition)", recovery="none",
          paper="Huang et al., Orthogonal Weight Normalization: Solution to Optimization over Multiple "
                "Dependent Stiefel Manifolds in Deep Neural Networks, AAAI 2018", year=2018)
class OrthogonalWeightNorm(_GroupOrthogonal):
    """Orthogonal weight normalization: per group, ``Z`` = centred rows, ``S = Z Z^T = D diag(l) D^T``,
    ``W = D diag(l + eps)^{-1/2} D^T Z`` so ``W W^T = I`` (see :class:`_GroupOrthogonal` for tall
    groups). Gradients go through ``torch.linalg.eigh``."""

    def __init__(self, out_features: int, *, groups: int | None = None, group_size: int | None = None,
                 center: bool = True, eps: float = 1e-7) -> None:
        super().__init__(out_features, groups=groups, group_size=group_size, center=center)
        self.eps = eps

    def _orthonormal_rows(self, z: Tensor) -> Tensor:
        z = z / z.norm().clamp_min(1e-12)  # W is invariant to the scale of Z; makes eps relative
        evals, evecs = torch.linalg.eigh(z @ z.t())
        inv_sqrt = (evecs * (evals.clamp_min(0) + self.eps).rsqrt()) @ evecs.t()
        return inv_sqrt @ z


@register("oni", family="weight", partition="groups of output units",
          operation="orthogonalize (Newton iterations)", recovery="none",
          paper="Huang et al., Controllable Orthogonalization in Training DNNs, CVPR 2020", year=2020)
class ONI(_GroupOrthogonal):
    """Orthogonalization by Newton iterations: per group, ``Z`` = centred rows, ``S = Z Z^T / ||Z||_F^2``,
    ``B_0 = I``, ``B_{t+1} = 1.5 B_t - 0.5 B_t^3 S``, ``W = B_T Z / ||Z||_F``. ``W W^T -> I`` as
    ``T`` grows (``T`` controls how orthogonal the weight is; default 5). Tall groups are iterated on
    ``Z^T Z`` instead (see :class:`_GroupOrthogonal`)."""

    def __init__(self, out_features: int, *, T: int = 5, groups: int | None = None,
                 group_size: int | None = None, center: bool = True, eps: float = 1e-12) -> None:
        super().__init__(out_features, groups=groups, group_size=group_size, center=center)
        if T < 0:
            raise ValueError(f"T must be >= 0, got {T}")
        self.T = T
        self.eps = eps

    def _orthonormal_rows(self, z: Tensor) -> Tensor:
        fro = z.norm().clamp_min(self.eps)
        zn = z / fro
        s = zn @ zn.t()
        eye = torch.eye(s.shape[0], dtype=z.dtype, device=z.device)
        # B_{t+1} = 1.5 B_t - 0.5 B_t^3 S in its coupled Newton-Schulz form: with Y_t = S B_t (equal in
        # exact arithmetic, B_t being a polynomial in S), B_{t+1} = (1.5 I - 0.5 B_t Y_t) B_t and
        # Y_{t+1} = Y_t (1.5 I - 0.5 B_t Y_t). Same iterates; the uncoupled form drifts in float32 for
        # large T (W W^T error grows again after ~10 iterations), the coupled one does not.
        b, y = eye, s
        for _ in range(self.T):
            step = 1.5 * eye - 0.5 * (b @ y)
            b, y = step @ b, y @ step
        return b @ zn


@register("spectral", family="weight", partition="whole weight matrix",
          operation="divide by largest singular value (power iteration)", recovery="none",
          paper="Miyato et al., Spectral Normalization for Generative Adversarial Networks, ICLR 2018",
          year=2018)
class SpectralNorm(_WeightParametrization):
    """Spectral normalization: ``W / sigma``, ``sigma = u^T W v`` estimated by power iteration on the
    matrix ``W`` viewed as ``(out, in_features)``.

    The singular-vector estimates ``u`` (``(out,)``) and ``v`` (``(in_features,)``) are persistent
    buffers (saved in the state dict). ``init_iterations`` (15, as torch) power iterations run when the
    parametrization is registered (in ``right_inverse``); in training mode every forward runs
    ``n_power_iterations`` more; in eval mode ``u``, ``v`` are not updated.
    """

    def __init__(self, out_features: int, in_features: int, *, n_power_iterations: int = 1,
                 init_iterations: int = 15, eps: float = 1e-12) -> None:
        super().__init__()
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.out_features = out_features
        self.in_features = in_features
        self.n_power_iterations = n_power_iterations
        self.init_iterations = init_iterations
        self.eps = eps
        self.register_buffer("_u", F.normalize(torch.randn(out_features), dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(torch.randn(in_features), dim=0, eps=eps))

    @classmethod
    def from_weight(cls, weight: Tensor, **kwargs: Any) -> "SpectralNorm":
        return cls(weight.shape[0], weight[0].numel(), **kwargs)

    @torch.no_grad()
    def _power_method(self, m: Tensor, iterations: int) -> None:
        for _ in range(iterations):
            self._u.copy_(F.normalize(m @ self._v, dim=0, eps=self.eps))
            self._v.copy_(F.normalize(m.t() @ self._u, dim=0, eps=self.eps))

    def forward(self, weight: Tensor) -> Tensor:
        m = weight.flatten(1)
        if self.training:
            self._power_method(m.detach(), self.n_power_iterations)
        # clones: the buffers are updated in place by later forwards while this graph may still be alive
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        sigma = torch.dot(u, m @ v)
        return weight / sigma

    def right_inverse(self, weight: Tensor) -> Tensor:
        self._power_method(weight.detach().flatten(1), self.init_iterations)
        return weight


# --------------------------------------------------------------------------------------------------
# apply / remove


def _builder(name: str) -> type[_WeightParametrization]:
    builder, info = _lookup(name)  # unknown names: the registry's error, with suggestions
    if info.family != "weight":
        raise ValueError(f"{name!r} is a {info.family!r} normalization, not a weight normalization; "
                         f"weight methods: wn, cwn, ws, own, oni, spectral")
    return builder


def _targets(module: nn.Module, include: Iterable[type]) -> list[nn.Module]:
    include = tuple(include)
    found = [m for m in module.modules() if isinstance(m, include)]
    if not found:
        if isinstance(getattr(module, "weight", None), Tensor):
            return [module]
        raise ValueError(f"{type(module).__name__} has no weight and no submodule of types "
                         f"{[t.__name__ for t in include]} to normalize")
    return found


def apply(model_or_module: nn.Module, name: str, *, include: Iterable[type] = DEFAULT_INCLUDE,
          **kwargs: Any) -> nn.Module:
    """Register weight normalization ``name`` on the ``weight`` of every module of ``include`` type
    in ``model_or_module`` (or on the module itself if it has a ``weight`` and none match).
    ``kwargs`` go to the parametrization (``groups=``, ``T=``, ...). Returns the model.

    >>> net = apply(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "wn")
    """
    builder = _builder(name)
    for m in _targets(model_or_module, include):
        weight = getattr(m, "weight", None)
        if not isinstance(weight, Tensor):
            raise ValueError(f"{type(m).__name__} has no weight tensor to normalize")
        if weight.dim() < 2:
            raise ValueError(f"{type(m).__name__}.weight has shape {tuple(weight.shape)}; "
                             "weight normalization needs (out, in, *kernel)")
        if parametrize.is_parametrized(m, "weight"):
            raise ValueError(f"{type(m).__name__}.weight is already parametrized; call remove() first")
        param = builder.from_weight(weight.detach(), **kwargs).to(device=weight.device, dtype=weight.dtype)
        parametrize.register_parametrization(m, "weight", param)
    return model_or_module


def remove(model_or_module: nn.Module, name: str | None = None) -> nn.Module:
    """Remove weight parametrizations (all, or only those of method ``name``), leaving plain
    ``weight`` parameters holding the normalized values. Returns the model."""
    cls = _builder(name) if name is not None else None
    for m in list(model_or_module.modules()):
        if not parametrize.is_parametrized(m, "weight"):
            continue
        if cls is not None and not any(isinstance(p, cls) for p in m.parametrizations["weight"]):
            continue
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model_or_module
