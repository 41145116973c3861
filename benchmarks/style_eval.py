"""Style transfer measured with encoders the models were not trained with, against baselines; the controls checked by measurement.

Evidence for the style suite (``normapps.tasks.style``) on embedded data, with the shipped stylizers
(``checkpoints/style_{adain,wct,cin,fast,fast_bn}.pt``, all trained with the fixed random-weight
encoder ``VGGEncoder.random(width=0.25, seed=0)``):

- **Data**: the four held-out content photos (``content_images("test")``: chelsea, coffee, flower,
  grace_hopper; no stylizer saw them), resized so that the shorter side is ``--size`` and
  centre-cropped to a square; the nine generated styles (``style_image(name, --size)``, seed 0, the
  images the networks were trained with, at another size), six training styles and three held out.
- **Evaluation descriptors**, none of them the training encoder:

  * ``VGGEncoder.random(width=0.5, seed=1)``: the same VGG-19 layout with other random weights and
    twice the width. Content loss: MSE of its relu3_1 features between output and content photo.
    Style losses against the style image: AdaIN's mean / std loss and the Gram loss, summed over
    relu1_1 .. relu4_1 (:mod:`normapps.tasks.style.losses`).
  * a filter bank with no learned weights: oriented Gaussian-derivative filters (first order on the
    L, a and b channels of CIE Lab, second order on L; 4 orientations each) on a 4-level Gaussian
    pyramid, rectified; the same mean / std and Gram losses on its 16 responses per level.
  * Lab colour: the mean / std loss of the CIE Lab pixels (L in [0, 100]).

  The training encoder's numbers are given too, as a reference: they are what the networks were
  optimized for.
- **Methods**: adain, wct (every style), cin (the training styles it knows), fast / fast_bn (their one
  style); baselines: the content photo itself, the Lab colour transfer of Reinhard et al.
  (``color_transfer``), and the same style drawn with another seed (another image of the style: how
  far two images of one style lie apart in each descriptor).
- **Checks, as measured numbers**: style losses over alpha for adain and wct; style weights (1, 0)
  against the single style; the output's RGB mean / covariance against the content's, with and
  without colour preservation; the fast network with instance norm against batch norm.
- **Grids** (PNG next to the results): content x style for adain and wct, alpha sweeps, two-style
  interpolation (adain, wct, cin), fast IN against BN, colour preservation.

Run ``python benchmarks/style_eval.py --overwrite`` for the full results (replaces
``benchmarks/results/style_eval.md``, ``.json`` and ``style_eval_*.png``; refuses without
``--overwrite``), or ``--quick`` for a smoke run (64 px, two contents, three styles, written to the
temp folder). ``--checkpoint-dir`` evaluates other stylizer files of the same names.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia
import torch
from common import command_line, refuse_existing, write_results
from kornia.color import rgb_to_lab
from kornia.filters import gaussian_blur2d, spatial_gradient
from kornia.geometry.transform import pyrdown
from torch import Tensor
from torchvision.utils import make_grid

from normapps.data.images import save_image
from normapps.data.style import content_images, content_names, style_image, style_names
from normapps.models import VGGEncoder
from normapps.tasks.style.checkpoints import SHIPPED, Stylizer, load_stylizer
from normapps.tasks.style.losses import content_loss, style_loss_gram, style_loss_moments
from normapps.tasks.style.transfer import color_transfer, preserve_color

RESULTS = Path(__file__).resolve().parent / "results"
#: The encoder every shipped stylizer was trained with (``VGGEncoder.random`` arguments).
TRAINING_ENCODER = {"width": 0.25, "seed": 0}
#: The evaluation VGG: other random weights, twice the width.
EVALUATION_ENCODER = {"width": 0.5, "seed": 1}
CONTENT_LEVEL = "relu3_1"
STYLE_LEVELS = VGGEncoder.levels
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
INTERPOLATION = (1.0, 0.75, 0.5, 0.25, 0.0)
#: Seed of the "another image of the style" baseline (the evaluated style images have seed 0).
OTHER_SEED = 1
STYLIZERS = ("adain", "wct", "cin", "fast", "fast_bn")
#: Grid files, ``<out>_<name>.png``.
GRIDS = ("adain_grid", "wct_grid", "alpha", "interpolation", "cin_interpolation", "fast_in_bn", "preserve_color")
#: Metrics: key -> (column heading, what it measures).
METRICS = {
    "content": ("content (eval VGG)", f"MSE of the evaluation VGG's {CONTENT_LEVEL} features, output vs content photo"),
    "vgg_moments": ("style mean/std (eval VGG)", "AdaIN mean/std loss, evaluation VGG relu1_1..relu4_1, output vs style image"),
    "vgg_gram": ("style Gram (eval VGG)", "Gram loss, evaluation VGG relu1_1..relu4_1, output vs style image"),
    "bank_moments": ("texture mean/std (filter bank)", "mean/std loss of the filter-bank responses, 4 scales"),
    "bank_gram": ("texture Gram (filter bank)", "Gram loss of the filter-bank responses, 4 scales"),
    "lab_moments": ("colour mean/std (Lab)", "mean/std loss of the CIE Lab pixels (L in [0, 100])"),
    "train_content": ("content (training VGG)", "as 'content', with the training encoder (reference)"),
    "train_moments": ("style mean/std (training VGG)", "as 'style mean/std', with the training encoder (reference)"),
    "train_gram": ("style Gram (training VGG)", "as 'style Gram', with the training encoder (reference)"),
}
EVALUATION_COLUMNS = ("content", "vgg_moments", "vgg_gram", "bank_moments", "bank_gram", "lab_moments")
REFERENCE_COLUMNS = ("train_content", "train_moments", "train_gram")
SWEEP_COLUMNS = ("content", "vgg_moments", "vgg_gram", "bank_moments", "bank_gram", "train_moments")
STYLE_COLUMNS = ("vgg_moments", "vgg_gram", "bank_moments", "bank_gram", "lab_moments", "train_moments", "train_gram")


# ------------------------------------------------------------------------------------------ descriptors


class FilterBank:
    """A texture descriptor without learned weights: rectified oriented Gaussian-derivative responses on a Gaussian pyramid.

    Per pyramid level (``scales`` of them, each half the size of the one before, :func:`kornia.geometry.transform.pyrdown`):
    the CIE Lab image (L in [0, 100]) is smoothed with a Gaussian of sigma 1, its first derivatives
    (Sobel) are steered to ``orientations`` angles on each of L, a and b, its second derivatives on L,
    and the absolute values are kept: ``4 * orientations`` responses ``(N, 16, H, W)`` at the default.
    :meth:`features` returns ``{"scale1": ..., "scale2": ..., ...}``, the layout the style losses take.
    """

    def __init__(self, scales: int = 4, orientations: int = 4) -> None:
        self.scales, self.orientations = scales, orientations
        self.levels = tuple(f"scale{2**k}" for k in range(scales))

    def features(self, images: Tensor) -> dict[str, Tensor]:
        x = rgb_to_lab(images.clamp(0.0, 1.0))
        angles = [math.pi * k / self.orientations for k in range(self.orientations)]
        out = {}
        for k, level in enumerate(self.levels):
            if k:
                x = pyrdown(x)
            smooth = gaussian_blur2d(x, (5, 5), (1.0, 1.0), border_type="reflect")
            first = spatial_gradient(smooth, "sobel", 1)  # (N, 3, 2, H, W): d/dx, d/dy
            second = spatial_gradient(smooth[:, :1], "sobel", 2)[:, 0]  # (N, 3, H, W): xx, xy, yy of L
            responses = [math.cos(a) * first[:, :, 0] + math.sin(a) * first[:, :, 1] for a in angles]
            responses += [
                (math.cos(a) ** 2 * second[:, 0] + 2 * math.cos(a) * math.sin(a) * second[:, 1] + math.sin(a) ** 2 * second[:, 2])[:, None]
                for a in angles
            ]
            out[level] = torch.cat(responses, 1).abs()
        return out


@dataclass
class Descriptors:
    """Everything the metrics are computed with."""

    evaluation: VGGEncoder
    training: VGGEncoder
    bank: FilterBank

    @classmethod
    def build(cls) -> Descriptors:
        return cls(VGGEncoder.random(**EVALUATION_ENCODER).eval(), VGGEncoder.random(**TRAINING_ENCODER).eval(), FilterBank())


def lab(images: Tensor) -> dict[str, Tensor]:
    return {"lab": rgb_to_lab(images.clamp(0.0, 1.0))}


def rgb_moments(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the RGB mean ``(N, 3)`` and covariance ``(N, 3, 3)`` of the pixels (float64)."""
    flat = images.double().flatten(2)
    mean = flat.mean(2)
    centred = flat - mean[..., None]
    return mean, centred @ centred.transpose(1, 2) / flat.shape[2]


