"""The SN paper's stability claim in miniature: discriminator normalization x optimizer settings A-F.

Miyato et al. (Spectral Normalization for Generative Adversarial Networks, ICLR 2018, table 1 and
figure 1) train the standard CNN GAN with six Adam settings (:data:`normapps.tasks.gan.SETTINGS`: A-C
the usual ones, D-F aggressive learning rates / momenta with n_dis 5) and several discriminator
normalizations; spectral normalization keeps a good score in every setting, while weight
normalization, batch normalization and no normalization degrade or fail at the high learning rates.

Here, on the embedded handwritten digits (``normapps.data``, 1077 training images, 8x8 upsampled to
16 px by default: 32 px costs about twice as much per step), unconditional:

- **grid**: ``d_norm`` in {none, bn, wn, spectral} x settings A-F, the non-saturating loss (the SN
  paper's objective for this comparison), the standard CNN (:class:`~normapps.tasks.gan.GANTask`,
  ``generator="dcgan"``) at ``--width`` of the paper's channels, batch 64, plus WGAN-GP (d_norm none,
  Wasserstein loss with gradient penalty 10) at its own setting A;
- **conditioning**: conditional BN generator + projection discriminator against the unconditional
  model, both spectrally normalized, hinge loss, SN-GAN's default setting (lr 2e-4, betas (0, 0.9),
  n_dis 5).

Every run makes the SAME number of generator updates (the paper compares at equal generator
updates; n_dis 5 settings make five discriminator updates per generator update). With ``--g-updates
auto`` the number is chosen from the measured cost: a few generator updates of every run first (the
probe), then as many updates as fit ``--budget-minutes`` of training with ``--jobs`` runs at once.

Metrics (:mod:`normapps.metrics`, the shipped digit classifier's 64-d penultimate features): FD and
KID of ``--n-fake`` samples against the digits ``test`` split (360 images), with the sample counts;
the real floor (``val`` against ``test``, and 1000 ``train`` images against ``test``, the counts of
the runs); the FD of the untrained generator (start); for the conditional model the shipped
classifier's accuracy on class-conditioned samples. A run is marked **diverged** when a loss or a
sample is not finite, and **failed** when its final FD is not below the start FD (collapse or no
progress); the FD half-way is kept to show runs that got worse late.

Each run uses one torch thread (``--jobs`` runs in separate processes; the machine's load average is
recorded). One seed.

    python benchmarks/gan_stability.py --overwrite        # the full grid (about 30-35 minutes on 2 busy cores)
    python benchmarks/gan_stability.py --quick            # smoke run: setting D, 1 generator update, temp folder
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import logging
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning
import torch
from common import command_line, refuse_existing, write_results
from pytorch_lightning import Callback, LightningModule, Trainer, seed_everything
from torch import Tensor

from normapps.data import load_domain
from normapps.data.generative import GenerativeDataModule
from normapps.io import atomic_path
from normapps.metrics import class_accuracy, distances, load_digit_features
from normapps.tasks.gan import SETTINGS, GANTask

RESULTS = Path(__file__).resolve().parent / "results"
NORMS = ("none", "bn", "wn", "spectral")
#: SN-GAN's default optimizer (Miyato et al. 2018; the conditional comparison).
DEFAULT = {"lr": 2e-4, "betas": (0.0, 0.9), "n_dis": 5}
GRID_SAMPLES = 16
PAPER_CLAIM = (
    "Miyato et al. (2018, figure 1, CIFAR-10 / STL-10, 100k generator updates): SN-GANs keep a good inception "
    "score and FID in all settings A-F; weight normalization and batch normalization lose much of their "
    "quality at the high learning rates (D-F); the unnormalized discriminator and WGAN-GP fail in some of them "
    "(the paper names setting F, lr 1e-3 with beta1 0.9, as where only SN keeps working)."
)


# ------------------------------------------------------------------------------------------- runs


def feature_size(images: Tensor) -> Tensor:
    """Images ``(N, 3, S, S)`` at the digit classifier's 32 px (bilinear; unchanged when ``S`` is 32)."""
    if images.shape[-1] == 32:
        return images
    return torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False).clamp(-1, 1)


