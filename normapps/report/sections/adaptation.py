"""Report section: a digits classifier under domain shift, adapted by editing its BatchNorm statistics."""

from __future__ import annotations

import copy
import html
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_lightning import Trainer, seed_everything
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.data import load_domain
from normapps.norm import capture, use_batch_stats
from normapps.report.builder import Figure as ReportFigure
from normapps.report.builder import ReportContext, Section, section
from normapps.tasks import ClassificationTask
from normapps.tasks.adaptation import METHODS, DomainDataModule, adapt, predict_stream, statistics_shift

SOURCE = "digits"
IMAGE_SIZE = 16
WIDTH = 32
EPOCHS = 20
BATCH_SIZE = 64
LR = 3e-3
TEST_BATCH_SIZE = 64
#: ``(label, domain, corruption, severity)``: MNIST-M-style digits, and the CIFAR-10-C corruption of
#: the adaptation configs (fog) with one from the noise and one from the digital group, at severity 5.
#: None of them is among the held-out corruptions the options below were tuned on.
SHIFTS = (
    ("digits → digits_m", "digits_m", None, None),
    ("digits → digits_c fog-5", "digits_c", "fog", 5),
    ("digits → digits_c gaussian_noise-5", "digits_c", "gaussian_noise", 5),
    ("digits → digits_c contrast-5", "digits_c", "contrast", 5),
)
#: ``prior``'s N (test batch 64) and ``tent``'s options, chosen by ``benchmarks/adaptation.py`` on the
#: held-out corruptions (``benchmarks/results/adaptation.md``; the same as ``configs/adaptation/*``).
OPTIONS: dict[str, dict[str, Any]] = {"prior": {"n_source": 4.0}, "tent": {"lr": 0.03, "steps": 3}}
#: What each method adapts on, in the order of the table.
PROTOCOL = {
    "source": "nothing: the source model unchanged",
    "adabn": "the whole target test set, without labels, in one pass before predicting (exact pooled statistics)",
    "norm": "each test batch, online: normalized with its own statistics",
    "prior": "each test batch, online: its statistics mixed with the source ones, N = {n_source:g}",
    "tent": "each test batch, online: batch statistics and {steps} entropy-minimization steps per batch "
            "(Adam, lr {lr:g}) on the BatchNorm affine, carried on to the next batch",
}
#: Images per split and batch size of the fast smoke run (one epoch).
FAST_COUNT = 64
FAST_BATCH_SIZE = 32


@dataclass(frozen=True)
class _Plan:
    """The sizes of one run: the full one or the fast smoke run."""

    epochs: int
    batch_size: int
    test_batch_size: int
    count: int | None


def _train_source(plan: _Plan, seed: int) -> tuple[nn.Module, int, int, float]:
    """The source SmallCNN (eval mode), its training images, optimizer steps and seconds."""
    seed_everything(seed, workers=True, verbose=False)
    data = DomainDataModule(SOURCE, SOURCE, image_size=IMAGE_SIZE, batch_size=plan.batch_size, seed=seed, count=plan.count)
    task = ClassificationTask(norm="bn", width=WIDTH, in_channels=3, num_classes=data.num_classes, lr=LR, lr_schedule="cosine")
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=plan.epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    return task.model.eval(), len(data.splits["train"]), trainer.global_step, time.perf_counter() - start


def _error(logits: Tensor, labels: Tensor) -> float:
    """Top-1 error in percent."""
    return float((logits.argmax(1) != labels).float().mean()) * 100


def _method_error(model: nn.Module, method: str, batches: list[Tensor], labels: Tensor) -> float:
    """Error (%) of ``method`` on the target ``batches`` (``model`` itself is never changed)."""
    options = OPTIONS.get(method, {})
    if METHODS[method].online:
        return _error(torch.cat(list(predict_stream(model, method, batches, **options))), labels)
    adapted = adapt(model, method, batches, **options)
    with torch.inference_mode():
        return _error(torch.cat([adapted(x) for x in batches]), labels)


