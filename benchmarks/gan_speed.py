"""GAN speed on CPU: what spectral normalization costs per discriminator step, and generator sampling throughput.

**Spectral norm per discriminator step** (issue 6, target: at most 1.15x the step without
normalization). One discriminator training step as :class:`~normapps.tasks.gan.GANTask` makes it:
forward of a real and a generated batch of ``--batch`` images each (32 px, one forward pass on both),
the hinge loss, backward and an Adam step (lr 2e-4, betas (0, 0.9)), in training mode (one power
iteration per weight and step). Discriminators of :mod:`normapps.models.gan`: the standard CNN at
width 1 and at the small width of ``benchmarks/gan_stability.py`` (0.125), and the ResNet at width 1.
Three variants with the same initial weights: ``none``; ``spectral``, the library's
:class:`~normapps.norm.weight.SpectralNorm` (``d_norm="spectral"``); and ``torch``, the ``none``
network with :func:`torch.nn.utils.parametrizations.spectral_norm` on the same layers, as a reference.
For every spectral variant the time spent in the parametrizations' forwards (hooks on them) and in
the power iteration alone (called directly on the same weights) is measured too, so a missed target
shows where the time goes.

**Generator sampling**: images per second of the standard CNN and ResNet generators at width 1 and
at the shipped width (``configs/gan/cgan_digits.yaml``), unconditional (BN) and conditional
(conditional BN, classes 0-9), in eval mode under ``torch.inference_mode()``, batches of 1, 64 and 256.

Timing: the runs of one network (or one generator family and width) run interleaved in a new random
order each repeat; times are medians, ratios the median over rounds of each round's ratio (range in
brackets). A group whose warm-up shows it would take longer than ``--group-seconds`` gets fewer
repeats (the count is in the table). The 1-minute load average is recorded with each row: other
processes share the cores.

    python benchmarks/gan_speed.py --overwrite          # 2 threads, 3 rounds of 3 repeats
    python benchmarks/gan_speed.py --quick              # smoke run: width 0.0625 networks, batch 4, one round, temp folder
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from common import command_line, refuse_existing, write_results
from speed_common import ratio, timed_rounds
from torch import Tensor, nn

from normapps.models.gan import build_discriminator, build_generator
from normapps.norm.weight import SpectralNorm
from normapps.tasks.gan import hinge_d_loss

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.15
VARIANTS = ("none", "spectral", "torch")
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gan" / "cgan_digits.yaml"
IMAGE_SIZE = 32


def shipped_width() -> float:
    """The width of the shipped conditional GAN, read from its config."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    try:
        return float(config["model"]["init_args"]["width"])
    except (KeyError, TypeError) as err:
        raise SystemExit(f"{SHIPPED_CONFIG} has no model.init_args.width: {err}") from err


def warm_up(runs: dict[str, Callable[[], Any]]) -> float:
    """Call every run once; the seconds all of them took."""
    start = time.perf_counter()
    for run in runs.values():
        run()
    return time.perf_counter() - start


def fit_repeats(warm_seconds: float, rounds: int, repeats: int, group_seconds: float) -> tuple[int, int]:
    """``(rounds, repeats)`` cut down (rounds first to 2, then repeats, then rounds to 1) so the group fits ``group_seconds``."""
    while rounds * repeats * warm_seconds > group_seconds and (rounds > 2 or repeats > 1 or rounds > 1):
        if rounds > 2:
            rounds -= 1
        elif repeats > 1:
            repeats -= 1
        else:
            rounds -= 1
    return rounds, repeats


# ---------------------------------------------------------------------------------- discriminator


def discriminator(arch: str, width: float, variant: str) -> nn.Module:
    """The discriminator of one variant, in training mode. All three draw the same initial weights (seed 0: the library
    registers its parametrization after the initialization, torch's is registered on the built ``none`` network)."""
    torch.manual_seed(0)
    net = build_discriminator(arch, width=width, d_norm="spectral" if variant == "spectral" else "none", image_size=IMAGE_SIZE)
    if variant == "torch":
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                torch.nn.utils.parametrizations.spectral_norm(module)
    return net.train()


