"""``normapps fold``: the inference model with BatchNorm folded into the convolutions, checked and optionally exported.

::

    normapps fold --ckpt FILE --out FILE [--export pt2|onnx] [--data digits|syndigits] [--count N]
                  [--batch-size 64] [--tolerance 1e-5] [--overwrite]

``--ckpt`` is a ``normapps fit`` checkpoint of :class:`~normapps.tasks.ClassificationTask` or a pruned
model written by ``normapps slim``. Every BatchNorm fed by a convolution or linear layer is folded
into it with :func:`normapps.norm.fold` (``W' = W * gamma / sqrt(var + eps)``,
``b' = (b - mean) * gamma / sqrt(var + eps) + beta``). The folded model's eval outputs are compared
with the unfolded model's on real test images (``--data``, default the model's training data,
``--count`` of them): the maximum relative difference ``max |y_folded - y| / max |y|`` is printed, and
above ``--tolerance`` the command fails (exit status 1) without writing anything. The folded model
goes to ``--out`` in the ``torch.load(weights_only=True)`` format of
:mod:`normapps.tasks.efficient.checkpoints`; ``--export pt2`` also writes a ``torch.export`` program
(``--out`` with the suffix ``.pt2``), ``--export onnx`` an ONNX file (``.onnx``, needs the ``onnx`` and
``onnxscript`` packages: ``pip install normapps[onnx]``), each checked the same way (the ONNX file run
by onnxruntime; without it the check is skipped with a warning). Files are written atomically and never replace
existing ones without ``--overwrite``; the input is never changed. Bad input: exit status 2 and one
line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from normapps import norm
from normapps.io import check_overwrite, sha256
from normapps.tasks.efficient import export_onnx, export_program, load_model, load_onnx, load_program, save_model
from normapps.tasks.efficient.export import ONNX_PACKAGES, onnx_available, onnxruntime_available

from .slim import InputError, add_data_arguments, domain_of, split_data

PROG = "normapps fold"
SUFFIXES = {"pt2": ".pt2", "onnx": ".onnx"}


class NotEqualError(RuntimeError):
    """The folded or exported model's outputs differ from the original's beyond the tolerance (exit status 1)."""


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = argparse.ArgumentParser(prog=PROG, description="Fold BatchNorm into the preceding convolutions of a trained or "
                                     "pruned classifier, check its outputs on real images, optionally export it.")
    parser.add_argument("--ckpt", required=True, metavar="FILE", help="a ClassificationTask checkpoint or a normapps slim output")
    parser.add_argument("--out", required=True, metavar="FILE", help="the folded model to write")
    parser.add_argument("--export", choices=tuple(SUFFIXES), help="also write a torch.export program (pt2) or ONNX file "
                        "beside --out (its suffix replaced)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted relative difference (default: %(default)s)")
    add_data_arguments(parser)
    parser.set_defaults(count=256)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (else refuse)")
    return parser


def relative_difference(output: Tensor, reference: Tensor) -> float:
    """``max |output - reference| / max |reference|`` (the difference alone if the reference is all zero)."""
    scale = float(reference.abs().max())
    return float((output - reference).abs().max()) / (scale if scale > 0 else 1.0)


def _check(name: str, output: Tensor, reference: Tensor, tolerance: float, written: str = "nothing was written") -> float:
    difference = relative_difference(output, reference)
    print(f"{name}: max relative difference to the unfolded model {difference:.3g} (tolerance {tolerance:g})")
    if not difference <= tolerance:
        raise NotEqualError(f"the {name} model's outputs differ from the unfolded model's by {difference:.3g} "
                            f"(relative), above the tolerance {tolerance:g}; {written}")
    return difference


def fold_command(options: argparse.Namespace) -> list[Path]:
    """Run the command; returns the files written."""
    source, out = Path(options.ckpt), Path(options.out)
    exported = out.with_suffix(SUFFIXES[options.export]) if options.export else None
    outputs = [out] + ([exported] if exported else [])
    for output in outputs:
        check_overwrite(output, options.overwrite)
        if source.exists() and output.resolve() == source.resolve():
            raise InputError(f"output {output} is the input checkpoint; choose another --out (inputs are never changed)")
    if options.export == "onnx" and not onnx_available():
        raise InputError(f"--export onnx needs the onnx and onnxscript packages, which are not installed "
                         f"({ONNX_PACKAGES}); --export pt2 needs nothing more")
    digest = sha256(source) if source.is_file() else None
    loaded = load_model(source)
    if loaded.folded:
        raise InputError(f"{source} is already folded (its BatchNorm layers are inside the convolutions)")
    report = norm.fold(loaded.model, return_report=True)
    if not report.folded:
        raise InputError(f"{source} has no BatchNorm layer that can be folded: {report.kept or 'no BatchNorm at all'}")
    for name, why in report.kept.items():
        print(f"{PROG}: warning: {name} is not folded: {why}", file=sys.stderr)
    print(f"folded {len(report.folded)} BatchNorm layers")
    folded: nn.Module = report.model
    domain = domain_of(options.data, loaded.domain)
    images = split_data(domain, "test", loaded.preprocessing, options.count).tensors[0]
    if len(images) < 2:
        raise InputError(f"--count {options.count}: the check needs at least 2 images")
    with torch.no_grad():
        reference = torch.cat([loaded.model.eval()(x) for x in images.split(options.batch_size)])
        output = torch.cat([folded(x) for x in images.split(options.batch_size)])
    _check("folded", output, reference, options.tolerance)
    info = {**loaded.info, "folded_from": str(source), "folded_from_sha256": digest, "fold_check_images": len(images)}
    example = images[: max(2, min(options.batch_size, len(images)))]
    program = None
    if options.export == "pt2":
        export_program(folded, example, exported, overwrite=options.overwrite)
        program = load_program(exported)
    elif options.export == "onnx":
        export_onnx(folded, example, exported, overwrite=options.overwrite)
        if onnxruntime_available():
            program = load_onnx(exported)
        else:
            print(f"{PROG}: warning: {exported} was written but not checked: onnxruntime is not installed ({ONNX_PACKAGES})",
                  file=sys.stderr)
    if program is not None:
        with torch.no_grad():
            _check(f"exported ({options.export})", torch.cat([program(x) for x in images.split(options.batch_size)]),
                   reference, options.tolerance, f"{exported} was written, {out} was not")
    save_model(out, folded, hyper_parameters=loaded.hyper_parameters, keep=loaded.keep, folded=True,
               preprocessing=loaded.preprocessing, domain=domain, info=info, overwrite=options.overwrite)
    if digest is not None and sha256(source) != digest:
        raise RuntimeError(f"{source} changed while it was read")
    return outputs


def main(args: Sequence[str]) -> int:
    """Entry point of ``normapps fold``; exit status 2 for bad input, 1 if the folded outputs differ (one line on stderr)."""
    options = build_parser().parse_args(list(args))
    try:
        written = fold_command(options)
    except NotEqualError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:  # InputError, FileNotFoundError, FileExistsError, and what loaders raise
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {' and '.join(map(str, written))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

