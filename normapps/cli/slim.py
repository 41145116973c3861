"""``normapps slim``: prune a trained classifier by its BatchNorm scales (network slimming), without writing code.

::

    normapps slim --ckpt FILE --ratio 0.5 [--recalibrate] [--finetune-epochs N] [--lr 1e-3]
                  [--data digits|syndigits] [--count N] [--batch-size 64] [--min-channels 1]
                  --out FILE [--overwrite] [--seed 0]

``--ckpt`` is a ``normapps fit`` checkpoint of :class:`~normapps.tasks.ClassificationTask` (``arch``
``cnn`` or ``resnet``), ideally trained with :class:`~normapps.tasks.efficient.BNSparsity` (see
``configs/efficient/``). The fraction ``--ratio`` of the prunable channels with the smallest ``|gamma|``
is removed (one global threshold, Liu et al. 2017; residual streams keep their width; every layer keeps
at least ``--min-channels``). ``--recalibrate`` then recomputes every BatchNorm's statistics exactly on
the training split (``normapps.norm.recalibrate``), ``--finetune-epochs N`` fine-tunes with Adam on it
(after the recalibration when both are given).

The data is the checkpoint's training domain (``--data`` overrides it), preprocessed as in training; the
table printed on stdout gives parameters, FLOPs (2 per multiply-add, ``torch.utils.flop_counter``) and
test-split accuracy before pruning, after pruning, after recalibration and after fine-tuning. The pruned
model is written atomically to ``--out`` in the ``torch.load(weights_only=True)`` format of
:mod:`normapps.tasks.efficient.checkpoints` (``normapps fold`` reads it), never over an existing file
without ``--overwrite`` and never over the input. Bad input ends with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from normapps.data import load_domain
from normapps.io import check_overwrite, sha256
from normapps.models.pretrained import Preprocessing
from normapps.tasks.efficient import finetune, load_model, prune, recalibrate_pruned, save_model

from .arguments import InputError, nonnegative_int, positive_float, positive_int

PROG = "normapps slim"
DOMAINS = ("digits", "syndigits")


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = argparse.ArgumentParser(prog=PROG, description="Prune a trained classifier's channels by |BatchNorm gamma| "
                                     "(network slimming), optionally recalibrate and fine-tune; print params, FLOPs and accuracy.")
    parser.add_argument("--ckpt", required=True, metavar="FILE", help="a normapps fit checkpoint of ClassificationTask")
    parser.add_argument("--ratio", required=True, type=_ratio, help="fraction of the prunable channels to remove, in [0, 1)")
    parser.add_argument("--min-channels", type=positive_int, default=1, metavar="N",
                        help="fewest channels any layer keeps (default: %(default)s)")
    parser.add_argument("--recalibrate", action="store_true", help="recompute BatchNorm statistics exactly on the training split")
    parser.add_argument("--finetune-epochs", type=nonnegative_int, default=0, metavar="N",
                        help="epochs of fine-tuning on the training split (default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="fine-tuning Adam learning rate (default: %(default)s)")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FILE", help="the pruned model to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (else refuse)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the training batch order (default: %(default)s)")
    return parser


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--count`` and ``--batch-size``, shared with ``normapps fold``."""
    parser.add_argument("--data", choices=DOMAINS, help="data set (default: the one the checkpoint was trained on)")
    parser.add_argument("--count", type=positive_int, metavar="N", help="use only N images of each split (default: all)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="(default: %(default)s)")


def domain_of(option: str | None, trained_on: str) -> str:
    """The data set to use: ``--data`` if given, else the model's training domain (which must be one of :data:`DOMAINS`)."""
    domain = option or trained_on
    if domain not in DOMAINS:
        raise InputError(f"the model was trained on {domain!r}; pass --data with one of {', '.join(DOMAINS)}")
    return domain


def split_data(domain: str, split: str, preprocessing: Preprocessing, count: int | None) -> TensorDataset:
    """One split of ``domain`` at the model's image size, preprocessed as in training (labels kept)."""
    images, labels = load_domain(domain, split=split, image_size=preprocessing.image_size, count=count).tensors
    return TensorDataset(preprocessing(images), labels)


def loader(dataset: TensorDataset, batch_size: int, seed: int | None = None) -> DataLoader:
    """Batches of ``dataset``: in order (``seed`` None), or shuffled by ``seed`` without a last incomplete batch."""
    if seed is None:
        return DataLoader(dataset, batch_size=batch_size)
    if len(dataset) < 2:
        raise InputError(f"the training split has {len(dataset)} image; batch statistics need at least 2")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, drop_last=True, generator=generator)


