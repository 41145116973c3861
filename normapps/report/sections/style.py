"""Report section: the shipped stylizers on held-out photos: a content x style grid, an alpha sweep, style interpolation."""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid

from normapps.data.images import save_image
from normapps.data.style import content_images, content_names, style_image, style_names
from normapps.models import VGGEncoder
from normapps.report.builder import Figure, ReportContext, Section, section
from normapps.tasks.style.checkpoints import SHIPPED, Stylizer, checkpoint_path, load_stylizer
from normapps.tasks.style.losses import content_loss, style_loss_moments
from normapps.tasks.style.transfer import color_transfer

#: The encoder of every shipped stylizer, and the other random VGG the section measures with.
TRAINING_ENCODER = {"width": 0.25, "seed": 0}
EVALUATION_ENCODER = {"width": 0.5, "seed": 1}
CONTENT_LEVEL = "relu3_1"
#: The shipped stylizers the section shows.
METHODS = ("adain", "wct", "cin")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)


@dataclass(frozen=True)
class _Plan:
    """Image side, content photos and styles of one run: the full one or the fast smoke run."""

    size: int
    contents: tuple[str, ...]
    styles: tuple[str, ...]


#: Three training and three held-out styles on the four held-out photos, 128 pixels (about 10 s on one thread).
FULL = _Plan(128, content_names("test"), ("mosaic", "waves", "brush", "dots", "cracks", "gravel"))
#: The smallest run that draws every figure: two photos, one training and one held-out style, 64 pixels.
FAST = _Plan(64, content_names("test")[:2], ("mosaic", "dots"))


def _missing() -> list[str]:
    """The shipped stylizer files this section needs that are not there, each with the command that makes it."""
    return [f"{checkpoint_path(method)} ({SHIPPED[method][1]})" for method in METHODS if not checkpoint_path(method).is_file()]


