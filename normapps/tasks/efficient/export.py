"""Export of pruned and folded models: a ``torch.export`` program (``.pt2``) or ONNX."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
from collections.abc import Callable
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


def onnxruntime_available() -> bool:
    """Whether an exported ONNX file can be run here (:func:`load_onnx`; the ``onnxruntime`` package)."""
    return importlib.util.find_spec("onnxruntime") is not None


#: What to install for ONNX export and its check (the project's ``onnx`` extra: ``pip install normapps[onnx]``).
ONNX_PACKAGES = "pip install onnx onnxscript onnxruntime"


def export_onnx(model: nn.Module, example_input: Tensor, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Export ``model`` in eval mode to an ONNX file with :func:`torch.onnx.export` (dynamic batch dimension).

    The exporter is ``torch.export``-based (``dynamo=True``); its progress messages are not printed.
    The file is written atomically; :func:`load_onnx` runs it with onnxruntime. ``model`` is not changed.

    Raises:
        RuntimeError: if the ``onnx`` / ``onnxscript`` packages are not installed (the message says so).
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
        ValueError: if ``example_input`` is not a batch of at least 2 examples.
    """
    if not onnx_available():
        raise RuntimeError(f"ONNX export needs the onnx and onnxscript packages, which are not installed here "
                           f"({ONNX_PACKAGES}); the torch.export format (--export pt2) needs nothing more")
    dynamic = _batch_dim(example_input)
    with atomic_path(path, overwrite=overwrite) as tmp, contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(_eval_copy(model), (example_input,), str(tmp), dynamic_shapes=dynamic, dynamo=True,
                          external_data=False, verbose=False)
    return Path(path)


def load_onnx(path: str | os.PathLike[str]) -> Callable[[Tensor], Tensor]:
    """A function that runs the ONNX file at ``path`` with onnxruntime's CPU provider: float32 tensor in, tensor out.

    Raises:
        RuntimeError: if ``onnxruntime`` is not installed (the message says what to install).
    """
    if not onnxruntime_available():
        raise RuntimeError(f"running an ONNX file needs the onnxruntime package, which is not installed here ({ONNX_PACKAGES})")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (first,) = session.get_inputs()

    def run(x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {first.name: array})[0])

    return run