class _Monitor(Callback):
    """Per generator update: time and losses; stops training at a non-finite loss; FD at ``mid_update``."""

    def __init__(self, mid_update: int | None, evaluate: Any) -> None:
        self.mid_update, self.evaluate = mid_update, evaluate
        self.times: list[float] = []
        self.d_losses: list[float] = []
        self.g_losses: list[float] = []
        self.diverged_at: int | None = None
        self.mid: dict[str, Any] | None = None
        self.eval_seconds = 0.0
        self._seen = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        d_loss = float(metrics["d_loss"]) if "d_loss" in metrics else math.nan
        self.d_losses.append(d_loss)
        finite = math.isfinite(d_loss)
        if pl_module.g_steps > self._seen:
            self._seen = pl_module.g_steps
            self.times.append(time.perf_counter())
            g_loss = float(metrics["g_loss"]) if "g_loss" in metrics else math.nan
            self.g_losses.append(g_loss)
            finite = finite and math.isfinite(g_loss)
            if self.mid_update is not None and self._seen == self.mid_update and finite:
                started = time.perf_counter()
                self.mid = self.evaluate(pl_module)
                self.eval_seconds = time.perf_counter() - started
        if not finite and self.diverged_at is None:
            self.diverged_at = pl_module.g_steps
            trainer.should_stop = True


class Evaluator:
    """FD / KID of generated samples against the digits test split in the shipped classifier's features."""

    def __init__(self, n_fake: int, kid_subsets: int, seed: int, image_size: int) -> None:
        self.n_fake, self.kid_subsets, self.seed = n_fake, kid_subsets, seed
        self.features = load_digit_features(batch_size=250)
        images, labels = load_domain("digits", "test", image_size).tensors
        self.real = self.features.features(feature_size(images * 2 - 1))
        self.real_labels = labels

    def __call__(self, task: GANTask) -> dict[str, Any]:
        """``{"fd", "kid", "kid_std", "n_real", "n_fake", ...}`` (plus ``class_acc`` for a conditional task); a
        sample that is not finite gives ``{"nonfinite": True}``."""
        generator = torch.Generator().manual_seed(self.seed)
        labels = None
        if task.conditional:
            per_class = self.n_fake // task.num_classes
            labels = torch.arange(task.num_classes).repeat_interleave(per_class)
        n = self.n_fake if labels is None else len(labels)
        samples = torch.cat(
            [
                task.sample(len(part), None if labels is None else labels[start : start + len(part)], generator=generator)
                for start, part in ((s, range(s, min(s + 250, n))) for s in range(0, n, 250))
            ]
        )
        if not torch.isfinite(samples).all():
            return {"nonfinite": True}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the quick run's tiny counts warn about the FD's rank bias
            result = distances(self.real, self.features.features(feature_size(samples)), self.kid_subsets, None, self.seed)
        out = {
            "fd": result["fd"].value,
            "kid": result["kid"].value,
            "kid_std": result["kid"].std,
            "n_real": result["fd"].n_real,
            "n_fake": result["fd"].n_fake,
            "feature_dim": result["fd"].feature_dim,
            "kid_details": result["kid"].details,
        }
        if labels is not None:
            acc = class_accuracy(self.features, feature_size(samples), labels)
            out["class_acc"] = acc.value
            out["class_acc_n"] = acc.n_fake
        return out


