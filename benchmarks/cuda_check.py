"""CUDA correctness, mixed precision and speed of every normalization layer (needs a GPU).

For each registered activation and conditional method:
  * forward outputs and gradients (input and parameters) on CUDA in float32 against a float64 CPU
    copy of the same layer, in training and in eval (after a few training steps, so running
    statistics are compared too);
  * under ``torch.autocast("cuda", torch.float16)``: finite outputs and gradients, output dtype, and
    the largest deviation from the float32 output;
  * forward+backward time, median over CUDA-event timings, as ratios to native ``nn.BatchNorm2d`` and
    to torch's own layer where there is one.

    python benchmarks/cuda_check.py --out benchmarks/results/cuda_check.md --overwrite
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
from torch import nn

from normapps import norm
from normapps.io import atomic_write, check_overwrite
from normapps.models import takes_groups

EXERCISE = {"ghostbn": {"virtual_batch_size": 2}, "brn": {"warmup_steps": 0, "ramp_steps": 1}}
CONDITIONAL_KW = {"cbn": {"num_classes": 5}, "cin": {"num_styles": 3}, "adain": {}, "spade": {"label_channels": 4},
                  "smbn": {"latent_dim": 8}}


def make(name: str, c: int, groups: int, exercise: bool = True) -> nn.Module:
    """A layer with perturbed parameters; ``exercise`` sets ghostbn/brn so their special paths run on tiny batches."""
    kw = dict(CONDITIONAL_KW.get(name, {}), **(EXERCISE.get(name, {}) if exercise else {}))
    if takes_groups(name):
        kw["groups"] = groups
    layer = norm.build(name, c, **kw)
    with torch.no_grad():  # non-trivial parameters, so affine and gates matter
        for p_name, p in layer.named_parameters():
            if p.dim() == 1 and p_name.split(".")[-1] in ("weight", "bias", "v", "tau", "rho"):
                p.add_(0.3 * torch.randn_like(p))
    return layer


def condition(name: str, x: torch.Tensor) -> tuple:
    n, c = x.shape[:2]
    g = torch.Generator().manual_seed(1)
    if name == "cbn":
        return (torch.randint(0, 5, (n,), generator=g),)
    if name == "cin":
        return (torch.softmax(torch.randn(3, generator=g), 0).double(),)
    if name == "adain":
        return (torch.randn(n, c, 5, 6, generator=g).double() * 2 + 1,)
    if name == "spade":
        return (torch.rand(n, 4, 4, 4, generator=g).double(),)
    if name == "smbn":
        return (torch.randn(n, 8, generator=g).double(),)
    return ()


def run(layer: nn.Module, x: torch.Tensor, cond: tuple, grad: torch.Tensor):
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(x, *cond)
    y.backward(grad)
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max() / (b.detach().double().abs().max() + 1e-12))


def correctness(names: list[str], dev: str) -> list[str]:
    lines = ["| method | train out | train dx | train dparams | eval out | running stats | amp out dev | amp finite |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in names:
        torch.manual_seed(0)
        ref = make(name, 16, 4).double()
        gpu = copy.deepcopy(ref).float().to(dev)
        x = torch.randn(6, 16, 7, 9, dtype=torch.float64) * 1.5 + 0.5
        grad = torch.randn_like(x)
        cond = condition(name, x)
        cond_gpu = tuple(c.to(dev, torch.float32) if c.is_floating_point() else c.to(dev) for c in cond)
        out = {}
        for step in range(3):
            y_r, dx_r, gp_r = run(ref.train(), x + 0.1 * step, cond, grad)
            y_g, dx_g, gp_g = run(gpu.train(), (x + 0.1 * step).float().to(dev), cond_gpu, grad.float().to(dev))
        out["train out"] = max_rel(y_g, y_r)
        out["train dx"] = max_rel(dx_g, dx_r)
        out["train dparams"] = max((max_rel(gp_g[k], gp_r[k]) for k in gp_r), default=0.0)
        ref.eval(), gpu.eval()
        with torch.no_grad():
            out["eval out"] = max_rel(gpu(x.float().to(dev), *cond_gpu), ref(x, *cond))
        bufs = [(b_g, b_r) for (n, b_g), (_, b_r) in zip(gpu.named_buffers(), ref.named_buffers()) if b_r.is_floating_point()]
        out["running stats"] = max((max_rel(g_, r_) for g_, r_ in bufs), default=0.0)
        gpu.train()
        twin = copy.deepcopy(gpu)  # same running statistics as gpu before its mixed-precision step
        xg = x.float().to(dev).requires_grad_(True)
        low = torch.float16 if dev == "cuda" else torch.bfloat16
        with torch.autocast(dev, dtype=low):
            y16 = gpu(xg.to(low), *cond_gpu)
        y16.float().backward(grad.float().to(dev))
        with torch.no_grad():
            y32 = twin(x.float().to(dev), *cond_gpu)
        finite = bool(torch.isfinite(y16).all() and torch.isfinite(xg.grad).all())
        lines.append(f"| {name} | {out['train out']:.1e} | {out['train dx']:.1e} | {out['train dparams']:.1e} | "
                     f"{out['eval out']:.1e} | {out['running stats']:.1e} | {max_rel(y16.float(), y32):.1e} "
                     f"({str(y16.dtype).replace('torch.', '')}) | {'yes' if finite else 'NO'} |")
    return lines


def speed(shape: tuple[int, ...], repeats: int) -> list[str]:
    c = shape[1]
    x, g = torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda")
    refs = {"bn": nn.BatchNorm2d(c), "ln": nn.GroupNorm(1, c), "in": nn.InstanceNorm2d(c, affine=True),
            "gn": nn.GroupNorm(32, c), "rmsnorm": nn.RMSNorm(tuple(shape[1:])), "lrn": nn.LocalResponseNorm(5)}
    layers = {"native bn": nn.BatchNorm2d(c)}
    for name in norm.available("activation"):
        layers[name] = make(name, c, 32, exercise=False)
        if name in refs:
            layers[f"torch {name}"] = refs[name]
    layers = {k: v.cuda().train() for k, v in layers.items()}

    def once(layer):
        xx = x.detach().requires_grad_(True)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        layer(xx).backward(g)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    times = {k: [] for k in layers}
    for i in range(repeats + 5):
        for k, layer in layers.items():
            t = once(layer)
            if i >= 5:
                times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"Forward+backward on {torch.cuda.get_device_name()}, input {'x'.join(map(str, shape))} float32, "
             f"median of {repeats}; native BN {med['native bn']:.3f} ms.", "",
             "| method | ms | vs torch's layer | vs native BN |", "|---|---:|---:|---:|"]
    for name in norm.available("activation"):
        vt = f"{med[name] / med['torch ' + name]:.2f}" if f"torch {name}" in med else "-"
        lines.append(f"| {name} | {med[name]:.3f} | {vt} | {med[name] / med['native bn']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[64, 256, 32, 32])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file (else refuse before running)")
    args = parser.parse_args()
    if args.out and args.device == "cuda":  # the cpu dry run writes nothing
        try:
            check_overwrite(args.out, args.overwrite)
        except FileExistsError as err:
            parser.error(str(err))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cuda_check needs a CUDA device; none is visible")
    torch.backends.cudnn.benchmark = True
    names = norm.available("activation") + norm.available("conditional")
    if args.device == "cpu":  # a dry run of the correctness part where no GPU is present
        print("\n".join(correctness(names, "cpu")))
        return
    text = "\n".join(["# CUDA check", "", f"torch {torch.__version__}, {torch.cuda.get_device_name()}", "",
                      "## Correctness: max relative deviation of CUDA float32 from CPU float64", ""]
                     + correctness(names, "cuda") + ["", "## Speed", ""] + speed(tuple(args.shape), args.repeats))
    print(text)
    if args.out:
        atomic_write(args.out, text + "\n", overwrite=args.overwrite)


if __name__ == "__main__":
    main()