def discriminator_step(net: nn.Module, real: Tensor, fake: Tensor) -> Callable[[], None]:
    """One training step of ``net``: forward on ``cat(real, fake)``, hinge loss, backward, Adam step."""
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.0, 0.9))
    images = torch.cat([real, fake])
    n = real.shape[0]

    def step() -> None:
        out = net(images)
        loss = hinge_d_loss(out[:n], out[n:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def spectral_modules(net: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``(layer, parametrization)`` for every spectrally normalized weight (the library's or torch's)."""
    found = []
    for module in net.modules():
        parametrizations = getattr(module, "parametrizations", None)
        if parametrizations is not None and "weight" in parametrizations:
            found += [(module, p) for p in parametrizations["weight"]]
    return found


def parametrization_seconds(net: nn.Module, step: Callable[[], None], steps: int) -> float:
    """Median seconds per step spent inside the parametrizations' forwards (power iteration, ``W / sigma``)."""
    spent: list[float] = []
    starts: dict[int, float] = {}

    def before(module: nn.Module, inputs: Any) -> None:
        starts[id(module)] = time.perf_counter()

    def after(module: nn.Module, inputs: Any, output: Any) -> None:
        spent.append(time.perf_counter() - starts[id(module)])

    handles = []
    for _, p in spectral_modules(net):
        handles += [p.register_forward_pre_hook(before), p.register_forward_hook(after)]
    per_step = []
    try:
        for _ in range(steps):
            spent.clear()
            step()
            per_step.append(sum(spent))
    finally:
        for handle in handles:
            handle.remove()
    return statistics.median(per_step)


def power_iteration_seconds(net: nn.Module, repeats: int) -> float:
    """Median seconds of one power iteration on every weight of ``net`` (the library's parametrization only)."""
    targets = [
        (p, layer.parametrizations["weight"].original.detach().flatten(1))
        for layer, p in spectral_modules(net)
        if isinstance(p, SpectralNorm)
    ]
    if not targets:
        return math.nan
    saved = [(p._u.clone(), p._v.clone()) for p, _ in targets]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for p, m in targets:
            p._power_method(m, p.n_power_iterations)
        times.append(time.perf_counter() - start)
    for (p, _), (u, v) in zip(targets, saved):
        p._u.copy_(u)
        p._v.copy_(v)
    return statistics.median(times)


def spectral_cost(arch: str, width: float, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The three variants of one discriminator, interleaved; ratios to ``none`` and the breakdown of the spectral ones."""
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1
    fake = torch.rand(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1
    nets = {variant: discriminator(arch, width, variant) for variant in VARIANTS}
    with torch.no_grad():
        outputs = {variant: nets[variant](real[:4]) for variant in ("spectral", "torch")}
    sigma_gap = float((outputs["spectral"] - outputs["torch"]).abs().max() / outputs["torch"].abs().max().clamp_min(1e-12))
    runs = {variant: discriminator_step(net, real, fake) for variant, net in nets.items()}
    load_before = os.getloadavg()[0]
    warm = warm_up(runs)
    rounds, repeats = fit_repeats(warm, args.rounds, args.repeats, args.group_seconds)
    timing = timed_rounds(runs, rounds, repeats)
    ms = {variant: statistics.median(r[variant] for r in timing) * 1e3 for variant in VARIANTS}
    breakdown = {
        variant: {
            "parametrization_forward_ms": parametrization_seconds(nets[variant], runs[variant], 3) * 1e3,
            "power_iteration_ms": power_iteration_seconds(nets[variant], 5) * 1e3,
            "weights": len(spectral_modules(nets[variant])),
        }
        for variant in ("spectral", "torch")
    }
    row = {
        "network": f"{arch} width {width:g}",
        "arch": arch,
        "width": width,
        "batch": f"{args.batch} real + {args.batch} fake",
        "parameters": sum(p.numel() for p in nets["none"].parameters()),
        "threads": args.threads,
        "rounds": rounds,
        "repeats": repeats,
        "load_average": [load_before, os.getloadavg()[0]],
        "ms": ms,
        "spectral_ratio": ratio(timing, "spectral", "none"),
        "torch_ratio": ratio(timing, "torch", "none"),
        "spectral_vs_torch": ratio(timing, "spectral", "torch"),
        "breakdown": breakdown,
        "output_gap_spectral_vs_torch": sigma_gap,
        "timings": timing,
    }
    row["met"] = row["spectral_ratio"][0] <= TARGET
    log(
        f"{row['network']}: none {ms['none']:.1f} ms, spectral {ms['spectral']:.1f} ms ({row['spectral_ratio'][0]:.3f}x), "
        f"torch {ms['torch']:.1f} ms ({row['torch_ratio'][0]:.3f}x), {rounds}x{repeats} repeats, "
        f"load {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f}"
    )
    return row


# -------------------------------------------------------------------------------------- sampling


def sampling(arch: str, width: float, args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Images per second of one generator family and width, unconditional and conditional, at every batch size."""
    runs: dict[str, Callable[[], Any]] = {}
    for conditional in (False, True):
        torch.manual_seed(0)
        net = build_generator(
            arch, width=width, g_norm="cbn" if conditional else "bn", num_classes=10 if conditional else None, image_size=IMAGE_SIZE
        ).eval()
        for batch in args.sample_batches:
            z = torch.randn(batch, net.z_dim, generator=torch.Generator().manual_seed(batch))
            y = torch.arange(batch) % 10 if conditional else None

            def run(net: nn.Module = net, z: Tensor = z, y: Tensor | None = y) -> Tensor:
                with torch.inference_mode():
                    return net(z, y)

            runs[f"{'conditional' if conditional else 'unconditional'} {batch}"] = run
    load_before = os.getloadavg()[0]
    warm = warm_up(runs)
    rounds, repeats = fit_repeats(warm, args.rounds, args.repeats, args.group_seconds)
    timing = timed_rounds(runs, rounds, repeats)
    load_after = os.getloadavg()[0]
    rows = []
    for name in runs:
        kind, batch = name.split()
        seconds = [r[name] for r in timing]
        rows.append(
            {
                "generator": arch,
                "width": width,
                "conditional": kind == "conditional",
                "batch": int(batch),
                "images_per_s": int(batch) / statistics.median(seconds),
                "images_per_s_range": [int(batch) / max(seconds), int(batch) / min(seconds)],
                "rounds": rounds,
                "repeats": repeats,
                "threads": args.threads,
                "load_average": [load_before, load_after],
            }
        )
    log(
        f"sampling {arch} width {width:g}: "
        + ", ".join(f"{r['batch']}{'c' if r['conditional'] else ''} {r['images_per_s']:.0f}/s" for r in rows)
        + f", {rounds}x{repeats} repeats"
    )
    return rows


# -------------------------------------------------------------------------------------- reporting


def fmt_ratio(values: list[float]) -> str:
    return f"{values[0]:.3f}x [{values[1]:.2f}-{values[2]:.2f}]"


def markdown(report: dict[str, Any]) -> str:
    """The results page."""
    lines = [
        "# GAN speed on CPU: spectral norm per discriminator step, generator sampling",
        "",
        f"`{report['command']}` ({report['date']}, torch {report['torch']}, {report['machine']}, {report['settings']['threads']} "
        f"torch threads; load average {report['load_average'][0]:.1f} at the start, {report['load_average'][1]:.1f} at the end: "
        "other processes shared the cores).",
        "",
        f"## Spectral norm per discriminator training step (target: at most {TARGET}x the step without normalization)",
        "",
        f"Forward of {report['spectral'][0]['batch'] if report['spectral'] else '-'} images at {IMAGE_SIZE} px in one pass, hinge "
        "loss, backward, Adam step; training mode (one power iteration per weight and step). `spectral`: the library's "
        '`normapps.norm.weight.SpectralNorm` (`d_norm="spectral"`); `torch`: `torch.nn.utils.parametrizations.spectral_norm` '
        "on the same layers. Medians of interleaved repeats; ratios: median over rounds [range].",
        "",
        "| discriminator | parameters | load | repeats | none ms | spectral ms | torch ms | spectral / none | torch / none "
        "| spectral / torch | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["spectral"]:
        ms = row["ms"]
        lines.append(
            f"| {row['network']} | {row['parameters']:,} | {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f} | "
            f"{row['rounds']}x{row['repeats']} | {ms['none']:.1f} | {ms['spectral']:.1f} | {ms['torch']:.1f} | "
            f"{fmt_ratio(row['spectral_ratio'])} | {fmt_ratio(row['torch_ratio'])} | "
            f"{fmt_ratio(row['spectral_vs_torch'])} | {'met' if row['met'] else '**missed**'} |"
        )
    lines += [
        "",
        "Where the spectral step's extra time goes (ms per step; parametrization forwards measured with hooks on them, "
        "the power iteration alone called directly on the same weights; the rest of the extra time is the backward "
        "through `W / sigma` and the bookkeeping of the parametrizations):",
        "",
        "| discriminator | variant | weights | extra over none | parametrization forwards | of which power iteration |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["spectral"]:
        for variant in ("spectral", "torch"):
            b = row["breakdown"][variant]
            power = "-" if math.isnan(b["power_iteration_ms"]) else f"{b['power_iteration_ms']:.2f}"
            lines.append(
                f"| {row['network']} | {variant} | {b['weights']} | {row['ms'][variant] - row['ms']['none']:.2f} | "
                f"{b['parametrization_forward_ms']:.2f} | {power} |"
            )
    missed = [row["network"] for row in report["spectral"] if not row["met"]]
    lines += ["", f"Target {'missed for ' + ', '.join(missed) if missed else 'met for every discriminator'}."]
    lines += [
        "",
        "## Generator sampling throughput (images/s)",
        "",
        f"Eval mode, `torch.inference_mode()`, {IMAGE_SIZE} px, latents N(0, I); conditional: conditional BN, classes 0-9 in "
        f"turn. Shipped width {report['shipped_width']:g} (`configs/gan/cgan_digits.yaml`). Median of interleaved repeats "
        "[slowest-fastest round].",
        "",
        "| generator | width | conditional | batch | images/s | load | repeats |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["sampling"]:
        lines.append(
            f"| {r['generator']} | {r['width']:g} | {'yes' if r['conditional'] else 'no'} | {r['batch']} | "
            f"{r['images_per_s']:.0f} [{r['images_per_s_range'][0]:.0f}-{r['images_per_s_range'][1]:.0f}] | "
            f"{r['load_average'][0]:.1f}-{r['load_average'][1]:.1f} | {r['rounds']}x{r['repeats']} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="real images (and as many generated) per discriminator step")
    parser.add_argument("--small-width", type=float, default=0.125, help="the small standard CNN width (gan_stability's)")
    parser.add_argument("--sample-batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument(
        "--group-seconds", type=float, default=60.0, help="rough time limit of one group's timed repeats (fewer repeats beyond it)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: width 0.0625 networks (and ResNet 0.0625), batch 4, sampling batches 1 and 4, "
        "one round of one repeat, one thread, written to the temp folder",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per round")
    parser.add_argument("--rounds", type=int, default=3, help="independent rounds; ratios are reported over them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "gan_speed", help="output path without suffix (.md and .json)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files (else refuse before timing)")
    args = parser.parse_args(argv)
    args.networks = [("dcgan", 1.0), ("dcgan", args.small_width), ("resnet", 1.0)]
    args.generators = [("dcgan", 1.0), ("dcgan", shipped_width()), ("resnet", 1.0), ("resnet", shipped_width())]
    if args.quick:
        args.networks = [("dcgan", 0.0625), ("resnet", 0.0625)]
        args.generators = [("dcgan", 0.0625), ("resnet", 0.0625)]
        args.batch, args.sample_batches, args.rounds, args.repeats, args.threads = 4, [1, 4], 1, 1, 1
        if args.out == RESULTS / "gan_speed":
            args.out = Path(tempfile.gettempdir()) / "normapps_gan_speed_quick" / "gan_speed"
            args.overwrite = True  # the script's own scratch files
    for name in ("batch", "rounds", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.sample_batches) < 1 or not args.small_width > 0 or not args.group_seconds > 0:
        parser.error("--sample-batches must be >= 1, --small-width and --group-seconds > 0")
    refuse_existing(parser, [args.out.with_suffix(".md"), args.out.with_suffix(".json")], args.overwrite)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``--out``.md and .json; return the report."""
    args = parse_args(argv)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    load_start = os.getloadavg()[0]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        torch.set_num_threads(args.threads)
        spectral = [spectral_cost(arch, width, args, log) for arch, width in args.networks]
        samples = [row for arch, width in args.generators for row in sampling(arch, width, args, log)]
    finally:
        torch.set_num_threads(threads)
    report = {
        "command": command_line(__file__, argv),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": [load_start, os.getloadavg()[0]],
        "seconds": time.perf_counter() - start,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target": TARGET,
        "shipped_width": shipped_width(),
        "spectral": spectral,
        "sampling": samples,
    }
    text = markdown(report)
    print(text)
    write_results(args.out, report, text, overwrite=args.overwrite)
    return report


if __name__ == "__main__":
    main()
