"""Train the digit classifier whose features the generative metrics use, and write its features file.

::

    python -m normapps.metrics.train --out checkpoints/digit_features.pt [--overwrite]
        [--epochs 6] [--syndigits-count 4000] [--digits-repeats 2] [--width 16] [--batch-size 128]
        [--lr 0.003] [--seed 0] [--threads 2]

Data: the training splits of the embedded ``digits`` (scikit-learn's handwritten digits, 1077
images, repeated ``--digits-repeats`` times per epoch so they weigh about as much as the rendered
ones) and ``syndigits`` (``--syndigits-count`` digits rendered from the training fonts), at 32x32,
mapped from [0, 1] to [-1, 1]. Augmentation: a random affine warp per image (rotation up to 10
degrees, shift up to 10%, scale 0.85-1.1, border padding; kornia), then the image negated with
probability 1/2 (the network sees grey-standardized input, :func:`~normapps.metrics.features.standardize_grey`,
so this teaches both polarities). Optimizer: AdamW with a one-cycle learning rate (15% warm-up),
label smoothing 0.05. Batch norm (``normapps.norm``'s ``bn``) after every convolution.

The network is then measured on the held-out test splits of both (``digits`` test: 360 images
never trained on; ``syndigits`` test: 2000 images rendered from held-out font families) and
written with :func:`~normapps.metrics.features.save_digit_features`, atomically; an existing file is
replaced only with ``--overwrite``. Prints the test accuracies and the file's sha256.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor

from normapps.data import load_domain
from normapps.io import check_overwrite, sha256

from .features import TRAIN_COMMAND, DigitFeatures, DigitNet, load_digit_features, save_digit_features

__all__ = ["accuracy", "main", "train_classifier"]

IMAGE_SIZE = 32


def _tensors(name: str, split: str, count: int | None = None) -> tuple[Tensor, Tensor]:
    images, labels = load_domain(name, split, IMAGE_SIZE, count=count).tensors
    return images * 2 - 1, labels


def accuracy(features: DigitFeatures, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` (in [-1, 1]) classified as ``labels``."""
    return float((features.logits(images).argmax(1) == labels).double().mean())


def train_classifier(images: Tensor, labels: Tensor, width: int = 16, epochs: int = 6, batch_size: int = 128, lr: float = 3e-3,
                     seed: int = 0, log: bool = True) -> tuple[DigitNet, int]:
    """Train a :class:`DigitNet` on ``images`` ``(N, 3, 32, 32)`` in [-1, 1] with ``labels``; return it and its steps.

    See the module docstring for the recipe.
    """
    torch.manual_seed(seed)
    network = DigitNet(num_classes=int(labels.max()) + 1, width=width)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.15)
    augment = K.RandomAffine(degrees=10.0, translate=(0.1, 0.1), scale=(0.85, 1.1), padding_mode="border", p=1.0)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        network.train()
        order = torch.randperm(len(images), generator=generator)
        total, start = 0.0, time.perf_counter()
        for index in order.split(batch_size):
            x = augment((images[index] + 1) / 2) * 2 - 1
            flip = torch.rand(len(index), 1, 1, 1, generator=generator) < 0.5
            x = torch.where(flip, -x, x)  # both polarities: the rendered digits come dark on light and light on dark
            loss = F.cross_entropy(network(x), labels[index], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
            step += 1
        if log:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return network.eval(), step


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m normapps.metrics.train --out FILE [--overwrite] [options]`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m normapps.metrics.train",
                                     description="Train the digit classifier of the generative metrics and write its features file.")
    parser.add_argument("--out", required=True, help="the features file to write (checkpoints/digit_features.pt is the shipped one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--syndigits-count", type=int, default=4000, help="rendered training digits")
    parser.add_argument("--digits-repeats", type=int, default=2, help="times the 1077 handwritten training digits appear per epoch")
    parser.add_argument("--width", type=int, default=16, help="first-block channels; features have 4 * width dimensions")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    for name in ("epochs", "syndigits_count", "digits_repeats", "width", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        check_overwrite(args.out, args.overwrite)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    digits, digit_labels = _tensors("digits", "train")
    synthetic, synthetic_labels = _tensors("syndigits", "train", args.syndigits_count)
    images = torch.cat([digits.repeat(args.digits_repeats, 1, 1, 1), synthetic])
    labels = torch.cat([digit_labels.repeat(args.digits_repeats), synthetic_labels])
    print(f"training on {len(digits)} digits x {args.digits_repeats} + {len(synthetic)} syndigits = {len(images)} images per epoch")
    network, steps = train_classifier(images, labels, args.width, args.epochs, args.batch_size, args.lr, args.seed)
    tests = {name: _tensors(name, "test") for name in ("digits", "syndigits")}
    test_accuracy = {name: accuracy(DigitFeatures(network), *data) for name, data in tests.items()}
    command = " ".join(["python -m normapps.metrics.train", *(sys.argv[1:] if argv is None else argv)])
    training = {
        "command": command, "reference_command": TRAIN_COMMAND, "steps": steps, "epochs": args.epochs,
        "data": {"digits": f"train split, {len(digits)} images x {args.digits_repeats} per epoch",
                 "syndigits": f"train split (training fonts), count={len(synthetic)}",
                 "image_size": IMAGE_SIZE, "range": [-1.0, 1.0]},
        "augmentation": "kornia RandomAffine(degrees=10, translate=0.1, scale=(0.85, 1.1), padding_mode='border'); "
                        "negation with probability 0.5",
        "optimizer": f"AdamW lr {args.lr} (one-cycle), weight decay 5e-4, batch {args.batch_size}, label smoothing 0.05",
        "seed": args.seed, "test_sizes": {name: len(data[1]) for name, data in tests.items()},
    }
    try:
        out = save_digit_features(args.out, network, training, test_accuracy, IMAGE_SIZE, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reloaded = load_digit_features(out)
    reloaded_accuracy = {name: accuracy(reloaded, *data) for name, data in tests.items()}
    if reloaded_accuracy != test_accuracy:
        print(f"error: the written file gives other test accuracies ({reloaded_accuracy}) than the trained network "
              f"({test_accuracy})", file=sys.stderr)
        return 1
    digest = sha256(out)
    scores = ", ".join(f"{name} {value:.4f} ({len(tests[name][1])} images)" for name, value in test_accuracy.items())
    print(f"{out}: {steps} steps, test accuracy {scores}, {Path(out).stat().st_size / 1e6:.2f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
