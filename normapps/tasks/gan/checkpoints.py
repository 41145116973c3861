"""Generator files: what ``normapps generate`` loads, and how a trained :class:`GANTask` becomes one.

A generator file is one ``torch.save``'d dict of plain types and tensors, readable with
``torch.load(path, weights_only=True)``::

    {"format": "normapps-gan-generator", "version": 1,
     "config": {"generator": "dcgan" | "resnet", "g_norm": ..., "conditional": bool, "num_classes": int | None,
                "z_dim": ..., "width": ..., "image_size": ..., "channels": ...},
     "training": {"checkpoint": ..., "steps": ..., "generator_updates": ..., "ema": ..., "hyper_parameters": {...}},
     "state_dict": {...},                       # the sampling generator: the moving average if the task kept one
     "precision": "float16" | "float32", "float16_max_error": float}

Only the generator is stored (the discriminator is not needed to sample). Floating-point tensors are
stored in float16 when the generator's samples on a fixed probe (every class, when conditional) stay
within :data:`FLOAT16_TOLERANCE` of the float32 generator's, else in float32; they are loaded back as
float32.

::

    task = load_generator()                             # checkpoints/gan_digits.pt of the repository
    images = task.sample(16, 3)                         # (16, 3, 32, 32) in [-1, 1], all of class 3
    strip = task.morph(torch.randn(1, task.hparams.z_dim), 3, 8, steps=8)

``python -m normapps.tasks.gan.checkpoints RUN.ckpt --out FILE [--overwrite]`` turns a Lightning
checkpoint of :class:`GANTask` (``normapps fit -c configs/gan/...``) into a generator file
(:func:`export_from_lightning`).
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import normapps
from normapps.io import atomic_write, check_overwrite, sha256

from .lightning import GANTask

__all__ = [
    "FILE_NAME", "FLOAT16_TOLERANCE", "FORMAT", "SHIPPED_COMMAND", "checkpoint_path", "export_from_lightning",
    "generator_config", "load_generator", "save_generator", "sha256",
]

FORMAT = "normapps-gan-generator"
VERSION = 1
#: Name of the shipped file in ``checkpoints/``.
FILE_NAME = "gan_digits.pt"
#: How the shipped file is made.
SHIPPED_COMMAND = ("normapps fit -c configs/gan/cgan_digits.yaml, then python -m normapps.tasks.gan.checkpoints "
                   "runs/gan/cgan_digits/cgan_digits.ckpt --out checkpoints/gan_digits.pt")
#: Largest difference between the samples (in [-1, 1]) of the float16-stored and the float32 generator for float16 storage.
FLOAT16_TOLERANCE = 1e-2
#: The :class:`GANTask` arguments that rebuild the generator.
CONFIG_KEYS = ("generator", "g_norm", "conditional", "num_classes", "z_dim", "width", "image_size", "channels")
_PROBE_PER_CLASS = 8
_PROBE_SEED = 0


def checkpoint_path() -> Path:
    """Where the shipped generator lives: ``checkpoints/gan_digits.pt`` of the repository."""
    return Path(normapps.__file__).resolve().parents[1] / "checkpoints" / FILE_NAME


def generator_config(task: GANTask) -> dict[str, Any]:
    """The arguments of ``task`` that rebuild its generator (:data:`CONFIG_KEYS`), as plain Python values."""
    hp = task.hparams
    config = {key: hp[key] for key in CONFIG_KEYS}
    config["conditional"] = bool(config["conditional"])
    config["num_classes"] = int(config["num_classes"]) if config["conditional"] else None
    config["width"] = float(config["width"])
    return config


def _task(config: Mapping[str, Any]) -> GANTask:
    """A :class:`GANTask` built from a generator config, without a moving average (the stored weights are the sampler)."""
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"the generator config lacks {', '.join(missing)}; expected the keys {', '.join(CONFIG_KEYS)}")
    return GANTask(**{key: config[key] for key in CONFIG_KEYS}, ema=None)


def _probe(task: GANTask) -> Tensor:
    """Samples of ``task`` from fixed latents: ``_PROBE_PER_CLASS`` per class (or as many in all), in [-1, 1]."""
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    classes = task.num_classes if task.conditional else 1
    z = torch.randn(classes * _PROBE_PER_CLASS, task.hparams.z_dim, generator=generator)
    y = torch.arange(classes).repeat_interleave(_PROBE_PER_CLASS) if task.conditional else None
    return task.generate(z, y)


def _half(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _float(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _rebuild(config: Mapping[str, Any], state: Mapping[str, Tensor]) -> GANTask:
    task = _task(config)
    task.generator.load_state_dict(_float(state))
    return task.eval().requires_grad_(False)


def save_generator(path: str | Path, task: GANTask, training: Mapping[str, Any] | None = None, overwrite: bool = False,
                   precision: str = "auto") -> Path:
    """Write the sampling generator of ``task`` (:attr:`GANTask.sampler`: the moving average if there is one) to a
    generator file (see the module docstring), atomically.

    Args:
        path: the file to write.
        task: a trained :class:`GANTask`.
        training: how it was trained (checkpoint, steps, hyper-parameters, ...), stored as is (plain types only).
        overwrite: replace an existing file (else :class:`FileExistsError`, and nothing is written).
        precision: ``"auto"`` (float16 when the samples stay within :data:`FLOAT16_TOLERANCE`), ``"float16"``
            or ``"float32"``.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
        ValueError: for an unknown ``precision``.
    """
    path = Path(path)
    check_overwrite(path, overwrite)
    if precision not in ("auto", "float16", "float32"):
        raise ValueError(f"precision must be 'auto', 'float16' or 'float32', got {precision!r}")
    config = generator_config(task)
    state32 = {k: v.detach().cpu().clone() for k, v in _float(task.sampler.state_dict()).items()}
    reference = _probe(_rebuild(config, state32))
    error = float((_probe(_rebuild(config, _half(state32))) - reference).abs().max())
    use_half = precision == "float16" or (precision == "auto" and error <= FLOAT16_TOLERANCE)
    payload = {
        "format": FORMAT, "version": VERSION, "config": config, "training": dict(training or {}),
        "state_dict": _half(state32) if use_half else state32,
        "precision": "float16" if use_half else "float32", "float16_max_error": error,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue(), overwrite=overwrite)
    return path


def _read_generator_file(path: Path, payload: Any) -> GANTask:
    if payload.get("version") != VERSION:
        raise ValueError(f"{path} has generator format version {payload.get('version')!r}; this normapps reads version {VERSION}")
    task = _rebuild(payload["config"], payload["state_dict"])
    task.checkpoint_info = {k: v for k, v in payload.items() if k != "state_dict"}
    return task


def _read_lightning(path: Path) -> GANTask:
    try:
        task = GANTask.load_from_checkpoint(path, map_location="cpu")
    except Exception as err:  # an unreadable file or a checkpoint of another task: say which file and why
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ValueError(f"{path} is neither a normapps generator file nor a Lightning checkpoint of GANTask ({reason})") from None
    task.checkpoint_info = {"format": "lightning", "config": generator_config(task)}
    return task.eval().requires_grad_(False)


def load_generator(path: str | Path | None = None) -> GANTask:
    """A :class:`GANTask` in eval mode whose :attr:`~GANTask.sampler` is a stored generator, for
    :meth:`~GANTask.sample`, :meth:`~GANTask.morph` and :meth:`~GANTask.interpolate`.

    Args:
        path: a generator file (:func:`save_generator`) or a Lightning checkpoint of :class:`GANTask`
            (``normapps fit``; its moving-average generator samples if it kept one); None: the shipped
            ``checkpoints/gan_digits.pt`` of the repository.

    A generator file holds no discriminator: the task's discriminator is freshly initialized and only there
    because :class:`GANTask` has one; do not train from it. The file's metadata (config, training record,
    precision) is kept as ``task.checkpoint_info``.

    Raises:
        FileNotFoundError: a missing file (for the shipped one, with the command that makes it).
        ValueError: a file that is not a generator file or a GANTask checkpoint (unreadable, another format,
            another task), or a file of another format version.
    """
    if path is None:
        path = checkpoint_path()
        if not path.is_file():
            raise FileNotFoundError(f"the shipped generator {path} is missing; make it with: {SHIPPED_COMMAND}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"generator file {path} not found")
    if not path.is_file():
        raise ValueError(f"{path} is not a file (expected a generator file or a Lightning checkpoint of GANTask)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, a truncated one, or a Lightning checkpoint holding more than weights
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is not a readable torch checkpoint (expected a generator file or a Lightning "
                             f"checkpoint of GANTask; {type(err).__name__})") from None
        return _read_lightning(path)
    if isinstance(payload, Mapping) and payload.get("format") == FORMAT:
        return _read_generator_file(path, payload)
    if isinstance(payload, Mapping) and "state_dict" in payload and "pytorch-lightning_version" in payload:
        return _read_lightning(path)
    found = payload.get("format") if isinstance(payload, Mapping) else type(payload).__name__
    raise ValueError(f"{path} is not a normapps generator file (expected format {FORMAT!r}, found {found!r}); a Lightning "
                     "checkpoint of GANTask becomes one with python -m normapps.tasks.gan.checkpoints CKPT --out FILE")


def export_from_lightning(ckpt_path: str | Path, out_path: str | Path, overwrite: bool = False,
                          precision: str = "auto") -> Path:
    """Turn a Lightning checkpoint of :class:`GANTask` into a generator file (:func:`save_generator`).

    The training record holds the checkpoint's name, its optimizer steps (both networks), the generator
    updates, the moving average's decay and the task's hyper-parameters.

    Raises:
        FileNotFoundError: a missing checkpoint.
        FileExistsError: ``out_path`` exists and ``overwrite`` is false (checked before loading).
        ValueError: a checkpoint of another task.
    """
    path, out = Path(ckpt_path), Path(out_path)
    check_overwrite(out, overwrite)
    if not path.is_file():
        raise FileNotFoundError(f"Lightning checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # not a torch file, or a truncated one
        raise ValueError(f"{path} is not a readable Lightning checkpoint ({type(err).__name__})") from None
    if not isinstance(checkpoint, Mapping) or "pytorch-lightning_version" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (expected one of GANTask written by normapps fit)")
    task = _read_lightning(path)
    hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(task.hparams).items() if not k.startswith("_")}
    training = {"checkpoint": path.name, "steps": int(checkpoint.get("global_step", 0)),
                "generator_updates": int(checkpoint.get("gan_steps", {}).get("g", 0)),
                "epochs": int(checkpoint.get("epoch", 0)) + 1, "ema": hyper.get("ema"), "hyper_parameters": hyper}
    return save_generator(out, task, training, overwrite=overwrite, precision=precision)



def main(argv: Sequence[str] | None = None) -> int:
    """``python -m normapps.tasks.gan.checkpoints CKPT --out FILE [--overwrite] [--precision auto|float16|float32]``."""
    parser = argparse.ArgumentParser(prog="python -m normapps.tasks.gan.checkpoints",
                                     description="Turn a Lightning checkpoint of GANTask into a small generator file.")
    parser.add_argument("checkpoint", help="a Lightning .ckpt of GANTask (normapps fit -c configs/gan/...)")
    parser.add_argument("--out", required=True, help="the generator file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--precision", choices=("auto", "float16", "float32"), default="auto",
                        help="storage of the weights (default: %(default)s: float16 if the samples stay within "
                             f"{FLOAT16_TOLERANCE:g} of float32's)")
    args = parser.parse_args(argv)
    try:
        out = export_from_lightning(args.checkpoint, args.out, overwrite=args.overwrite, precision=args.precision)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    payload = torch.load(out, map_location="cpu", weights_only=True)
    training = payload["training"]
    print(f"{out}: {payload['config']['generator']} generator ({payload['config']['g_norm']}), {payload['precision']} "
          f"(float16 max sample error {payload['float16_max_error']:.2e}), {training['generator_updates']} generator "
          f"updates, {out.stat().st_size / 1e6:.2f} MB, sha256 {sha256(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