def make_task(spec: dict[str, Any]) -> GANTask:
    """The GAN of one run (seeded), from its spec (``d_norm``, ``loss``, ``setting`` or ``optimizer``, ``conditional``, ...)."""
    seed_everything(spec["seed"], verbose=False)
    optimizer = SETTINGS[spec["setting"]] if spec["setting"] in SETTINGS else DEFAULT
    return GANTask(
        generator="dcgan",
        discriminator="dcgan",
        d_norm=spec["d_norm"],
        loss=spec["loss"],
        conditional=spec["conditional"],
        num_classes=10 if spec["conditional"] else None,
        width=spec["width"],
        image_size=spec["image_size"],
        lr=optimizer["lr"],
        betas=optimizer["betas"],
        n_dis=optimizer["n_dis"],
    )


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one GAN for ``spec["g_updates"]`` generator updates on one torch thread and measure it.

    Returns the spec with ``seconds``, ``s_per_g_update`` (median over the updates after the first),
    ``diverged`` / ``diverged_at``, the last losses, ``mid`` and ``final`` metrics (``evaluate=False``:
    none) and ``grid`` (the first :data:`GRID_SAMPLES` samples as a tensor).
    """
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    evaluator = Evaluator(spec["n_fake"], spec["kid_subsets"], spec["seed"], spec["image_size"]) if spec["evaluate"] else None
    task = make_task(spec)
    g_updates, n_dis = spec["g_updates"], task.hparams.n_dis
    mid = g_updates // 2 if evaluator is not None and g_updates >= 2 else None
    monitor = _Monitor(mid, evaluator)
    data = GenerativeDataModule("digits", image_size=spec["image_size"], batch_size=spec["batch_size"], seed=spec["seed"])
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=g_updates * (n_dis + 1),
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(task, data)
    seconds = time.perf_counter() - start
    gaps = [
        b - a - (monitor.eval_seconds if i + 1 == mid else 0.0)  # the gap after the half-way evaluation: without it
        for i, (a, b) in enumerate(zip(monitor.times, monitor.times[1:]))
    ]
    result = {
        **spec,
        "seconds": seconds,
        "s_per_g_update": statistics.median(gaps) if gaps else seconds / max(1, task.g_steps),
        "g_updates_done": task.g_steps,
        "d_updates_done": task.d_steps,
        "diverged_at": monitor.diverged_at,
        "last_d_loss": monitor.d_losses[-1] if monitor.d_losses else None,
        "last_g_loss": monitor.g_losses[-1] if monitor.g_losses else None,
        "mid": monitor.mid,
        "final": None,
        "grid": None,
    }
    if evaluator is not None and monitor.diverged_at is None:
        result["final"] = evaluator(task)
        grid = task.sample(
            GRID_SAMPLES,
            torch.arange(GRID_SAMPLES) % 10 if task.conditional else None,
            generator=torch.Generator().manual_seed(spec["seed"] + 1),
        )
        result["grid"] = grid if torch.isfinite(grid).all() else None
    result["diverged"] = monitor.diverged_at is not None or bool(result["final"] and result["final"].get("nonfinite"))
    return result


def run_all(specs: list[dict[str, Any]], jobs: int, log: Any) -> list[dict[str, Any]]:
    """:func:`run_cell` for every spec, ``jobs`` at a time in separate processes (1: in this process), longest first."""
    order = sorted(range(len(specs)), key=lambda i: -specs[i].get("estimate", 0.0))
    results: list[dict[str, Any] | None] = [None] * len(specs)
    if jobs == 1:
        for i in order:
            results[i] = run_cell(specs[i])
            log(describe(results[i]))
        return results  # type: ignore[return-value]
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, specs[i]): i for i in order}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
            log(describe(results[futures[future]]))
    return results  # type: ignore[return-value]


def describe(result: dict[str, Any]) -> str:
    """One log line of a finished run."""
    final = result["final"]
    metrics = "" if not final or final.get("nonfinite") else f", FD {final['fd']:.2f} KID {final['kid']:.4f}"
    return (
        f"{result['name']}: {result['g_updates_done']} generator updates in {result['seconds']:.0f} s "
        f"({result['s_per_g_update']:.2f} s each){metrics}{' DIVERGED' if result['diverged'] else ''}, "
        f"load {os.getloadavg()[0]:.1f}"
    )


# -------------------------------------------------------------------------------------- protocol


def cell_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs: the grid, WGAN-GP at setting A, and the conditional / unconditional pair at the default setting."""
    base = {
        "width": args.width,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "n_fake": args.n_fake,
        "kid_subsets": args.kid_subsets,
        "conditional": False,
        "evaluate": True,
    }
    specs = [
        {**base, "name": f"{d_norm} {s}", "group": "grid", "d_norm": d_norm, "setting": s, "loss": "ns"}
        for d_norm in args.norms
        for s in args.settings
    ]
    specs.append({**base, "name": "wgan-gp A", "group": "wgan_gp", "d_norm": "none", "setting": "A", "loss": "wgan_gp"})
    for conditional in (False, True):
        specs.append(
            {
                **base,
                "name": "conditional" if conditional else "unconditional",
                "group": "conditioning",
                "d_norm": "spectral",
                "setting": "default",
                "loss": "hinge",
                "conditional": conditional,
            }
        )
    return specs


