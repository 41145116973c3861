"""Report section: network slimming of a digits CNN -- accuracy against FLOPs, and latency pruned and folded."""

from __future__ import annotations

import copy
import html
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from pytorch_lightning import Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from normapps.data import DigitsDataModule
from normapps.norm import fold
from normapps.report.builder import Figure as ReportFigure
from normapps.report.builder import ReportContext, Section, section
from normapps.tasks import ClassificationTask
from normapps.tasks.efficient import BNSparsity, count, finetune, prune, recalibrate_pruned

IMAGE_SIZE = 16
#: The recipe of ``configs/efficient/slim_digits_cnn.yaml``: SmallCNN width 16, gamma initialized to
#: 0.5, SGD with momentum and cosine decay, lambda = 2e-2 (the value ``benchmarks/efficient.py``
#: chose on val for this model).
WIDTH = 16
EPOCHS = 10
BATCH_SIZE = 32
LR = 0.05
STRENGTH = 2e-2
RATIOS = (0.3, 0.5, 0.7)
FINETUNE_EPOCHS = 2
LATENCY_BATCH = 64
REPEATS = 15
#: Images per split, width, epochs and timed repeats of the fast smoke run.
FAST_COUNT = 64
FAST_WIDTH = 4
FAST_REPEATS = 2
#: The accuracy columns, in the order of the table and the figure's lines.
VARIANTS = ("pruned", "recalibrated", "recalibrated + fine-tuned")


@dataclass(frozen=True)
class _Plan:
    """The sizes of one run: the full one or the fast smoke run."""

    width: int
    epochs: int
    finetune_epochs: int
    count: int | None
    repeats: int


def _digits(plan: _Plan) -> dict[str, TensorDataset]:
    """The digits splits as :class:`DigitsDataModule` makes them (grey, standardized), at most ``plan.count`` images each."""
    data = DigitsDataModule(batch_size=BATCH_SIZE, image_size=IMAGE_SIZE, seed=0)
    data.setup()
    if plan.count is None:
        return dict(data.splits)
    return {split: TensorDataset(*(t[: plan.count] for t in d.tensors)) for split, d in data.splits.items()}


def _accuracy(model: nn.Module, data: TensorDataset) -> float:
    """Top-1 accuracy (%) in eval mode."""
    model.eval()
    images, labels = data.tensors
    with torch.inference_mode():
        return float((torch.cat([model(x) for x in images.split(256)]).argmax(1) == labels).float().mean()) * 100


def _train_sparse(plan: _Plan, train: TensorDataset, seed: int) -> tuple[nn.Module, int, float]:
    """SmallCNN trained with the sparsity penalty (eval mode), its optimizer steps and seconds."""
    seed_everything(seed, workers=True, verbose=False)
    task = ClassificationTask(arch="cnn", norm="bn", width=plan.width, in_channels=1, num_classes=10, bn_gamma_init=0.5,
                              optimizer="sgd", lr=LR, momentum=0.9, lr_schedule="cosine")
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=plan.epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      callbacks=[BNSparsity(STRENGTH)])
    start = time.perf_counter()
    trainer.fit(task, train_dataloaders=_loader(train))
    return task.model.eval(), trainer.global_step, time.perf_counter() - start


def _loader(train: TensorDataset) -> DataLoader:
    """Shuffled training batches, the last partial one dropped."""
    return DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, drop_last=len(train) > BATCH_SIZE)


def _prune_rows(
    model: nn.Module, splits: dict[str, TensorDataset], plan: _Plan, seed: int
) -> tuple[list[dict[str, Any]], dict[str, nn.Module]]:
    """Per ratio: params, FLOPs and test accuracy pruned, recalibrated, and recalibrated then fine-tuned;
    and the pruned, recalibrated models by name, for the latency table."""
    example = splits["train"].tensors[0][:1]
    rows = []
    models = {}
    for ratio in RATIOS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a clamped layer is reported in the table
            pruned, report = prune(model, ratio, example)
        recalibrated = recalibrate_pruned(copy.deepcopy(pruned), _loader(splits["train"]))
        seed_everything(seed, workers=True, verbose=False)
        tuned = finetune(copy.deepcopy(recalibrated), _loader(splits["train"]), plan.finetune_epochs, progress=False)
        rows.append({"ratio": ratio, "params": report.params[1], "flops": report.flops[1],
                     "clamped": any(layer.clamped for layer in report.layers),
                     "pruned": _accuracy(pruned, splits["test"]), "recalibrated": _accuracy(recalibrated, splits["test"]),
                     "recalibrated + fine-tuned": _accuracy(tuned, splits["test"])})
        models[f"pruned {ratio:g}"] = recalibrated
    return rows, models


