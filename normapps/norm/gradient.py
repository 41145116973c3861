"""Gradient normalization (the survey's *gradient* family), usable with any torch optimizer.

Two registered methods, each a small class whose ``__call__(grad)`` returns the transformed
gradient (out of place) and whose ``apply_(param)`` rewrites ``param.grad`` in place:

``gc``  :class:`GradientCentralization` (Yong et al., ECCV 2020). For every weight with more
        than one dim, subtract from its gradient the mean over all dims but the output dim 0
        (per output filter of a conv / per output row of a linear layer). Biases and
        normalization parameters (1-D) are left alone by default.
``bng`` :class:`BlockNormalizedGradient` (Yu et al., 2017). Each *block* -- here one parameter
        tensor -- has its gradient divided by its L2 norm (+ ``eps``), optionally times ``scale``.

Two ways to use them:

* :func:`apply` installs the method on each selected parameter with
  ``Tensor.register_post_accumulate_grad_hook`` (torch >= 2.1): it runs after the gradient has
  been accumulated into ``.grad`` and before any optimizer step, so it works with every
  optimizer unchanged. It returns a :class:`GradientHandle` with ``.remove()``.
* :func:`normalize_gradients_` does the same thing explicitly; call it between ``backward()``
  and ``optimizer.step()``.

The hook runs after *every* backward. With gradient accumulation over k micro-batches, the
hook transforms each partial sum, ``T(T(g1) + g2) ...``, not the full gradient ``T(g1 + g2)``.
Centralization is linear and idempotent, so for ``gc`` the two agree; for ``bng`` they do not --
call :func:`normalize_gradients_` once after the last micro-batch instead. The same holds for
mixed precision with ``torch.amp.GradScaler`` (call ``scaler.unscale_(optimizer)`` then
:func:`normalize_gradients_`, then ``scaler.step``: ``bng`` would otherwise normalize the scale
away) and for DistributedDataParallel (the hook sees the local gradient before averaging).

Example::

    handle = apply(model, "gc")   # every step of any optimizer now uses centralized gradients
    ...
    handle.remove()

    loss.backward()
    normalize_gradients_(model, "bng", scale=0.1)
    optimizer.step()
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable, Union

import torch
from torch import Tensor, nn

from .registry import _lookup, available, register

__all__ = [
    "GradientNormalization",
    "GradientCentralization",
    "BlockNormalizedGradient",
    "GradientHandle",
    "apply",
    "normalize_gradients_",
]

Params = Union[nn.Module, Tensor, Iterable[Any]]


class GradientNormalization(ABC):
    """Base class: a gradient transform plus the default choice of parameters it applies to."""

    def selects(self, param: Tensor) -> bool:
        """Whether the method applies to ``param`` by default (when no ``select`` is given)."""
        return True

    @abstractmethod
    def __call__(self, grad: Tensor) -> Tensor:
        """The normalized gradient (a new tensor)."""

    @torch.no_grad()
    def apply_(self, param: Tensor) -> None:
        """Replace ``param.grad`` in place by ``self(param.grad)``; no-op if it has no gradient."""
        grad = param.grad
        if grad is None:
            return
        if grad.is_sparse:
            raise TypeError(f"{type(self).__name__} does not support sparse gradients")
        grad.copy_(self(grad))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register("gc", family="gradient", partition="weight gradient per output filter (all dims but dim 0)",
          operation="center", recovery="none",
          paper="Yong et al., Gradient Centralization: A New Optimization Technique for DNNs, ECCV 2020",
          year=2020)
class GradientCentralization(GradientNormalization):
    """Gradient centralization (Yong et al., ECCV 2020, eq. 4).

    ``g <- g - mean(g over dims 1..)`` for a gradient of shape ``(out, ...)``: each output
    filter's gradient gets zero mean. Default selection: parameters with ``dim() > 1`` (conv and
    linear weights), as in the authors' ``GC_conv_fc``; a tensor with one dim or fewer is returned
    unchanged even if selected explicitly. ``ConvTranspose`` weights are stored ``(in, out, ...)``,
    so for them dim 0 is the input channel (as in the reference implementation).
    """

    def selects(self, param: Tensor) -> bool:
        return param.dim() > 1

    def __call__(self, grad: Tensor) -> Tensor:
        if grad.dim() <= 1:
            return grad
        return grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)


@register("bng", family="gradient", partition="block = one parameter tensor's gradient",
          operation="L2 scaling (divide by the block's norm)", recovery="constant scale",
          paper="Yu et al., Block-Normalized Gradient Method: An Empirical Study for Training DNNs, "
                "arXiv 1707.04822, 2017", year=2017)
class BlockNormalizedGradient(GradientNormalization):
    """Block-normalized gradient (Yu et al., 2017): ``g <- scale * g / (||g||_2 + eps)``.

    A *block* is one parameter tensor (a layer's weight, its bias, ...), so every parameter's
    update direction has norm ``scale`` before the optimizer's own scaling; the step size then
    comes from the learning rate alone. Default selection: every parameter with a gradient.
    The norm is computed in at least float32.
    """

    def __init__(self, *, eps: float = 1e-8, scale: float = 1.0) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.scale = float(scale)

    def __call__(self, grad: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(grad, dtype=torch.promote_types(grad.dtype, torch.float32))
        return (grad * (self.scale / (norm + self.eps))).to(grad.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, scale={self.scale})"


def _method(name: str | GradientNormalization, kwargs: dict[str, Any]) -> GradientNormalization:
    if isinstance(name, GradientNormalization):
        if kwargs:
            raise TypeError("keyword arguments are only accepted with a method name, not an instance")
        return name
    builder, info = _lookup(name)  # unknown names: the registry's error, with suggestions
    if info.family != "gradient":
        raise ValueError(f"{name!r} is a {info.family} method, not a gradient one; "
                         f"expected one of {', '.join(available('gradient'))}")
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for gradient method {name!r}: {err}") from None
    return builder(**kwargs)


def _parameters(model_or_params: Params) -> list[Tensor]:
    """The distinct tensors of a module, a tensor, an iterable of tensors or of param-group dicts."""
    if isinstance(model_or_params, nn.Module):
        items: Iterable[Any] = model_or_params.parameters()
    elif isinstance(model_or_params, Tensor):
        items = [model_or_params]
    else:
        items = model_or_params
    out: list[Tensor] = []
    seen: set[int] = set()
    for item in items:
        group = item["params"] if isinstance(item, dict) else [item]
        if isinstance(group, Tensor):
            group = [group]
        for p in group:
            if not isinstance(p, Tensor):
                raise TypeError(f"expected tensors, a module or param groups, got {type(p).__name__}")
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _selected(params: list[Tensor], method: GradientNormalization,
              select: Callable[[Tensor], bool] | None) -> list[Tensor]:
    chosen = method.selects if select is None else select
    return [p for p in params if chosen(p)]


class GradientHandle:
    """What :func:`apply` returns: ``.remove()`` uninstalls the hooks (idempotent); also a
    context manager that removes them on exit."""

    def __init__(self, method: GradientNormalization, params: list[Tensor], handles: list[Any]) -> None:
        self.method = method
        self.params = params
        self._handles = handles

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "GradientHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"GradientHandle({self.method!r}, {len(self.params)} parameters, {state})"


def apply(model_or_params: Params, name: str | GradientNormalization, *,
          select: Callable[[Tensor], bool] | None = None, **kwargs: Any) -> GradientHandle:
    """Install gradient method ``name`` (``"gc"``, ``"bng"``, or an instance) on parameters.

    ``model_or_params``: a module, a tensor, an iterable of tensors or ``optimizer.param_groups``.
    ``select(param) -> bool`` overrides the method's default choice (``gc``: ``dim() > 1``;
    ``bng``: all). Parameters that do not require grad are skipped. ``kwargs`` go to the method
    (``bng``: ``eps``, ``scale``).

    The transform runs in a post-accumulate-grad hook, i.e. after *every* backward that reaches
    the parameter and before any ``optimizer.step()``; with gradient accumulation over several
    micro-batches (or GradScaler / DDP) use :func:`normalize_gradients_` instead (see the module
    docstring) -- for ``gc`` both give the same result, for ``bng`` they do not.
    """
    if not hasattr(Tensor, "register_post_accumulate_grad_hook"):
        raise RuntimeError("gradient.apply needs torch >= 2.1 (Tensor.register_post_accumulate_grad_hook); "
                           "use normalize_gradients_ between backward() and optimizer.step()")
    method = _method(name, kwargs)
    params = [p for p in _selected(_parameters(model_or_params), method, select) if p.requires_grad]
    handles = []
    for p in params:
        if not p.is_leaf:
            raise ValueError("gradient hooks can only be installed on leaf tensors (parameters)")
        handles.append(p.register_post_accumulate_grad_hook(method.apply_))
    return GradientHandle(method, params, handles)


def normalize_gradients_(parameters: Params, name: str | GradientNormalization, *,
                         select: Callable[[Tensor], bool] | None = None, **kwargs: Any) -> list[Tensor]:
    """Apply gradient method ``name`` to the ``.grad`` of ``parameters`` in place, now.

    Call between ``loss.backward()`` and ``optimizer.step()`` -- after the *last* micro-batch
    when accumulating gradients, and after ``scaler.unscale_(optimizer)`` with a GradScaler.
    Same arguments as :func:`apply`; parameters without a gradient are skipped. Returns the
    parameters whose gradient was transformed.
    """
    method = _method(name, kwargs)
    done = [p for p in _selected(_parameters(parameters), method, select) if p.grad is not None]
    for p in done:
        method.apply_(p)
    return done
