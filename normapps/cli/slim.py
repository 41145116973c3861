"""``normapps slim``: prune a trained classifier by its BatchNorm scales (network slimming), or export one width
of a slimmable network, without writing code.

::

    normapps slim --ckpt FILE --ratio 0.5 [--recalibrate] [--finetune-epochs N] [--lr 1e-3]
                  [--data digits|syndigits] [--count N] [--batch-size 64] [--min-channels 1]
                  --out FILE [--overwrite] [--seed 0]
    normapps slim --ckpt FILE --width 0.5 [--recalibrate] [--finetune-epochs N] [--lr 1e-3]
                  [--data digits|syndigits] [--count N] [--batch-size 64] --out FILE [--overwrite] [--seed 0]

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

With ``--width`` instead of ``--ratio``, ``--ckpt`` is a ``normapps fit`` checkpoint of
:class:`~normapps.tasks.efficient.SlimmableTask` (``configs/efficient/slimmable_digits.yaml``,
``us_slimmable_digits.yaml``), and the network it runs at that width (a listed width; universal mode:
any calibrated width in its range) is written as a plain pruned SmallCNN
(:func:`~normapps.tasks.efficient.slimmable.export_width`): no slimmable class is needed to load, fold or
export it. A universally slimmable network has statistics for the widths calibrated during training;
another width needs ``--recalibrate``, which calibrates it on the training split first. The table gives
the largest width and the exported one, then ``--recalibrate`` / ``--finetune-epochs`` apply to the
exported network as after pruning.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
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
from normapps.tasks.efficient.checkpoints import DEFAULT_DOMAIN
from normapps.tasks.efficient.counting import count
from normapps.tasks.efficient.slimmable import (
    SwitchableBatchNorm2d,
    UniversalBatchNorm2d,
    calibrate,
    export_width,
    get_width,
    set_width,
    width_key,
)
from normapps.tasks.efficient.slimmable_task import SlimmableTask

from .adapt import training_datamodule, training_preprocessing
from .arguments import InputError, nonnegative_int, positive_float, positive_int

PROG = "normapps slim"
DOMAINS = ("digits", "syndigits")


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _width(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a width multiplier in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prune a trained classifier's channels by |BatchNorm gamma| "
        "(network slimming), optionally recalibrate and fine-tune; print params, FLOPs and accuracy.",
    )
    parser.add_argument(
        "--ckpt", required=True, metavar="FILE", help="a normapps fit checkpoint of ClassificationTask (--ratio) or SlimmableTask (--width)"
    )
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=_ratio, help="fraction of the prunable channels to remove, in [0, 1)")
    how.add_argument("--width", type=_width, help="export this width multiplier of a slimmable network, in (0, 1]")
    parser.add_argument("--min-channels", type=positive_int, metavar="N", help="with --ratio: fewest channels any layer keeps (default: 1)")
    parser.add_argument("--recalibrate", action="store_true", help="recompute BatchNorm statistics exactly on the training split")
    parser.add_argument(
        "--finetune-epochs",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="epochs of fine-tuning on the training split (default: %(default)s)",
    )
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
    return "\n".join(
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
        for line in (header, tuple("-" * w for w in widths), *rows)
    )


def slim_command(options: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run the command; returns what it measured (also stored in the output file's ``info``)."""
    source, out = Path(options.ckpt), Path(options.out)
    check_overwrite(out, options.overwrite)
    if out.resolve() == source.resolve():
        raise InputError(f"--out {out} is the input checkpoint; choose another file (inputs are never changed)")
    digest = sha256(source) if source.is_file() else None
    content = _read(source)
    if options.width is not None:
        if not is_slimmable_checkpoint(content):
            raise InputError(
                f"--width exports one width of a slimmable network, but {source} is not a SlimmableTask "
                "checkpoint; prune a ClassificationTask checkpoint with --ratio"
            )
        info = _export_width(options, command, source, out, digest, content)
    else:
        if is_slimmable_checkpoint(content):
            widths = ", ".join(f"{w:g}" for w in content["hyper_parameters"].get("width_mults", ()))
            raise InputError(f"{source} is a SlimmableTask checkpoint: export one of its widths ({widths}) with --width instead of --ratio")
        info = _prune(options, command, source, out, digest)
    if digest is not None and sha256(source) != digest:
        raise RuntimeError(f"{source} changed while it was read")
    return info


