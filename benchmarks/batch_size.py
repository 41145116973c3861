"""Test error of the digits CNN against batch size, per normalization (the survey's small-batch result).

Wu & He (Group Normalization, ECCV 2018) report that BN's error grows sharply as the batch per
device shrinks to 2 while GN's does not. This script runs the same experiment in miniature (it is
the experiment, not a reproduction of the finding: see the results for what this data shows): the
three-block CNN of ``normapps.models.SmallCNN`` (width 16) on scikit-learn's digits upsampled to
16x16, trained with each normalization at each batch size, several seeds.

Protocol (the same for every cell of the table):

- a fixed budget of ``--epochs`` epochs, so every batch size sees the same number of samples
  (the training loader drops its last incomplete batch: at most 31 of 1077 samples per epoch);
- SGD with momentum 0.9 and weight decay 5e-4; learning rate by the linear scaling rule
  (Goyal et al. 2017, as in the GN paper): ``lr = 0.1 * batch_size / 32``, annealed to 0 by a
  cosine schedule over the epochs. The base rate 0.1 had the lowest mean *validation* error over
  the six norms at batch 32 in a pilot (12 epochs, seeds 10 and 11, rates 0.025 / 0.05 / 0.1:
  4.9 / 3.6 / 3.0%); 12 epochs let every norm reach a few percent error at batch 32, the batch
  size with the fewest steps;
- no model selection: the test error is measured once, on the weights at the end of training;
- the train/val/test split is fixed (split seed 0); ``--seeds`` change initialization and shuffling.

Run ``python benchmarks/batch_size.py --overwrite`` for the full table (replaces ``benchmarks/
results/batch_size.md`` and ``.json``; without ``--overwrite`` existing results are kept and the
script stops before training) or ``--quick`` for a smoke test of a few seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning
import torch
from common import command_line, refuse_existing

from normapps.data import DigitsDataModule
from normapps.io import atomic_write
from normapps.models import default_groups, takes_groups
from normapps.tasks import linear_scaled_lr, train_and_test

RESULTS = Path(__file__).resolve().parent / "results"
BASE_LR = 0.1
BASE_BATCH = 32
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
IMAGE_SIZE = 16
SPLIT_SEED = 0


def datamodule(batch_size: int) -> DigitsDataModule:
    """The data of every run: digits at :data:`IMAGE_SIZE`, split fixed by :data:`SPLIT_SEED`."""
    return DigitsDataModule(batch_size=batch_size, image_size=IMAGE_SIZE, seed=SPLIT_SEED)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norms", nargs="+", default=["bn", "gn", "ln", "in", "brn", "bgn"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 8, 32])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--base-lr", type=float, default=BASE_LR, help=f"SGD lr at batch {BASE_BATCH} (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS / "batch_size", help="output path without suffix")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files (else refuse before training)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: bn and gn, batch sizes 2 and 32, one seed, 5 batches; written to the temp folder",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.norms, args.batch_sizes, args.seeds, args.epochs = ["bn", "gn"], [2, 32], [0], 1
        if args.out == RESULTS / "batch_size":
            args.out = Path(tempfile.gettempdir()) / "normapps_batch_size_quick"
            args.overwrite = True  # the script's own scratch files
    if args.base_lr <= 0:
        parser.error(f"--base-lr must be > 0, got {args.base_lr}")
    for name in ("epochs", "width", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.batch_sizes) < 2:
        parser.error(f"batch sizes must be >= 2 (batch statistics need two samples), got {args.batch_sizes}")
    refuse_existing(parser, [args.out.with_suffix(".json"), args.out.with_suffix(".md")], args.overwrite)
    return args


def protocol_text(args: argparse.Namespace) -> str:
    """The protocol paragraph of the results, from the constants and data actually used."""
    dm = datamodule(BASE_BATCH)
    sizes = dm.split_sizes()
    total = sum(sizes.values())
    shares = "/".join(f"{100 * sizes[name] / total:.0f}" for name in ("train", "val", "test"))
    text = (
        f"Protocol: SmallCNN (3 conv blocks, width {args.width}) on scikit-learn digits upsampled to "
        f"{dm.image_size}x{dm.image_size} and standardized with the training split's pixel mean and std, "
        f"split {shares} (train/val/test: {sizes['train']}/{sizes['val']}/{sizes['test']} images) stratified "
        f"with split seed {dm.seed}; SGD momentum {MOMENTUM}, weight decay {WEIGHT_DECAY:g}, lr = {args.base_lr} x batch / "
        f"{BASE_BATCH} (linear scaling) with cosine annealing to 0; the same number of epochs, hence of samples, "
        "for every batch size; test error of the final weights (no model selection, no validation during training)."
    )
    grouped = [name for name in args.norms if takes_groups(name)]
    if grouped:
        layers = sorted({args.width, 2 * args.width})
        per_group = ", ".join(f"{c // default_groups(c)} channels per group ({default_groups(c)} groups) at {c} channels" for c in layers)
        text += f" Group methods ({', '.join(grouped)}) use the default groups: {per_group}."
    return text


def summarize(runs: list[dict], norms: list[str], batch_sizes: list[int]) -> dict[str, dict[int, tuple[float, float, int]]]:
    """``{norm: {batch size: (mean test error %, std %, number of seeds)}}`` (sample std, 0 for one seed)."""
    table: dict[str, dict[int, tuple[float, float, int]]] = {}
    for name in norms:
        table[name] = {}
        for batch_size in batch_sizes:
            errors = [r["test_error"] * 100 for r in runs if r["norm"] == name and r["batch_size"] == batch_size]
            if errors:
                std = statistics.stdev(errors) if len(errors) > 1 else 0.0
                table[name][batch_size] = (statistics.fmean(errors), std, len(errors))
    return table


def markdown(args: argparse.Namespace, runs: list[dict], command: str, seconds: float) -> str:
    table = summarize(runs, args.norms, args.batch_sizes)
    header = "| norm | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |"
    lines = [header, "|" + " --- |" * (len(args.batch_sizes) + 1)]
    for name in args.norms:
        cells = []
        for b in args.batch_sizes:
            if b in table[name]:
                mean, std, n = table[name][b]
                cells.append(f"{mean:.2f} ± {std:.2f}" + ("" if n == len(args.seeds) else f" (n={n})"))
            else:
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    speed = []
    for b in args.batch_sizes:
        rates = [r["steps"] / r["seconds"] for r in runs if r["batch_size"] == b and r["seconds"] > 0]
        if rates:
            speed.append(f"batch {b}: {statistics.fmean(rates):.0f} steps/s")
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return "\n".join(
        [
            "# Test error (%) of the digits CNN against batch size",
            "",
            f"Mean ± sample std over seeds {args.seeds} of the test error in percent "
            f"({datamodule(BASE_BATCH).split_sizes()['test']} test images), after {args.epochs} epochs.",
            "",
            *lines,
            "",
            protocol_text(args),
            "",
            f"Command: `{command}`",
            "",
            f"Date: {date}; {seconds / 60:.1f} min in total on {args.threads} thread(s), "
            f"{platform.processor() or platform.machine()}; torch {torch.__version__}, "
            f"pytorch-lightning {pytorch_lightning.__version__}.",
            "",
            "Training speed (mean over norms and seeds): " + ", ".join(speed) + ".",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    command = command_line(__file__, argv)
    trainer_kwargs = {"limit_train_batches": 5} if args.quick else None
    runs: list[dict] = []
    start = time.perf_counter()
    total = len(args.norms) * len(args.batch_sizes) * len(args.seeds)
    for batch_size in args.batch_sizes:
        for name in args.norms:
            for seed in args.seeds:
                result = train_and_test(
                    datamodule(batch_size),
                    max_epochs=args.epochs,
                    seed=seed,
                    validate=False,
                    trainer_kwargs=trainer_kwargs,
                    norm=name,
                    width=args.width,
                    optimizer="sgd",
                    lr=linear_scaled_lr(batch_size, args.base_lr, BASE_BATCH),
                    momentum=MOMENTUM,
                    weight_decay=WEIGHT_DECAY,
                    lr_schedule="cosine",
                )
                runs.append(
                    {
                        "norm": name,
                        "batch_size": batch_size,
                        "seed": seed,
                        "lr": linear_scaled_lr(batch_size, args.base_lr, BASE_BATCH),
                        "test_error": 1.0 - result.test["test_acc"],
                        "test_loss": result.test["test_loss"],
                        "steps": result.steps,
                        "seconds": result.seconds,
                    }
                )
                print(
                    f"[{len(runs)}/{total}] {name:>4} batch {batch_size:>2} seed {seed}: "
                    f"test error {runs[-1]['test_error'] * 100:5.2f}%  "
                    f"{result.steps} steps in {result.seconds:.1f} s ({result.steps / result.seconds:.0f} steps/s)",
                    flush=True,
                )
                report = {
                    "command": command,
                    "epochs": args.epochs,
                    "width": args.width,
                    "threads": args.threads,
                    "protocol": {
                        "optimizer": "sgd",
                        "momentum": MOMENTUM,
                        "weight_decay": WEIGHT_DECAY,
                        "lr": f"{args.base_lr} * batch_size / {BASE_BATCH}",
                        "schedule": "cosine",
                        "image_size": IMAGE_SIZE,
                        "split_seed": SPLIT_SEED,
                        "split_sizes": datamodule(BASE_BATCH).split_sizes(),
                        "standardization": "training split pixel mean and std at image_size",
                    },
                    "runs": runs,
                }
                atomic_write(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")  # checked in parse_args
    seconds = time.perf_counter() - start
    text = markdown(args, runs, command, seconds)
    atomic_write(args.out.with_suffix(".md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
