"""Style-transfer speed on CPU: our AdaIN against a plain PyTorch port of the same network, and ms
per image of the four stylizers.

**AdaIN against the port.** The port is written here in the structure of the AdaIN authors'
PyTorch code: a plain ``nn.Sequential`` VGG-19 to relu4_1 (1x1 input conv, reflection pads,
3x3 convs, out-of-place ReLUs, ceil-mode max-pools) and the mirrored ``nn.Sequential`` decoder
(nearest upsampling), contiguous NCHW tensors, ``torch.no_grad()``, and the AdaIN function
computing mean and std per channel with ``.view(N, C, -1).var(dim=2) + eps``; each call encodes
the content and the style image, then decodes. Ours is
:class:`~normapps.tasks.style.transfer.AdaINStylizer` on :class:`~normapps.models.VGGEncoder` /
:class:`~normapps.models.VGGDecoder` under ``torch.inference_mode()``. Both run at full width
(VGG-19's channels) with the same random weights (ours' ``state_dict()`` loaded into the port:
the keys are the published ones) on the same random images; the outputs are checked to agree
before timing. Two cases:

* single image: one content and one style image per call (the port's ``style_transfer``);
* folder: ``--folder`` contents with one style, per image: ours encodes the style once
  (``encode_style``) and stylizes each content with ``style_features``; the port makes one full
  call per content.

Target (issue 5): ours at most 0.8x of the port on a single image, and less per image on the folder.
An ablation table adds the steps of our CPU inference path (``normapps.models.vgg``) one at a time.

**Stylizers.** ms per image of adain, wct, cin and fast through
:func:`normapps.tasks.style.checkpoints.load_stylizer` with the shipped checkpoints
(``checkpoints/style_<method>.pt``); a missing one is replaced by random weights of the shipped
configuration, and the table says so. adain / wct: one content and one style image per call,
and per image on the folder with the style encoded once; cin / fast: one content per call.

Timing: all runs of a table in one process, interleaved in a new random order each repeat;
times are medians, ratios the median over rounds of each round's ratio (range in brackets). The
machine's 1-minute load average is recorded with each row: other processes share the cores.

    python benchmarks/style_speed.py --overwrite            # 256 and 512 px, 2 threads (+ the port at 256 px, 1 thread)
    python benchmarks/style_speed.py --quick                 # smoke run: 64 px, one thread, one round, temp folder
    python benchmarks/style_speed.py --stylizers-only --overwrite   # redo the stylizer table (new checkpoints)
    python benchmarks/style_speed.py --sizes 256 --rounds 3 --out /tmp/style_speed
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import refuse_existing, write_results
from speed_common import add_timing_arguments
from torch import Tensor, nn

import normapps.models.vgg as vgg_module
from normapps.models import VGGDecoder, VGGEncoder, nnpack
from normapps.tasks.style.transfer import AdaINStylizer

RESULTS = Path(__file__).parent / "results"
SINGLE_TARGET = 0.8
METHODS = ("adain", "wct", "cin", "fast")
WIDTH = 1.0  # the port comparison: VGG-19's own channels


# ------------------------------------------------------------------------ the plain port (reference)


def port_encoder() -> nn.Sequential:
    """VGG-19 to relu4_1 as the port's ``vgg`` (truncated to its first 31 layers)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 3, (1, 1))]
    blocks = ((64, 2), (128, 2), (256, 4), (512, 1))
    c_in = 3
    for b, (c_out, convs) in enumerate(blocks):
        if b > 0:
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
        for _ in range(convs):
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(c_in, c_out, (3, 3)), nn.ReLU()]
            c_in = c_out
    return nn.Sequential(*layers)


