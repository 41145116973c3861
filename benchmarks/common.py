"""Pieces shared by the benchmark scripts: the random-weight ResNet-18 they time, and how they record and write their
results (imported as a sibling module when a benchmark runs as ``python benchmarks/<name>.py``).

Every benchmark writes ``<out>.json`` (the full report) and ``<out>.md`` (the page rendered from it), refuses to
replace existing results without ``--overwrite`` before it spends any time, and records the command that made them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18

from normapps.io import atomic_write, check_overwrite


def random_resnet18(gamma_range: tuple[float, float], seed: int = 0) -> nn.Module:
    """torchvision's ResNet-18 (10 classes) with random weights and random BatchNorm parameters and statistics, in
    eval mode: gamma uniform in ``gamma_range``, beta ~ N(0, 0.1), running means ~ N(0, 0.1), variances in [0.5, 2].

    Random BN parameters make the benchmarks exercise folding and pruning as on a trained network (torchvision's
    initialization leaves gamma = 1, beta = 0, mean = 0, var = 1: folding would be a no-op and |gamma| would not rank
    channels). The draws consume the generator identically for every ``gamma_range``, so two ranges with the same
    ``seed`` give the same network but for gamma.

    Args:
        gamma_range: ``(low, high)`` of the uniform BN scales, ``low < high``; e.g. ``(0.05, 1.0)`` for pruning by
            |gamma| (a spread of small scales to rank), ``(0.5, 1.5)`` for folding (scales around 1).
        seed: the torch seed of every draw (the global generator is reseeded).
    """
    low, high = gamma_range
    if not low < high:
        raise ValueError(f"gamma_range must be (low, high) with low < high, got {gamma_range}")
    torch.manual_seed(seed)
    model = resnet18(num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(low, high)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that ran benchmark ``script`` (its file name or path), as a user would type it from the repository
    root: ``python benchmarks/<script> <arguments>``; ``argv`` is what ``main`` received (None: the process's own)."""
    given = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *given])


def refuse_existing(parser: argparse.ArgumentParser, paths: Iterable[Path], overwrite: bool) -> None:
    """Exit with a usage error naming the first of ``paths`` that exists, unless ``overwrite`` (``--overwrite``).

    Called from argument parsing, so a benchmark refuses before it trains or times anything."""
    try:
        for path in paths:
            check_overwrite(path, overwrite)
    except FileExistsError as err:
        parser.error(str(err))


def write_results(out: Path, report: dict[str, Any], text: str, *, overwrite: bool = True, indent: int = 2, end: str = "") -> None:
    """Write ``<out>.json`` (``report`` as JSON with ``indent``) then ``<out>.md`` (``text``), each followed by ``end``.

    Each file is replaced atomically (:func:`normapps.io.atomic_write`): a reader never sees half a report. The JSON
    goes first because the page is rendered from it: an interrupted write leaves the data, not a page without it.

    Args:
        out: the output path without suffix (``--out``).
        report: JSON-serializable results.
        text: the Markdown page.
        overwrite: if false, raise :class:`FileExistsError` rather than replace an existing file (the scripts check
            with :func:`refuse_existing` before they run; this guards against a file that appeared since).
        indent: JSON indentation.
        end: appended to both files (``"\\n"`` for a final newline where ``text`` has none).
    """
    atomic_write(out.with_suffix(".json"), json.dumps(report, indent=indent) + end, overwrite=overwrite)
    atomic_write(out.with_suffix(".md"), text + end, overwrite=overwrite)
