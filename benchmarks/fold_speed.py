"""BatchNorm folding speed on CPU: a ResNet-18 in eval mode against ``normapps.norm.fold`` of it.

The network is torchvision's ``resnet18(num_classes=10)`` with random weights (no download) and
every BatchNorm given random non-trivial affine parameters and running statistics (gamma in
[0.5, 1.5], beta ~ N(0, 0.1), mean ~ N(0, 0.1), variance in [0.5, 2]). ``normapps.norm.fold``
folds each BatchNorm into the convolution before it (``W' = W * gamma / sqrt(var + eps)``,
``b' = (b - mean) * gamma / sqrt(var + eps) + beta``); the benchmark checks that all 20 were
folded and reports the largest relative difference of the outputs, ``max |y_folded - y| / max |y|``.

Cases (``--cases BATCHxSIZE``): batch 1 at 32 and 224 px, batch 64 at 32 px, each in the
default (NCHW) and channels-last memory formats, under ``torch.inference_mode()`` with
``--threads`` intra-op threads. The four runs of a case (unfolded / folded x NCHW /
channels-last) are interleaved in a new random order each repeat; each round's time of a run
is the median of its repeats, the reported time the median over rounds, and the ratio
``unfolded / folded`` the median over rounds of each round's ratio (range in brackets), so both
sides of a ratio see the same machine load. The 1-minute load average is recorded before and
after each case: other processes share the cores. Target (issue 7): folded at least 1.1x faster
(ratio >= 1.1).

    python benchmarks/fold_speed.py --overwrite                  # 1x32, 1x224, 64x32; 2 threads
    python benchmarks/fold_speed.py --quick                      # smoke run: tiny cases, 1 thread, temp folder
    python benchmarks/fold_speed.py --cases 1x64 --threads 1 --out /tmp/fold_speed
"""

from __future__ import annotations

import argparse
import copy
import datetime
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
from common import random_resnet18, refuse_existing, write_results
from speed_common import add_timing_arguments, ratio, timed_rounds
from torch import Tensor, nn

from normapps.norm import fold

RESULTS = Path(__file__).parent / "results"
TARGET = 1.1
DEFAULT_CASES = ("1x32", "1x224", "64x32")
FORMATS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}
#: BatchNorm scales of the random network: around 1, so every folded layer rescales its convolution.
GAMMA_RANGE = (0.5, 1.5)


def parse_case(text: str) -> tuple[int, int]:
    """``"64x32"`` -> ``(64, 32)`` (batch, image side)."""
    try:
        batch, size = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxSIZE such as 64x32, got {text!r}") from None
    if batch < 1 or size < 32:
        raise argparse.ArgumentTypeError(f"need batch >= 1 and size >= 32 (ResNet-18 downsamples 32x), got {text!r}")
    return batch, size


def relative_difference(a: Tensor, reference: Tensor) -> float:
    """``max |a - reference| / max |reference|``."""
    return float((a - reference).abs().max() / reference.abs().max())