def _read(path: Path) -> Any:
    """The content of ``path`` read with ``weights_only=True``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} {'is a folder' if path.is_dir() else 'does not exist'}: expected a normapps fit "
            "checkpoint or a file written by normapps slim / fold"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # bytes that are no torch file make the unpickler fail in many ways
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(f"cannot read {path} as a torch file ({reason[:160]})") from err


def is_slimmable_checkpoint(content: Any) -> bool:
    """Whether ``content`` is a Lightning checkpoint of :class:`~normapps.tasks.efficient.SlimmableTask`: its
    recorded class (``normapps fit`` stores it), else a ``width_mults`` hyper-parameter (a checkpoint saved
    without the command line)."""
    saved = content.get("hyper_parameters") if isinstance(content, Mapping) else None
    if not isinstance(saved, Mapping) or "state_dict" not in content:
        return False
    class_path = saved.get("_class_path")
    if class_path:
        return str(class_path).rsplit(".", 1)[-1] == SlimmableTask.__name__
    return "width_mults" in saved


def _prune(options: argparse.Namespace, command: str, source: Path, out: Path, digest: str | None) -> dict[str, Any]:
    """``--ratio``: prune a ClassificationTask's channels by |gamma|, recover, write and print the table."""
    loaded = load_model(source)
    if loaded.keep or loaded.folded:
        raise InputError(
            f"{source} is already {'folded' if loaded.folded else 'pruned'}; prune the original checkpoint "
            "(the global threshold ranks every channel of the trained network)"
        )
    domain = domain_of(options.data, loaded.domain)
    train = loader(split_data(domain, "train", loaded.preprocessing, options.count), options.batch_size, options.seed)
    test = loader(split_data(domain, "test", loaded.preprocessing, options.count), options.batch_size)
    example = next(iter(test))[0]

    model = loaded.model
    rows: list[tuple[str, ...]] = []
    results: dict[str, float] = {"original": accuracy(model, test, "test (original)")}
    min_channels = 1 if options.min_channels is None else options.min_channels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, report = prune(model, options.ratio, example, min_channels=min_channels)
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    results["pruned"] = accuracy(pruned, test, "test (pruned)")
    _recover(pruned, train, test, results, recalibrate=options.recalibrate, finetune_epochs=options.finetune_epochs, lr=options.lr)
    (p0, p1), (f0, f1) = report.params, report.flops
    for stage, value in results.items():
        params, flops = (p0, f0) if stage == "original" else (p1, f1)
        rows.append((stage, f"{params:,}", f"{flops:,}", f"{value:.2%}"))
    info = {
        "command": command,
        "source": str(source),
        "source_sha256": digest,
        "ratio": options.ratio,
        "threshold": report.threshold,
        "data": domain,
        "test_images": len(test.dataset),
        "accuracy": results,
        "params": list(report.params),
        "flops": list(report.flops),
        "recalibrated": options.recalibrate,
        "finetune_epochs": options.finetune_epochs,
    }
    save_model(
        out,
        pruned,
        hyper_parameters=loaded.hyper_parameters,
        keep=report.keep,
        folded=False,
        preprocessing=loaded.preprocessing,
        domain=domain,
        info=info,
        overwrite=options.overwrite,
    )
    print(report.table())
    print()
    print(f"{domain} test split, {len(test.dataset)} images; FLOPs per image (2 per multiply-add)")
    print(_table(rows))
    return info


def _recover(
    model: nn.Module, train: DataLoader, test: DataLoader, results: dict[str, float], *, recalibrate: bool, finetune_epochs: int, lr: float
) -> None:
    """``--recalibrate`` then ``--finetune-epochs`` on the pruned or exported ``model``, in place; adds their accuracy."""
    if recalibrate:
        recalibrate_pruned(model, inputs(train))
        results["recalibrated"] = accuracy(model, test, "test (recalibrated)")
    if finetune_epochs:
        finetune(model, train, finetune_epochs, lr)
        results["fine-tuned"] = accuracy(model, test, "test (fine-tuned)")


def load_slimmable(path: Path, content: Mapping[str, Any]) -> SlimmableTask:
    """The :class:`~normapps.tasks.efficient.SlimmableTask` of a checkpoint, in eval mode, on the CPU.

    Raises:
        InputError: if the hyper-parameters do not build one or the weights do not fit it exactly.
    """
    settings = {key: value for key, value in content["hyper_parameters"].items() if not key.startswith("_")}
    try:
        task = SlimmableTask(**settings)
    except (TypeError, ValueError) as err:
        raise InputError(f"the hyper-parameters in {path} do not build a SlimmableTask: {err}") from err
    try:  # universal BN creates the statistics of the widths the state dict holds
        task.load_state_dict(content["state_dict"])
    except RuntimeError as err:
        raise InputError(
            f"the weights in {path} do not fit the SlimmableTask of its hyper-parameters: {' '.join(str(err).split())[:400]}"
        ) from err
    if task.hparams.in_channels not in (1, 3):
        raise InputError(f"{path}: the model takes {task.hparams.in_channels} input channels; expected 1 (grey) or 3 (RGB)")
    return task.eval()


