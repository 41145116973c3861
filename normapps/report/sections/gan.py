"""Report section: the shipped class-conditional GAN on digits: samples per class, class morphing, latent
interpolation, and its metrics in the features of the shipped digit classifier."""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid

from normapps.data import load_domain
from normapps.data.images import save_image
from normapps.metrics import DigitFeatures, MetricResult, class_accuracy, distances, intra_class_frechet_distance
from normapps.metrics.features import TRAIN_COMMAND as FEATURES_COMMAND
from normapps.metrics.features import checkpoint_path as features_path
from normapps.metrics.features import load_digit_features
from normapps.report.builder import Figure, ReportContext, Section, section
from normapps.tasks.gan import GANTask
from normapps.tasks.gan.checkpoints import SHIPPED_COMMAND, checkpoint_path, load_generator

#: The real data the samples are compared with: the digits test split; the floor compares the val split with it.
DOMAIN = "digits"
#: Classes of the morphing strip.
MORPH = (3, 8)
#: Columns of the morphing and interpolation strips.
STEPS = 8
#: KID subsets and their size (Binkowski et al. 2018 average the unbiased MMD^2 over random subsets).
KID_SUBSETS = 100
KID_SUBSET_SIZE = 100


@dataclass(frozen=True)
class _Plan:
    """Sizes of one run: the full one or the fast smoke run."""

    per_class: int        # class-conditioned samples per class for the class accuracy
    columns: int          # samples per class in the sample grid
    rows: int             # rows of the morphing and interpolation strips


FULL = _Plan(per_class=100, columns=10, rows=4)
FAST = _Plan(per_class=10, columns=4, rows=2)


def _real(split: str) -> tuple[Tensor, Tensor]:
    """Images ``(N, 3, 32, 32)`` in [-1, 1] and labels of one split of :data:`DOMAIN`."""
    images, labels = load_domain(DOMAIN, split, 32).tensors
    return images * 2.0 - 1.0, labels


