"""Efficient models from BatchNorm: network slimming, recalibration, switchable BN, and what pruning buys in latency.

Evidence for the efficient-model suite (``normapps.tasks.efficient``), in miniature and on embedded data:

- **Network slimming** (Liu et al. 2017) on ``digits`` (scikit-learn's handwritten digits, 16x16, grey,
  standardized as :class:`~normapps.data.DigitsDataModule` does) and ``syndigits`` (rendered font
  digits, 16x16 RGB in [0, 1]; test fonts held out), SmallCNN (width 16) and SmallResNet (width 8,
  one block per stage) through :class:`~normapps.tasks.ClassificationTask` with the recipe of
  ``configs/efficient/slim_*.yaml`` (SGD lr 0.05, momentum 0.9, cosine; syndigits: 10000 images per split
  and more epochs; gamma initialized to 0.5;
  :class:`~normapps.tasks.efficient.BNSparsity` adds lambda * sum |gamma|). Each trained model is
  pruned by :func:`~normapps.tasks.efficient.prune` at ratios 0.3, 0.5 and 0.7 of the prunable
  channels (one global |gamma| threshold) and tested: pruned only, after
  :func:`~normapps.tasks.efficient.recalibrate_pruned` (exact BN statistics over the training split),
  after :func:`~normapps.tasks.efficient.finetune` (Adam, lr 1e-3) of the pruned model, and after
  recalibration then fine-tuning. The same recipe without the penalty (lambda = 0) is the baseline,
  pruned the same way: the difference is what the L1 penalty on gamma buys.
- **Tuning on val only**: lambda is chosen per dataset and architecture from :data:`LAMBDA_GRID` (syndigits: :data:`SYNDIGITS_LAMBDAS`) by
  the validation accuracy of the seed-0 model pruned at 0.5 and recalibrated; the reported seeds are
  then tested on the test split. Epochs, learning rates and fine-tuning epochs are the configs'
  values, not tuned (syndigits' epochs and image count: chosen on val in a few short runs without
  the penalty).
- **Switchable BN** (Yu et al. 2019; Yu & Huang 2019) on ``digits``: per-width test accuracy of a
  slimmable SmallCNN (switchable BN, every width's loss summed), of the universally slimmable one
  (shared affine, sandwich rule, in-place distillation, BN statistics calibrated per width after
  training on 8 training batches) and of each width trained alone, with the recipe and epochs of
  ``configs/efficient/slimmable_digits.yaml`` / ``us_slimmable_digits.yaml`` /
  ``separate_width_digits.yaml``.
- **Latency** (CPU, ``torch.inference_mode()``, ``--threads`` torch threads, batches 1 and 64):
  the seed-0 sparse digits SmallCNN and torchvision's ResNet-18 (10 classes, random weights and
  random |gamma|, 32x32 inputs) -- original, folded (``normapps.norm.fold``), pruned at each ratio,
  and pruned then folded. Every variant of one batch size runs in a new random order each repeat;
  the median and the minimum over repeats are reported (on shared cores the minimum is the least
  disturbed run) and the 1-minute load average is recorded before and after.
  The latency ratio (variant / original) stands next to the FLOP ratio.

FLOPs are what ``torch.utils.flop_counter`` counts for one example (2 per multiply-add: FLOPs =
2 x MACs; convolutions and matrix products only), parameters every weight and bias.

Run ``python benchmarks/efficient.py --overwrite`` for the full results (replaces
``benchmarks/results/efficient.md``, ``.json`` and ``efficient_accuracy_flops.png``; refuses without
``--overwrite``, before training; ``--datasets syndigits`` reruns that dataset alone and merges it into
the existing report), or ``--quick`` for a smoke run (tiny counts, one seed, one epoch,
written to the temp folder). Budget on two shared cores, one torch thread: about 40 minutes in all; syndigits
alone with two seeds (``--datasets syndigits --seeds 0 1``) about 20.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import math
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning
import torch
from common import command_line, random_resnet18, refuse_existing, write_results
from pytorch_lightning import LightningDataModule, Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from normapps.data import DigitsDataModule, load_domain
from normapps.io import atomic_path
from normapps.norm import fold
from normapps.tasks import ClassificationTask
from normapps.tasks.efficient import BNSparsity, count, finetune, prune, recalibrate_pruned
from normapps.tasks.efficient.slimmable import (
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm2d,
    calibrate,
    use_width,
)
from normapps.tasks.efficient.slimmable_task import SlimmableTask
from normapps.tasks.efficient.slimming import bn_layers

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SIZE = 16
DATA_SEED = 0
RATIOS = (0.3, 0.5, 0.7)
#: lambda values tried on val (0 is the baseline without the penalty, never chosen as "sparse").
LAMBDA_GRID = (0.0, 5e-3, 2e-2, 5e-2)
#: The prune ratio whose recalibrated val accuracy chooses lambda.
TUNING_RATIO = 0.5
VARIANTS = ("pruned", "recalibrated", "fine-tuned", "recalibrated + fine-tuned")
WIDTHS = (0.25, 0.5, 0.75, 1.0)
LATENCY_BATCHES = (1, 64)
RESNET18_SIZE = 32
#: BatchNorm scales of the random ResNet-18: a spread of small |gamma| for pruning to rank channels by.
RESNET18_GAMMA = (0.05, 1.0)
#: Liu et al. 2017, Table 1: VGG-19 on CIFAR-10, 70% of the channels pruned, then fine-tuned.
PUBLISHED = {"model": "VGG-19", "data": "CIFAR-10", "ratio": 0.7, "params": (20.04e6, 2.25e6), "accuracy": (93.77, 93.78)}


@dataclass(frozen=True)
class Recipe:
    """Training of one architecture on one dataset (the ``configs/efficient/slim_*.yaml`` recipe)."""

    arch: str
    width: int
    epochs: int
    batch_size: int
    finetune_epochs: int
    lr: float = 0.05
    #: lambda values tried on val for this recipe (None: the run's grid, :data:`LAMBDA_GRID`).
    lambdas: tuple[float, ...] | None = None


@dataclass
class Settings:
    """What one run measures: the full protocol or the smoke test."""

    seeds: list[int]
    switch_seeds: list[int]
    datasets: dict[str, dict[str, Recipe]]
    lambda_grid: tuple[float, ...]
    count: int | None
    switch_epochs: int
    repeats: int
    resnet18_size: int
    latency_batches: tuple[int, ...] = LATENCY_BATCHES


#: Per dataset and architecture, as the configs. syndigits (3 epochs of 5000 images stayed at chance): batch 64, 10000
#: images, 14 epochs for SmallCNN (80.0% val unpruned, seed 0) and 6 for SmallResNet (91.9%), found on val among a few
#: short runs; one fine-tuning epoch there (156 steps) against two on digits (66 steps). Its lambdas are smaller: over
#: its 900-2200 steps the digits' 2e-2 drives every gamma to 0 (SmallCNN: 10.0% val).
SYNDIGITS_LAMBDAS = (0.0, 1e-3, 3e-3, 1e-2)
DATASETS = {
    "digits": {"cnn": Recipe("cnn", 16, 10, 32, 2), "resnet": Recipe("resnet", 8, 10, 32, 2)},
    "syndigits": {
        "cnn": Recipe("cnn", 16, 14, 64, 1, lambdas=SYNDIGITS_LAMBDAS),
        "resnet": Recipe("resnet", 8, 6, 64, 1, lambdas=SYNDIGITS_LAMBDAS),
    },
}
#: Images per split of syndigits (train, val and test alike).
SYNDIGITS_COUNT = 10000
SWITCH_EPOCHS = 15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="training seeds of the slimming part (the first one also tunes lambda on val; default: %(default)s)",
    )
    parser.add_argument(
        "--switch-seeds", nargs="+", type=int, default=[0, 1], help="training seeds of the switchable-BN part (default: %(default)s)"
    )
    parser.add_argument(
        "--archs",
        nargs="+",
        choices=("cnn", "resnet"),
        default=["cnn", "resnet"],
        help="architectures of the slimming part (default: %(default)s)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=tuple(DATASETS),
        default=list(DATASETS),
        help="datasets of the slimming part (default: %(default)s). A run without all of them merges: it "
        "replaces only its datasets' blocks in the existing <out>.json (which must exist), keeps the "
        "switchable-BN and latency parts (digits only) unless digits is rerun, and rebuilds the .md and "
        "the figure from the merged report",
    )
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per latency measurement (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of everything (default: %(default)s; one thread does not stall when other processes share the cores)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "efficient", help="output path without suffix")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files (else refuse before training)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: one seed, 64 images per split, one epoch, batches 1 and 2 for latency; written to the temp folder",
    )
    args = parser.parse_args(argv)
    if args.quick and args.out == RESULTS / "efficient":
        args.out = Path(tempfile.gettempdir()) / "normapps_efficient_quick"
        args.overwrite = True  # the script's own scratch files
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    refuse_existing(parser, outputs(args.out), args.overwrite)
    if merging(args):
        try:
            previous(args.out)
        except (OSError, ValueError) as err:
            parser.error(f"--datasets {' '.join(args.datasets)} merges into the results of a full run: {err}")
    return args


def previous(out: Path) -> dict[str, Any]:
    """The report of an earlier run in ``<out>.json``, checked for the parts a merge keeps.

    Raises:
        OSError: if the file cannot be read.
        ValueError: if it is not such a report, or was made with other prune ratios.
    """
    path = outputs(out)[0]
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err})") from err
    missing = [key for key in ("command", "settings", "slimming", "switchable", "latency") if key not in report]
    if missing:
        raise ValueError(f"{path} is not a report of this benchmark: it lacks {missing}")
    if report["settings"].get("ratios") != list(RATIOS):
        raise ValueError(f"{path} has prune ratios {report['settings'].get('ratios')}, this script {list(RATIOS)}")
    return report


def merging(args: argparse.Namespace) -> bool:
    """Whether this run reruns only some datasets and merges them into the existing report."""
    return set(args.datasets) != set(DATASETS)


def outputs(out: Path) -> list[Path]:
    """The files a run writes: ``<out>.json``, ``<out>.md`` and ``<out>_accuracy_flops.png``."""
    return [out.with_suffix(".json"), out.with_suffix(".md"), out.with_name(out.name + "_accuracy_flops.png")]


def settings_of(args: argparse.Namespace) -> Settings:
    """The protocol of this run (``--quick`` shrinks every part of it)."""
    archs = list(args.archs)
    if args.quick:
        tiny = {name: {a: Recipe(a, 4, 1, 16, 1) for a in archs} for name in DATASETS if name in args.datasets}
        return Settings(
            seeds=args.seeds[:1],
            switch_seeds=args.switch_seeds[:1],
            datasets=tiny,
            lambda_grid=(0.0, 2e-2),
            count=64,
            switch_epochs=1,
            repeats=2,
            resnet18_size=32,
            latency_batches=(1, 2),
        )
    datasets = {name: {a: recipes[a] for a in archs} for name, recipes in DATASETS.items() if name in args.datasets}
    return Settings(
        seeds=args.seeds,
        switch_seeds=args.switch_seeds,
        datasets=datasets,
        lambda_grid=LAMBDA_GRID,
        count=None,
        switch_epochs=SWITCH_EPOCHS,
        repeats=args.repeats,
        resnet18_size=RESNET18_SIZE,
    )


# ------------------------------------------------------------------------------------------ data


class Splits(LightningDataModule):
    """Train / val / test tensors of one dataset; the training loader shuffles and drops its last partial batch."""

    def __init__(self, name: str, splits: dict[str, TensorDataset], batch_size: int) -> None:
        super().__init__()
        self.name, self.splits, self.batch_size = name, splits, batch_size

    @property
    def input_size(self) -> tuple[int, ...]:
        """Shape of one example (C, H, W)."""
        return tuple(self.splits["train"].tensors[0].shape[1:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=256)


def load_splits(name: str, batch_size: int, count: int | None) -> Splits:
    """``digits`` as :class:`DigitsDataModule` makes it (1 channel, standardized) or ``syndigits`` (RGB in
    [0, 1], :data:`SYNDIGITS_COUNT` per split); at most ``count`` images per split when given."""
    if name == "digits":
        data = DigitsDataModule(batch_size=batch_size, image_size=IMAGE_SIZE, seed=DATA_SEED)
        data.setup()
        splits = dict(data.splits)
    elif name == "syndigits":
        splits = {
            split: load_domain("syndigits", split, image_size=IMAGE_SIZE, seed=DATA_SEED, count=count or SYNDIGITS_COUNT)
            for split in ("train", "val", "test")
        }
    else:
        raise ValueError(f"dataset must be 'digits' or 'syndigits', got {name!r}")
    if count is not None:
        splits = {split: TensorDataset(*(t[:count] for t in data.tensors)) for split, data in splits.items()}
    return Splits(name, splits, batch_size)


# ------------------------------------------------------------------------------------------ training


def quiet_trainer(epochs: int, callbacks: list[Any] | None = None) -> Trainer:
    """A CPU trainer without logger, checkpoints, progress bar or validation."""
    return Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks or [],
    )


def train_sparse(data: Splits, recipe: Recipe, strength: float, seed: int) -> tuple[nn.Module, float]:
    """A classifier trained with ``strength * sum |gamma|`` (0: no penalty), gamma initialized to 0.5; (model, seconds)."""
    seed_everything(seed, workers=True, verbose=False)
    task = ClassificationTask(
        arch=recipe.arch,
        norm="bn",
        width=recipe.width,
        in_channels=data.input_size[0],
        num_classes=10,
        bn_gamma_init=0.5,
        optimizer="sgd",
        lr=recipe.lr,
        momentum=0.9,
        lr_schedule="cosine",
    )
    start = time.perf_counter()
    quiet_trainer(recipe.epochs, [BNSparsity(strength)]).fit(task, datamodule=data)
    return task.model.eval(), time.perf_counter() - start


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on a labelled split."""
    model.eval()
    images, labels = data.tensors
    with torch.inference_mode():
        logits = torch.cat([model(x) for x in images.split(256)])
    return float((logits.argmax(1) == labels).float().mean()) * 100