@torch.no_grad()
def accuracy(model: nn.Module, batches: DataLoader, desc: str) -> float:
    """Fraction of correctly classified samples, the model in eval mode, with a progress bar on stderr."""
    model.eval()
    correct = total = 0
    for x, y in tqdm(batches, desc=desc, leave=False):
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / total


def inputs(batches: DataLoader) -> Iterator[Tensor]:
    """The images of ``batches``, without labels."""
    for x, _ in batches:
        yield x


def _table(rows: list[tuple[str, ...]]) -> str:
    header = ("model", "params", "FLOPs", "test acc")
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
                     for line in (header, tuple("-" * w for w in widths), *rows))


def slim_command(options: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run the command; returns what it measured (also stored in the output file's ``info``)."""
    source, out = Path(options.ckpt), Path(options.out)
    check_overwrite(out, options.overwrite)
    if out.resolve() == source.resolve():
        raise InputError(f"--out {out} is the input checkpoint; choose another file (inputs are never changed)")
    digest = sha256(source) if source.is_file() else None
    loaded = load_model(source)
    if loaded.keep or loaded.folded:
        raise InputError(f"{source} is already {'folded' if loaded.folded else 'pruned'}; prune the original checkpoint "
                         "(the global threshold ranks every channel of the trained network)")
    domain = domain_of(options.data, loaded.domain)
    train = loader(split_data(domain, "train", loaded.preprocessing, options.count), options.batch_size, options.seed)
    test = loader(split_data(domain, "test", loaded.preprocessing, options.count), options.batch_size)
    example = next(iter(test))[0]

    model = loaded.model
    rows: list[tuple[str, ...]] = []
    results: dict[str, float] = {"original": accuracy(model, test, "test (original)")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, report = prune(model, options.ratio, example, min_channels=options.min_channels)
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    results["pruned"] = accuracy(pruned, test, "test (pruned)")
    if options.recalibrate:
        recalibrate_pruned(pruned, inputs(train))
        results["recalibrated"] = accuracy(pruned, test, "test (recalibrated)")
    if options.finetune_epochs:
        finetune(pruned, train, options.finetune_epochs, options.lr)
        results["fine-tuned"] = accuracy(pruned, test, "test (fine-tuned)")
    (p0, p1), (f0, f1) = report.params, report.flops
    for stage, value in results.items():
        params, flops = (p0, f0) if stage == "original" else (p1, f1)
        rows.append((stage, f"{params:,}", f"{flops:,}", f"{value:.2%}"))
    info = {
        "command": command, "source": str(source), "source_sha256": digest, "ratio": options.ratio,
        "threshold": report.threshold, "data": domain, "test_images": len(test.dataset), "accuracy": results,
        "params": list(report.params), "flops": list(report.flops), "recalibrated": options.recalibrate,
        "finetune_epochs": options.finetune_epochs,
    }
    save_model(out, pruned, hyper_parameters=loaded.hyper_parameters, keep=report.keep, folded=False,
               preprocessing=loaded.preprocessing, domain=domain, info=info, overwrite=options.overwrite)
    if digest is not None and sha256(source) != digest:
        raise RuntimeError(f"{source} changed while it was read")
    print(report.table())
    print()
    print(f"{domain} test split, {len(test.dataset)} images; FLOPs per image (2 per multiply-add)")
    print(_table(rows))
    return info


def main(args: Sequence[str]) -> int:
    """Entry point of ``normapps slim``; returns the exit status (2 for bad input, with one line on stderr)."""
    options = build_parser().parse_args(list(args))
    try:
        slim_command(options, shlex.join(["normapps", "slim", *args]))
    except (ValueError, OSError) as err:  # InputError, FileNotFoundError, FileExistsError, and what loaders raise
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {options.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
