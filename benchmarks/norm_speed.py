"""Forward+backward speed of every registered activation method next to torch's own layers.

For each method: the median time of ``layer(x).backward(g)`` on CPU, its ratio to the matching
native torch layer (where torch has one) and to native ``nn.BatchNorm2d`` on the same tensor, all
in one process with the timings interleaved. Targets (issue 2): bn, ln, in, gn, rmsnorm within
1.10x of torch's own layer; every other method within 3x of native BN.

    python benchmarks/norm_speed.py --overwrite      # 32x64x32x32, 2 threads; replaces results/norm_speed.*
    python benchmarks/norm_speed.py --shape 8 256 14 14 --repeats 51 --out /tmp/norm_speed
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import time

import torch
from speed_common import add_timing_arguments, parse_and_check_outputs
from torch import nn

from normapps import norm
from normapps.io import atomic_write
from normapps.models import takes_groups

NATIVE_TARGET, OTHER_TARGET = 1.10, 3.0


def torch_reference(name: str, c: int, shape: tuple[int, ...]) -> nn.Module | None:
    """torch's own layer computing the same function (None where torch has none)."""
    spatial = tuple(shape[2:])
    return {
        "bn": lambda: nn.BatchNorm2d(c),
        "ln": lambda: nn.GroupNorm(1, c),
        "in": lambda: nn.InstanceNorm2d(c, affine=True),
        "gn": lambda: nn.GroupNorm(32, c),
        "rmsnorm": lambda: nn.RMSNorm((c, *spatial)),
        "lrn": lambda: nn.LocalResponseNorm(5),
    }.get(name, lambda: None)()


def time_layer(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    x = x.detach().requires_grad_(True)
    start = time.perf_counter()
    layer(x).backward(grad)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 64, 32, 32], metavar=("N", "C", "H", "W"))
    add_timing_arguments(parser, "norm_speed", repeats=31)
    args = parse_and_check_outputs(parser)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    c = shape[1]
    x, grad = torch.randn(shape), torch.randn(shape)

    layers: dict[str, nn.Module] = {}
    for name in norm.available("activation"):
        kw = {"groups": 32} if takes_groups(name) else {}
        layers[name] = norm.build(name, c, **kw).train()
        ref = torch_reference(name, c, shape)
        if ref is not None:
            layers[f"torch {name}"] = ref.train()

    for _ in range(3):  # warm-up
        for layer in layers.values():
            time_layer(layer, x, grad)
    order = list(layers)
    rng = random.Random(0)
    rounds = []  # per round: median ms of every layer
    for _ in range(args.rounds):
        times: dict[str, list[float]] = {k: [] for k in layers}
        for _ in range(args.repeats):  # interleaved in a new order each time: drifts of the machine hit all alike
            rng.shuffle(order)
            for key in order:
                times[key].append(time_layer(layers[key], x, grad))
        rounds.append({k: statistics.median(v) * 1e3 for k, v in times.items()})

    def ratio(name: str, ref: str) -> tuple[float, float, float]:
        """Median over rounds of the per-round ratio, and its range."""
        values = [r[name] / r[ref] for r in rounds]
        return statistics.median(values), min(values), max(values)

    med = {k: statistics.median(r[k] for r in rounds) for k in layers}
    rows = []
    for name in norm.available("activation"):
        ref = f"torch {name}"
        vs_torch = ratio(name, ref) if ref in med else None
        vs_bn = ratio(name, "torch bn")
        native = name in ("bn", "ln", "in", "gn", "rmsnorm")
        target = f"<= {NATIVE_TARGET}x torch" if native else f"<= {OTHER_TARGET}x bn"
        ok = vs_torch[0] <= NATIVE_TARGET if native else vs_bn[0] <= OTHER_TARGET
        rows.append({"method": name, "ms": med[name], "torch_ms": med.get(ref), "vs_torch": vs_torch,
                     "vs_native_bn": vs_bn, "target": target, "met": bool(ok)})

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def fmt_ratio(r):
        return "-" if r is None else f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f})"

    lines = [
        f"Forward+backward, input {'x'.join(map(str, shape))} float32, CPU ({platform.processor() or platform.machine()}), "
        f"{args.threads} threads; {args.rounds} rounds of {args.repeats} interleaved runs each: times are medians, ratios "
        f"the median over rounds of each round's ratio (range in brackets); native BN {med['torch bn']:.3f} ms.",
        "",
        "| method | ms | torch's layer ms | vs torch's layer | vs native BN | target | met |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ms']:.3f} | {fmt(r['torch_ms'], '.3f')} | {fmt_ratio(r['vs_torch'])} | "
                     f"{fmt_ratio(r['vs_native_bn'])} | {r['target']} | {'yes' if r['met'] else 'NO'} |")
    lines.append("")
    lines.append("torch's layers: bn=nn.BatchNorm2d, ln=nn.GroupNorm(1,C) (same function: per-sample statistics, "
                 "per-channel affine), in=nn.InstanceNorm2d(affine=True), gn=nn.GroupNorm(32,C), "
                 "rmsnorm=nn.RMSNorm((C,H,W)), lrn=nn.LocalResponseNorm(5).")
    table = "\n".join(lines)
    print(table)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    cmd = "python benchmarks/norm_speed.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for k, v in (("shape", shape), ("repeats", args.repeats), ("rounds", args.rounds), ("threads", args.threads)))
    atomic_write(args.out.with_suffix(".md"), f"# Norm layer speed\n\n`{cmd}` ({stamp}, torch {torch.__version__})\n\n{table}\n",
                 overwrite=args.overwrite)
    atomic_write(args.out.with_suffix(".json"), json.dumps({"command": cmd, "date": stamp, "torch": torch.__version__,
                                                            "shape": shape, "rows": rows}, indent=2), overwrite=args.overwrite)


if __name__ == "__main__":
    main()