def colour_distances(outputs: Tensor, references: Tensor) -> dict[str, list[float]]:
    """Per image, ``|mean(y) - mean(r)|_2`` and ``|cov(y) - cov(r)|_F`` of the RGB pixels."""
    mean_y, cov_y = rgb_moments(outputs)
    mean_r, cov_r = rgb_moments(references)
    return {"mean": (mean_y - mean_r).norm(dim=1).tolist(), "cov": (cov_y - cov_r).flatten(1).norm(dim=1).tolist()}


# ------------------------------------------------------------------------------------------ set-up


@dataclass
class Settings:
    """What one run measures: the full protocol or the smoke test."""

    size: int
    contents: list[str]
    styles: list[str]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=int,
        default=128,
        help="side of the square content and style images (default: %(default)s; the stylizers were trained "
        "on 64-pixel crops of images 96 pixels high)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="folder of stylizer files style_{adain,wct,cin,fast,fast_bn}.pt to evaluate (default: the shipped ones)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "style_eval", help="output path without suffix: <out>.md, <out>.json, <out>_<grid>.png"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files (else refuse before running)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 64 px, two contents, two training styles and one held-out; written to the temp folder",
    )
    args = parser.parse_args(argv)
    if args.quick and args.out == RESULTS / "style_eval":
        args.out = Path(tempfile.gettempdir()) / "normapps_style_eval_quick" / "style_eval"
        args.overwrite = True  # the script's own scratch files
    if args.quick and args.size == 128:
        args.size = 64
    if args.size < 32:
        parser.error(f"--size must be >= 32 (the encoders pool three times), got {args.size}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    refuse_existing(parser, output_paths(args.out), args.overwrite)
    return args


def output_paths(out: Path) -> list[Path]:
    return [out.with_suffix(".md"), out.with_suffix(".json")] + [grid_path(out, name) for name in GRIDS]


def grid_path(out: Path, name: str) -> Path:
    return out.parent / f"{out.name}_{name}.png"


def settings_of(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(args.size, list(content_names("test")[:2]), [*style_names("train")[:2], style_names("held_out")[0]])
    return Settings(args.size, list(content_names("test")), [*style_names("train"), *style_names("held_out")])


def load_stylizers(checkpoint_dir: Path | None) -> dict[str, Stylizer]:
    """The five stylizers by name (``fast_bn`` is a ``fast`` stylizer), shipped or from ``checkpoint_dir``."""
    stylizers = {}
    for name in STYLIZERS:
        if checkpoint_dir is None:
            stylizers[name] = load_stylizer(name)
        else:
            stylizers[name] = load_stylizer("fast" if name == "fast_bn" else name, checkpoint_dir / SHIPPED[name][0])
    return stylizers


def square(image: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` crop of an image whose shorter side is ``size``."""
    height, width = image.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def monotone(values: Sequence[float], increasing: bool, tolerance: float = 1e-9) -> bool:
    steps = [b - a for a, b in zip(values, values[1:])]
    return all(s >= -tolerance for s in steps) if increasing else all(s <= tolerance for s in steps)


# ------------------------------------------------------------------------------------------ stylization


class Bench:
    """The data, stylizers and descriptors of one run, with the stylization calls the sections share."""

    def __init__(self, settings: Settings, stylizers: dict[str, Stylizer]) -> None:
        self.settings = settings
        self.stylizers = stylizers
        size = settings.size
        names = list(content_names("test"))
        photos = content_images("test", size=size)
        self.contents = torch.stack([square(photos[names.index(n)], size) for n in settings.contents])
        self.styles = {name: style_image(name, size) for name in settings.styles}
        fast_style = stylizers["fast"].styles[0]
        self.fast_style = fast_style if fast_style in style_names() else None
        if self.fast_style is not None and self.fast_style not in self.styles:
            self.styles[self.fast_style] = style_image(self.fast_style, size)
        self.others = {name: style_image(name, size, seed=OTHER_SEED) for name in self.styles}
        self.descriptors = Descriptors.build()
        with torch.inference_mode():
            self.content_features = {
                "eval": self.descriptors.evaluation.features(self.contents, [CONTENT_LEVEL])[CONTENT_LEVEL],
                "train": self.descriptors.training.features(self.contents, [CONTENT_LEVEL])[CONTENT_LEVEL],
            }
        self.references: dict[str, dict[str, Any]] = {}
        self.features: dict[tuple[str, str], Any] = {}

    def style_features(self, method: str, style: str) -> Any:
        key = (method, style)
        if key not in self.features:
            self.features[key] = self.stylizers[method].encode_style([self.styles[style][None]])
        return self.features[key]

    def stylize(self, method: str, style: str, **options: Any) -> Tensor:
        """Every content photo stylized with ``style`` by ``method`` (adain, wct: with ``options``)."""
        stylizer = self.stylizers[method]
        with torch.inference_mode():
            if method in ("adain", "wct"):
                return stylizer(self.contents, style_features=self.style_features(method, style), **options)
            if method == "cin":
                return stylizer(self.contents, style_names=[style])
            return stylizer(self.contents)

    def baseline(self, name: str, style: str) -> Tensor:
        n = len(self.contents)
        if name == "content image":
            return self.contents.clone()
        if name == "colour transfer":
            return color_transfer(self.contents, self.styles[style][None])
        if name == "style image (seed 1)":
            return self.others[style][None].expand(n, -1, -1, -1).contiguous()
        raise ValueError(name)

    def measure(self, outputs: Tensor, style: str) -> dict[str, list[float]]:
        """Every metric of :data:`METRICS` per image: ``outputs[i]`` against content photo ``i`` and the image of ``style``."""
        if len(outputs) != len(self.contents):
            raise ValueError(f"expected one output per content photo ({len(self.contents)}), got {len(outputs)}")
        d = self.descriptors
        if style not in self.references:
            with torch.inference_mode():
                image = self.styles[style][None]
                self.references[style] = {
                    "eval": d.evaluation.features(image, STYLE_LEVELS),
                    "train": d.training.features(image, STYLE_LEVELS),
                    "bank": d.bank.features(image),
                    "lab": lab(image),
                }
        reference = self.references[style]
        results: dict[str, list[float]] = {}
        with torch.inference_mode():
            for prefix, key, encoder in (("", "eval", d.evaluation), ("train_", "train", d.training)):
                feats = encoder.features(outputs, STYLE_LEVELS)
                content = content_loss(feats[CONTENT_LEVEL], self.content_features[key], reduction="none")
                results["train_content" if prefix else "content"] = content.tolist()
                results[f"{prefix or 'vgg_'}moments"] = style_loss_moments(feats, reference[key], reduction="none").tolist()
                results[f"{prefix or 'vgg_'}gram"] = style_loss_gram(feats, reference[key], reduction="none").tolist()
            bank = d.bank.features(outputs)
            results["bank_moments"] = style_loss_moments(bank, reference["bank"], reduction="none").tolist()
            results["bank_gram"] = style_loss_gram(bank, reference["bank"], reduction="none").tolist()
            results["lab_moments"] = style_loss_moments(lab(outputs), reference["lab"], reduction="none").tolist()
        return {key: results[key] for key in METRICS}


BASELINES = ("content image", "colour transfer", "style image (seed 1)")


def merge(into: dict[str, list[float]], part: dict[str, list[float]]) -> None:
    for key, values in part.items():
        into.setdefault(key, []).extend(values)


def main_tables(bench: Bench, log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Per style split and method, every metric per (content, style) pair; and the full-strength outputs by (method, style)."""
    splits = {
        "train": [s for s in bench.settings.styles if s in style_names("train")],
        "held_out": [s for s in bench.settings.styles if s in style_names("held_out")],
    }
    cin_styles = set(bench.stylizers["cin"].styles)
    outputs: dict[str, Tensor] = {}
    tables: dict[str, Any] = {}
    for split, styles in splits.items():
        rows: dict[str, dict[str, list[float]]] = {}
        for style in styles:
            methods = [*BASELINES, "adain", "wct"] + (["cin"] if style in cin_styles else [])
            for method in methods:
                images = bench.baseline(method, style) if method in BASELINES else bench.stylize(method, style)
                outputs[f"{method}/{style}"] = images
                merge(rows.setdefault(method, {}), bench.measure(images, style))
        tables[split] = {"styles": styles, "contents": bench.settings.contents, "rows": rows}
        log(
            f"{split} styles: "
            + ", ".join(f"{m} {statistics.fmean(r['vgg_moments']):.3g}" for m, r in rows.items())
            + " (style mean/std, eval VGG)"
        )
    return tables, outputs


def alpha_sweep(bench: Bench, log: Callable[[str], None]) -> dict[str, Any]:
    """adain and wct at every alpha of :data:`ALPHAS`: metrics per pair, means, and whether they move monotonically."""
    styles = bench.settings.styles
    result: dict[str, Any] = {}
    for method in ("adain", "wct"):
        per_alpha: dict[str, dict[str, list[float]]] = {}
        for alpha in ALPHAS:
            values: dict[str, list[float]] = {}
            for style in styles:
                merge(values, bench.measure(bench.stylize(method, style, alpha=alpha), style))
            per_alpha[f"{alpha:g}"] = values
        pairs = len(next(iter(per_alpha.values()))["content"])
        checks = {}
        for key in SWEEP_COLUMNS:
            means = [statistics.fmean(per_alpha[f"{a:g}"][key]) for a in ALPHAS]
            increasing = key == "content"  # content loss should grow with alpha, style losses fall
            per_pair = sum(monotone([per_alpha[f"{a:g}"][key][i] for a in ALPHAS], increasing) for i in range(pairs))
            checks[key] = {"means": means, "mean_monotone": monotone(means, increasing), "pairs_monotone": per_pair, "pairs": pairs}
        result[method] = {"values": per_alpha, "checks": checks}
        log(
            f"alpha sweep {method}: style mean/std (eval VGG) {[round(v, 4) for v in checks['vgg_moments']['means']]}, "
            f"monotone for {checks['vgg_moments']['pairs_monotone']}/{pairs} pairs"
        )
    return result


def weights_check(bench: Bench) -> dict[str, Any]:
    """Max |output with style weights (1, 0) - output with the first style alone| (and (0, 1) vs the second)."""
    styles = bench.settings.styles
    pairs = list(zip(styles, styles[1:] + styles[:1]))
    result = {}
    with torch.inference_mode():
        for method in ("adain", "wct"):
            stylizer = bench.stylizers[method]
            worst = 0.0
            for first, second in pairs:
                both = [bench.style_features(method, first)[0], bench.style_features(method, second)[0]]
                for weights, alone in (((1.0, 0.0), first), ((0.0, 1.0), second)):
                    mixed = stylizer(bench.contents, style_features=both, weights=list(weights))
                    single = bench.stylize(method, alone)
                    worst = max(worst, float((mixed - single).abs().max()))
            result[method] = {"max_abs_difference": worst, "style_pairs": len(pairs), "contents": len(bench.contents)}
        cin = bench.stylizers["cin"]
        known = [s for s in styles if s in cin.styles]
        if len(known) >= 2:
            cin_pairs = list(zip(known, known[1:] + known[:1]))
            worst = 0.0
            for first, second in cin_pairs:
                for weights, alone in (((1.0, 0.0), first), ((0.0, 1.0), second)):
                    mixed = cin(bench.contents, style_names=[first, second], weights=list(weights))
                    worst = max(worst, float((mixed - cin(bench.contents, style_names=[alone])).abs().max()))
            result["cin"] = {"max_abs_difference": worst, "style_pairs": len(cin_pairs), "contents": len(bench.contents)}
    return result


def colour_check(bench: Bench, outputs: dict[str, Tensor]) -> dict[str, Any]:
    """RGB mean / covariance distances of adain and wct outputs to the content and to the style, with and without colour preservation."""
    result: dict[str, Any] = {}
    for method in ("adain", "wct"):
        rows: dict[str, dict[str, list[float]]] = {}
        for style in bench.settings.styles:
            style_batch = bench.styles[style][None].expand(len(bench.contents), -1, -1, -1)
            preserved_style = preserve_color(bench.styles[style][None], bench.contents)
            with torch.inference_mode():
                preserved = bench.stylizers[method](bench.contents, [preserved_style])
            outputs[f"{method}+preserve/{style}"] = preserved
            for name, images in (("without", outputs[f"{method}/{style}"]), ("with --preserve-color", preserved)):
                row = rows.setdefault(name, {})
                for reference, against in (("content", bench.contents), ("style", style_batch)):
                    for key, values in colour_distances(images, against).items():
                        row.setdefault(f"{key}_to_{reference}", []).extend(values)
                row.setdefault("vgg_moments", []).extend(bench.measure(images, style)["vgg_moments"])
        result[method] = rows
    reference: dict[str, list[float]] = {}
    for style in bench.settings.styles:
        style_batch = bench.styles[style][None].expand(len(bench.contents), -1, -1, -1)
        for key, values in colour_distances(style_batch, bench.contents).items():
            reference.setdefault(f"{key}_to_content", []).extend(values)
    result["style image"] = {"": reference}
    return result


def in_vs_bn(bench: Bench, outputs: dict[str, Tensor]) -> dict[str, Any] | None:
    """The fast network's style on every content photo: fast (IN), fast_bn (BN) and the other methods, every metric."""
    style = bench.fast_style
    if style is None or bench.stylizers["fast_bn"].styles != bench.stylizers["fast"].styles:
        return None
    rows: dict[str, dict[str, list[float]]] = {}
    methods = [*BASELINES[:2], "adain", "wct"] + (["cin"] if style in bench.stylizers["cin"].styles else [])
    for method in [*methods, "fast", "fast_bn"]:
        images = bench.baseline(method, style) if method in BASELINES else bench.stylize(method, style)
        outputs[f"{method}/{style}"] = images
        rows[method] = bench.measure(images, style)
    wins = {key: sum(i < b for i, b in zip(rows["fast"][key], rows["fast_bn"][key])) for key in (*STYLE_COLUMNS, "content")}
    return {"style": style, "contents": bench.settings.contents, "rows": rows, "in_lower": wins}


# ------------------------------------------------------------------------------------------ grids


def write_grid(path: Path, rows: list[list[Tensor]], overwrite: bool) -> None:
    """Equal-sized images ``(3, S, S)``, row by row, 2-pixel white gaps (:func:`torchvision.utils.make_grid`)."""
    columns = max(len(row) for row in rows)
    blank = torch.ones_like(rows[0][0])
    cells = [cell for row in rows for cell in row + [blank] * (columns - len(row))]
    save_image(make_grid(torch.stack(cells), nrow=columns, padding=2, pad_value=1.0), path, overwrite=overwrite)


def grids(bench: Bench, outputs: dict[str, Tensor], out: Path, overwrite: bool) -> dict[str, str]:
    """Write every grid of :data:`GRIDS`; return what each shows, by file name."""
    contents, styles = bench.contents, bench.settings.styles
    blank = torch.ones_like(contents[0])
    described = {}

    def write(name: str, rows: list[list[Tensor]], text: str) -> None:
        write_grid(grid_path(out, name), rows, overwrite)
        described[grid_path(out, name).name] = text

    style_row = ", ".join(styles)
    for method in ("adain", "wct"):
        rows = [[blank] + [bench.styles[s] for s in styles]]
        rows += [[contents[i]] + [outputs[f"{method}/{s}"][i] for s in styles] for i in range(len(contents))]
        write(
            f"{method}_grid",
            rows,
            f"{method}: first row the style images ({style_row}; the held-out styles are "
            f"{', '.join(s for s in styles if s in style_names('held_out'))}), first column the content photos "
            f"({', '.join(bench.settings.contents)}), the rest each content stylized with each style (alpha 1).",
        )

    held_out = [s for s in styles if s in style_names("held_out")] or styles
    picks = [(0, held_out[0]), (len(contents) - 1, styles[0])]
    rows = []
    with torch.inference_mode():
        for method in ("adain", "wct"):
            for i, style in picks:
                sweep = [
                    bench.stylizers[method](contents[i : i + 1], style_features=bench.style_features(method, style), alpha=a)[0]
                    for a in ALPHAS
                ]
                rows.append([contents[i], *sweep, bench.styles[style]])
    write(
        "alpha",
        rows,
        f"Alpha sweep: each row the content photo, the output at alpha {', '.join(f'{a:g}' for a in ALPHAS)}, "
        f"and the style image; rows 1-2 adain, rows 3-4 wct ({bench.settings.contents[picks[0][0]]} with {picks[0][1]}, "
        f"{bench.settings.contents[picks[1][0]]} with {picks[1][1]}).",
    )

    first, second = styles[0], held_out[-1] if held_out[-1] != styles[0] else styles[1]
    rows = []
    with torch.inference_mode():
        for method in ("adain", "wct"):
            both = [bench.style_features(method, first)[0], bench.style_features(method, second)[0]]
            mixed = [bench.stylizers[method](contents[:1], style_features=both, weights=[w, 1 - w])[0] for w in INTERPOLATION]
            rows.append([bench.styles[first], *mixed, bench.styles[second]])
    write(
        "interpolation",
        rows,
        f"Two-style interpolation of {bench.settings.contents[0]}: style {first}, outputs with "
        f"weights {', '.join(f'({w:g}, {1 - w:g})' for w in INTERPOLATION)}, style {second}; top adain, bottom wct.",
    )

    cin = bench.stylizers["cin"]
    known = [s for s in styles if s in cin.styles]
    if len(known) >= 2:
        a, b = known[0], known[-1]
        rows = []
        with torch.inference_mode():
            for i in (0, len(contents) - 1):
                mixed = [cin(contents[i : i + 1], style_names=[a, b], weights=[w, 1 - w])[0] for w in INTERPOLATION]
                rows.append([bench.styles[a], *mixed, bench.styles[b]])
        write(
            "cin_interpolation",
            rows,
            f"cin interpolation (every layer's gamma and beta mixed): style {a}, outputs with "
            f"weights {', '.join(f'({w:g}, {1 - w:g})' for w in INTERPOLATION)}, style {b}; top "
            f"{bench.settings.contents[0]}, bottom {bench.settings.contents[-1]}.",
        )

    if bench.fast_style is not None and f"fast/{bench.fast_style}" in outputs:
        s = bench.fast_style
        rows = [
            [contents[i], outputs[f"fast/{s}"][i], outputs[f"fast_bn/{s}"][i], outputs[f"adain/{s}"][i], bench.styles[s]]
            for i in range(len(contents))
        ]
        write(
            "fast_in_bn",
            rows,
            f"Fast network, style {s}: per content photo the photo, fast with instance norm, fast with "
            "batch norm (running statistics, eval mode), adain with the same style for comparison, the style image.",
        )

    picks = [(i % len(contents), style) for i, style in enumerate(styles[:3])]
    rows = [
        [
            contents[i],
            bench.styles[style],
            outputs[f"adain/{style}"][i],
            outputs[f"adain+preserve/{style}"][i],
            outputs[f"wct/{style}"][i],
            outputs[f"wct+preserve/{style}"][i],
        ]
        for i, style in picks
    ]
    write(
        "preserve_color",
        rows,
        "Colour preservation: content photo, style image, adain, adain with --preserve-color, "
        "wct, wct with --preserve-color; one row each for "
        + ", ".join(f"{bench.settings.contents[i]} with {style}" for i, style in picks)
        + ".",
    )
    return described


# ------------------------------------------------------------------------------------------ report


def cell(values: Sequence[float]) -> str:
    s = summary(values)
    return f"{s['mean']:.3g} ± {s['std']:.2g}"


def table(rows: dict[str, dict[str, list[float]]], columns: Sequence[str], label: str = "method") -> list[str]:
    lines = [f"| {label} | n | " + " | ".join(METRICS[c][0] for c in columns) + " |", "| --- | --- |" + " --- |" * len(columns)]
    for name, values in rows.items():
        lines.append(f"| {name} | {len(values[columns[0]])} | " + " | ".join(cell(values[c]) for c in columns) + " |")
    return lines


PAIRED = (
    ("content image", "vgg_moments"),
    ("content image", "vgg_gram"),
    ("content image", "bank_moments"),
    ("content image", "bank_gram"),
    ("colour transfer", "vgg_moments"),
    ("colour transfer", "bank_gram"),
)


def paired_table(rows: dict[str, dict[str, list[float]]]) -> list[str]:
    """Per stylization method, the pairs where its loss is below a baseline's on the same pair."""
    methods = [m for m in ("adain", "wct", "cin") if m in rows]
    lines = [
        "Pairs where the method's loss is below the baseline's on the same (content, style) pair:",
        "",
        "| method | " + " | ".join(f"< {b}, {METRICS[k][0]}" for b, k in PAIRED) + " |",
        "| --- |" + " --- |" * len(PAIRED),
    ]
    for method in methods:
        counts = [f"{sum(m < b for m, b in zip(rows[method][k], rows[base][k]))}/{len(rows[method][k])}" for base, k in PAIRED]
        lines.append(f"| {method} | " + " | ".join(counts) + " |")
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    out = [
        "# Style transfer: evaluation with encoders other than the training one",
        "",
        f"Stylizers `{report['checkpoints']}` on the {len(s['contents'])} held-out content photos "
        f"({', '.join(s['contents'])}; no stylizer saw them), {s['size']} x {s['size']} (shorter side resized to {s['size']}, "
        f"centre crop), and the generated styles at the same size (seed 0). The networks were trained on 64-pixel crops of "
        "images 96 pixels high; `normapps stylize` defaults to 512 pixels, where the numbers may differ "
        "(`--size` reruns this at another size). Mean ± sample std over (content, style) pairs; "
        "n is the number of pairs. Lower is closer for every column.",
        "",
        "## What the numbers can and cannot say",
        "",
        "Every stylizer was trained with one fixed random-weight encoder, `VGGEncoder.random(width=0.25, seed=0)`; "
        "measuring it with that encoder would score the networks on their own training objective. The evaluation "
        "therefore uses descriptors the networks never saw:",
        "",
        f"- **eval VGG**: `VGGEncoder.random(width={EVALUATION_ENCODER['width']}, seed={EVALUATION_ENCODER['seed']})`, "
        "the VGG-19 layout with other random weights and twice the width. Content: MSE of its "
        f"{CONTENT_LEVEL} features, output vs content photo. Style: AdaIN's mean/std loss and the Gram loss "
        "(Gram / (C H W)) against the style image, summed over relu1_1..relu4_1.",
        "- **filter bank**: no learned weights at all; rectified oriented Gaussian-derivative responses (first "
        "derivatives of L, a and b, second derivatives of L, four orientations each) on a four-level Gaussian "
        "pyramid of the CIE Lab image; the same mean/std and Gram losses on its 16 responses per level.",
        "- **Lab colour**: the mean/std loss of the Lab pixels (L in [0, 100], a and b about -100 to 100): colour alone.",
        "",
        "**Neither VGG is an ImageNet-trained VGG** (none is available offline). Random-weight VGG features "
        "respond to colour and local texture, not to objects: a low content loss here says that the output keeps "
        "the content photo's local structure (edges, shading, layout) as a random network sees it, not that a "
        "person or a trained network would recognise the same objects; a low style loss says that colour and "
        "local-texture statistics match. Both random VGGs share the architecture (3x3 convolutions, ReLU, max "
        "pooling, the same standardization) and so a bias towards what that architecture measures; the filter "
        "bank does not share it. Numbers from the training encoder are given only as a reference. The content "
        "image, the Lab colour transfer and another image of the same style (drawn with seed 1) bracket each "
        "column: the first has content loss 0, the last two show how far colour matching alone and a second "
        "sample of the style get.",
        "",
    ]
    for split, title in (("train", "training styles"), ("held_out", "held-out styles (never seen in training)")):
        t = report["main"][split]
        if not t["styles"]:
            continue
        out += [
            f"## {title.capitalize()}: {', '.join(t['styles'])}",
            "",
            *table(t["rows"], EVALUATION_COLUMNS),
            "",
            "Training encoder (reference: the networks' own objective):",
            "",
            *table(t["rows"], REFERENCE_COLUMNS),
            "",
        ]
        out += paired_table(t["rows"])
    out += alpha_markdown(report["alpha"])
    out += [
        "## Style weights (1, 0) against the single style",
        "",
        "| method | style pairs x contents | max abs difference |",
        "| --- | --- | --- |",
    ]
    for method, r in report["weights"].items():
        out.append(f"| {method} | {r['style_pairs']} x {r['contents']} (both orders) | {r['max_abs_difference']:.3g} |")
    out += ["", "Outputs in [0, 1]; the difference of (0, 1) with the second style is included.", ""]
    out += colour_markdown(report["colour"])
    out += in_bn_markdown(report["in_vs_bn"])
    out += ["## Grids", ""]
    for name, text in report["grids"].items():
        out += [f"![{name}]({name})", "", f"`{name}`: {text}", ""]
    out += [
        f"Command: `{report['command']}`",
        "",
        f"Date: {report['date']}; {report['seconds']:.0f} s on {report['threads']} thread(s); torch {report['torch']}, "
        f"kornia {report['kornia']}, {report['machine']}, Python {report['python']}.",
    ]
    return "\n".join(out)


def alpha_markdown(sweep: dict[str, Any]) -> list[str]:
    out = [
        "## Stylization strength over alpha",
        "",
        "Mean over all pairs (training and held-out styles). alpha = 0 decodes the content features unchanged "
        "(the decoder's reconstruction; for wct, four encode-decode passes, one per level), alpha = 1 is full style. "
        "Style losses should fall as alpha grows, content loss rise.",
        "",
    ]
    for method, r in sweep.items():
        checks = r["checks"]
        out += [
            f"### {method}",
            "",
            "| alpha | " + " | ".join(METRICS[c][0] for c in SWEEP_COLUMNS) + " |",
            "| --- |" + " --- |" * len(SWEEP_COLUMNS),
        ]
        for i, alpha in enumerate(ALPHAS):
            out.append(f"| {alpha:g} | " + " | ".join(f"{checks[c]['means'][i]:.4g}" for c in SWEEP_COLUMNS) + " |")
        out.append("| monotone (mean) | " + " | ".join("yes" if checks[c]["mean_monotone"] else "**no**" for c in SWEEP_COLUMNS) + " |")
        out.append(
            "| monotone (pairs) | " + " | ".join(f"{checks[c]['pairs_monotone']}/{checks[c]['pairs']}" for c in SWEEP_COLUMNS) + " |"
        )
        out.append("")
    return out


def colour_markdown(colour: dict[str, Any]) -> list[str]:
    out = [
        "## Colour preservation",
        "",
        "Distance of the output's RGB pixel mean (L2) and covariance (Frobenius) to the content photo's and to the "
        "style image's, images in [0, 1]; with `--preserve-color` the style image's RGB mean and covariance are first "
        "matched to the content's (`preserve_color`). Mean ± std over all pairs.",
        "",
        "| method | mean to content | cov to content | mean to style | cov to style | style mean/std (eval VGG) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in ("adain", "wct"):
        for name, row in colour[method].items():
            out.append(
                f"| {method}, {name} | {cell(row['mean_to_content'])} | {cell(row['cov_to_content'])} | "
                f"{cell(row['mean_to_style'])} | {cell(row['cov_to_style'])} | {cell(row['vgg_moments'])} |"
            )
    ref = colour["style image"][""]
    out += [
        f"| the style image itself | {cell(ref['mean_to_content'])} | {cell(ref['cov_to_content'])} | 0 | 0 | 0 |",
        "",
        "The style-loss column shows what colour preservation costs in the style statistics (the colour is part of the style).",
        "",
    ]
    return out


def in_bn_markdown(result: dict[str, Any] | None) -> list[str]:
    out = ["## Instance norm against batch norm in the fast network", ""]
    if result is None:
        return out + ["Not measured: the fast and fast_bn stylizers do not share one generated style.", ""]
    rows, n = result["rows"], len(result["contents"])
    out += [
        f"Johnson et al.'s network trained for the style {result['style']} with instance norm (fast) and with batch "
        "norm (fast_bn, evaluated in eval mode with its running statistics), on the held-out content photos, with "
        "the other methods on the same style for comparison (Ulyanov et al. 2016 report that IN stylizes better).",
        "",
        *table(rows, EVALUATION_COLUMNS),
        "",
        *table(rows, REFERENCE_COLUMNS),
        "",
        f"Pairs (of {n}) where fast (IN) is below fast_bn (BN): "
        + ", ".join(f"{METRICS[k][0]} {v}/{n}" for k, v in result["in_lower"].items())
        + ".",
        "",
    ]
    return out


def to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_of(args)
    torch.set_num_threads(args.threads)
    command = command_line(__file__, argv)
    start = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {text}", flush=True)

    stylizers = load_stylizers(args.checkpoint_dir)
    bench = Bench(settings, stylizers)
    log(f"{len(settings.contents)} contents x {len(settings.styles)} styles at {settings.size} px")
    tables, outputs = main_tables(bench, log)
    sweep = alpha_sweep(bench, log)
    weights = weights_check(bench)
    log("style weights (1, 0) vs single: " + ", ".join(f"{m} {r['max_abs_difference']:.2g}" for m, r in weights.items()))
    colour = colour_check(bench, outputs)
    fast = in_vs_bn(bench, outputs)
    described = grids(bench, outputs, args.out, args.overwrite)
    log(f"wrote {len(described)} grids")
    report = {
        "command": command,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "kornia": kornia.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "checkpoints": str(args.checkpoint_dir) if args.checkpoint_dir else "checkpoints/style_{adain,wct,cin,fast,fast_bn}.pt",
        "stylizers": {
            name: {"method": s.method, "styles": s.styles, "training": s.config.get("training")} for name, s in stylizers.items()
        },
        "settings": {
            "size": settings.size,
            "contents": settings.contents,
            "styles": settings.styles,
            "training_encoder": TRAINING_ENCODER,
            "evaluation_encoder": EVALUATION_ENCODER,
            "content_level": CONTENT_LEVEL,
            "style_levels": list(STYLE_LEVELS),
            "alphas": list(ALPHAS),
            "other_seed": OTHER_SEED,
            "metrics": {k: v[1] for k, v in METRICS.items()},
        },
        "main": tables,
        "alpha": sweep,
        "weights": weights,
        "colour": colour,
        "in_vs_bn": fast,
        "grids": described,
        "seconds": time.perf_counter() - start,
    }
    write_results(args.out, to_json(report), markdown(report), indent=1, end="\n")
    log(f"wrote {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