def _latency(variants: dict[str, nn.Module], x: Tensor, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median and minimum seconds of one inference-mode forward pass per variant, the variants interleaved in a new
    random order each repeat (after one warm-up pass each)."""
    def runner(model: nn.Module) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with torch.inference_mode():
                return model(x)
        return run

    runs = {name: runner(model.eval()) for name, model in variants.items()}
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, {name: min(t) for name, t in times.items()}


def _latency_summary(flops: dict[str, int], medians: dict[str, float], minima: dict[str, float], original_flops: int) -> str:
    """One clause per prune ratio: its FLOP ratio next to its latency ratios (of medians and of minima), unfolded."""
    parts = []
    for ratio in RATIOS:
        name = f"pruned {ratio:g}"
        parts.append(f"{ratio:.0%} pruned: FLOPs x{flops[name] / original_flops:.2f}, latency "
                     f"x{medians[name] / medians['original']:.2f} (minima x{minima[name] / minima['original']:.2f})")
    return "Against the original: " + "; ".join(parts) + "."


def _figure(ctx: ReportContext, original: tuple[int, float], rows: list[dict[str, Any]]) -> ReportFigure:
    """Test accuracy against FLOPs (log scale), one line per variant, the unpruned model as each line's first point."""
    fig = Figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.subplots()
    flops = [original[0]] + [row["flops"] for row in rows]
    for variant, marker in zip(VARIANTS, ("o", "s", "^")):
        ax.plot(flops, [original[1]] + [row[variant] for row in rows], marker=marker, label=variant)
    for row in rows:
        ax.annotate(f"{row['ratio']:.0%}", (row["flops"], max(row[v] for v in VARIANTS)), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per image (2 x multiply-adds, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return ctx.save_figure(
        fig, "efficient_accuracy_flops",
        "Test accuracy of the sparsity-trained digits SmallCNN against its FLOPs: unpruned (rightmost point), then pruned "
        f"at {', '.join(f'{r:.0%}' for r in RATIOS)} of its prunable channels (labels) -- as pruned, after exact BatchNorm "
        f"recalibration, and after recalibration and {FINETUNE_EPOCHS} fine-tuning epoch(s). One seed: a quick look.",
    )


@section("Efficient models: network slimming, recalibration and folding", order=40)
def efficient_section(ctx: ReportContext) -> Section:
    """Train a sparse SmallCNN on the digits, prune it by BatchNorm gamma, recalibrate, and time it pruned and folded.

    A one-seed miniature of ``benchmarks/efficient.py``: network slimming (Liu et al. 2017) --
    training with ``lambda * sum |gamma|`` (:class:`~normapps.tasks.efficient.BNSparsity`), one
    global |gamma| threshold per prune ratio (:func:`~normapps.tasks.efficient.prune`), exact
    BatchNorm statistics recomputed on the training split
    (:func:`~normapps.tasks.efficient.recalibrate_pruned`), then a short fine-tuning -- and the
    latency of the original, pruned and BatchNorm-folded (:func:`normapps.norm.fold`) networks at
    batch 64 on the CPU, against their FLOP ratios.
    """
    if ctx.fast:
        plan = _Plan(width=FAST_WIDTH, epochs=1, finetune_epochs=1, count=FAST_COUNT, repeats=FAST_REPEATS)
    else:
        plan = _Plan(width=WIDTH, epochs=EPOCHS, finetune_epochs=FINETUNE_EPOCHS, count=None, repeats=REPEATS)
    splits = _digits(plan)
    ctx.progress(f"training a sparse SmallCNN on the digits for {plan.epochs} epoch(s)")
    model, steps, seconds = _train_sparse(plan, splits["train"], ctx.seed)
    size = tuple(splits["train"].tensors[0].shape[1:])
    params, flops = count(model, size)
    original = _accuracy(model, splits["test"])
    ctx.progress("pruning at " + ", ".join(f"{r:g}" for r in RATIOS))
    rows, pruned = _prune_rows(model, splits, plan, ctx.seed)
    figure = _figure(ctx, (flops, original), rows)

    ctx.progress(f"timing at batch {LATENCY_BATCH}")
    variants: dict[str, nn.Module] = {"original": model, "original, folded": fold(model)}
    for name, network in pruned.items():
        variants[name] = network
        variants[f"{name}, folded"] = fold(network)
    x = torch.randn(LATENCY_BATCH, *size, generator=torch.Generator().manual_seed(ctx.seed))
    medians, minima = _latency(variants, x, plan.repeats)
    counts = {name: count(network, size)[1] for name, network in variants.items()}

    accuracy_rows = [f"<tr><td>original</td><td>{params:,}</td><td>{flops:,}</td><td>1.000</td>"
                     + f"<td>{original:.1f}</td>" * len(VARIANTS) + "</tr>"]
    for row in rows:
        clamped = " (clamped)" if row["clamped"] else ""
        accuracy_rows.append(f"<tr><td>pruned {row['ratio']:g}{clamped}</td><td>{row['params']:,}</td><td>{row['flops']:,}</td>"
                             f"<td>{row['flops'] / flops:.3f}</td>" + "".join(f"<td>{row[v]:.1f}</td>" for v in VARIANTS) + "</tr>")
    latency_rows = [f"<tr><td>{html.escape(name)}</td><td>{counts[name] / flops:.3f}</td><td>{1000 * medians[name]:.2f}</td>"
                    f"<td>{medians[name] / medians['original']:.2f}</td><td>{minima[name] / minima['original']:.2f}</td></tr>"
                    for name in variants]
    mode = " <strong>Fast mode: a few images and steps only, the numbers are not meaningful.</strong>" if ctx.fast else ""
    body = (
        f"<p>Network slimming (Liu et al. 2017), a quick look with one seed: SmallCNN (width {plan.width}, BatchNorm "
        f"gamma initialized to 0.5) trained on {len(splits['train'])} digits training images ({IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"grey) with λ·Σ|γ| added to the loss (λ = {STRENGTH:g}), SGD lr {LR:g} with momentum and cosine decay, "
        f"{plan.epochs} epoch(s) ({steps} steps, {seconds:.0f} s), seed {ctx.seed}. One global threshold on |γ| then "
        f"removes {', '.join(f'{r:.0%}' for r in RATIOS)} of the prunable channels (the convolution, BatchNorm and next "
        "layer shrink physically). 'recalibrated' recomputes every BatchNorm's exact statistics on the training split; "
        f"'recalibrated + fine-tuned' adds {plan.finetune_epochs} epoch(s) of Adam (lr 1e-3). Test accuracy (%) on "
        f"{len(splits['test'])} test images; FLOPs per image, 2 per multiply-add.{mode}</p>"
        "<table><tr><th>model</th><th>params</th><th>FLOPs</th><th>FLOP ratio</th>"
        + "".join(f"<th>{v}</th>" for v in VARIANTS) + f"</tr>{''.join(accuracy_rows)}</table>"
        f"<p>Latency on the CPU at batch {LATENCY_BATCH} ({torch.get_num_threads()} torch thread(s), "
        f"<code>torch.inference_mode()</code>, {plan.repeats} runs each, the variants interleaved in random order; the "
        "median run and the ratios of medians and of minima to the original): "
        "the pruned models are the recalibrated ones, 'folded' is <code>normapps.norm.fold</code> (each BatchNorm folded "
        "into the convolution before it, same outputs). Other processes on the machine deschedule runs part of the way: "
        "the minimum is the least disturbed run, and where the two ratios disagree the timing is noise-bound. "
        f"{_latency_summary(counts, medians, minima, flops)}</p>"
        "<table><tr><th>variant</th><th>FLOP ratio</th><th>median latency (ms)</th><th>ratio of medians</th>"
        "<th>ratio of minima</th></tr>"
        f"{''.join(latency_rows)}</table>"
        "<p><code>python benchmarks/efficient.py</code> runs the evidence: three seeds, digits and syndigits, SmallCNN and "
        "SmallResNet, λ chosen on the validation split, a baseline trained without the penalty, fine-tuning without "
        "recalibration, switchable-BN widths against separately trained networks, and latency at batch 1 and 64 including "
        "a ResNet-18; its results are in <code>benchmarks/results/efficient.md</code>.</p>"
    )
    return Section(html=body, figures=[figure])
