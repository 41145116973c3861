"""Report section: the digits classifier trained with different normalizations and batch sizes."""

from __future__ import annotations

import html

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from normapps import norm
from normapps.data import DigitsDataModule
from normapps.report.builder import ReportContext, Section, section
from normapps.tasks import ExperimentResult, linear_scaled_lr, train_and_test

NORMS = ("bn", "gn", "ln")
BATCH_SIZES = (32, 4)
EPOCHS = 10
FAST_TRAINER = {"limit_train_batches": 4, "limit_val_batches": 2}


@section("Classification on handwritten digits", order=10)
def classification_section(ctx: ReportContext) -> Section:
    """Train the small CNN with each of :data:`NORMS` at each of :data:`BATCH_SIZES`.

    Shows validation accuracy per epoch and the final test accuracy: the survey's small-batch
    result (BN degrades as the batch shrinks, GN and LN do not) in miniature.
    """
    norms = NORMS[:2] if ctx.fast else NORMS
    epochs = 1 if ctx.fast else EPOCHS
    results: dict[tuple[str, int], ExperimentResult] = {}
    for batch_size in BATCH_SIZES:
        for name in norms:
            ctx.progress(f"training the digits CNN with {name} at batch size {batch_size} for {epochs} epoch(s)")
            results[name, batch_size] = train_and_test(
                DigitsDataModule(batch_size=batch_size, image_size=16),
                max_epochs=epochs,
                seed=ctx.seed,
                trainer_kwargs=FAST_TRAINER if ctx.fast else None,
                norm=name,
                width=16,
                optimizer="sgd",
                lr=linear_scaled_lr(batch_size),
                weight_decay=5e-4,
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
    body = (
        "<p>scikit-learn's 8x8 handwritten digits, upsampled to 16x16 and split 60/20/20 (stratified), "
        "train a three-block CNN (width 16) whose every convolution is followed by the chosen "
        f"normalization. SGD with momentum 0.9, learning rate 0.1 x batch size / 32 with cosine decay, "
        f"{epochs} epoch(s) at every batch size (the same number of samples), seed {ctx.seed}. "
        f"Test accuracy is measured once, on the weights at the end of training.{mode}</p>"
        f"<table><tr><th>norm</th><th>partition</th><th>operation</th>{header}<th>train s</th></tr>"
        f"{''.join(rows)}</table>"
        "<p>One seed and 360 test images: differences below about 1.5 points are noise. "
        "<code>python benchmarks/batch_size.py</code> runs the study with more norms, batch sizes and seeds.</p>"
    )
    return Section(html=body, figures=[figure])