def measure(task: GANTask, features: DigitFeatures, per_class: int = 100, seed: int = 0,
            kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE) -> dict[str, dict[str, MetricResult]]:
    """The generator's metrics against the digits test split, and the same metrics of real val digits (the floor).

    * ``class_acc``: accuracy of the digit classifier on ``per_class`` class-conditioned samples of every
      class (real: on the val digits);
    * ``fd``, ``kid``, ``intra_fd``: Frechet distance, KID and intra-class FD (Miyato & Koyama 2018) between
      the test digits' features and those of as many samples as the val split holds, with the val split's
      labels (so generated and real val sets have the same size and class counts and their numbers are
      comparable: both are biased upward by the small per-class counts in the same way).

    Returns:
        ``{"generated": {...}, "real": {...}}``, each ``{"class_acc", "fd", "kid", "intra_fd"}`` of
        :class:`~normapps.metrics.MetricResult` with its sample counts.
    """
    if not task.conditional:
        raise ValueError("measure needs a class-conditional generator (class accuracy and intra-class FD)")
    test_images, test_labels = _real("test")
    val_images, val_labels = _real("val")
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(len(val_labels), task.hparams.z_dim, generator=generator)
    fake = task.generate(z, val_labels).cpu()
    classes = torch.arange(task.num_classes).repeat_interleave(per_class)
    conditioned = task.generate(torch.randn(len(classes), task.hparams.z_dim, generator=generator), classes).cpu()
    test_f, val_f, fake_f = features.features(test_images), features.features(val_images), features.features(fake)
    with warnings.catch_warnings():  # the per-class counts are below the feature dimension: stated in the text
        warnings.simplefilter("ignore")
        results = {}
        for name, images, feats, labels in (("generated", conditioned, fake_f, classes), ("real", val_images, val_f, val_labels)):
            row = distances(test_f, feats, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
            row["class_acc"] = class_accuracy(features, images, labels)
            row["intra_fd"] = intra_class_frechet_distance(test_f, test_labels, feats, val_labels)
            results[name] = row
    return results


def _save_grid(ctx: ReportContext, images: Tensor, nrow: int, name: str, caption: str) -> Figure:
    """Images ``(N, 3, S, S)`` in [-1, 1] as one PNG grid (2-pixel white gaps) in the report's folder."""
    grid = make_grid(images.float().cpu() * 0.5 + 0.5, nrow=nrow, padding=2, pad_value=1.0)
    save_image(grid, Path(ctx.out_dir) / f"{name}.png", overwrite=True)
    return Figure(f"{name}.png", caption)


def _missing() -> list[str]:
    """The shipped files this section needs that are not there, each with the command that makes it."""
    needed = ((checkpoint_path(), SHIPPED_COMMAND), (features_path(), FEATURES_COMMAND))
    return [f"{path} ({command})" for path, command in needed if not path.is_file()]


def _cell(result: MetricResult, compared: str) -> str:
    """Value and counts of one result; the counts name the test digits and the ``compared`` set."""
    value = f"{result.value:.3f}" if result.name == "class accuracy" else f"{result.value:.4g}"
    if result.std is not None:
        value += f" &plusmn; {result.std:.2g}"
    counts = result.counts().replace(" real / ", " test / ").replace(" fake", f" {compared}")
    return f"<td>{value}</td><td>{html.escape(counts)}</td>"


@section("GANs: conditional batch norm carries the class", order=50)
def gan_section(ctx: ReportContext) -> Section:
    """Samples, class morphing and latent interpolation of the shipped ``checkpoints/gan_digits.pt``, and its
    class accuracy, FD, KID and intra-class FD beside the same numbers for real digits; nothing is trained.

    If the shipped generator (or the digit classifier the metrics use) is missing, the section says which
    and how each is made, and draws nothing, so that the rest of the report still builds.
    """
    missing = _missing()
    if missing:
        ctx.progress(f"GAN section not drawn: {len(missing)} shipped file(s) missing")
        items = "".join(f"<li><code>{html.escape(item)}</code></li>" for item in missing)
        return Section(html="<p><strong>Not available: the shipped files this section uses are missing.</strong> They "
                            "come with the repository, so this checkout is incomplete; restore them (e.g. <code>git "
                            "checkout -- checkpoints</code>) or make them again with the command after each file:</p>"
                            f"<ul>{items}</ul>")
    plan = FAST if ctx.fast else FULL
    ctx.progress("loading the shipped generator and digit classifier")
    task = load_generator()
    features = load_digit_features()
    training = task.checkpoint_info.get("training", {})
    hp = task.hparams
    k, z_dim = task.num_classes, hp.z_dim
    generator = torch.Generator().manual_seed(ctx.seed)

    ctx.progress("sampling: grid, morphing, interpolation")
    classes = torch.arange(k).repeat_interleave(plan.columns)
    samples = task.generate(torch.randn(len(classes), z_dim, generator=generator), classes)
    a, b = MORPH
    morph = task.morph(torch.randn(plan.rows, z_dim, generator=generator), a, b, STEPS).flatten(0, 1)
    z_a, z_b = (torch.randn(plan.rows, z_dim, generator=generator) for _ in range(2))
    rows_classes = torch.arange(plan.rows) % k
    interpolation = task.interpolate(z_a, z_b, STEPS, rows_classes).flatten(0, 1)
    figures = [
        _save_grid(ctx, samples, plan.columns, "gan_samples",
                   f"Class-conditioned samples of the shipped generator: row c is class c (0 to {k - 1}), "
                   f"{plan.columns} latents per row."),
        _save_grid(ctx, morph, STEPS, "gan_morph",
                   f"Class morphing {a} -> {b}: each row keeps one latent while the class weights go from one-hot {a} to "
                   f"one-hot {b} in {STEPS} steps, so every conditional-BN layer uses (1 - t) (gamma, beta)_{a} + "
                   f"t (gamma, beta)_{b}."),
        _save_grid(ctx, interpolation, STEPS, "gan_interpolation",
                   f"Latent interpolation: each row goes linearly from one latent to another in {STEPS} steps with its "
                   f"class fixed (row i: class {', '.join(str(int(c)) for c in rows_classes)} in order)."),
    ]

    ctx.progress(f"measuring: {plan.per_class} samples per class for the class accuracy, FD / KID against the test digits")
    results = measure(task, features, plan.per_class, ctx.seed)
    names = (("class_acc", "class accuracy (higher is better)"), ("fd", "FD"), ("kid", "KID"), ("intra_fd", "intra-class FD"))
    rows = "".join(f"<tr><td>{label}</td>{_cell(results['generated'][key], 'generated')}{_cell(results['real'][key], 'val')}</tr>"
                   for key, label in names)
    updates = training.get("generator_updates")
    trained = (f"{updates} generator updates ({training.get('steps')} optimizer steps of both networks)"
               if isinstance(updates, int) else "an unrecorded number of updates")
    mode = " <strong>Fast mode: fewer samples, the numbers are not meaningful.</strong>" if ctx.fast else ""
    body = (
        "<p>A class-conditional GAN puts the class into the generator through normalization: every batch-norm layer "
        "of the generator normalizes with the batch statistics as usual, then scales and shifts with a (gamma, beta) "
        "looked up for the class, conditional batch norm (de Vries et al. 2017; Dumoulin et al. 2017). Its "
        "discriminator is normalized the other way: spectral normalization divides every weight by its largest "
        "singular value (Miyato et al. 2018), which bounds the discriminator's Lipschitz constant, and the class "
        "enters as an inner product with a class embedding, the projection discriminator (Miyato &amp; Koyama 2018). "
        "Because the class lives in the (gamma, beta) of each layer, mixing two classes' parameters morphs one digit "
        "into another along a fixed latent.</p>"
        f"<p>The images come from the shipped <code>checkpoints/gan_digits.pt</code>: the SN paper's standard CNN at "
        f"width {hp.width:g}, {hp.image_size} px, trained on the 8x8 scikit-learn digits upsampled to 32 px for "
        f"{html.escape(trained)} on a CPU (<code>normapps fit -c configs/gan/cgan_digits.yaml</code>), sampled from "
        "the moving average of its weights; nothing is trained here. <code>normapps generate</code> draws the same "
        f"kinds of grid from it or from your own run.{mode}</p>"
        "<table><tr><th>metric</th><th>generated</th><th>samples</th><th>real val digits (floor)</th><th>samples</th></tr>"
        f"{rows}</table>"
        "<p>All numbers are measured in the 64-d penultimate features of the shipped digit classifier "
        "(<code>checkpoints/digit_features.pt</code>; Inception features would need a download and describe "
        "photographs), against the digits <em>test</em> split. The class accuracy is that classifier's accuracy on "
        "class-conditioned samples; beside it, its accuracy on real val digits. FD, KID and intra-class FD compare "
        "the test digits with as many samples as the val split has, with the val split's class counts; the floor "
        "column is the real val digits against the test digits, what a perfect generator would score with these "
        "counts. The per-class counts are below the feature dimension, so every intra-class FD is biased upward: "
        "compare the two columns, not these numbers with published ones.</p>"
    )
    return Section(html=body, figures=figures)