def _shift_figure(ctx: ReportContext, shifts: dict[str, list[dict[str, Any]]]) -> ReportFigure:
    """Grouped bars: per BatchNorm layer, each measure of :func:`statistics_shift`, one bar per shift."""
    measures = (("mean_shift", "mean |μ_t − μ_s| / σ_s"), ("log_var_ratio", "mean log(σ²_t / σ²_s)"),
                ("symmetric_kl", "mean symmetric KL (nats)"))
    layers = [row["layer"] for row in next(iter(shifts.values()))]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, len(measures))
    positions = np.arange(len(layers))
    width = 0.8 / len(shifts)
    for ax, (key, label) in zip(axes, measures):
        for i, (name, rows) in enumerate(shifts.items()):
            ax.bar(positions + (i - (len(shifts) - 1) / 2) * width, [row[key] for row in rows], width, label=name)
        ax.set_xticks(positions, [f"BN {i + 1}\n{layer}" for i, layer in enumerate(layers)], fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(shifts), fontsize=8)
    return ctx.save_figure(
        fig, "adaptation_statistics_shift",
        "Per BatchNorm layer (input side first), how far the target test images move the layer's input statistics from the "
        "source model's running statistics: channel means of the standardized mean shift, the log variance ratio and the "
        "symmetric KL divergence of the per-channel Gaussians (0 when the target statistics equal the source ones).",
    )


def _two_standard_errors(first: float, second: float, images: int) -> float:
    """Two standard errors (points) of the difference of two independent error rates (%) on ``images`` images."""
    p, q = first / 100, second / 100
    return 100 * 2 * math.sqrt((p * (1 - p) + q * (1 - q)) / images)


def _apart(first: float, second: float, images: int) -> bool:
    """Whether two error rates (%) differ by more than :func:`_two_standard_errors`."""
    return abs(first - second) > _two_standard_errors(first, second, images)


def _differences(errors: dict[str, dict[str, float]], images: int) -> str:
    """Per shift, the methods below the source error, and those above the lowest error, by more than two standard errors."""
    parts = []
    for label, *_ in SHIFTS:
        column = {method: row[label] for method, row in errors.items()}
        best = min(column, key=column.get)
        below = [m for m in column if m != "source" and column[m] < column["source"] and _apart(column[m], column["source"], images)]
        above = [m for m in column if m not in ("source", best) and _apart(column[m], column[best], images)]
        findings = [f"{_join(below)} below source" if below else "none below source"]
        if above:
            findings.append(f"{_join(above)} above {best}")
        parts.append(f"{html.escape(label)}: " + ", ".join(findings))
    return "; ".join(parts)