def measure_case(
    models: dict[str, nn.Module], batch: int, size: int, rounds: int, repeats: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Time unfolded and folded models in both memory formats on one input shape."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    inputs = {fmt: x.contiguous(memory_format=memory) for fmt, memory in FORMATS.items()}
    # Module.to(memory_format=...) converts in place: each channels-last network is a copy.
    nets = {
        (kind, fmt): copy.deepcopy(models[kind]).to(memory_format=memory) if fmt == "channels-last" else models[kind]
        for kind in ("unfolded", "folded")
        for fmt, memory in FORMATS.items()
    }

    def runner(kind: str, fmt: str) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with torch.inference_mode():
                return nets[kind, fmt](inputs[fmt])

        return run

    runs = {f"{kind} {fmt}": runner(kind, fmt) for kind, fmt in nets}
    outputs = {name: run() for name, run in runs.items()}
    reference = outputs["unfolded NCHW"]
    diffs = {name: relative_difference(out, reference) for name, out in outputs.items() if name != "unfolded NCHW"}
    load_before = os.getloadavg()[0]
    for run in runs.values():  # warm-up
        run()
    timing = timed_rounds(runs, rounds, repeats)
    load_after = os.getloadavg()[0]
    ms = {name: statistics.median(r[name] for r in timing) * 1e3 for name in runs}
    best_unfolded = min(FORMATS, key=lambda fmt: ms[f"unfolded {fmt}"])
    best_folded = min(FORMATS, key=lambda fmt: ms[f"folded {fmt}"])
    row = {
        "batch": batch,
        "size": size,
        "load_average": [load_before, load_after],
        "ms": ms,
        "ratio": {fmt: ratio(timing, f"unfolded {fmt}", f"folded {fmt}") for fmt in FORMATS},
        "best": {
            "unfolded": best_unfolded,
            "folded": best_folded,
            "ratio": ratio(timing, f"unfolded {best_unfolded}", f"folded {best_folded}"),
        },
        "max_relative_difference": diffs,
        "rounds": timing,
    }
    row["target_met"] = {fmt: row["ratio"][fmt][0] >= TARGET for fmt in FORMATS}
    log(
        f"batch {batch}, {size} px: "
        + ", ".join(f"{fmt} {ms[f'unfolded {fmt}']:.2f} -> {ms[f'folded {fmt}']:.2f} ms ({row['ratio'][fmt][0]:.2f}x)" for fmt in FORMATS)
        + f", load {load_before:.1f}-{load_after:.1f}"
    )
    return row


def fmt_ratio(values: list[float]) -> str:
    return f"{values[0]:.2f}x [{values[1]:.2f}-{values[2]:.2f}]"


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown page."""
    s = report["settings"]
    lines = [
        "# BatchNorm folding speed (CPU)",
        "",
        f"`{report['command']}` ({report['date']}; torch {report['torch']}; {report['machine']}; "
        f"{s['threads']} thread(s); {s['rounds']} rounds of {s['repeats']} interleaved runs, medians; "
        f"{report['seconds']:.0f} s).",
        "",
        "torchvision `resnet18(num_classes=10)`, random weights, random BN affine and statistics, eval mode, "
        f"`torch.inference_mode()`. `normapps.norm.fold` folded {report['folded_layers']} of {report['bn_layers']} "
        "BatchNorm layers into their convolutions. Ratio = unfolded ms / folded ms in the same memory format "
        "(median over rounds of each round's ratio, range in brackets); target: at least "
        f"{report['target']}x. Load = the 1-minute load average before and after the case (other processes "
        "share the cores; both sides of a ratio run interleaved, so they see the same load).",
        "",
        "| batch | size | format | load | unfolded ms | folded ms | unfolded / folded | target met | max rel. diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["cases"]:
        for fmt in FORMATS:
            lines.append(
                f"| {row['batch']} | {row['size']} | {fmt} | {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f} "
                f"| {row['ms'][f'unfolded {fmt}']:.2f} | {row['ms'][f'folded {fmt}']:.2f} | {fmt_ratio(row['ratio'][fmt])} "
                f"| {'yes' if row['target_met'][fmt] else 'no'} | {row['max_relative_difference'][f'folded {fmt}']:.1e} |"
            )
    lines += [
        "",
        "Fastest unfolded against fastest folded (either format):",
        "",
        "| batch | size | unfolded (format) | folded (format) | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["cases"]:
        b = row["best"]
        unfolded, folded = row["ms"]["unfolded " + b["unfolded"]], row["ms"]["folded " + b["folded"]]
        lines.append(
            f"| {row['batch']} | {row['size']} | {unfolded:.2f} ({b['unfolded']}) | {folded:.2f} ({b['folded']}) "
            f"| {fmt_ratio(b['ratio'])} |"
        )
    met = sum(v for row in report["cases"] for v in row["target_met"].values())
    total = sum(len(row["target_met"]) for row in report["cases"])
    lines += ["", f"Target {report['target']}x met in {met} of {total} case/format pairs."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases",
        type=parse_case,
        nargs="+",
        default=[parse_case(c) for c in DEFAULT_CASES],
        metavar="BATCHxSIZE",
        help=f"input shapes (default: {' '.join(DEFAULT_CASES)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: batch 1 and 2 at 32 px, one thread, one round of one run, written to the temp folder",
    )
    add_timing_arguments(parser, "fold_speed", repeats=10)
    parser.set_defaults(rounds=7)
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.rounds, args.repeats, args.threads = [(1, 32), (2, 32)], 1, 1, 1
        if args.out == RESULTS / "fold_speed":
            args.out = Path(tempfile.gettempdir()) / "normapps_fold_speed_quick" / "fold_speed"
            args.overwrite = True  # the script's own scratch files
    for name in ("rounds", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    refuse_existing(parser, [args.out.with_suffix(".md"), args.out.with_suffix(".json")], args.overwrite)
    return args


def command_of(args: argparse.Namespace) -> str:
    if args.quick:
        return "python benchmarks/fold_speed.py --quick"
    return (
        f"python benchmarks/fold_speed.py --cases {' '.join(f'{b}x{s}' for b, s in args.cases)} "
        f"--rounds {args.rounds} --repeats {args.repeats} --threads {args.threads}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    threads_before = torch.get_num_threads()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    model = random_resnet18(GAMMA_RANGE)
    report_fold = fold(model, return_report=True)
    bn_layers = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if report_fold.kept:
        raise SystemExit(f"fold kept BatchNorm layers {report_fold.kept}: the benchmark expects every one folded")
    models = {"unfolded": model, "folded": report_fold.model}
    torch.set_num_threads(args.threads)
    try:
        cases = [measure_case(models, batch, size, args.rounds, args.repeats, log) for batch, size in args.cases]
    finally:
        torch.set_num_threads(threads_before)
    report = {
        "command": command_of(args),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "seconds": time.perf_counter() - start,
        "target": TARGET,
        "bn_layers": bn_layers,
        "folded_layers": len(report_fold.folded),
        "settings": {"cases": args.cases, "rounds": args.rounds, "repeats": args.repeats, "threads": args.threads},
        "cases": cases,
    }
    text = markdown(report)
    print(text)
    write_results(args.out, report, text, overwrite=args.overwrite)
    return report


if __name__ == "__main__":
    main()