def pruned_variants(
    model: nn.Module, data: Splits, ratio: float, finetune_epochs: int, seed: int, split: str = "test", variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    """Parameters, FLOPs and the accuracy (%) on ``split`` of ``model`` pruned at ``ratio``, per recovery variant."""
    example = data.splits["train"].tensors[0][:1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, report = prune(model, ratio, example)
    clamped = [str(w.message) for w in caught if "fewer than" in str(w.message)]
    row: dict[str, Any] = {
        "ratio": ratio,
        "params": list(report.params),
        "flops": list(report.flops),
        "channels": list(report.channels),
        "clamped": clamped,
    }
    recalibrated = None
    if {"recalibrated", "recalibrated + fine-tuned"} & set(variants):
        recalibrated = recalibrate_pruned(copy.deepcopy(pruned), data.train_dataloader())
    for variant in variants:
        if variant == "pruned":
            candidate = pruned
        elif variant == "recalibrated":
            candidate = recalibrated
        else:
            seed_everything(seed, workers=True, verbose=False)
            start = recalibrated if variant == "recalibrated + fine-tuned" else pruned
            candidate = finetune(copy.deepcopy(start), data.train_dataloader(), finetune_epochs, progress=False)
        row[variant] = accuracy(candidate, data.splits[split])
    return row


def slimming(settings: Settings, log: Callable[[str], None]) -> tuple[dict[str, Any], nn.Module]:
    """Tune lambda on val, then train and prune every seed; the result per dataset and architecture, and the
    seed-0 sparse digits CNN (or the first architecture's) for the latency part."""
    results: dict[str, Any] = {}
    latency_model: nn.Module | None = None
    for name, recipes in settings.datasets.items():
        for arch, recipe in recipes.items():
            data = load_splits(name, recipe.batch_size, settings.count)
            key = f"{name}/{arch}"
            first = settings.seeds[0]
            tuning: dict[str, Any] = {}
            models: dict[tuple[float, int], nn.Module] = {}
            grid = recipe.lambdas if recipe.lambdas is not None else settings.lambda_grid
            for strength in grid:
                model, seconds = train_sparse(data, recipe, strength, first)
                models[(strength, first)] = model
                row = pruned_variants(model, data, TUNING_RATIO, 0, first, split="val", variants=("recalibrated",))
                tuning[f"{strength:g}"] = {
                    "val_original": accuracy(model, data.splits["val"]),
                    "val_pruned_recalibrated": row["recalibrated"],
                    "seconds": seconds,
                }
                log(
                    f"{key} lambda={strength:g} (seed {first}): val {tuning[f'{strength:g}']['val_original']:.1f}%, "
                    f"pruned {TUNING_RATIO:g} + recalibrated {row['recalibrated']:.1f}% ({seconds:.0f} s)"
                )
            chosen = max((s for s in grid if s > 0), key=lambda s: (tuning[f"{s:g}"]["val_pruned_recalibrated"], -s))
            runs: dict[str, list[dict[str, Any]]] = {"sparse": [], "baseline": []}
            for seed in settings.seeds:
                for kind, strength in (("sparse", chosen), ("baseline", 0.0)):
                    model = models.get((strength, seed))
                    seconds = tuning[f"{strength:g}"]["seconds"] if model is not None else None
                    if model is None:
                        model, seconds = train_sparse(data, recipe, strength, seed)
                    if kind == "sparse" and latency_model is None and name == "digits":
                        latency_model = model
                    gammas = torch.cat([m.weight.detach().abs() for m in bn_layers(model).values()])
                    example = data.splits["train"].tensors[0][:1]
                    params, flops = count(model, example.shape[1:])
                    run = {
                        "seed": seed,
                        "lambda": strength,
                        "seconds": seconds,
                        "test_original": accuracy(model, data.splits["test"]),
                        "params": params,
                        "flops": flops,
                        "gamma_below_0.01": float((gammas < 0.01).float().mean()),
                        "ratios": [pruned_variants(model, data, r, recipe.finetune_epochs, seed) for r in RATIOS],
                    }
                    runs[kind].append(run)
                    log(
                        f"{key} {kind} seed {seed}: original {run['test_original']:.1f}%; "
                        + "; ".join(f"{r['ratio']:g}: " + "/".join(f"{r[v]:.1f}" for v in VARIANTS) for r in run["ratios"])
                    )
            results[key] = {
                "dataset": name,
                "arch": arch,
                "recipe": asdict(recipe),
                "lambda": chosen,
                "tuning": tuning,
                "images": {s: len(d) for s, d in data.splits.items()},
                "input_size": list(data.input_size),
                **runs,
            }
    assert latency_model is not None or "digits" not in settings.datasets
    return results, latency_model if latency_model is not None else nn.Identity()


# ------------------------------------------------------------------------------------------ switchable BN


def width_accuracies(task: SlimmableTask, data: Splits, widths: tuple[float, ...]) -> dict[str, float]:
    """Test accuracy (%) per width; universal mode: BN statistics of each width calibrated on 8 training batches first."""
    model = task.model.eval()
    result = {}
    for w in widths:
        if task.hparams.mode == "universal":
            calibrate(model, w, data.train_dataloader(), max_batches=task.hparams.calibration_batches)
        with use_width(model, w):
            result[f"{w:g}"] = accuracy(model, data.splits["test"])
    return result


def switchable(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Per-width test accuracy of the slimmable and universally slimmable networks and of each width trained alone."""
    data = load_splits("digits", 32, settings.count)
    common = {"width": 16, "in_channels": data.input_size[0], "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "lr_schedule": "cosine"}
    kinds = {
        "slimmable (switchable BN)": [{"mode": "slimmable", "width_mults": list(WIDTHS)}],
        "universally slimmable (calibrated BN)": [
            {"mode": "universal", "width_mults": list(WIDTHS), "n_random": 2, "inplace_distillation": True, "calibration_batches": 8}
        ],
        "each width trained alone": [{"mode": "slimmable", "width_mults": [w]} for w in WIDTHS],
    }
    reference = SlimmableTask(mode="slimmable", width_mults=list(WIDTHS), **common).model.eval()
    params: dict[str, int] = {}
    flops: dict[str, int] = {}
    for w in WIDTHS:
        with use_width(reference, w):
            params[f"{w:g}"] = active_parameters(reference)
            flops[f"{w:g}"] = count(reference, data.input_size)[1]
    accuracies: dict[str, dict[str, list[float]]] = {kind: {f"{w:g}": [] for w in WIDTHS} for kind in kinds}
    seconds: dict[str, float] = dict.fromkeys(kinds, 0.0)
    for seed in settings.switch_seeds:
        for kind, configs in kinds.items():
            for config in configs:
                seed_everything(seed, workers=True, verbose=False)
                task = SlimmableTask(**config, **common)
                start = time.perf_counter()
                quiet_trainer(settings.switch_epochs).fit(task, datamodule=data)
                seconds[kind] += time.perf_counter() - start
                for w, value in width_accuracies(task, data, tuple(config["width_mults"])).items():
                    accuracies[kind][w].append(value)
            log(f"switchable BN seed {seed}, {kind}: " + ", ".join(f"w{w} {v[-1]:.1f}%" for w, v in accuracies[kind].items()))
    return {
        "widths": list(WIDTHS),
        "epochs": settings.switch_epochs,
        "seeds": settings.switch_seeds,
        "flops": flops,
        "params": params,
        "accuracy": accuracies,
        "seconds": seconds,
        "images": {s: len(d) for s, d in data.splits.items()},
    }


def active_parameters(model: nn.Module) -> int:
    """Parameters a slimmable network uses at its active width: the active slices of every convolution and linear
    layer (weights and biases) and the active BatchNorm's affine parameters."""
    total = 0
    for layer in model.modules():
        if isinstance(layer, (SlimmableConv2d, SlimmableLinear)):
            out, inp = layer.active_channels()
            total += out * inp * math.prod(layer.weight.shape[2:]) + (out if layer.bias is not None else 0)
        elif isinstance(layer, SwitchableBatchNorm2d):
            total += sum(p.numel() for p in layer.active().parameters())
    return total


# ------------------------------------------------------------------------------------------ latency


def timed(runs: dict[str, Callable[[], Any]], repeats: int, rng: random.Random) -> dict[str, dict[str, float]]:
    """Median and minimum wall-clock seconds of each run over ``repeats`` calls, the runs in a new random order each
    repeat (``{"median": {run: s}, "min": {run: s}}``). On shared cores a run is often descheduled part of the way:
    the minimum is the least disturbed run, the median the typical one."""
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            run = runs[name]
            run()
            times[name].append(time.perf_counter() - start)
    return {"median": {name: statistics.median(t) for name, t in times.items()}, "min": {name: min(t) for name, t in times.items()}}


def latency_variants(model: nn.Module, example: Tensor) -> tuple[dict[str, nn.Module], dict[str, tuple[int, int]], float]:
    """Original, folded, pruned and pruned-folded versions of ``model``; (params, FLOPs) of each; largest relative
    output difference of a folded model against its unfolded one."""
    size = tuple(example.shape[1:])
    variants = {"original": model.eval(), "original, folded": fold(model)}
    for ratio in RATIOS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, _ = prune(model, ratio, example)
        variants[f"pruned {ratio:g}"] = pruned.eval()
        variants[f"pruned {ratio:g}, folded"] = fold(pruned)
    difference = 0.0
    with torch.inference_mode():
        for name in [n for n in variants if not n.endswith("folded")]:
            reference = variants[name](example)
            folded = variants["original, folded" if name == "original" else f"{name}, folded"](example)
            difference = max(difference, float((folded - reference).abs().max() / reference.abs().max()))
    counts = {name: count(m, size) for name, m in variants.items()}
    return variants, counts, difference


def latency(
    settings: Settings, digits_model: nn.Module, input_size: tuple[int, ...], threads: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Median latency per variant and batch size for the digits model and the random ResNet-18."""
    rng = random.Random(0)
    networks = {
        "SmallCNN (digits, sparse, seed 0)": (digits_model, input_size),
        f"ResNet-18 (torchvision, random, {settings.resnet18_size} px)": (
            random_resnet18(RESNET18_GAMMA),
            (3, settings.resnet18_size, settings.resnet18_size),
        ),
    }
    result = {}
    for label, (model, size) in networks.items():
        generator = torch.Generator().manual_seed(1)
        variants, counts, difference = latency_variants(model, torch.randn(2, *size, generator=generator))
        rows = []
        for batch in settings.latency_batches:
            x = torch.randn(batch, *size, generator=generator)

            def runner(m: nn.Module, x: Tensor = x) -> Callable[[], Any]:
                def run() -> Any:
                    with torch.inference_mode():
                        return m(x)

                return run

            before = os.getloadavg()[0]
            times = timed({name: runner(m) for name, m in variants.items()}, settings.repeats, rng)
            after = os.getloadavg()[0]
            rows.append({"batch": batch, "load_average": [before, after], "median_seconds": times["median"], "min_seconds": times["min"]})
            medians = times["median"]
            log(f"latency {label}, batch {batch}: " + ", ".join(f"{name} {medians[name] / medians['original']:.2f}x" for name in variants))
        result[label] = {
            "input_size": list(size),
            "params": {n: c[0] for n, c in counts.items()},
            "flops": {n: c[1] for n, c in counts.items()},
            "max_relative_difference_folded": difference,
            "rows": rows,
        }
    return {"threads": threads, "repeats": settings.repeats, "networks": result}


# ------------------------------------------------------------------------------------------ report


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}"


def millions(value: float) -> str:
    return f"{value / 1e6:.3f}M" if value < 1e8 else f"{value / 1e9:.2f}G"


def figure(report: dict[str, Any], path: Path) -> None:
    """Accuracy against FLOPs (log x) per dataset and architecture: one line per recovery variant (accuracy and
    FLOPs: means over seeds, bars: std of the accuracy) starting from the unpruned model, the no-penalty baseline
    recalibrated and fine-tuned, and the switchable-BN widths on the digits CNN."""
    from matplotlib.figure import Figure

    keys = list(report["slimming"])
    columns = min(2, len(keys)) or 1
    rows = max(1, math.ceil(len(keys) / columns))
    fig = Figure(figsize=(5.5 * columns, 4.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax, key in zip(axes, keys):
        block = report["slimming"][key]
        for kind, style in (("sparse", "-"), ("baseline", ":")):
            runs = block[kind]
            variants = VARIANTS if kind == "sparse" else ("recalibrated + fine-tuned",)
            for variant in variants:
                flops = [runs[0]["flops"]] + [statistics.fmean(run["ratios"][i]["flops"][1] for run in runs) for i in range(len(RATIOS))]
                acc = [[run["test_original"] for run in runs]] + [[run["ratios"][i][variant] for run in runs] for i in range(len(RATIOS))]
                means = [statistics.fmean(a) for a in acc]
                stds = [mean_std(a)[1] for a in acc]
                label = f"{variant} (λ={block['lambda']:g})" if kind == "sparse" else f"no penalty: {variant}"
                ax.errorbar(flops, means, yerr=stds, marker="o", linestyle=style, capsize=2, label=label)
        if key == "digits/cnn" and report.get("switchable"):
            sw = report["switchable"]
            widths = [f"{w:g}" for w in sw["widths"]]
            for kind, values in sw["accuracy"].items():
                ax.errorbar(
                    [sw["flops"][w] for w in widths],
                    [statistics.fmean(values[w]) for w in widths],
                    yerr=[mean_std(values[w])[1] for w in widths],
                    marker="s",
                    linestyle="--",
                    capsize=2,
                    label=f"{kind}, widths {', '.join(widths)}",
                )
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per image (2 x MACs, log scale)")
        ax.set_ylabel("test accuracy (%)")
        warning = "\nunpruned models near chance: not evidence" if near_chance(block) else ""
        ax.set_title(
            f"{block['dataset']}, Small{block['arch'].upper() if block['arch'] == 'cnn' else 'ResNet'}{warning}",
            fontsize=10,
            color="firebrick" if warning else "black",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="lower right")
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def near_chance(block: dict[str, Any], chance: float = 10.0) -> list[str]:
    """A warning paragraph when the unpruned models' mean test accuracy is below three times chance (else nothing)."""
    accuracy = statistics.fmean(run["test_original"] for kind in ("sparse", "baseline") for run in block[kind])
    if accuracy >= 3 * chance:
        return []
    return [
        f"**Not evidence: the unpruned models are near chance ({accuracy:.1f}% mean test accuracy, chance {chance:g}%)**; "
        f"this recipe ({block['recipe']['epochs']} epoch(s)) does not learn {block['dataset']}, so the rows below compare "
        "untrained networks and say nothing about pruning or recalibration.",
        "",
    ]


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown tables, with the protocol, the tuning and the published reference."""
    s = report["settings"]
    lines = [
        "# Efficient models from BatchNorm: network slimming, recalibration, switchable BN, latency",
        "",
        f"Command: `{report['command']}` ({report['date']}, {report['seconds'] / 60:.1f} min, {report['threads']} torch "
        f"thread(s), {report['machine']}; torch {report['torch']}, pytorch-lightning {report['lightning']}; "
        f"1-minute load average at the start {report['load_average'][0]:.1f}, at the end {report['load_average'][1]:.1f}).",
        *(
            f"Rerun alone and merged into this report, {', '.join(r['datasets'])} (seeds {r['seeds']}): `{r['command']}` "
            f"({r['date']}, {r['seconds'] / 60:.1f} min, {r['threads']} torch thread(s); load average at the start "
            f"{r['load_average'][0]:.1f}, at the end {r['load_average'][1]:.1f}). The other parts are the full run's."
            for r in report.get("reruns", [])
        ),
        "",
        "Test accuracy (%) on the test split only; "
        + (f"mean ± sample std over seeds {s['seeds']}." if len(s["seeds"]) > 1 else f"one seed ({s['seeds'][0]}), no spread.")
        + " FLOPs: `torch.utils.flop_counter` for one image, 2 per multiply-add (FLOPs = 2 x MACs), convolutions and "
        "matrix products only. Prune ratio: fraction of the *prunable* channels removed by one global |gamma| threshold "
        "(SmallResNet: only the inner channels of each block; the residual stream keeps its width).",
        "",
    ]
    for block in report["slimming"].values():
        r = block["recipe"]
        sparse, base = block["sparse"], block["baseline"]
        seeds = block.get("seeds", s["seeds"])
        lines += [
            f"## Network slimming: {block['dataset']}, {'SmallCNN' if block['arch'] == 'cnn' else 'SmallResNet'} (width {r['width']})",
            "",
            f"{block['images']['train']} training / {block['images']['val']} val / {block['images']['test']} test images, "
            f"input {tuple(block['input_size'])}; SGD lr {r['lr']:g}, momentum 0.9, cosine, batch {r['batch_size']}, "
            f"{r['epochs']} epoch(s), gamma initialized to 0.5; fine-tuning: Adam lr 1e-3, {r['finetune_epochs']} epoch(s). "
            f"Sparsity λ = {block['lambda']:g} (chosen on val, below); baseline: λ = 0. Fraction of |gamma| < 0.01 after "
            f"training: sparse {cell([100 * x['gamma_below_0.01'] for x in sparse])}%, baseline "
            f"{cell([100 * x['gamma_below_0.01'] for x in base])}%."
            + (f" Seeds {seeds} here (mean ± sample std)." if seeds != s["seeds"] else ""),
            "",
            *near_chance(block),
            "| model | ratio | params | FLOPs | FLOP ratio | pruned | recalibrated | fine-tuned | recalibrated + fine-tuned |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for kind, runs in (("sparse", sparse), ("no penalty", base)):
            first = runs[0]
            original = cell([x["test_original"] for x in runs])
            lines.append(
                f"| {kind} | 0 | {first['params']:,} | {millions(first['flops'])} | 1 | {original} | {original} | {original} | {original} |"
            )
            for i, ratio in enumerate(RATIOS):
                params = [x["ratios"][i]["params"][1] for x in runs]
                flops = [x["ratios"][i]["flops"][1] for x in runs]
                clamped = " (clamped)" if any(x["ratios"][i]["clamped"] for x in runs) else ""
                lines.append(
                    f"| {kind} | {ratio:g}{clamped} | {statistics.fmean(params):,.0f} | {millions(statistics.fmean(flops))} "
                    f"| {statistics.fmean(flops) / first['flops']:.3f} | "
                    + " | ".join(cell([x["ratios"][i][v] for x in runs]) for v in VARIANTS)
                    + " |"
                )
        tuning = block["tuning"]
        lines += [
            "",
            f"λ chosen on val (seed {seeds[0]}; val accuracy of the model pruned at {TUNING_RATIO:g} and "
            "recalibrated; λ = 0 is the baseline and not a candidate): "
            + ", ".join(f"λ={lam}: {v['val_pruned_recalibrated']:.1f}% (unpruned {v['val_original']:.1f}%)" for lam, v in tuning.items())
            + ".",
            "",
        ]
    sw = report.get("switchable")
    if sw:
        widths = [f"{w:g}" for w in sw["widths"]]
        lines += [
            "## Switchable BN: one network at several widths (digits, SmallCNN topology, width 16 at 1x)",
            "",
            f"Test accuracy (%) per width, {sw['epochs']} epochs each (Adam lr 3e-3, cosine, batch 32), "
            + (f"mean ± std over seeds {sw['seeds']}" if len(sw["seeds"]) > 1 else f"one seed ({sw['seeds'][0]})")
            + ". Slimmable: one set of weights, a private BN per width, the four widths' losses summed per batch. "
            "Universally slimmable: shared BN affine, batch statistics in training, sandwich rule (largest, "
            "smallest and 2 random widths) with in-place distillation; each width's BN statistics computed after "
            "training on 8 training batches (`calibrate`). Each width trained alone: the same network and recipe "
            "with only that width (4 trainings per seed).",
            "",
            "| network | " + " | ".join(f"w {w}" for w in widths) + " |",
            "|" + " --- |" * (len(widths) + 1),
            "| params | " + " | ".join(f"{sw['params'][w]:,}" for w in widths) + " |",
            "| FLOPs | " + " | ".join(millions(sw["flops"][w]) for w in widths) + " |",
        ]
        for kind, values in sw["accuracy"].items():
            lines.append(f"| {kind} | " + " | ".join(cell(values[w]) for w in widths) + " |")
        lines += ["", "Training time (s, all seeds): " + ", ".join(f"{k} {v:.0f}" for k, v in sw["seconds"].items()) + ".", ""]
    lat = report["latency"]
    lines += [
        "## Latency against FLOPs (CPU)",
        "",
        f"{lat['threads']} torch thread(s), `torch.inference_mode()`, {lat['repeats']} runs of each variant, all "
        "variants of one batch size interleaved in a new random order each repeat (both sides of a ratio see the "
        "same load). Per batch: the median time (ms), the ratio of medians and the ratio of minima, variant / "
        "original (lower is faster); FLOP ratio likewise. Other processes share the machine's cores and often "
        "deschedule a run part of the way (load averages below): the minimum is the least disturbed run, and where "
        "the two ratios disagree the measurement is noise-bound. Folded: `normapps.norm.fold` (BatchNorm folded into "
        "the convolution before it).",
        "",
    ]
    for label, net in lat["networks"].items():
        names = list(net["flops"])
        lines += [
            f"### {label}, input {tuple(net['input_size'])}",
            "",
            f"Largest relative output difference folded vs unfolded: {net['max_relative_difference_folded']:.1e}.",
            "",
            "| variant | params | FLOPs | FLOP ratio | "
            + " | ".join(f"batch {row['batch']} median (ms) | ratio of medians | ratio of minima" for row in net["rows"])
            + " |",
            "|" + " --- |" * (4 + 3 * len(net["rows"])),
        ]
        for name in names:
            cells = []
            for row in net["rows"]:
                med, low = row["median_seconds"], row["min_seconds"]
                cells += [f"{1000 * med[name]:.3f}", f"{med[name] / med['original']:.2f}", f"{low[name] / low['original']:.2f}"]
            lines.append(
                f"| {name} | {net['params'][name]:,} | {millions(net['flops'][name])} "
                f"| {net['flops'][name] / net['flops']['original']:.3f} | " + " | ".join(cells) + " |"
            )
        lines += [
            "",
            "Load average (before, after): "
            + "; ".join(f"batch {row['batch']}: {row['load_average'][0]:.1f}, {row['load_average'][1]:.1f}" for row in net["rows"])
            + ".",
            "",
        ]
    p = PUBLISHED
    lines += [
        "## Published reference (context only, not comparable)",
        "",
        f"Liu et al. 2017 (network slimming), {p['model']} on {p['data']}, {p['ratio']:.0%} of the channels pruned: "
        f"{p['params'][0] / 1e6:.2f}M → {p['params'][1] / 1e6:.2f}M parameters, accuracy {p['accuracy'][0]:.2f}% → "
        f"{p['accuracy'][1]:.2f}% after fine-tuning (160 epochs of sparsity training, λ = 1e-4, and a full fine-tuning "
        "schedule). Here: 16x16 digits, networks of 10^4 to 10^5 parameters, a few hundred (digits) to about two "
        "thousand (syndigits) training steps and one or two fine-tuning epochs.",
        "",
        "Figure: `efficient_accuracy_flops.png` (accuracy against FLOPs, log scale).",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def merge(earlier: dict[str, Any], rerun: dict[str, Any], datasets: list[str]) -> dict[str, Any]:
    """``earlier`` (a full run's report) with the slimming blocks of ``datasets`` replaced by those of ``rerun``
    (and its switchable-BN and latency parts when digits was rerun); the rerun's command, date, duration, seeds
    and load averages are appended to ``reruns``. Blocks keep their order."""
    report = copy.deepcopy(earlier)
    kept = {key: block for key, block in report["slimming"].items() if block["dataset"] not in datasets}
    new = dict(rerun["slimming"])
    order = [key for key in report["slimming"] if key in kept or key in new] + [key for key in new if key not in report["slimming"]]
    report["slimming"] = {key: new.get(key, kept.get(key)) for key in order}
    if "digits" in datasets:
        report["switchable"], report["latency"] = rerun["switchable"], rerun["latency"]
    report.setdefault("reruns", []).append(
        {
            "datasets": list(datasets),
            "seeds": rerun["settings"]["seeds"],
            **{key: rerun[key] for key in ("command", "date", "seconds", "threads", "load_average", "torch", "lightning")},
        }
    )
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``<out>.json``, ``<out>.md`` and the figure, and return the report."""
    args = parse_args(argv)
    settings = settings_of(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, settings, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, settings: Settings, argv: list[str] | None) -> dict[str, Any]:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    command = command_line(__file__, argv)
    start = time.perf_counter()
    load_start = os.getloadavg()[0]

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {text}", flush=True)

    results, digits_model = slimming(settings, log)
    for block in results.values():
        block["seeds"] = list(settings.seeds)
    switch = timing = None
    if "digits" in args.datasets:
        switch = switchable(settings, log)
        input_size = next(tuple(b["input_size"]) for b in results.values() if b["dataset"] == "digits")
        timing = latency(settings, digits_model, input_size, args.threads, log)
    report = {
        "command": command,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "lightning": pytorch_lightning.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPU(s)",
        "threads": args.threads,
        "load_average": [load_start, os.getloadavg()[0]],
        "settings": {
            "seeds": settings.seeds,
            "switch_seeds": settings.switch_seeds,
            "ratios": list(RATIOS),
            "lambda_grid": list(settings.lambda_grid),
            "count": settings.count,
            "image_size": IMAGE_SIZE,
            "data_seed": DATA_SEED,
            "tuning_ratio": TUNING_RATIO,
        },
        "slimming": results,
        "switchable": switch,
        "latency": timing,
        "published": PUBLISHED,
        "seconds": time.perf_counter() - start,
    }
    if merging(args):
        report = merge(previous(args.out), report, args.datasets)
    figure(report, outputs(args.out)[2])
    text = markdown(report)
    write_results(args.out, report, text, indent=1, end="\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
