"""Speed of the whitening layers next to native BN, two plain references and a 1x1 convolution.

Training (forward+backward) of dbn, pcawhiten, cdwhiten, iternorm and gw for each group size,
as ratios to native ``nn.BatchNorm2d`` on the same tensor, next to two references written here:

* ``ref zca-eigh``: ZCA whitening with ``torch.linalg.eigh`` and plain autograd (the function of dbn);
* ``ref newton``: IterNorm with T=5 Newton steps as an ``autograd.Function`` whose forward stores
  the iterates ``P_k`` and whose backward runs the chain rule through the iterations by hand, in
  the manner of the IterNorm authors' code (the function of iternorm).

Eval (``torch.inference_mode`` forward, after one training step so the running whitening matrix
exists) against a dense 1x1 convolution ``nn.Conv2d(C, C, 1, bias=False)`` on the same tensor.
All timings run in one process, interleaved in a new random order each repeat; times are medians,
ratios the median over rounds of each round's ratio. Before timing, each reference is checked to
compute the same output and input gradient as its library layer (float64, small tensor).

Targets: every method within 2x of native BN at group size 64; dbn no slower than ``ref zca-eigh``
and iternorm no slower than ``ref newton`` (at every group size); eval within 2x of the 1x1 conv
(reported apart for gw, which has no running statistics and whitens each sample at eval too).

    python benchmarks/whitening_speed.py --overwrite      # 128x256x8x8, 2 threads; replaces results/whitening_speed.*
    python benchmarks/whitening_speed.py --group-sizes 64 --methods dbn iternorm --out /tmp/whitening_speed
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch
from speed_common import add_timing_arguments, parse_and_check_outputs
from torch import Tensor, nn

from normapps import norm
from normapps.io import atomic_write

METHODS = ("dbn", "pcawhiten", "cdwhiten", "iternorm", "gw")
GROUP_SIZES = (16, 32, 64, 128, 256)
BN_TARGET, TARGET_GROUP, EVAL_TARGET = 2.0, 64, 2.0
REFERENCE_OF = {"dbn": "ref zca-eigh", "iternorm": "ref newton"}


class _Reference(nn.Module):
    """Shared state of the two references: per-channel affine and the running buffers of a batch
    whitening layer (updated as the library does, so the work compared is the same)."""

    def __init__(self, num_features: int, group_size: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.group_size, self.eps, self.momentum = group_size, eps, momentum
        groups = num_features // group_size
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(groups, group_size, 1))
        self.register_buffer("running_whitening", torch.eye(group_size).repeat(groups, 1, 1))

    def update(self, mean: Tensor, w: Tensor) -> None:
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_whitening.lerp_(w.detach(), self.momentum)

    def affine(self, y: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (y.dim() - 2)
        return y * self.weight.view(view) + self.bias.view(view)


class ZCAEighReference(_Reference):
    """ZCA whitening ``W = U diag(lambda)^{-1/2} U^T`` with ``torch.linalg.eigh`` and plain autograd."""

    def forward(self, x: Tensor) -> Tensor:
        c, g = x.shape[1], self.group_size
        xg = x.transpose(0, 1).reshape(c // g, g, -1)
        mean = xg.mean(-1, keepdim=True)
        xc = xg - mean
        s = xc @ xc.transpose(-1, -2) / xg.shape[-1] + self.eps * torch.eye(g, dtype=x.dtype)
        lam, u = torch.linalg.eigh(s)
        w = (u * lam.rsqrt().unsqueeze(-2)) @ u.transpose(-1, -2)
        self.update(mean, w)
        y = (w @ xc).reshape((c, x.shape[0]) + x.shape[2:]).transpose(0, 1)
        return self.affine(y)


class _NewtonWhitening(torch.autograd.Function):
    """IterNorm's whitening of ``xc`` (groups, g, m): the forward keeps every iterate ``P_k`` of
    ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N``; the backward walks back through them by hand."""

    @staticmethod
    def forward(ctx, xc, T, eps):
        groups, g, m = xc.shape
        eye = torch.eye(g, dtype=xc.dtype).expand(groups, g, g)
        sigma = torch.baddbmm(eps * eye, xc, xc.transpose(1, 2), alpha=1.0 / m)
        r_tr = (sigma * eye).sum((1, 2), keepdim=True).reciprocal()
        sigma_n = sigma * r_tr
        p = [eye]
        for k in range(T):
            p.append(torch.baddbmm(p[k], torch.matrix_power(p[k], 3), sigma_n, beta=1.5, alpha=-0.5))
        wm = p[T] * r_tr.sqrt()
        ctx.save_for_backward(xc, r_tr, sigma_n, wm, *p)
        return wm, wm @ xc

    @staticmethod
    def backward(ctx, g_wm_out, g_y):
        xc, r_tr, sigma_n, wm, *p = ctx.saved_tensors
        m = xc.shape[-1]
        g_wm = g_y @ xc.transpose(1, 2)
        if g_wm_out is not None:
            g_wm = g_wm + g_wm_out
        g_p = g_wm * r_tr.sqrt()
        g_rtr = (g_wm * p[-1]).sum((1, 2), keepdim=True) * 0.5 * r_tr.rsqrt()
        g_sn = torch.zeros_like(sigma_n)
        for k in range(len(p) - 2, -1, -1):  # P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N
            p2 = p[k] @ p[k]
            p3 = p2 @ p[k]
            g_p3 = -0.5 * g_p @ sigma_n.transpose(1, 2)
            g_sn = g_sn - 0.5 * p3.transpose(1, 2) @ g_p
            g_p2 = g_p3 @ p[k].transpose(1, 2)
            g_p = (1.5 * g_p + p2.transpose(1, 2) @ g_p3 + g_p2 @ p[k].transpose(1, 2)
                   + p[k].transpose(1, 2) @ g_p2)
        g_rtr = g_rtr + (g_sn * sigma_n).sum((1, 2), keepdim=True) / r_tr
        eye = torch.eye(xc.shape[1], dtype=xc.dtype)
        g_sigma = g_sn * r_tr - g_rtr * r_tr * r_tr * eye  # r_tr = 1 / tr(sigma)
        g_xc = wm.transpose(1, 2) @ g_y + (g_sigma + g_sigma.transpose(1, 2)) @ xc / m
        return g_xc, None, None


class NewtonReference(_Reference):
    """IterNorm (T Newton steps towards ZCA) with the hand-written backward of :class:`_NewtonWhitening`."""

    def __init__(self, num_features: int, group_size: int, T: int = 5, **kwargs) -> None:
        super().__init__(num_features, group_size, **kwargs)
        self.T = T

    def forward(self, x: Tensor) -> Tensor:
        c, g = x.shape[1], self.group_size
        xg = x.transpose(0, 1).reshape(c // g, g, -1)
        mean = xg.mean(-1, keepdim=True)
        w, y = _NewtonWhitening.apply(xg - mean, self.T, self.eps)
        self.update(mean, w)
        return self.affine(y.reshape((c, x.shape[0]) + x.shape[2:]).transpose(0, 1))


REFERENCES: dict[str, Callable[[int, int], nn.Module]] = {"ref zca-eigh": ZCAEighReference, "ref newton": NewtonReference}


def check_references(c: int = 16, group_size: int = 4) -> None:
    """Each reference computes the output and input gradient of its library layer (float64)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, c, 3, 3, generator=gen, dtype=torch.float64) + 1.0
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for name, ref_name in REFERENCE_OF.items():
        outs = []
        for layer in (norm.build(name, c, group_size=group_size), REFERENCES[ref_name](c, group_size)):
            xi = x.clone().requires_grad_(True)
            y = layer.double()(xi)
            y.backward(grad)
            outs.append((y.detach(), xi.grad))
        torch.testing.assert_close(outs[0], outs[1], msg=lambda m, n=name, r=ref_name: f"{r} differs from {n}: {m}")


