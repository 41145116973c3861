"""Export of pruned and folded models: a ``torch.export`` program (``.pt2``) or ONNX."""

from __future__ import annotations

import copy
import importlib.util
import io
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from normapps.io import atomic_path, atomic_write


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def _batch_dim(example_input: Tensor) -> tuple[dict[int, torch.export.Dim]]:
    if example_input.dim() < 1 or example_input.shape[0] < 2:
        raise ValueError(f"example_input must be a batch of at least 2 examples (the batch size is exported as dynamic), "
                         f"got shape {tuple(example_input.shape)}")
    return ({0: torch.export.Dim("batch", min=1)},)


def export_program(
    model: nn.Module, example_input: Tensor, path: str | os.PathLike[str], *, overwrite: bool = False
) -> torch.export.ExportedProgram:
    """Export ``model`` in eval mode with :func:`torch.export.export` and save it with :func:`torch.export.save`.

    The batch dimension is dynamic; the other sizes are those of ``example_input``. The file is written
    atomically; :func:`load_program` reads it back as a callable module. ``model`` is not changed.

    Args:
        model: the network (pruned, folded or not).
        example_input: a batch ``(N, ...)`` with ``N >= 2``.
        path: the ``.pt2`` file to write.
        overwrite: replace an existing file (else :class:`FileExistsError`).

    Returns:
        The exported program.
    """
    program = torch.export.export(_eval_copy(model), (example_input,), dynamic_shapes=_batch_dim(example_input))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write(path, buffer.getvalue(), overwrite=overwrite)
    return program


def load_program(path: str | os.PathLike[str]) -> nn.Module:
    """The module of a program written by :func:`export_program` (:func:`torch.export.load`)."""
    return torch.export.load(Path(path)).module()


def onnx_available() -> bool:
    """Whether ONNX export can run here (the ``onnx`` and ``onnxscript`` packages are importable)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def export_onnx(model: nn.Module, example_input: Tensor, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Export ``model`` in eval mode to an ONNX file with :func:`torch.onnx.export` (dynamic batch dimension).

    Raises:
        RuntimeError: if the ``onnx`` / ``onnxscript`` packages are not installed (the message says so).
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
    """
    if not onnx_available():
        raise RuntimeError("ONNX export needs the onnx and onnxscript packages, which are not installed here "
                           "(pip install onnx onnxscript); the torch.export format (--export pt2) needs nothing more")
    dynamic = _batch_dim(example_input)
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.onnx.export(_eval_copy(model), (example_input,), str(tmp), dynamic_shapes=dynamic, dynamo=True)
    return Path(path)