def port_decoder() -> nn.Sequential:
    """The port's ``decoder``: relu4_1 back to RGB, nearest upsampling, no ReLU after the last conv."""
    steps = [(512, 256), "up", (256, 256), (256, 256), (256, 256), (256, 128), "up", (128, 128), (128, 64), "up",
             (64, 64), (64, 3)]
    layers: list[nn.Module] = []
    for step in steps:
        if step == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(*step, (3, 3)), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def port_mean_std(feat: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    n, c = feat.size()[:2]
    var = feat.view(n, c, -1).var(dim=2) + eps
    return feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def port_adain(content_feat: Tensor, style_feat: Tensor) -> Tensor:
    size = content_feat.size()
    style_mean, style_std = port_mean_std(style_feat)
    content_mean, content_std = port_mean_std(content_feat)
    normalized = (content_feat - content_mean.expand(size)) / content_std.expand(size)
    return normalized * style_std.expand(size) + style_mean.expand(size)


def port_style_transfer(vgg: nn.Module, decoder: nn.Module, content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
    """One call of the port: encode both images, AdaIN, mix with the content by ``alpha``, decode."""
    content_f = vgg(content)
    style_f = vgg(style)
    feat = port_adain(content_f, style_f)
    feat = feat * alpha + content_f * (1 - alpha)
    return decoder(feat)


# ------------------------------------------------------------------------------------------- timing


Rounds = list[dict[str, float]]


def timed_rounds(runs: dict[str, Callable[[], Any]], rounds: int, repeats: int) -> tuple[Rounds, Rounds]:
    """Per round, the median seconds of each run over ``repeats`` interleaved runs (new random order each time):
    wall-clock time, and the CPU time of this thread (all of the work on one torch thread; on a loaded machine it
    leaves out the time spent waiting for a core, which wall-clock ratios dilute)."""
    for run in runs.values():  # warm-up
        run()
    rng = random.Random(0)
    order = list(runs)
    wall: Rounds = []
    cpu: Rounds = []
    for _ in range(rounds):
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(repeats):
            rng.shuffle(order)
            for name in order:
                start, start_cpu = time.perf_counter(), time.thread_time()
                runs[name]()
                times[name].append((time.perf_counter() - start, time.thread_time() - start_cpu))
        wall.append({name: statistics.median(w for w, _ in t) for name, t in times.items()})
        cpu.append({name: statistics.median(c for _, c in t) for name, t in times.items()})
    return wall, cpu


def summary(rounds: list[dict[str, float]], name: str, per: int = 1) -> float:
    """Median over rounds of ``name``'s seconds, in ms per image (``per`` images per run)."""
    return statistics.median(r[name] for r in rounds) * 1e3 / per


def ratio(rounds: list[dict[str, float]], name: str, reference: str, per: tuple[int, int] = (1, 1)) -> list[float]:
    """Median over rounds of the per-round ratio ``name / reference`` (per image), and its range."""
    values = [(r[name] / per[0]) / (r[reference] / per[1]) for r in rounds]
    return [statistics.median(values), min(values), max(values)]


def images(count: int, size: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 3, size, size, generator=generator)


# ----------------------------------------------------------------------------------- AdaIN vs port


def adain_models() -> tuple[AdaINStylizer, nn.Module, nn.Module]:
    """Ours and the port with the same random weights (fixed encoder seed; decoder from a seeded default init
    whose last bias is 0.5, so outputs sit inside [0, 1] and the clamp rarely hides a difference)."""
    encoder = VGGEncoder.random(WIDTH, seed=0)
    torch.manual_seed(0)
    decoder = VGGDecoder(WIDTH)
    with torch.no_grad():
        decoder.get_submodule(list(decoder._modules)[-1]).bias.fill_(0.5)
    vgg, dec = port_encoder(), port_decoder()
    vgg.load_state_dict(encoder.state_dict())  # strict: the published keys on both sides
    dec.load_state_dict(decoder.state_dict())
    return AdaINStylizer(encoder, decoder).eval(), vgg.eval(), dec.eval()


def compare_adain(size: int, folder: int, threads: int, rounds: int, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    torch.set_num_threads(threads)
    ours, vgg, dec = adain_models()
    contents, style = images(folder, size, seed=1), images(1, size, seed=2)[0]

    def port_one(content: Tensor) -> Tensor:
        with torch.no_grad():
            return port_style_transfer(vgg, dec, content, style)

    def ours_one(content: Tensor) -> Tensor:
        with torch.inference_mode():
            return ours(content, style)

    def port_folder() -> list[Tensor]:
        return [port_one(c) for c in contents]

    def ours_folder() -> list[Tensor]:
        with torch.inference_mode():
            features = ours.encode_style(style)
            return [ours(c, style_features=features) for c in contents]

    with torch.inference_mode():
        feature_diff = float((ours.encoder(contents[0]) - vgg(contents[0])).abs().max())
    single_diff = float((ours_one(contents[0]) - port_one(contents[0]).clamp(0, 1)).abs().max())
    folder_diff = max(float((a - b.clamp(0, 1)).abs().max()) for a, b in zip(ours_folder(), port_folder()))
    if max(single_diff, folder_diff) > 1e-3:
        raise SystemExit(f"ours and the port disagree at {size} px: max |difference| {max(single_diff, folder_diff):.2e}")
    load_before = os.getloadavg()[0]
    runs = {"port single": lambda: port_one(contents[0]), "ours single": lambda: ours_one(contents[0]),
            "port folder": port_folder, "ours folder": ours_folder}
    timing, cpu = timed_rounds(runs, rounds, repeats)
    row = {
        "size": size, "threads": threads, "folder": folder, "load_average": [load_before, os.getloadavg()[0]],
        "nnpack": nnpack.usable(), "max_abs_diff": {"relu4_1": feature_diff, "single": single_diff, "folder": folder_diff},
        "ms_per_image": {"port single": summary(timing, "port single"), "ours single": summary(timing, "ours single"),
                         "port folder": summary(timing, "port folder", folder),
                         "ours folder": summary(timing, "ours folder", folder)},
        "single_ratio": ratio(timing, "ours single", "port single"),
        "folder_ratio": ratio(timing, "ours folder", "port single", (folder, 1)),
        "folder_vs_single": ratio(timing, "ours folder", "ours single", (folder, 1)),
        "rounds": timing,
    }
    if threads == 1:
        row["cpu"] = {"single_ratio": ratio(cpu, "ours single", "port single"),
                      "folder_ratio": ratio(cpu, "ours folder", "port single", (folder, 1)), "rounds": cpu}
    log(f"adain vs port, {size} px, {threads} thread(s): port {row['ms_per_image']['port single']:.0f} ms, ours "
        f"{row['ms_per_image']['ours single']:.0f} ms ({row['single_ratio'][0]:.2f}x), folder {row['folder_ratio'][0]:.2f}x "
        f"of the port's single, load {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f}")
    return row


ABLATION = ("plain layers", "channels-last", "+ ReLU and pad in one pass", "+ upsampling conv as phase convs",
            "+ NNPACK Winograd convolutions")


@contextlib.contextmanager
def fast_path_steps(steps: int) -> Iterator[None]:
    """The library's CPU inference path with only its first ``steps`` of :data:`ABLATION` (0: the plain layers),
    by switching private functions of :mod:`normapps.models.vgg` for the duration (this ablation only)."""
    saved = vgg_module._fast_path, vgg_module._fast_layers, vgg_module._fits_upsampled_conv, nnpack.ENABLED

    def layer_by_layer(layers: list[nn.Module], x: Tensor, first: int = 0, **_: Any) -> Iterator[tuple[int, Tensor]]:
        for position, layer in enumerate(layers, first):
            x = layer(x)
            yield position, x

    if steps == 0:
        vgg_module._fast_path = lambda x, scale=1: False
    elif steps == 1:
        vgg_module._fast_layers = layer_by_layer
    elif steps == 2:
        vgg_module._fits_upsampled_conv = lambda up, rest: False
    if steps < 4:
        nnpack.ENABLED = False
    try:
        yield
    finally:
        vgg_module._fast_path, vgg_module._fast_layers, vgg_module._fits_upsampled_conv, nnpack.ENABLED = saved


def ablation(size: int, threads: int, rounds: int, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The port and ours with each step of the fast path added in turn, single image."""
    torch.set_num_threads(threads)
    ours, vgg, dec = adain_models()
    content, style = images(1, size, seed=1)[0], images(1, size, seed=2)[0]

    def port() -> Tensor:
        with torch.no_grad():
            return port_style_transfer(vgg, dec, content, style)

    def variant(steps: int) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with fast_path_steps(steps), torch.inference_mode():
                return ours(content, style)
        return run

    runs = {"port": port, **{name: variant(k) for k, name in enumerate(ABLATION)}}
    reference = port().clamp(0, 1)
    diffs = {name: float((runs[name]() - reference).abs().max()) for name in ABLATION}
    load_before = os.getloadavg()[0]
    timing, cpu = timed_rounds(runs, rounds, repeats)
    names = list(runs)
    row = {"size": size, "threads": threads, "load_average": [load_before, os.getloadavg()[0]], "max_abs_diff": diffs,
           "ms": {name: summary(timing, name) for name in names},
           "vs_port": {name: ratio(timing, name, "port") for name in ABLATION},
           "vs_previous": {name: ratio(timing, name, previous) for previous, name in zip(names, names[1:])}, "rounds": timing}
    if threads == 1:
        row["cpu"] = {"vs_port": {name: ratio(cpu, name, "port") for name in ABLATION},
                      "vs_previous": {name: ratio(cpu, name, previous) for previous, name in zip(names, names[1:])},
                      "rounds": cpu}
    log(f"ablation, {size} px, {threads} thread(s): " + ", ".join(f"{n} {row['vs_port'][n][0]:.2f}x" for n in ABLATION))
    return row


# ---------------------------------------------------------------------------------------- stylizers


def random_stylizer(method: str) -> Any:
    """The shipped configuration (``configs/style``) with random weights: width 0.25 VGG encoder (seed 0) and
    decoders, width 0.25 TransformerNet with instance norm (fast) or conditional IN over the six training styles (cin)."""
    from normapps.models import TransformerNet
    from normapps.tasks.style.checkpoints import Stylizer
    from normapps.tasks.style.transfer import WCT_LEVELS

    torch.manual_seed(0)
    if method == "adain":
        modules: dict[str, Any] = {"encoder": VGGEncoder.random(0.25, seed=0), "decoder": VGGDecoder(0.25)}
        styles: list[str] = []
    elif method == "wct":
        modules = {"encoder": VGGEncoder.random(0.25, seed=0), "decoders": {lvl: VGGDecoder(0.25, lvl) for lvl in WCT_LEVELS}}
        styles = []
    elif method == "cin":
        styles = ["stripes", "mosaic", "waves", "brush", "brick", "grass"]
        modules = {"network": TransformerNet(0.25, "cin", num_styles=len(styles))}
    else:
        styles = ["mosaic"]
        modules = {"network": TransformerNet(0.25, "in")}
    return Stylizer(method, modules, styles).eval().requires_grad_(False)


def load_or_random(method: str) -> tuple[Any, str]:
    from normapps.tasks.style.checkpoints import checkpoint_path, load_stylizer

    path = checkpoint_path(method)
    if path.is_file():
        return load_stylizer(method), f"checkpoints/{path.name}"
    return random_stylizer(method), "random weights, shipped configuration (no checkpoint yet)"


def time_stylizers(size: int, folder: int, threads: int, rounds: int, repeats: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    contents, style = images(folder, size, seed=1), images(1, size, seed=2)[0]
    runs: dict[str, Callable[[], Any]] = {}
    sources: dict[str, str] = {}
    for method in METHODS:
        stylizer, sources[method] = load_or_random(method)

        def infer(fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                with torch.inference_mode():
                    return fn()
            return run

        if method in ("adain", "wct"):
            def folder_run(s: Any = stylizer) -> list[Tensor]:
                features = s.encode_style([style])  # once for the folder
                return [s(c, style_features=features) for c in contents]

            runs[f"{method} single"] = infer(lambda s=stylizer: s(contents[0], [style]))
            runs[f"{method} folder"] = infer(folder_run)
        elif method == "cin":
            runs[f"{method} single"] = infer(lambda s=stylizer: s(contents[0], style_names=[s.styles[0]]))
        else:
            runs[f"{method} single"] = infer(lambda s=stylizer: s(contents[0]))
    load_before = os.getloadavg()[0]
    timing, _ = timed_rounds(runs, rounds, repeats)
    load = [load_before, os.getloadavg()[0]]
    rows = []
    for method in METHODS:
        row = {"method": method, "size": size, "threads": threads, "weights": sources[method], "load_average": load,
               "ms_single": summary(timing, f"{method} single"),
               "ms_folder": summary(timing, f"{method} folder", folder) if f"{method} folder" in runs else None}
        rows.append(row)
        log(f"{method}, {size} px: {row['ms_single']:.1f} ms per image" +
            (f", {row['ms_folder']:.1f} ms per image on the folder" if row["ms_folder"] is not None else ""))
    return rows


# ------------------------------------------------------------------------------------------- report


def fmt_ratio(r: list[float]) -> str:
    return f"{r[0]:.2f}x ({r[1]:.2f}-{r[2]:.2f})"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Style transfer speed (CPU)", "",
        f"`{report['command']}` ({report['date']}, torch {report['torch']}, {report['machine']}; "
        f"{report['seconds'] / 60:.1f} min).", "",
        "## AdaIN: ours against a plain PyTorch port of the same network", "",
        f"VGG-19 to relu4_1 and the mirrored decoder at full width, the same random weights in both, random images "
        f"(content {', '.join(f'{z}x{z}' for z in s['sizes'])}, style of the same size). Port: plain `nn.Sequential` "
        "modules in the structure of the AdaIN authors' PyTorch code, contiguous NCHW tensors, `torch.no_grad()`, "
        "mean / std by `.view(N, C, -1).var(dim=2) + eps`, encoding content and style on every call. Ours: "
        "`AdaINStylizer(VGGEncoder, VGGDecoder)` under `torch.inference_mode()`. Folder: "
        f"{s['folder']} contents with one style, per image; ours encodes the style once (`encode_style`), the port "
        f"makes {s['folder']} full calls. {s['rounds']} rounds of {s['repeats']} interleaved runs: times are medians, "
        "ratios the median over rounds of each round's ratio (range in brackets). Load: the machine's 1-minute load "
        "average before and after the row (2 cores shared with other work; above about 2 the threads wait for a core). "
        "CPU time: the same ratios from the CPU time of the one thread that does all the work (1-thread rows only), "
        "which leaves out the time spent waiting for a core.", "",
        f"| size | threads | NNPACK | load | port ms/image | ours ms/image | ours / port, single (target ≤ {SINGLE_TARGET}) "
        "| same, CPU time | port folder ms/image | ours folder ms/image | ours folder / port single | same, CPU time "
        "| max abs diff (output) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["adain_vs_port"]:
        ms = row["ms_per_image"]
        met = "met" if row["single_ratio"][0] <= SINGLE_TARGET else "missed"
        cpu = row.get("cpu")
        lines.append(
            f"| {row['size']} | {row['threads']} | {'yes' if row.get('nnpack') else 'no'} "
            f"| {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f} "
            f"| {ms['port single']:.0f} | {ms['ours single']:.0f} | {fmt_ratio(row['single_ratio'])} {met} "
            f"| {fmt_ratio(cpu['single_ratio']) if cpu else '-'} "
            f"| {ms['port folder']:.0f} | {ms['ours folder']:.0f} | {fmt_ratio(row['folder_ratio'])} "
            f"| {fmt_ratio(cpu['folder_ratio']) if cpu else '-'} "
            f"| {max(row['max_abs_diff']['single'], row['max_abs_diff']['folder']):.1e} |")
    lines += ["", "Issue 5 measured such a port on this machine at about 570 ms (256 px) and 2.8 s (512 px) per image on "
              "2 threads, with channels-last memory alone at 0.79x of it; with the load average above the 2 cores, "
              "two-thread runs wait for each other at every operation and all times here are higher.", "",
              report["library_notes"], ""]
    ab = report["ablation"]
    lines += [
        "### Each step of our CPU inference path", "",
        f"Single image, {ab['size']} px, {ab['threads']} thread(s), load {ab['load_average'][0]:.1f}-"
        f"{ab['load_average'][1]:.1f}; the same models and protocol as above, each step added to the previous ones "
        "(earlier steps switched off inside `normapps.models.vgg` for this table only).", "",
        "| variant | ms/image | vs port | vs the row above | vs port, CPU time | vs the row above, CPU time "
        "| max abs diff to the port |", "| --- | --- | --- | --- | --- | --- | --- |",
        f"| port | {ab['ms']['port']:.0f} | 1.00x | - | {'1.00x' if 'cpu' in ab else '-'} | - | - |",
    ]
    for name in ABLATION:
        cpu = ab.get("cpu")
        lines.append(f"| {name} | {ab['ms'][name]:.0f} | {fmt_ratio(ab['vs_port'][name])} | {fmt_ratio(ab['vs_previous'][name])} "
                     f"| {fmt_ratio(cpu['vs_port'][name]) if cpu else '-'} | {fmt_ratio(cpu['vs_previous'][name]) if cpu else '-'} "
                     f"| {ab['max_abs_diff'][name]:.1e} |")
    run = report.get("stylizers_run", {"command": report["command"], "date": report["date"], "rounds": s["rounds"],
                                       "repeats": s["repeats"], "threads": s["threads"]})
    lines += [
        "", "## The stylizers, ms per image", "",
        "Through `normapps.tasks.style.checkpoints.load_stylizer` under `torch.inference_mode()`, random images. "
        "adain / wct: one content and one style image per call (single), and per image on the folder with the "
        "style encoded once; cin: one content and one trained style by name; fast: one content. A method without "
        "its shipped checkpoint runs with random weights in the shipped configuration (`configs/style`: width 0.25 "
        "networks), which costs the same. "
        f"Threads: {run['threads']}; {run['rounds']} rounds of {run['repeats']} interleaved runs, medians"
        + (f"; `{run['command']}` ({run['date']})." if "stylizers_run" in report else "."), "",
        "| method | weights | size | load | ms per image, single | ms per image, folder |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["stylizers"]:
        folder = "-" if row["ms_folder"] is None else f"{row['ms_folder']:.1f}"
        lines.append(f"| {row['method']} | {row['weights']} | {row['size']} | {row['load_average'][0]:.1f}-"
                     f"{row['load_average'][1]:.1f} | {row['ms_single']:.1f} | {folder} |")
    return "\n".join(lines) + "\n"


LIBRARY_NOTES = (
    "What makes ours faster (`normapps/models/vgg.py`; this script adds nothing to it): under no autograd on CPU, "
    "`VGGEncoder` and `VGGDecoder` run their layers in channels-last memory format (oneDNN's channels-last "
    "convolutions, max-pools and pads; the 3 -> 3 input conv stays NCHW, where it is faster) and return "
    "contiguous tensors; each ReLU followed by a reflection pad is one pass (the ReLU writes into the inside of "
    "the padded tensor, then the border rows and columns are copied); each nearest 2x upsampling + reflection "
    "pad + 3x3 conv of the decoder is one convolution on the low-resolution features with a 2x2 kernel per "
    "output phase (16 instead of 36 multiply-adds per low-resolution pixel; the phases are interleaved through "
    "the next ReLU into the next pad). With autograd the plain layers run unchanged. Outputs agree with the "
    "port to float rounding (last column). Then the 3x3 convolutions with at least 64 input and output channels "
    "run in NNPACK, PyTorch's bundled library of fast convolution algorithms (Winograd: fewer multiplications "
    "than oneDNN's direct convolution, which was near this CPU's float32 peak), on NCHW tensors, with OpenMP at "
    "one thread during the pass so its spinning workers leave the cores to NNPACK's own thread pool "
    "(`normapps/models/nnpack.py`). NNPACK's pool keeps the thread count of its first call, so rows at another "
    "thread count run without it (NNPACK column); `NORMAPPS_NNPACK=0` switches it off.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sides in pixels")
    parser.add_argument("--folder", type=int, default=4, help="contents in the folder case (one style)")
    parser.add_argument("--one-thread", action=argparse.BooleanOptionalAction, default=True,
                        help="also compare with the port on one thread, and run the ablation there, at the smallest size "
                             "(default: %(default)s)")
    parser.add_argument("--stylizers-only", action="store_true",
                        help="rerun only the stylizer table (e.g. once more shipped checkpoints exist) and replace it in "
                             "the existing results (needs --overwrite)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64 px, one thread, one round of one run, written to the temp folder")
    add_timing_arguments(parser, "style_speed", repeats=3)
    parser.set_defaults(rounds=3)  # a 512 px round of the port comparison takes about a minute
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.folder, args.rounds, args.repeats, args.threads = [64], 2, 1, 1, 1
        if args.out == RESULTS / "style_speed":
            args.out = Path(tempfile.gettempdir()) / "normapps_style_speed_quick" / "style_speed"
            args.overwrite = True  # the script's own scratch files
    for name in ("folder", "rounds", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.sizes) < 16:
        parser.error(f"--sizes must be >= 16 px, got {args.sizes}")
    if args.stylizers_only and not args.out.with_suffix(".json").is_file():
        parser.error(f"--stylizers-only replaces the stylizer table of {args.out.with_suffix('.json')}, which does not exist")
    refuse_existing(parser, [args.out.with_suffix(".md"), args.out.with_suffix(".json")], args.overwrite)
    return args


def command_of(args: argparse.Namespace) -> str:
    if args.quick:
        return "python benchmarks/style_speed.py --quick" + (" --stylizers-only" if args.stylizers_only else "")
    return (f"python benchmarks/style_speed.py --sizes {' '.join(map(str, args.sizes))} --folder {args.folder} "
            f"--rounds {args.rounds} --repeats {args.repeats} --threads {args.threads}"
            + ("" if args.one_thread else " --no-one-thread") + (" --stylizers-only" if args.stylizers_only else ""))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    threads_before = torch.get_num_threads()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cases = [(args.threads, size) for size in args.sizes]
    if args.one_thread and args.threads != 1:
        cases.append((1, min(args.sizes)))
    try:
        if args.stylizers_only:
            report = json.loads(args.out.with_suffix(".json").read_text())
        else:
            comparison = [compare_adain(size, args.folder, threads, args.rounds, args.repeats, log) for threads, size in cases]
            steps = ablation(min(args.sizes), args.threads, args.rounds, args.repeats, log)
        stylizers = [row for size in args.sizes
                     for row in time_stylizers(size, args.folder, args.threads, args.rounds, args.repeats, log)]
    finally:
        torch.set_num_threads(threads_before)
    if args.stylizers_only:
        report["stylizers"] = stylizers
        report["stylizers_run"] = {"command": command_of(args), "date": now, "rounds": args.rounds, "repeats": args.repeats,
                                   "threads": args.threads}
    else:
        report = {
            "command": command_of(args), "date": now, "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "seconds": time.perf_counter() - start,
            "settings": {"sizes": args.sizes, "folder": args.folder, "rounds": args.rounds, "repeats": args.repeats,
                         "threads": args.threads, "port_cases": cases, "width": WIDTH},
            "single_target": SINGLE_TARGET, "library_notes": LIBRARY_NOTES,
            "adain_vs_port": comparison, "ablation": steps, "stylizers": stylizers,
        }
    text = markdown(report)
    print(text)
    write_results(args.out, report, text, overwrite=args.overwrite)
    return report


if __name__ == "__main__":
    main()