def _join(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


@section("Domain adaptation by editing BatchNorm statistics", order=20)
def adaptation_section(ctx: ReportContext) -> Section:
    """Train SmallCNN on the handwritten digits, then measure its error on shifted test sets per method.

    A one-seed miniature of ``benchmarks/adaptation.py`` with its protocol: the source model as
    there (SmallCNN width 32 with BatchNorm, RGB images in [0, 1] of 16x16, Adam with cosine
    decay); every method starts from the source model on every shift; ``adabn`` reads the target
    test set without labels before predicting it, the online methods see it once in its stored
    order, in batches of 64. Also plots :func:`~normapps.tasks.adaptation.statistics_shift` per
    BatchNorm layer and shift.
    """
    if ctx.fast:
        plan = _Plan(epochs=1, batch_size=FAST_BATCH_SIZE, test_batch_size=FAST_BATCH_SIZE, count=FAST_COUNT)
    else:
        plan = _Plan(epochs=EPOCHS, batch_size=BATCH_SIZE, test_batch_size=TEST_BATCH_SIZE, count=None)
    ctx.progress(f"training the source SmallCNN on {SOURCE} for {plan.epochs} epoch(s)")
    model, train_images, steps, seconds = _train_source(plan, ctx.seed)
    layers = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]

    images, labels = load_domain(SOURCE, "test", image_size=IMAGE_SIZE, seed=ctx.seed, count=plan.count).tensors
    with torch.inference_mode():
        in_domain = _error(torch.cat([model(x) for x in images.split(plan.test_batch_size)]), labels)

    errors: dict[str, dict[str, float]] = {method: {} for method in PROTOCOL}
    shifts: dict[str, list[dict[str, Any]]] = {}
    test_images = 0
    for label, domain, corruption, severity in SHIFTS:
        ctx.progress(f"adapting to {label}")
        images, labels = load_domain(domain, "test", image_size=IMAGE_SIZE, seed=ctx.seed, count=plan.count,
                                     corruption=corruption, severity=severity).tensors
        test_images = len(labels)
        batches = list(images.split(plan.test_batch_size))
        for method in PROTOCOL:
            errors[method][label] = _method_error(model, method, batches, labels)
        target = capture(use_batch_stats(copy.deepcopy(model)), batches, layers=layers)
        shifts[label] = statistics_shift(model, target)
    figure = _shift_figure(ctx, shifts)

    header = "".join(f"<th>{html.escape(label)}</th>" for label, *_ in SHIFTS)
    rows = []
    for method, adapts_on in PROTOCOL.items():
        cells = "".join(f"<td>{errors[method][label]:.1f}</td>" for label, *_ in SHIFTS)
        rows.append(f"<tr><td>{method}</td><td>{html.escape(adapts_on.format(**OPTIONS.get(method, {})))}</td>{cells}</tr>")
    mode = " <strong>Fast mode: a few images and steps only, the numbers are not meaningful.</strong>" if ctx.fast else ""
    body = (
        f"<p>A classifier trained on one domain and tested on another: SmallCNN (three convolution blocks, width {WIDTH}, "
        f"BatchNorm after every convolution) trained on the {train_images} {SOURCE} training images ({IMAGE_SIZE}x{IMAGE_SIZE} "
        f"RGB in [0, 1]) with Adam, learning rate {LR:g} with cosine decay, batch {plan.batch_size}, {plan.epochs} epoch(s) "
        f"({steps} steps, {seconds:.0f} s), seed {ctx.seed}. Its error on the {SOURCE} test split, without shift, is "
        f"{in_domain:.1f}%. Each shift's test split ({test_images} images, generated with data seed {ctx.seed}) is then "
        f"classified by each method, every one starting from the same source model, in batches of {plan.test_batch_size} "
        f"in the split's stored order; labels serve only to count errors. The protocol is that of "
        f"<code>benchmarks/adaptation.py</code>: adabn is transductive (its statistics come from the test images it then "
        f"classifies), the online methods predict each batch as it arrives. prior's N and tent's options are the "
        f"benchmark's, chosen on held-out corruptions that are not shown here.{mode}</p>"
        f"<table><tr><th>method</th><th>adapts on</th>{header}</tr>{''.join(rows)}</table>"
        f"<p>Target error (%), one training seed, one data seed, {test_images} test images per shift. Differences "
        "between two cells of a column that exceed two standard errors of the difference of two independent error rates "
        f"on {test_images} images (about {_two_standard_errors(50, 50, test_images):.1f} points near 50% error, "
        f"{_two_standard_errors(10, 10, test_images):.1f} near 10%; smaller ones are not evidence of anything): "
        f"{_differences(errors, test_images)}.</p>"
        "<p><code>python benchmarks/adaptation.py</code> runs the full study (three seeds, all 15 corruptions and five "
        "severities, syndigits → digits, DSBN and TransNorm, a continual stream, the test batch size and the tuning); "
        "its results are in <code>benchmarks/results/adaptation.md</code>.</p>"
        "<p>The figure measures the shift itself, per BatchNorm layer: the source model's running statistics against the "
        "exact statistics of that layer's input over the target test images while every BatchNorm normalizes with batch "
        "statistics (the statistics adabn installs; <code>normapps.tasks.adaptation.statistics_shift</code>, the same "
        "numbers <code>normapps adapt</code> writes to its report.json).</p>"
    )
    return Section(html=body, figures=[figure])