def _square(image: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` crop of an image whose shorter side is ``size``."""
    height, width = image.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return image[:, top : top + size, left : left + size]


def _save_grid(ctx: ReportContext, rows: list[list[Tensor]], name: str, caption: str) -> Figure:
    """Rows of equal-sized images as one PNG (2-pixel white gaps), written into the report's folder."""
    columns = max(len(row) for row in rows)
    blank = torch.ones_like(rows[0][0])
    cells = [image for row in rows for image in row + [blank] * (columns - len(row))]
    save_image(make_grid(torch.stack(cells), nrow=columns, padding=2, pad_value=1.0), Path(ctx.out_dir) / f"{name}.png",
               overwrite=True)
    return Figure(f"{name}.png", caption)


def _steps(stylizer: Stylizer) -> str:
    """``", N training steps"`` from the file's record, if it has one."""
    training = stylizer.config.get("training") or {}
    steps = training.get("steps") if isinstance(training, dict) else None
    return f", {steps} training steps" if isinstance(steps, int) else ""


@section("Style transfer: the statistics are the style", order=30)
def style_section(ctx: ReportContext) -> Section:
    """AdaIN, WCT and CIN stylizers of ``checkpoints/`` on the held-out content photos, without training.

    Draws a content x style grid (AdaIN), an alpha sweep (AdaIN and WCT) and a two-style
    interpolation (AdaIN, and CIN between two of its trained styles), and measures content and
    style losses with a random VGG other than the training encoder. If a shipped stylizer file is
    missing (an incomplete checkout), the section says which and how each is made, and draws
    nothing, so that the rest of the report still builds.
    """
    missing = _missing()
    if missing:
        ctx.progress(f"style section not drawn: {len(missing)} shipped stylizer file(s) missing")
        items = "".join(f"<li><code>{html.escape(item)}</code></li>" for item in missing)
        return Section(html="<p><strong>Not drawn: the shipped stylizers this section uses are missing.</strong> They come "
                            "with the repository, so this checkout is incomplete; restore them (e.g. <code>git checkout -- "
                            f"checkpoints</code>) or make them again with the command after each file:</p><ul>{items}</ul>")
    plan = FAST if ctx.fast else FULL
    ctx.progress("loading the shipped adain, wct and cin stylizers")
    adain, wct, cin = (load_stylizer(method) for method in METHODS)
    photos = dict(zip(content_names("test"), content_images("test", size=plan.size)))
    contents = torch.stack([_square(photos[name], plan.size) for name in plan.contents])
    styles = {name: style_image(name, plan.size) for name in plan.styles}
    held_out = [name for name in plan.styles if name in style_names("held_out")]
    trained = [name for name in plan.styles if name in style_names("train")]

    ctx.progress(f"stylizing {len(contents)} photos with {len(styles)} styles")
    with torch.inference_mode():
        adain_features = {name: adain.encode_style([image[None]]) for name, image in styles.items()}
        outputs = {name: adain(contents, style_features=adain_features[name]) for name in styles}
        colour = {name: color_transfer(contents, image[None]) for name, image in styles.items()}

        sweep_content, sweep_style = contents[:1], held_out[0]
        sweep = {"adain": [adain(sweep_content, style_features=adain_features[sweep_style], alpha=a) for a in ALPHAS]}
        wct_features = wct.encode_style([styles[sweep_style][None]])
        sweep["wct"] = [wct(sweep_content, style_features=wct_features, alpha=a) for a in ALPHAS]

        first, second = trained[0], held_out[-1]
        pair = [adain_features[first][0], adain_features[second][0]]
        mixed = [adain(sweep_content, style_features=pair, weights=[w, 1 - w]) for w in WEIGHTS]
        known = [name for name in trained if name in cin.styles]
        cin_first, cin_second = (known[0], known[-1]) if len(known) > 1 else (cin.styles[0], cin.styles[-1])
        cin_mixed = [cin(sweep_content, style_names=[cin_first, cin_second], weights=[w, 1 - w]) for w in WEIGHTS]

        ctx.progress("measuring with a second random VGG")
        encoder = VGGEncoder.random(**EVALUATION_ENCODER).eval()
        content_feats = encoder.features(contents)
        content_targets = content_feats[CONTENT_LEVEL]
        style_targets = {name: encoder.features(image[None]) for name, image in styles.items()}

        def losses(images: Tensor | dict[str, Tensor], style: str) -> tuple[list[float], list[float]]:
            """Content and style loss per image (or its features); ``images[i]`` stylizes ``contents[i]``."""
            feats = images if isinstance(images, dict) else encoder.features(images)
            return (content_loss(feats[CONTENT_LEVEL], content_targets[: len(images)], reduction="none").tolist(),
                    style_loss_moments(feats, style_targets[style], reduction="none").tolist())

        rows = {"content photo": {s: losses(content_feats, s) for s in styles},
                "colour transfer": {s: losses(colour[s], s) for s in styles},
                "adain": {s: losses(outputs[s], s) for s in styles}}
        alpha_losses = [losses(image, sweep_style) for image in sweep["adain"]]
        wct_alpha_losses = [losses(image, sweep_style) for image in sweep["wct"]]

    grid = [[torch.ones_like(contents[0])] + list(styles.values())]
    grid += [[contents[i]] + [outputs[s][i] for s in styles] for i in range(len(contents))]
    figures = [
        _save_grid(ctx, grid, "style_grid",
                   f"AdaIN: first row the style images ({', '.join(styles)}; {', '.join(held_out)} held out, never seen in "
                   f"training), first column the held-out content photos ({', '.join(plan.contents)}), {plan.size} pixels."),
        _save_grid(ctx, [[sweep_content[0], *(x[0] for x in sweep["adain"]), styles[sweep_style]],
                         [sweep_content[0], *(x[0] for x in sweep["wct"]), styles[sweep_style]]], "style_alpha",
                   f"Content-style trade-off: the photo, then alpha {', '.join(f'{a:g}' for a in ALPHAS)}, then the style "
                   f"({sweep_style}); top AdaIN, bottom WCT."),
        _save_grid(ctx, [[styles[first], *(x[0] for x in mixed), styles[second]],
                         [style_image(cin_first, plan.size), *(x[0] for x in cin_mixed), style_image(cin_second, plan.size)]],
                   "style_interpolation",
                   f"Style interpolation with weights {', '.join(f'({w:g}, {1 - w:g})' for w in WEIGHTS)}: top AdaIN from "
                   f"{first} to {second} (weighted sum of the two AdaIN targets), bottom CIN from {cin_first} to "
                   f"{cin_second} (every layer's gamma and beta mixed)."),
    ]

    def mean(values: list[list[float]]) -> str:
        return f"{statistics.fmean(v for part in values for v in part):.3g}"

    table = []
    for name, per_style in rows.items():
        cells = [mean([per_style[s][0] for s in styles])]
        cells += [mean([per_style[s][1] for s in group]) for group in (trained, held_out)]
        table.append(f"<tr><td>{name}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    sweep_rows = "".join(
        f"<tr><td>{a:g}</td><td>{statistics.fmean(c):.3g}</td><td>{statistics.fmean(s):.3g}</td>"
        f"<td>{statistics.fmean(wc):.3g}</td><td>{statistics.fmean(ws):.3g}</td></tr>"
        for a, (c, s), (wc, ws) in zip(ALPHAS, alpha_losses, wct_alpha_losses)
    )
    adain_style = [statistics.fmean(s) for _, s in alpha_losses]
    wct_style = [statistics.fmean(s) for _, s in wct_alpha_losses]

    def falls(values: list[float]) -> str:
        rises = [f"{a:g} to {b:g}" for a, b, x, y in zip(ALPHAS, ALPHAS[1:], values, values[1:]) if y > x]
        return "never rises" if not rises else f"rises from alpha {', '.join(rises)}"

    mode = " <strong>Fast mode: tiny images, the numbers are not meaningful.</strong>" if ctx.fast else ""
    body = (
        "<p>In style transfer the feature statistics are the style. AdaIN (Huang &amp; Belongie 2017) gives the content "
        "photo's encoder features the per-channel mean and standard deviation of the style image's; WCT (Li et al. 2017) "
        "whitens them and colours them with the style's full covariance, coarse to fine over four levels; CIN (Dumoulin "
        "et al. 2017) stores each trained style as the (gamma, beta) of every instance-norm layer of a feed-forward "
        "network. The images below come from the stylizers shipped in <code>checkpoints/</code> "
        f"(<code>style_adain.pt</code>{html.escape(_steps(adain))}, <code>style_wct.pt</code>, "
        f"<code>style_cin.pt</code>{html.escape(_steps(cin))}); nothing is trained here.</p>"
        "<p>Their encoder is <strong>a fixed random-weight VGG-19 at a quarter of the width</strong> "
        f"(<code>VGGEncoder.random(width={TRAINING_ENCODER['width']}, seed={TRAINING_ENCODER['seed']})</code>), not an "
        "ImageNet-trained VGG: none is available offline. Random convolutional features respond to colour and local "
        "texture, not to objects, and the networks were trained on the seven bundled training photos and six generated "
        "styles only: what they can transfer is colour and local texture. The photos here are the "
        f"four held-out ones, {plan.size} pixels square; {', '.join(held_out)} are styles no network saw in training.{mode}</p>"
        "<table><tr><th>output</th><th>content loss</th><th>style loss, training styles</th>"
        f"<th>style loss, held-out styles</th></tr>{''.join(table)}</table>"
        f"<p>Losses measured with another random VGG (<code>VGGEncoder.random(width={EVALUATION_ENCODER['width']}, "
        f"seed={EVALUATION_ENCODER['seed']})</code>, not the training encoder): content loss is the MSE of its "
        f"{CONTENT_LEVEL} features against the content photo, style loss AdaIN's mean / std loss against the style image "
        f"over relu1_1..relu4_1; means over the {len(contents)} photos x {len(trained)} training / {len(held_out)} held-out "
        "styles of the grid. Colour transfer is the Lab mean / std matching of Reinhard et al. (2001), a baseline that "
        "moves colour only.</p>"
        "<table><tr><th>alpha</th><th>AdaIN content loss</th><th>AdaIN style loss</th><th>WCT content loss</th>"
        f"<th>WCT style loss</th></tr>{sweep_rows}</table>"
        f"<p>The alpha sweep of the figure ({html.escape(plan.contents[0])} with {sweep_style}), measured the same way: "
        f"as alpha goes from 0 to 1 the AdaIN style loss {falls(adain_style)}, the WCT style loss {falls(wct_style)}.</p>"
        "<p><code>python benchmarks/style_eval.py</code> runs the full evaluation (every style, a texture descriptor "
        "with no learned weights, the colour-transfer and other-sample baselines, style weights, colour preservation, "
        "and the fast network with instance against batch norm); its results are in "
        "<code>benchmarks/results/style_eval.md</code>. <code>normapps stylize</code> applies the same stylizers to "
        "your own photos.</p>"
    )
    return Section(html=body, figures=figures)