def _calibrated(model: nn.Module, width_mult: float) -> bool:
    """Whether every universal BatchNorm of ``model`` has statistics for ``width_mult`` (always, for switchable BN)."""
    return all(
        width_key(width_mult) in {width_key(w) for w in module.calibrated_widths}
        for module in model.modules()
        if isinstance(module, UniversalBatchNorm2d)
    )


def _export_width(
    options: argparse.Namespace, command: str, source: Path, out: Path, digest: str | None, content: Mapping[str, Any]
) -> dict[str, Any]:
    """``--width``: export one width of a SlimmableTask as a plain pruned SmallCNN, recover, write and print the table."""
    if options.min_channels is not None:
        raise InputError("--min-channels applies to --ratio (pruning by |gamma|); --width keeps the width's channels")
    task = load_slimmable(source, content)
    model = task.model
    set_width(model, options.width)  # a ValueError naming the network's widths if it has not this one
    width, largest = get_width(model), task.width_mults[-1]
    datamodule, origin = training_datamodule(content, source)
    preprocessing = training_preprocessing(datamodule, task.hparams.in_channels, origin, None)
    trained_on = getattr(datamodule, "source", DEFAULT_DOMAIN)
    domain = domain_of(options.data, trained_on if isinstance(trained_on, str) else DEFAULT_DOMAIN)
    train = loader(split_data(domain, "train", preprocessing, options.count), options.batch_size, options.seed)
    test = loader(split_data(domain, "test", preprocessing, options.count), options.batch_size)
    size = tuple(next(iter(test))[0].shape[1:])

    calibrate_first = not _calibrated(model, width)
    if calibrate_first and not options.recalibrate:
        calibrated = ", ".join(f"{w:g}" for w in model.features[1].calibrated_widths) or "none"
        raise InputError(
            f"width {width:g} of this universally slimmable network has no batch-norm statistics (calibrated "
            f"widths: {calibrated}); pass --recalibrate to calibrate it on the training split"
        )
    results: dict[str, float] = {}
    counts: dict[str, tuple[int, int]] = {}
    if width != largest and _calibrated(model, largest):
        reference, _, _ = export_width(model, largest)
        results[f"width {largest:g}"] = accuracy(reference, test, f"test (width {largest:g})")
        counts[f"width {largest:g}"] = count(reference, size)
    if calibrate_first:  # the exact statistics of the training split, as --recalibrate gives a pruned network
        calibrate(model, width, inputs(train))
    plain, keep, hyper_parameters = export_width(model, width)
    stage = "recalibrated" if calibrate_first else f"width {width:g}"
    results[stage] = accuracy(plain, test, f"test (width {width:g})")
    exported = counts[stage] = count(plain, size)
    _recover(
        plain,
        train,
        test,
        results,
        recalibrate=options.recalibrate and not calibrate_first,
        finetune_epochs=options.finetune_epochs,
        lr=options.lr,
    )
    rows: list[tuple[str, ...]] = []
    for stage, value in results.items():
        params, flops = counts.get(stage, exported)  # recalibration and fine-tuning keep the exported architecture
        rows.append((stage, f"{params:,}", f"{flops:,}", f"{value:.2%}"))
    info = {
        "command": command,
        "source": str(source),
        "source_sha256": digest,
        "width": width,
        "slimmable": {"mode": task.hparams.mode, "width_mults": list(task.width_mults)},
        "data": domain,
        "test_images": len(test.dataset),
        "accuracy": results,
        "params": [p for p, _ in counts.values()],
        "flops": [f for _, f in counts.values()],
        "recalibrated": options.recalibrate,
        "finetune_epochs": options.finetune_epochs,
    }
    save_model(
        out,
        plain,
        hyper_parameters=hyper_parameters,
        keep=keep,
        folded=False,
        preprocessing=preprocessing,
        domain=domain,
        info=info,
        overwrite=options.overwrite,
    )
    totals = {
        name: module.num_features
        for name, module in model.named_modules()
        if isinstance(module, (SwitchableBatchNorm2d, UniversalBatchNorm2d))
    }
    print(
        f"width {width:g} of a {task.hparams.mode} network (widths {', '.join(f'{w:g}' for w in task.width_mults)}"
        f"{', any in between' if task.hparams.mode == 'universal' else ''}): channels "
        + ", ".join(f"{name} {len(kept)}/{totals[name]}" for name, kept in keep.items())
    )
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