def time_train(layer: nn.Module, x: Tensor, grad: Tensor) -> float:
    x = x.detach().requires_grad_(True)
    start = time.perf_counter()
    layer(x).backward(grad)
    return time.perf_counter() - start


def time_eval(layer: nn.Module, x: Tensor, grad: Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        layer(x)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[128, 256, 8, 8], metavar=("N", "C", "H", "W"))
    parser.add_argument("--group-sizes", type=int, nargs="+", default=list(GROUP_SIZES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    add_timing_arguments(parser, "whitening_speed", repeats=9)
    args = parse_and_check_outputs(parser)
    shape = tuple(args.shape)
    c = shape[1]
    bad = [g for g in args.group_sizes if g < 1 or c % g]
    if bad:
        parser.error(f"group sizes {bad} do not divide C={c}; choose divisors of {c}")
    torch.set_num_threads(args.threads)
    check_references()
    torch.manual_seed(0)
    x, grad = torch.randn(shape), torch.randn(shape)

    # key -> (layer, timer); the train and eval layers are separate instances
    entries: dict[tuple[str, str, int], tuple[nn.Module, Callable[[nn.Module, Tensor, Tensor], float]]] = {
        ("train", "native bn", 0): (nn.BatchNorm2d(c).train(), time_train),
        ("eval", "conv1x1", 0): (nn.Conv2d(c, c, 1, bias=False).eval(), time_eval),
    }
    for g in args.group_sizes:
        for name in args.methods:
            entries[("train", name, g)] = (norm.build(name, c, group_size=g).train(), time_train)
            evaluated = norm.build(name, c, group_size=g).train()
            time_train(evaluated, x, grad)  # one training step: the running whitening matrix exists
            entries[("eval", name, g)] = (evaluated.eval(), time_eval)
        for ref_name in sorted({REFERENCE_OF[n] for n in args.methods if n in REFERENCE_OF}):
            entries[("train", ref_name, g)] = (REFERENCES[ref_name](c, g).train(), time_train)

    for _ in range(2):  # warm-up
        for layer, timer in entries.values():
            timer(layer, x, grad)
    order = list(entries)
    rng = random.Random(0)
    rounds = []  # per round: median ms of every entry
    for _ in range(args.rounds):
        times: dict[tuple[str, str, int], list[float]] = {k: [] for k in entries}
        for _ in range(args.repeats):  # interleaved in a new order each time: drifts of the machine hit all alike
            rng.shuffle(order)
            for key in order:
                layer, timer = entries[key]
                times[key].append(timer(layer, x, grad))
        rounds.append({k: statistics.median(v) * 1e3 for k, v in times.items()})

    def ratio(key, ref) -> list[float]:
        """Median over rounds of the per-round ratio, and its range."""
        values = [r[key] / r[ref] for r in rounds]
        return [statistics.median(values), min(values), max(values)]

    med = {k: statistics.median(r[k] for r in rounds) for k in entries}
    bn_key, conv_key = ("train", "native bn", 0), ("eval", "conv1x1", 0)
    train_rows, eval_rows = [], []
    for g in args.group_sizes:
        names = list(args.methods) + sorted({REFERENCE_OF[n] for n in args.methods if n in REFERENCE_OF})
        for name in names:
            key = ("train", name, g)
            vs_bn = ratio(key, bn_key)
            row = {"method": name, "group_size": g, "ms": med[key], "vs_native_bn": vs_bn,
                   "within_2x_bn": bool(vs_bn[0] <= BN_TARGET) if g == TARGET_GROUP and name in METHODS else None,
                   "reference": REFERENCE_OF.get(name), "vs_reference": None, "no_slower_than_reference": None}
            if name in REFERENCE_OF:
                row["vs_reference"] = ratio(key, ("train", REFERENCE_OF[name], g))
                row["no_slower_than_reference"] = bool(row["vs_reference"][0] <= 1.0)
            train_rows.append(row)
        for name in args.methods:
            key = ("eval", name, g)
            vs_conv = ratio(key, conv_key)
            eval_rows.append({"method": name, "group_size": g, "ms": med[key], "vs_conv1x1": vs_conv,
                              "within_2x_conv1x1": bool(vs_conv[0] <= EVAL_TARGET)})

    def fmt_ratio(r):
        return "-" if r is None else f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f})"

    def verdict(ok):
        return "-" if ok is None else ("yes" if ok else "NO")

    lines = [
        f"Input {'x'.join(map(str, shape))} float32, CPU ({platform.processor() or platform.machine()}), "
        f"{args.threads} threads; {args.rounds} rounds of {args.repeats} interleaved runs each: times are medians, "
        f"ratios the median over rounds of each round's ratio (range in brackets).",
        "",
        f"## Training: forward+backward (native BatchNorm2d {med[bn_key]:.3f} ms)",
        "",
        f"| method | group size | ms | vs native BN | within {BN_TARGET:g}x BN (group {TARGET_GROUP}) | reference | "
        "vs reference | no slower than reference |",
        "|---|---:|---:|---:|---|---|---:|---|",
    ]
    for r in train_rows:
        lines.append(f"| {r['method']} | {r['group_size']} | {r['ms']:.3f} | {fmt_ratio(r['vs_native_bn'])} | "
                     f"{verdict(r['within_2x_bn'])} | {r['reference'] or '-'} | {fmt_ratio(r['vs_reference'])} | "
                     f"{verdict(r['no_slower_than_reference'])} |")
    lines += [
        "",
        f"## Eval: forward under torch.inference_mode (1x1 conv, C->C, no bias: {med[conv_key]:.3f} ms)",
        "",
        f"| method | group size | ms | vs 1x1 conv | within {EVAL_TARGET:g}x 1x1 conv |",
        "|---|---:|---:|---:|---|",
    ]
    for r in eval_rows:
        lines.append(f"| {r['method']} | {r['group_size']} | {r['ms']:.3f} | {fmt_ratio(r['vs_conv1x1'])} | "
                     f"{verdict(r['within_2x_conv1x1'])} |")
    verdicts = {
        f"every method within {BN_TARGET:g}x native BN at group {TARGET_GROUP}":
            [r["within_2x_bn"] for r in train_rows if r["within_2x_bn"] is not None],
        "dbn no slower than ref zca-eigh": [r["no_slower_than_reference"] for r in train_rows if r["method"] == "dbn"],
        "iternorm no slower than ref newton": [r["no_slower_than_reference"] for r in train_rows if r["method"] == "iternorm"],
        f"eval within {EVAL_TARGET:g}x the 1x1 conv (batch methods: running matrix)":
            [r["within_2x_conv1x1"] for r in eval_rows if r["method"] != "gw"],
        f"eval within {EVAL_TARGET:g}x the 1x1 conv (gw: per-sample whitening, no running matrix)":
            [r["within_2x_conv1x1"] for r in eval_rows if r["method"] == "gw"],
    }
    summary = {k: (None if not v else all(v)) for k, v in verdicts.items()}
    lines += ["", "## Targets", "", "| target | met |", "|---|---|"]
    lines += [f"| {k} | {verdict(v)} |" for k, v in summary.items()]
    lines += [
        "",
        "References: `ref zca-eigh` = ZCA with torch.linalg.eigh and plain autograd; `ref newton` = IterNorm T=5 "
        "with a hand-written backward through the stored Newton iterates (both in this file, checked against dbn "
        "and iternorm before timing). gw has no running statistics: its eval computes the per-sample whitening.",
    ]
    table = "\n".join(lines)
    print(table)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    cmd = "python benchmarks/whitening_speed.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for k, v in (("shape", shape), ("group-sizes", args.group_sizes), ("methods", args.methods),
                     ("repeats", args.repeats), ("rounds", args.rounds), ("threads", args.threads)))
    atomic_write(args.out.with_suffix(".md"),
                 f"# Whitening speed\n\n`{cmd}` ({stamp}, torch {torch.__version__})\n\n{table}\n", overwrite=args.overwrite)
    atomic_write(args.out.with_suffix(".json"), json.dumps(
        {"command": cmd, "date": stamp, "torch": torch.__version__, "shape": shape, "threads": args.threads,
         "native_bn_ms": med[bn_key], "conv1x1_ms": med[conv_key], "train": train_rows, "eval": eval_rows,
         "targets": summary}, indent=2), overwrite=args.overwrite)


if __name__ == "__main__":
    main()