def choose_g_updates(specs: list[dict[str, Any]], args: argparse.Namespace, log: Any) -> tuple[int, list[dict[str, Any]]]:
    """The generator updates per run: ``--g-updates``, or with ``auto`` what fits the budget after a probe of every run."""
    if args.g_updates != "auto":
        return int(args.g_updates), []
    probes = run_all([{**s, "g_updates": args.probe_updates, "evaluate": False} for s in specs], args.jobs, log)
    total = sum(p["s_per_g_update"] for p in probes)
    evaluation = 20.0 * len(specs)  # seconds: two evaluations and the Trainer's start per run, measured beforehand
    budget = args.budget_minutes * 60.0 * args.jobs - evaluation
    g = max(2, int(budget / total))
    log(
        f"probe: {total:.1f} s per generator update of every run together ({args.jobs} at a time); "
        f"{g} generator updates fit {args.budget_minutes} minutes"
    )
    return g, probes


def real_floor(n_fake: int, kid_subsets: int, seed: int, image_size: int) -> dict[str, Any]:
    """FD / KID between real sets in the shipped features (at ``image_size``, through :func:`feature_size`): val against
    test, and ``n_fake`` train images against test."""
    features = load_digit_features(batch_size=250)
    test = features.features(feature_size(load_domain("digits", "test", image_size).tensors[0] * 2 - 1))
    out = {}
    for name, split, count in (("val vs test", "val", None), ("train vs test", "train", n_fake)):
        images = load_domain("digits", split, image_size, seed=seed, count=count).tensors[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = distances(test, features.features(feature_size(images * 2 - 1)), kid_subsets, None, seed)
        out[name] = {
            "fd": result["fd"].value,
            "kid": result["kid"].value,
            "kid_std": result["kid"].std,
            "n_real": result["fd"].n_real,
            "n_other": result["fd"].n_fake,
        }
    return out


def start_fd(args: argparse.Namespace) -> dict[str, Any]:
    """FD / KID of the untrained generators (unconditional and conditional; same seed as the runs)."""
    evaluator = Evaluator(args.n_fake, args.kid_subsets, args.seed, args.image_size)
    base = {
        "width": args.width,
        "image_size": args.image_size,
        "seed": args.seed,
        "d_norm": "spectral",
        "loss": "hinge",
        "setting": "default",
    }
    return {
        "unconditional": evaluator(make_task({**base, "conditional": False})),
        "conditional": evaluator(make_task({**base, "conditional": True})),
    }


def status(result: dict[str, Any], start: dict[str, Any]) -> str:
    """``"diverged"``, ``"failed"`` (final FD not below the untrained generator's) or ``"ok"``."""
    if result["diverged"]:
        return "diverged"
    reference = start["conditional" if result["conditional"] else "unconditional"]
    return "failed" if result["final"]["fd"] >= reference["fd"] else "ok"


# -------------------------------------------------------------------------------------- reporting


def cell_text(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    if result["status"] == "diverged":
        return f"**diverged** (update {result['diverged_at']})" if result["diverged_at"] is not None else "**diverged** (NaN samples)"
    final = result["final"]
    text = f"{final['fd']:.2f} ({final['kid']:.3f})"
    if result["status"] == "failed":
        text = f"**failed** {text}"
    mid = result["mid"]
    if mid and not mid.get("nonfinite") and final["fd"] > 1.5 * mid["fd"]:
        text += f" [worse than half-way: {mid['fd']:.2f}]"
    return text


def markdown(report: dict[str, Any]) -> str:
    """The results page."""
    runs = report["runs"]
    by_name = {r["name"]: r for r in runs}
    settings, norms = report["settings"]["settings"], report["settings"]["norms"]
    counts = report["counts"]
    floor, start = report["floor"], report["start"]
    resized = (
        ""
        if report["settings"]["image_size"] == 32
        else " (32 px costs about twice as much per step; the 8x8 digits lose nothing at 16 px; generated and real "
        "images alike are resized to 32 px, bilinear, for the classifier's features)"
    )
    lines = [
        "# GAN stability: discriminator normalization x the SN paper's settings A-F (in miniature)",
        "",
        f"`{report['command']}` ({report['date']}, torch {report['torch']}, {report['machine']}, 1 torch thread per run, "
        f"{report['settings']['jobs']} runs at a time; load average {report['load_average'][0]:.1f} at the start, "
        f"{report['load_average'][1]:.1f} at the end; {report['seconds'] / 60:.1f} minutes).",
        "",
        f"Unconditional standard CNN GAN (width {report['settings']['width']}, batch {report['settings']['batch_size']}, "
        f"BN generator) on the embedded handwritten digits at {report['settings']['image_size']} px{resized}, non-saturating loss, "
        f"**{report['g_updates']} generator updates in every run** ({report['g_updates_choice']}), one seed "
        f"({report['settings']['seed']}). The paper trains 100k generator updates: this tests whether training stays "
        "stable in its first few hundred updates, not final quality.",
        "",
        f"Cells: FD (KID) against the digits test split in the shipped classifier's features, {counts}. "
        "**diverged**: a loss or a sample became NaN / infinite (the update is given); **failed**: final FD not below "
        f"the untrained generator's ({start['unconditional']['fd']:.2f}); a note in brackets where the final FD is over "
        "1.5x the FD half-way. These marks see only the distance: a generator that draws one image for every latent (mode "
        "collapse) or near-blank images can keep an FD below the start, so read the cells with the sample grid "
        "(the PNG below), which shows what each run draws.",
        "",
        f"Real floor: val vs test FD {floor['val vs test']['fd']:.2f}, KID {floor['val vs test']['kid']:.4f} "
        f"({floor['val vs test']['n_real']} test / {floor['val vs test']['n_other']} val); train vs test FD "
        f"{floor['train vs test']['fd']:.2f}, KID {floor['train vs test']['kid']:.4f} ({floor['train vs test']['n_real']} test / "
        f"{floor['train vs test']['n_other']} train, the counts of the runs). Untrained generator: FD "
        f"{start['unconditional']['fd']:.2f}, KID {start['unconditional']['kid']:.4f}.",
        "",
        "| d_norm | "
        + " | ".join(
            f"{s} (lr {SETTINGS[s]['lr']:g}, b {SETTINGS[s]['betas'][0]:g}/{SETTINGS[s]['betas'][1]:g}, n_dis {SETTINGS[s]['n_dis']})"
            for s in settings
        )
        + " |",
        "| --- | " + " | ".join("---" for _ in settings) + " |",
    ]
    for d_norm in norms:
        lines.append(f"| {d_norm} | " + " | ".join(cell_text(by_name.get(f"{d_norm} {s}")) for s in settings) + " |")
    if "A" in settings:
        lines.append(
            "| WGAN-GP (none, gp 10) | " + " | ".join(cell_text(by_name["wgan-gp A"]) if s == "A" else "-" for s in settings) + " |"
        )
    else:
        lines += ["", f"WGAN-GP (none, gp 10) at its setting A: {cell_text(by_name['wgan-gp A'])}."]
    lines += ["", "## Summary against the paper", "", PAPER_CLAIM, "", "What this run shows:", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    cond, uncond = by_name["conditional"], by_name["unconditional"]
    lines += [
        "",
        "## Conditional (conditional BN + projection) against unconditional",
        "",
        f"Spectral-norm discriminator, hinge loss, SN-GAN's default setting (lr {DEFAULT['lr']:g}, betas {DEFAULT['betas']}, "
        f"n_dis {DEFAULT['n_dis']}), {report['g_updates']} generator updates each. Class accuracy: the shipped classifier on "
        "class-conditioned samples (test accuracy on real digits "
        f"{report['classifier_test_accuracy']:.3f}); its real floor is that accuracy. Untrained conditional generator: FD "
        f"{start['conditional']['fd']:.2f}.",
        "",
        "| model | FD | KID | class accuracy | s per generator update |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in (("unconditional", uncond), ("conditional", cond)):
        final = r["final"] or {}
        if r["status"] == "diverged":
            lines.append(f"| {name} | **diverged** | - | - | {r['s_per_g_update']:.2f} |")
            continue
        acc = f"{final['class_acc']:.3f} ({final['class_acc_n']} samples)" if "class_acc" in final else "-"
        lines.append(f"| {name} | {final['fd']:.2f} | {final['kid']:.4f} | {acc} | {r['s_per_g_update']:.2f} |")
    lines += [
        "",
        "## Every run",
        "",
        "| run | loss | n_dis | generator / discriminator updates | s per generator update | FD half-way | final FD | "
        "last d_loss | last g_loss | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        mid = "-" if not r["mid"] or r["mid"].get("nonfinite") else f"{r['mid']['fd']:.2f}"
        final = "-" if not r["final"] or r["final"].get("nonfinite") else f"{r['final']['fd']:.2f}"
        losses = ["-" if v is None else f"{v:.3g}" for v in (r["last_d_loss"], r["last_g_loss"])]
        lines.append(
            f"| {r['name']} | {r['loss']} | {r['n_dis']} | {r['g_updates_done']} / {r['d_updates_done']} | "
            f"{r['s_per_g_update']:.2f} | {mid} | {final} | {losses[0]} | {losses[1]} | {r['status']} |"
        )
    if report.get("grid_png"):
        lines += ["", f"Samples of every run (16 each, same latents): `{report['grid_png']}`."]
    return "\n".join(lines) + "\n"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Facts of the grid stated plainly: per normalization, settings ok / failed / diverged and the FD range."""
    by_name = {r["name"]: r for r in report["runs"]}
    settings, norms = report["settings"]["settings"], report["settings"]["norms"]
    out = []
    for d_norm in norms:
        cells = [by_name[f"{d_norm} {s}"] for s in settings]
        ok = [c for c in cells if c["status"] == "ok"]
        bad = [f"{c['setting']} {c['status']}" for c in cells if c["status"] != "ok"]
        fds = [c["final"]["fd"] for c in ok]
        spread = f"FD {min(fds):.2f}-{max(fds):.2f} over those" if fds else "no usable run"
        out.append(f"{d_norm}: {len(ok)} of {len(cells)} settings ok ({spread})" + (f"; {', '.join(bad)}" if bad else ""))
    best = []
    for s in settings:
        scored = [(by_name[f"{d} {s}"]["final"]["fd"], d) for d in norms if by_name[f"{d} {s}"]["status"] == "ok"]
        best.append(f"{s}: {min(scored)[1]}" if scored else f"{s}: none")
    out.append("lowest FD per setting: " + ", ".join(best))
    high = [s for s in settings if SETTINGS[s]["lr"] >= 1e-3]
    if high:
        for d_norm in norms:
            ok_high = [by_name[f"{d_norm} {s}"] for s in high if by_name[f"{d_norm} {s}"]["status"] == "ok"]
            mean = statistics.fmean(c["final"]["fd"] for c in ok_high) if ok_high else None
            out.append(
                f"{d_norm} at the high learning rate ({', '.join(high)}): {len(ok_high)} of {len(high)} ok"
                + (f", mean FD {mean:.2f}" if mean is not None else "")
            )
    return out


def save_grid_png(path: Path, runs: list[dict[str, Any]], overwrite: bool) -> bool:
    """One panel of samples per run (4x4 each), titled with the run and its FD; False when no run has samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    panels = [r for r in runs if r["grid"] is not None]
    if not panels:
        return False
    columns = 6
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.0, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, panels):
        grid: Tensor = make_grid(r["grid"], nrow=4, normalize=True, value_range=(-1, 1), padding=1)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(f"{r['name']}\nFD {r['final']['fd']:.1f}", fontsize=8)
    figure.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
    return True


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--g-updates", default="auto", help="generator updates of every run, or 'auto': chosen from a probe to fit --budget-minutes"
    )
    parser.add_argument("--budget-minutes", type=float, default=25.0, help="training time of all runs together (auto)")
    parser.add_argument("--probe-updates", type=int, default=3, help="generator updates of each run in the probe (auto)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process on one thread")
    parser.add_argument("--width", type=float, default=0.125, help="multiplier of the standard CNN's channels")
    parser.add_argument(
        "--image-size",
        type=int,
        default=16,
        choices=(16, 32),
        help="side of the training images (16: the 8x8 digits lose nothing; samples and real images are "
        "resized to the classifier's 32 px for the metrics)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-fake", type=int, default=1000, help="generated samples per evaluation")
    parser.add_argument("--kid-subsets", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS))
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True, help="write a PNG of samples per run")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: setting D, 1 generator update, width 0.0625, batch 16, 100 samples, one process, written to the temp folder",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "gan_stability", help="output path without suffix (.md, .json and .png are written)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing results (else refuse before running)")
    args = parser.parse_args(argv)
    if args.quick:
        args.settings, args.g_updates, args.width, args.batch_size, args.n_fake, args.jobs = ["D"], "1", 0.0625, 16, 100, 1
        args.kid_subsets = 5
        if args.out == RESULTS / "gan_stability":
            args.out = Path(tempfile.gettempdir()) / "normapps_gan_stability_quick" / "gan_stability"
            args.overwrite = True  # the script's own scratch files
    if args.g_updates != "auto" and not (args.g_updates.isdigit() and int(args.g_updates) >= 1):
        parser.error(f"--g-updates must be 'auto' or an int >= 1, got {args.g_updates!r}")
    for name in ("jobs", "batch_size", "n_fake", "kid_subsets", "probe_updates"):
        if getattr(args, name) < (20 if name == "n_fake" else 2 if name == "probe_updates" else 1):
            parser.error(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if not args.width > 0 or not args.budget_minutes > 0:
        parser.error("--width and --budget-minutes must be > 0")
    refuse_existing(parser, [args.out.with_suffix(suffix) for suffix in (".md", ".json", ".png")], args.overwrite)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``--out``.md / .json (/ .png); return the report."""
    args = parse_args(argv)
    start_time = time.perf_counter()
    threads = torch.get_num_threads()
    load_start = os.getloadavg()[0]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    specs = cell_specs(args)
    try:
        torch.set_num_threads(1)
        g_updates, probes = choose_g_updates(specs, args, log)
        probe_rates = {p["name"]: p["s_per_g_update"] for p in probes}
        specs = [{**s, "g_updates": g_updates, "estimate": probe_rates.get(s["name"], 0.0)} for s in specs]
        floor = real_floor(args.n_fake, args.kid_subsets, args.seed, args.image_size)
        start = start_fd(args)
        log(f"real floor {floor}; untrained generator FD {start['unconditional']['fd']:.2f}")
        runs = run_all(specs, args.jobs, log)
        classifier_accuracy = float(load_digit_features().info["test_accuracy"]["digits"])
    finally:
        torch.set_num_threads(threads)
    for r in runs:
        r["status"] = status(r, start)
        r["n_dis"] = (SETTINGS[r["setting"]] if r["setting"] in SETTINGS else DEFAULT)["n_dis"]
    grid_png = None
    if args.grid and save_grid_png(args.out.with_suffix(".png"), runs, args.overwrite):
        grid_png = args.out.with_suffix(".png").name
    evaluated = next(r["final"] for r in runs if r["final"] and not r["final"].get("nonfinite"))
    report = {
        "command": command_line(__file__, argv),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "lightning": pytorch_lightning.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads_per_run": 1,
        "load_average": [load_start, os.getloadavg()[0]],
        "seconds": time.perf_counter() - start_time,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "g_updates": g_updates,
        "g_updates_choice": (
            f"chosen from a probe of {args.probe_updates} updates per run to fit {args.budget_minutes:g} minutes "
            f"of training, {args.jobs} at a time"
            if probes
            else "given by --g-updates"
        ),
        "probe_s_per_g_update": probe_rates,
        "counts": (
            f"{evaluated['n_real']} real test / {evaluated['n_fake']} generated, {evaluated['feature_dim']}-d features, "
            f"KID {evaluated['kid_details']}"
        ),
        "floor": floor,
        "start": start,
        "classifier_test_accuracy": classifier_accuracy,
        "paper_claim": PAPER_CLAIM,
        "grid_png": grid_png,
        "runs": [{k: v for k, v in r.items() if k not in ("grid", "estimate")} for r in runs],
    }
    text = markdown(report)
    print(text)
    write_results(args.out, report, text, overwrite=args.overwrite)
    return report


if __name__ == "__main__":
    main()
