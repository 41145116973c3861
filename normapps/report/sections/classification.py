"""Report section: the digits classifier trained with different normalizations and batch sizes."""

from __future__ import annotations

import html
import math

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from normapps import norm
from normapps.data import DigitsDataModule
from normapps.report.builder import ReportContext, Section, section
from normapps.tasks import ExperimentResult, linear_scaled_lr, train_and_test

NORMS = ("bn", "gn", "ln")
BATCH_SIZES = (32, 4)
EPOCHS = 10
WIDTH = 16
IMAGE_SIZE = 16
BASE_LR, BASE_BATCH = 0.1, 32
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
FAST_TRAINER = {"limit_train_batches": 4, "limit_val_batches": 2}


@section("Classification on handwritten digits", order=10)
def classification_section(ctx: ReportContext) -> Section:
    """Train the small CNN with each of :data:`NORMS` at each of :data:`BATCH_SIZES`.

    Shows validation accuracy per epoch and the final test accuracy. This is the survey's
    small-batch *experiment* (Wu & He: BN degrades as the batch shrinks, GN and LN do not) run on
    a small data set, not its finding: whether the gap shows here is what the run measures, and
    on these digits it has not (see ``benchmarks/results/batch_size.md``).
    """
    norms = NORMS[:2] if ctx.fast else NORMS
    epochs = 1 if ctx.fast else EPOCHS
    results: dict[tuple[str, int], ExperimentResult] = {}
    sizes = DigitsDataModule(image_size=IMAGE_SIZE).split_sizes()
    for batch_size in BATCH_SIZES:
        for name in norms:
            ctx.progress(f"training the digits CNN with {name} at batch size {batch_size} for {epochs} epoch(s)")
            results[name, batch_size] = train_and_test(
                DigitsDataModule(batch_size=batch_size, image_size=IMAGE_SIZE),
                max_epochs=epochs,
                seed=ctx.seed,
                trainer_kwargs=FAST_TRAINER if ctx.fast else None,
                norm=name,
                width=WIDTH,
                optimizer="sgd",
                lr=linear_scaled_lr(batch_size, BASE_LR, BASE_BATCH),
                momentum=MOMENTUM,
                weight_decay=WEIGHT_DECAY,
                lr_schedule="cosine",
            )

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, len(BATCH_SIZES), sharey=True)
    for ax, batch_size in zip(axes, BATCH_SIZES):
        for name in norms:
            history = results[name, batch_size].history
            ax.plot([row["epoch"] + 1 for row in history], [row["val_acc"] for row in history], marker="o", label=name)
        ax.set(xlabel="epoch", title=f"batch size {batch_size}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("validation accuracy")
    figure = ctx.save_figure(fig, "classification_val_accuracy", "Validation accuracy per epoch, per normalization and batch size.")

    header = "".join(f"<th>test acc, batch {b}</th>" for b in BATCH_SIZES)
    rows = []
    for name in norms:
        info = norm.describe(name)
        cells = "".join(f"<td>{results[name, b].test['test_acc']:.3f}</td>" for b in BATCH_SIZES)
        seconds = sum(results[name, b].seconds for b in BATCH_SIZES)
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(info.partition)}</td>"
            f"<td>{html.escape(info.operation)}</td>{cells}<td>{seconds:.0f}</td></tr>"
        )
    mode = " <strong>Fast mode: a few batches only, the numbers are not meaningful.</strong>" if ctx.fast else ""
    total = sum(sizes.values())
    shares = "/".join(f"{100 * sizes[name] / total:.0f}" for name in ("train", "val", "test"))
    n_test = sizes["test"]
    # Two standard errors of the difference of two accuracies near the mean one, on n_test images.
    acc = sum(r.test["test_acc"] for r in results.values()) / len(results)
    noise = 100 * 2 * math.sqrt(2 * acc * (1 - acc) / n_test)
    body = (
        f"<p>scikit-learn's 8x8 handwritten digits, upsampled to {IMAGE_SIZE}x{IMAGE_SIZE} and split {shares} "
        f"(stratified: {sizes['train']} / {sizes['val']} / {sizes['test']} images), "
        f"train a three-block CNN (width {WIDTH}) whose every convolution is followed by the chosen "
        f"normalization. SGD with momentum {MOMENTUM}, weight decay {WEIGHT_DECAY:g}, learning rate "
        f"{BASE_LR} x batch size / {BASE_BATCH} with cosine decay, "
        f"{epochs} epoch(s) at every batch size (the same number of samples), seed {ctx.seed}. "
        f"Test accuracy is measured once, on the weights at the end of training.{mode}</p>"
        f"<table><tr><th>norm</th><th>partition</th><th>operation</th>{header}<th>train s</th></tr>"
        f"{''.join(rows)}</table>"
        f"<p>One seed and {n_test} test images: at the mean accuracy of this table ({acc:.3f}), two standard "
        f"errors of a difference between two cells are about {noise:.1f} points; smaller differences are noise. "
        "<code>python benchmarks/batch_size.py</code> runs the study with more norms, batch sizes and seeds.</p>"
    )
    return Section(html=body, figures=[figure])
