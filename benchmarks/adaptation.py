"""Target error of a source-trained CNN under domain shift, per adaptation method; and what adaptation costs.

Evidence for the adaptation suite (``normapps.tasks.adaptation``), in miniature and on embedded data:

- **Shifts**: ``syndigits -> digits``, ``digits -> digits_m`` and ``digits -> digits_c`` (the 15
  CIFAR-10-C corruptions; severity 5 as in the TENT paper, and the mean over severities 1-5).
- **Source models**: :class:`~normapps.tasks.ClassificationTask` (SmallCNN with BatchNorm, 3 input
  channels) trained on the labelled source ``train`` split, one per source domain and seed; every
  shift and method starts from a fresh copy of it (reset per shift).
- **Methods**: ``source``, ``adabn`` (exact pooled statistics of the target test set),
  ``adabn_ema`` (moving average, momentum 0.1), ``norm`` (test-batch statistics), ``prior``
  (Schneider et al., ``p = N / (N + n)``), ``tent`` (online, one pass; tuned, and with the paper's
  ``lr=1e-3``, one step as ``tent (paper)``), each through
  :func:`~normapps.tasks.adaptation.adapt` / :func:`~normapps.tasks.adaptation.predict_stream` on
  the target ``test`` split in batches of ``--test-batch-size``, in the split's order; and
  ``dsbn`` / ``transnorm``: :class:`~normapps.tasks.adaptation.DSBNTask` /
  :class:`~normapps.tasks.adaptation.TransNormTask` fine-tuned from the source model on labelled
  source + unlabelled target ``train`` data (``syndigits -> digits`` and ``digits -> digits_m`` only:
  ``digits_c`` would need one training per corruption and seed, beyond the budget).
- **Tuning only on held-out shifts**: ``prior``'s ``N`` (per test batch size) and ``tent``'s
  learning rate and steps per batch are chosen by the mean error over seeds on the held-out
  corruptions ``HELD_OUT_CORRUPTIONS`` (severity 5) of ``digits_c``, never on the 15 reported ones;
  the same values serve every shift.
- **Continual stream**: the 15 corruptions (severity 5) one after the other; ``tent`` adapts
  through the whole stream without reset, against ``norm``, ``prior`` and ``source`` (and ``tent``
  reset per corruption, from the main table).
- **Test batch size**: 1, 4, 16, 64, 200 for ``source``, ``norm`` and ``prior`` on ``digits_c``
  severity 5.
- **Speed** (each of ``--speed-threads`` torch thread counts, median of ``--repeats`` interleaved
  runs): exact AdaBN over a target set against one inference pass over it (target: at most 1.2x),
  and the cost of one ``tent`` batch (forward, entropy, backward, Adam step) and one ``norm`` batch
  against an inference batch.

Budget: about 12 minutes on two shared cores. Training and evaluation run on ``--threads`` (default
1) torch threads: with other processes on the cores, two threads stall and ran up to 10x slower.
The images are 16x16 (the handwritten digits are 8x8 at the source) to keep SmallCNN's steps cheap.

Run ``python benchmarks/adaptation.py --overwrite`` for the full results (replaces
``benchmarks/results/adaptation.md`` and ``.json``; refuses without ``--overwrite``), or
``--quick`` for a smoke run (tiny counts, one seed, written to the temp folder).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning
import torch
from common import command_line, refuse_existing, write_results
from pytorch_lightning import Trainer, seed_everything
from torch import Tensor, nn

from normapps.data import CORRUPTIONS, HELD_OUT_CORRUPTIONS, load_domain
from normapps.tasks import ClassificationTask
from normapps.tasks.adaptation import METHODS, DomainDataModule, DSBNTask, Tent, TransNormTask, adapt, predict_stream

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SIZE = 16
WIDTH = 32
DATA_SEED = 0
#: Rows of the test-time tables: methods of METHODS (prior and tent with the tuned options), and tent
#: with the paper's CIFAR options, untuned.
TEST_METHODS = ("source", "adabn", "adabn_ema", "norm", "prior", "tent", "tent (paper)")
PAPER_TENT = {"lr": 1e-3, "steps": 1}
TRAINED_METHODS = ("dsbn", "transnorm")
PRIOR_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TENT_LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
TENT_STEPS_GRID = (1, 3)
PAPER = {"source": 43.5, "norm": 20.4, "tent": 18.6}
SPEED_IMAGES = 1000


@dataclass(frozen=True)
class SourceTraining:
    """How the source model of one source domain is trained (Adam, cosine schedule to 0)."""

    epochs: int
    batch_size: int
    lr: float
    count: int | None = None
    adaptation_epochs: int = 3


#: Source training per source domain. syndigits (coloured fonts with distractor digits) learns far
#: more slowly than the handwritten digits, hence a larger subset of it and more steps.
SOURCES = {
    "digits": SourceTraining(epochs=20, batch_size=64, lr=3e-3, adaptation_epochs=5),
    "syndigits": SourceTraining(epochs=12, batch_size=32, lr=1e-3, count=5000, adaptation_epochs=2),
}
SHIFTS = (("syndigits", "digits"), ("digits", "digits_m"), ("digits", "digits_c"))


@dataclass
class Settings:
    """What one run measures: the full protocol or the smoke test."""

    seeds: list[int]
    severities: list[int]
    corruptions: tuple[str, ...]
    held_out: tuple[str, ...]
    batch_sizes: list[int]
    test_batch_size: int
    sources: dict[str, SourceTraining]
    count: int | None = None
    prior_grid: tuple[int, ...] = PRIOR_GRID
    tent_grid: list[tuple[float, int]] = field(default_factory=lambda: [(lr, s) for s in TENT_STEPS_GRID for lr in TENT_LR_GRID])
    repeats: int = 7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default: %(default)s)")
    parser.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5],
                        help="digits_c severities averaged in the severity-mean column (default: %(default)s)")
    parser.add_argument("--test-batch-size", type=int, default=64, help="target batch of the main table (default: %(default)s)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64, 200],
                        help="test batch sizes of the sweep (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per speed measurement (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of training and evaluation (default: %(default)s; one thread does not "
                             "stall when other processes share the cores)")
    parser.add_argument("--speed-threads", nargs="+", type=int, default=[1, 2],
                        help="torch intra-op threads of the speed section, one measurement each (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS / "adaptation", help="output path without suffix")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files (else refuse before training)")
    parser.add_argument("--speed-only", action="store_true",
                        help="rerun only the speed section (trains the seed-0 digits source) and replace it in the existing "
                             "results (needs --overwrite); for a quiet machine")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one seed, tiny counts, 3 corruptions, 1 held-out; written to the temp folder")
    args = parser.parse_args(argv)
    if args.quick and args.out == RESULTS / "adaptation":
        args.out = Path(tempfile.gettempdir()) / "normapps_adaptation_quick"
        args.overwrite = True  # the script's own scratch files
    for name in ("test_batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.speed_threads) < 1:
        parser.error(f"--speed-threads must be >= 1, got {args.speed_threads}")
    if min(args.batch_sizes) < 1:
        parser.error(f"batch sizes must be >= 1, got {args.batch_sizes}")
    if not set(args.severities) <= {1, 2, 3, 4, 5} or 5 not in args.severities:
        parser.error(f"severities must be among 1-5 and include 5 (the main table's), got {args.severities}")
    refuse_existing(parser, [args.out.with_suffix(".json"), args.out.with_suffix(".md")], args.overwrite)
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    """The protocol of this run (``--quick`` shrinks every part of it)."""
    if args.quick:
        tiny = {name: SourceTraining(epochs=1, batch_size=32, lr=3e-3, count=128, adaptation_epochs=1) for name in SOURCES}
        return Settings(seeds=args.seeds[:1], severities=[5], corruptions=CORRUPTIONS[:3], held_out=HELD_OUT_CORRUPTIONS[:1],
                        batch_sizes=[4, 64], test_batch_size=64, sources=tiny, count=128, prior_grid=(4, 64),
                        tent_grid=[(1e-3, 1), (1e-2, 1)], repeats=2)
    return Settings(seeds=args.seeds, severities=sorted(set(args.severities)), corruptions=CORRUPTIONS,
                    held_out=HELD_OUT_CORRUPTIONS, batch_sizes=args.batch_sizes, test_batch_size=args.test_batch_size,
                    sources=SOURCES, repeats=args.repeats)


# ------------------------------------------------------------------------------------------ data


@dataclass
class Target:
    """A labelled target set, its inputs split into batches on demand."""

    name: str
    images: Tensor
    labels: Tensor

    def batches(self, batch_size: int) -> list[Tensor]:
        """The inputs in order, in batches of ``batch_size`` (the last one smaller)."""
        return list(self.images.split(batch_size))


def target_set(settings: Settings, domain: str, corruption: str | None = None, severity: int | None = None,
               split: str = "test") -> Target:
    """One split of a target domain, all of it (or ``settings.count`` images in the smoke run)."""
    data = DomainDataModule("digits", domain, image_size=IMAGE_SIZE, target_corruption=corruption,
                            target_severity=severity, seed=DATA_SEED, count=settings.count).load("target", split)
    images, labels = data.tensors
    name = domain if corruption is None else f"{corruption}-{severity}"
    return Target(name, images, labels)


# ------------------------------------------------------------------------------------------ training


def quiet_trainer(epochs: int) -> Trainer:
    """A CPU trainer without logger, checkpoints, progress bar or validation."""
    return Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)


def train_source(settings: Settings, source: str, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """The source classifier of ``source`` for ``seed`` (eval mode) and its training record."""
    plan = settings.sources[source]
    seed_everything(seed, workers=True, verbose=False)
    data = DomainDataModule(source, "digits", image_size=IMAGE_SIZE, batch_size=plan.batch_size, seed=DATA_SEED,
                            count=plan.count)
    task = ClassificationTask(norm="bn", width=WIDTH, in_channels=3, num_classes=data.num_classes, lr=plan.lr,
                              lr_schedule="cosine")
    trainer = quiet_trainer(plan.epochs)
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    seconds = time.perf_counter() - start
    model = task.model.eval()
    val_images, val_labels = data.splits["val"].tensors
    record = {"source": source, "seed": seed, "train_images": len(data.splits["train"]), "val_images": len(val_labels),
              "steps": trainer.global_step, "seconds": seconds,
              "source_val_error": error(inference(model, val_images.split(256)), val_labels)}
    return model, record


def train_paired(settings: Settings, method: str, source_model: nn.Module, source: str, target: str, seed: int) -> float:
    """Target test error (%) of ``dsbn`` / ``transnorm`` fine-tuned from ``source_model`` on the pair."""
    plan = settings.sources[source]
    seed_everything(seed, workers=True, verbose=False)
    data = DomainDataModule(source, target, image_size=IMAGE_SIZE, batch_size=plan.batch_size, seed=DATA_SEED,
                            count=plan.count, paired=True)
    task_class = DSBNTask if method == "dsbn" else TransNormTask
    task = task_class(copy.deepcopy(source_model), num_classes=data.num_classes, lr=1e-3)
    quiet_trainer(plan.adaptation_epochs).fit(task, datamodule=data)
    task.eval()
    images, labels = data.splits["test"].tensors
    return error(inference(task, images.split(settings.test_batch_size)), labels)


# ------------------------------------------------------------------------------------------ evaluation


def inference(model: nn.Module, batches: Iterable[Tensor]) -> Tensor:
    """Logits of every batch, concatenated (inference mode)."""
    with torch.inference_mode():
        return torch.cat([model(x) for x in batches])


def error(logits: Tensor, labels: Tensor) -> float:
    """Top-1 error in percent."""
    return float((logits.argmax(1) != labels).float().mean()) * 100


def method_error(model: nn.Module, method: str, target: Target, batch_size: int, **options: Any) -> float:
    """Error (%) of ``method`` adapting ``model`` (never changed) to ``target`` in batches of ``batch_size``."""
    batches = target.batches(batch_size)
    if METHODS[method].online:
        logits = torch.cat(list(predict_stream(model, method, batches, **options)))
    else:
        logits = inference(adapt(model, method, batches, **options), batches)
    return error(logits, target.labels)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def tune(settings: Settings, models: dict[int, nn.Module], log: Callable[[str], None]) -> dict[str, Any]:
    """Choose prior's N per batch size and tent's (lr, steps) on the held-out corruptions (severity 5)."""
    held_out = [target_set(settings, "digits_c", c, 5) for c in settings.held_out]

    def mean_error(method: str, batch_size: int, **options: Any) -> float:
        return statistics.fmean(method_error(models[s], method, t, batch_size, **options) for s in models for t in held_out)

    prior: dict[int, dict[int, float]] = {}
    for batch_size in settings.batch_sizes:
        prior[batch_size] = {n: mean_error("prior", batch_size, n_source=float(n)) for n in settings.prior_grid}
    tent = {f"lr={lr:g}, steps={steps}": mean_error("tent", settings.test_batch_size, lr=lr, steps=steps)
            for lr, steps in settings.tent_grid}
    norm = mean_error("norm", settings.test_batch_size)
    chosen_n = {b: min(grid, key=grid.get) for b, grid in prior.items()}
    best_tent = min(zip(tent.values(), settings.tent_grid))[1]
    main_n = chosen_n.get(settings.test_batch_size)
    if main_n is None:
        grid = {n: mean_error("prior", settings.test_batch_size, n_source=float(n)) for n in settings.prior_grid}
        main_n = min(grid, key=grid.get)
    log(f"tuned on {', '.join(settings.held_out)} (severity 5): prior N per batch size {chosen_n} "
        f"(main table, batch {settings.test_batch_size}: N={main_n}); tent lr={best_tent[0]:g}, steps={best_tent[1]}")
    return {"held_out": list(settings.held_out), "prior_grid": {str(b): {str(n): e for n, e in g.items()} for b, g in prior.items()},
            "prior_n": {str(b): n for b, n in chosen_n.items()}, "prior_n_main": main_n,
            "tent_grid": tent, "tent_lr": best_tent[0], "tent_steps": best_tent[1], "norm_held_out": norm}


def configured(name: str, tuned: dict[str, Any], batch_size: int) -> tuple[str, dict[str, Any]]:
    """The method and options of a row of :data:`TEST_METHODS` (prior: the N tuned for ``batch_size``)."""
    if name == "tent (paper)":
        return "tent", dict(PAPER_TENT)
    if name == "prior":
        return name, {"n_source": float(tuned["prior_n"].get(str(batch_size), tuned["prior_n_main"]))}
    if name == "tent":
        return name, {"lr": tuned["tent_lr"], "steps": tuned["tent_steps"]}
    return name, {}


def row_error(model: nn.Module, name: str, target: Target, batch_size: int, tuned: dict[str, Any]) -> float:
    """:func:`method_error` of a row of :data:`TEST_METHODS`."""
    method, options = configured(name, tuned, batch_size)
    return method_error(model, method, target, batch_size, **options)


def continual_stream(settings: Settings, model: nn.Module, targets: list[Target], tuned: dict[str, Any]) -> dict[str, Any]:
    """Errors (%) per corruption while adapting through all of them in sequence, without reset."""
    batches = [x for t in targets for x in t.batches(settings.test_batch_size)]
    labels = torch.cat([t.labels for t in targets])
    sizes = [len(t.labels) for t in targets]
    result = {}
    for method in ("source", "norm", "prior", "tent"):
        name, options = configured(method, tuned, settings.test_batch_size)
        logits = torch.cat(list(predict_stream(model, name, batches, **options)))
        wrong = (logits.argmax(1) != labels).float().split(sizes)
        result[method] = {t.name.rsplit("-", 1)[0]: float(w.mean()) * 100 for t, w in zip(targets, wrong)}
    return result


# ------------------------------------------------------------------------------------------ speed


def timings(settings: Settings, model: nn.Module, batches: list[Tensor]) -> dict[str, Any]:
    """Median wall times of an inference pass, exact AdaBN, and one inference / norm / tent batch; their ratios."""
    tent = Tent(copy.deepcopy(model))
    norm = adapt(model, "norm")
    runs: dict[str, Callable[[], Any]] = {
        "inference pass": lambda: inference(model, batches),
        "adabn (adapt, exact)": lambda: adapt(model, "adabn", batches),
        "inference batch": lambda: inference(model, batches[:1]),
        "norm batch": lambda: inference(norm, batches[:1]),
        "tent batch": lambda: tent(batches[0]),
    }
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(settings.repeats):
        for name in random.sample(list(runs), len(runs)):
            begin = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - begin)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "median_seconds": medians,
        "adabn_ratio": medians["adabn (adapt, exact)"] / medians["inference pass"],
        "tent_ratio": medians["tent batch"] / medians["inference batch"],
        "norm_ratio": medians["norm batch"] / medians["inference batch"],
    }


def speed(settings: Settings, model: nn.Module, threads: list[int], log: Callable[[str], None]) -> dict[str, Any]:
    """AdaBN over a target set against an inference pass; per-batch tent and norm against inference; per thread count."""
    images = load_domain("syndigits", "test", image_size=IMAGE_SIZE, seed=DATA_SEED,
                         count=settings.count or SPEED_IMAGES).tensors[0]
    model = copy.deepcopy(model).eval()
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        for batch_size in (64, 200):
            load = os.getloadavg()[0]
            row = {"threads": count, "batch_size": batch_size, "load_average": load,
                   **timings(settings, model, list(images.split(batch_size)))}
            rows.append(row)
            log(f"speed, {count} thread(s), batch {batch_size}: adabn / inference pass = {row['adabn_ratio']:.2f}x, "
                f"tent / inference batch = {row['tent_ratio']:.2f}x, norm / inference batch = {row['norm_ratio']:.2f}x")
    return {"images": len(images), "image_size": IMAGE_SIZE, "rows": rows}


# ------------------------------------------------------------------------------------------ report


def cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def shift_label(source: str, target: str) -> str:
    return f"{source} → {target}"


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown tables with the protocol and the comparison with the TENT paper."""
    s = report["settings"]
    main = report["main"]
    seeds = s["seeds"]
    columns = [*(shift_label(a, b) for a, b in SHIFTS[:2]), "digits → digits_c, sev. 5", "digits → digits_c, sev. mean"]
    lines = ["# Domain adaptation by editing normalization statistics: target error (%)", "",
             f"Mean ± sample std over seeds {seeds} (source-model training seeds; data seed {DATA_SEED}). "
             f"digits_c columns: mean over the {len(s['corruptions'])} corruptions at severity 5, and over severities "
             f"{s['severities']}. Test batch {s['test_batch_size']}; models reset per shift (every cell starts from the source model).", "",
             "| method | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for method in (*TEST_METHODS, *TRAINED_METHODS):
        cells = [cell(main[key][method]) if method in main.get(key, {}) else "not run" for key in
                 ("syndigits->digits", "digits->digits_m", "digits->digits_c/5", "digits->digits_c/mean")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    in_domain = {src: [r["source_val_error"] for r in report["sources"] if r["source"] == src] for src in s["sources"]}
    lines += ["", "In-domain error of the source models (source val split): "
              + ", ".join(f"{src} {cell(v)}%" for src, v in in_domain.items()) + ".", ""]

    per = report["per_corruption"]
    lines += ["## digits → digits_c per corruption, severity 5 (mean over seeds)", "",
              "| corruption | " + " | ".join(TEST_METHODS) + " |", "|" + " --- |" * (len(TEST_METHODS) + 1)]
    for corruption in s["corruptions"]:
        lines.append(f"| {corruption} | " + " | ".join(f"{statistics.fmean(per[corruption][m]):.1f}" for m in TEST_METHODS) + " |")

    stream = report["continual"]
    reset = {c: statistics.fmean(per[c]["tent"]) for c in s["corruptions"]}
    lines += ["", "## Continual stream: the corruptions in sequence (severity 5), no reset", "",
              f"Corruptions in the order {', '.join(s['corruptions'])}, {s['test_batch_size']} images per batch; "
              "tent carries its BatchNorm affine parameters and Adam state from one corruption to the next. "
              "`tent (reset)`: reset per corruption (the main table's protocol).", "",
              "| method | mean error (%) | first 5 | last 5 |", "| --- | --- | --- | --- |"]
    rows = {m: [statistics.fmean(run[m][c] for run in stream) for c in s["corruptions"]] for m in ("source", "norm", "prior", "tent")}
    rows["tent (reset)"] = [reset[c] for c in s["corruptions"]]
    per_seed_means = {m: [statistics.fmean(run[m].values()) for run in stream] for m in ("source", "norm", "prior", "tent")}
    per_seed_means["tent (reset)"] = main["digits->digits_c/5"]["tent"]
    for name, values in rows.items():
        overall = cell(per_seed_means[name])
        lines.append(f"| {name} | {overall} | {statistics.fmean(values[:5]):.1f} | {statistics.fmean(values[-5:]):.1f} |")

    sweep = report["batch_sweep"]
    sizes = s["batch_sizes"]
    lines += ["", "## Test batch size (digits → digits_c, severity 5, mean over corruptions)", "",
              "`prior` uses the N chosen for each batch size on the held-out corruptions (row below).", "",
              "| method | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|" + " --- |" * (len(sizes) + 1)]
    for method in ("source", "norm", "prior"):
        lines.append(f"| {method} | " + " | ".join(cell(sweep[str(b)][method]) for b in sizes) + " |")
    tuned = report["tuning"]
    lines.append("| prior N | " + " | ".join(str(tuned["prior_n"][str(b)]) for b in sizes) + " |")

    lines += ["", "## Hyper-parameters, chosen on the held-out corruptions only", "",
              f"Held out: {', '.join(tuned['held_out'])} (severity 5), mean error over seeds and held-out corruptions; "
              "the reported 15 corruptions and the other shifts were not looked at.", "",
              f"- prior: N from {list(s['prior_grid'])} per batch size: "
              + ", ".join(f"batch {b}: N={n}" for b, n in tuned["prior_n"].items())
              + f"; main table (batch {s['test_batch_size']}): N={tuned['prior_n_main']}.",
              f"- tent: (lr, steps per batch) from {[(lr, st) for lr, st in s['tent_grid']]}: lr={tuned['tent_lr']:g}, "
              f"steps={tuned['tent_steps']} (held-out error {min(tuned['tent_grid'].values()):.1f}%; "
              f"the paper's lr=0.001, steps=1: {tuned['tent_grid'].get('lr=0.001, steps=1', float('nan')):.1f}%; "
              f"norm: {tuned['norm_held_out']:.1f}%).",
              "- adabn_ema: momentum 0.1 (torch's default; the comparison is the point, not tuned).", ""]

    sp = report["speed"]
    lines += ["## Speed", "",
              f"{sp['images']} syndigits images of {sp['image_size']}x{sp['image_size']}, the seed-{seeds[0]} digits source model; "
              f"median of {s['repeats']} interleaved runs. Exact AdaBN is `adapt(model, \"adabn\", batches)` (a copy of "
              "the model, then one pass with every BatchNorm on batch statistics, their moments read from torch's own "
              "kernel and pooled in float64; on CPU the pass runs in channels-last memory format); the inference pass is "
              "the source model in eval mode under `torch.inference_mode`, in the default memory format. Load average: "
              "the machine's 1-minute load when the row started (other processes share the cores; more threads than "
              "free cores stall)." + (f" Measured by `{sp['command']}` on {sp['date']}." if "command" in sp else ""), "",
              "| threads | test batch | load average | inference pass (s) | exact AdaBN (s) | AdaBN / inference (target ≤ 1.2) "
              "| tent batch / inference batch | norm batch / inference batch |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sp["rows"]:
        med = row["median_seconds"]
        verdict = "met" if row["adabn_ratio"] <= 1.2 else "missed"
        lines.append(f"| {row['threads']} | {row['batch_size']} | {row['load_average']:.1f} | {med['inference pass']:.4f} "
                     f"| {med['adabn (adapt, exact)']:.4f} | {row['adabn_ratio']:.2f}x ({verdict}) "
                     f"| {row['tent_ratio']:.2f}x | {row['norm_ratio']:.2f}x |")

    lines += ["", "## Against the TENT paper", "", comparison(report), "", "## Protocol", "", protocol(report), "",
              f"Command: `{report['command']}`", "",
              f"Date: {report['date']}; {report['seconds'] / 60:.1f} min, {report['threads']} thread(s) for training and evaluation "
              f"and {report['speed_threads']} for the speed section, {report['machine']}; "
              f"torch {report['torch']}, pytorch-lightning {report['lightning']}.", ""]
    return "\n".join(lines)


def comparison(report: dict[str, Any]) -> str:
    """Where the paper's order ``source > norm > tent`` (CIFAR-10-C, severity 5) holds here, from the numbers."""
    main = report["main"]
    sentences = [f"TENT (Wang et al. 2021, WRN-28-10 on CIFAR-10-C, severity 5): source {PAPER['source']}% > "
                 f"norm {PAPER['norm']}% > tent {PAPER['tent']}%."]
    for key in ("digits->digits_c/5", "syndigits->digits", "digits->digits_m"):
        m = {name: statistics.fmean(main[key][name]) for name in ("source", "norm")}
        parts = []
        for name in ("tent", "tent (paper)"):
            d, sd = mean_std([t - n for t, n in zip(main[key][name], main[key]["norm"])])
            if abs(d) <= sd:
                verdict = "no difference beyond the seed spread"
            else:
                verdict = "tent below norm as in the paper" if d < 0 else "tent above norm, unlike the paper"
            parts.append(f"{name} - norm = {d:+.1f} ± {sd:.1f} points over seeds ({verdict})")
        sentences.append(f"{key.replace('->', ' → ').replace('/5', ' (severity 5)')}: source {m['source']:.1f}%, "
                         f"norm {m['norm']:.1f}%; " + "; ".join(parts) + ".")
    c = {name: statistics.fmean(main["digits->digits_c/5"][name]) for name in ("source", "norm", "tent")}
    sentences.append(
        f"On digits_c, norm removes {100 * (1 - c['norm'] / c['source']):.0f}% of the source error "
        f"(paper: {100 * (1 - PAPER['norm'] / PAPER['source']):.0f}%), and tuned tent changes norm's error by "
        f"{c['tent'] - c['norm']:+.1f} points (paper: {PAPER['tent'] - PAPER['norm']:+.1f}).")
    images = report["target_images"]["digits->digits_c"]
    batches = -(-images // report["settings"]["test_batch_size"])
    sentences.append(
        "Differences of setting that bear on it: a 3-block CNN (width 32) instead of a WRN-28-10; 16x16 digits "
        f"with the CIFAR-10-C corruption parameters instead of 32x32 photos; {images} test images per shift, so tent "
        f"adapts on {batches} batches per corruption (the paper: 50 batches of 200 of 10,000 images), with its "
        "learning rate and steps per batch tuned on the held-out corruptions.")
    return " ".join(sentences)


def protocol(report: dict[str, Any]) -> str:
    s = report["settings"]
    parts = [f"Images {IMAGE_SIZE}x{IMAGE_SIZE}, RGB in [0, 1] (no standardization); SmallCNN width {WIDTH} with BatchNorm."]
    for src, plan in s["sources"].items():
        sizes = sorted({(r["train_images"], r["val_images"]) for r in report["sources"] if r["source"] == src})
        parts.append(f"{src} source: Adam lr {plan['lr']:g} with cosine annealing, batch {plan['batch_size']}, {plan['epochs']} epoch(s) "
                     f"on {sizes[0][0]} training images ({sizes[0][1]} val); dsbn / transnorm fine-tuned from it for "
                     f"{plan['adaptation_epochs']} epoch(s) with Adam lr 0.001, target train split unlabelled.")
    parts.append(f"Target test sets: {report['target_images']}. AdaBN and adabn_ema read the target test set itself "
                 "(transductive, as test-time methods do); online methods see it once, in its stored order.")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ main


def rerun_speed(args: argparse.Namespace, settings: Settings, command: str, log: Callable[[str], None]) -> None:
    """Replace the speed section of the existing results with a new measurement."""
    path = args.out.with_suffix(".json")
    if not path.is_file():
        raise SystemExit(f"--speed-only replaces the speed section of {path}, which does not exist; run the full benchmark first")
    report = json.loads(path.read_text())
    seed = settings.seeds[0]
    model, record = train_source(settings, "digits", seed)
    log(f"source digits seed {seed}: {record['steps']} steps in {record['seconds']:.0f} s")
    report["speed"] = speed(settings, model, args.speed_threads, log)
    report["speed"].update(command=command, date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    report["speed_threads"] = args.speed_threads
    text = markdown(report)
    write_results(args.out, report, text, indent=1, end="\n")
    print(text)



def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_of(args)
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    random.seed(0)
    command = command_line(__file__, argv)
    start = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {text}", flush=True)

    if args.speed_only:
        rerun_speed(args, settings, command, log)
        return
    sources: dict[str, dict[int, nn.Module]] = {name: {} for name in settings.sources}
    records = []
    for seed in settings.seeds:
        for name in settings.sources:
            model, record = train_source(settings, name, seed)
            sources[name][seed] = model
            records.append(record)
            log(f"source {name} seed {seed}: {record['steps']} steps in {record['seconds']:.0f} s, "
                f"source val error {record['source_val_error']:.1f}%")

    tuned = tune(settings, sources["digits"], log)
    test_batch = settings.test_batch_size
    main_table: dict[str, dict[str, list[float]]] = {}
    target_images: dict[str, int] = {}
    for source, target in SHIFTS[:2]:
        key = f"{source}->{target}"
        data = target_set(settings, target)
        target_images[key] = len(data.labels)
        main_table[key] = {m: [row_error(sources[source][seed], m, data, test_batch, tuned) for seed in settings.seeds]
                           for m in TEST_METHODS}
        for method in TRAINED_METHODS:
            main_table[key][method] = [train_paired(settings, method, sources[source][seed], source, target, seed)
                                       for seed in settings.seeds]
        log(f"{key}: " + ", ".join(f"{m} {statistics.fmean(v):.1f}%" for m, v in main_table[key].items()))

    per_corruption: dict[str, dict[str, list[float]]] = {}
    severity_means: dict[str, list[float]] = {m: [] for m in TEST_METHODS}
    severity_5 = {c: target_set(settings, "digits_c", c, 5) for c in settings.corruptions}
    target_images["digits->digits_c"] = len(next(iter(severity_5.values())).labels)
    for seed in settings.seeds:
        model = sources["digits"][seed]
        errors: dict[str, list[float]] = {m: [] for m in TEST_METHODS}
        for severity in settings.severities:
            for corruption in settings.corruptions:
                data = severity_5[corruption] if severity == 5 else target_set(settings, "digits_c", corruption, severity)
                for method in TEST_METHODS:
                    e = row_error(model, method, data, test_batch, tuned)
                    errors[method].append(e)
                    if severity == 5:
                        per_corruption.setdefault(corruption, {m: [] for m in TEST_METHODS})[method].append(e)
        for method in TEST_METHODS:
            severity_means[method].append(statistics.fmean(errors[method]))
        log(f"digits_c seed {seed}: " + ", ".join(f"{m} {statistics.fmean(v):.1f}%" for m, v in errors.items())
            + f" (mean over severities {settings.severities})")
    main_table["digits->digits_c/5"] = {m: [statistics.fmean(per_corruption[c][m][i] for c in settings.corruptions)
                                            for i in range(len(settings.seeds))] for m in TEST_METHODS}
    main_table["digits->digits_c/mean"] = severity_means

    continual = [continual_stream(settings, sources["digits"][seed], list(severity_5.values()), tuned) for seed in settings.seeds]
    log("continual stream: " + ", ".join(f"{m} {statistics.fmean(statistics.fmean(r[m].values()) for r in continual):.1f}%"
                                          for m in continual[0]))

    sweep: dict[str, dict[str, list[float]]] = {}
    for batch_size in settings.batch_sizes:
        sweep[str(batch_size)] = {
            m: [statistics.fmean(row_error(sources["digits"][seed], m, t, batch_size, tuned)
                                 for t in severity_5.values()) for seed in settings.seeds]
            for m in ("source", "norm", "prior")
        }
        log(f"batch {batch_size}: " + ", ".join(f"{m} {statistics.fmean(v):.1f}%" for m, v in sweep[str(batch_size)].items()))

    timing = speed(settings, sources["digits"][settings.seeds[0]], args.speed_threads, log)
    timing.update(command=command, date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    report = {
        "command": command,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "lightning": pytorch_lightning.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "speed_threads": args.speed_threads,
        "settings": {
            "seeds": settings.seeds, "severities": settings.severities, "corruptions": list(settings.corruptions),
            "batch_sizes": settings.batch_sizes, "test_batch_size": test_batch, "image_size": IMAGE_SIZE, "width": WIDTH,
            "data_seed": DATA_SEED, "count": settings.count, "prior_grid": list(settings.prior_grid),
            "tent_grid": settings.tent_grid, "repeats": settings.repeats,
            "sources": {name: vars(plan) for name, plan in settings.sources.items()},
        },
        "sources": records,
        "target_images": target_images,
        "tuning": tuned,
        "main": main_table,
        "per_corruption": per_corruption,
        "continual": continual,
        "batch_sweep": sweep,
        "speed": timing,
        "seconds": time.perf_counter() - start,
    }
    text = markdown(report)
    write_results(args.out, report, text, indent=1, end="\n")
    print(text)


if __name__ == "__main__":
    main()
