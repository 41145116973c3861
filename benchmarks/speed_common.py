"""Command-line pieces and the interleaved timing shared by the speed benchmarks (imported as a sibling module when a
benchmark runs as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import refuse_existing


def add_timing_arguments(parser: argparse.ArgumentParser, name: str, repeats: int) -> None:
    """``--repeats``, ``--rounds``, ``--threads``, ``--out`` (results/<name> without suffix) and ``--overwrite``."""
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per layer and round")
    parser.add_argument("--rounds", type=int, default=5, help="independent rounds; ratios are reported over them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / name, help="output path without suffix (.md and .json are written)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files (else refuse before timing)")


def parse_and_check_outputs(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the arguments; exit with a usage error if ``--out``'s .md or .json exists without ``--overwrite``."""
    args = parser.parse_args()
    refuse_existing(parser, [args.out.with_suffix(".md"), args.out.with_suffix(".json")], args.overwrite)
    return args


#: Per round, the median seconds of each named run.
Rounds = list[dict[str, float]]


def timed_rounds(runs: dict[str, Callable[[], Any]], rounds: int, repeats: int, seed: int = 0) -> Rounds:
    """Per round, the median wall-clock seconds of each run over ``repeats`` interleaved calls, in a new random
    order each time (so both sides of a ratio see the same load). No warm-up: call every run once before."""
    rng = random.Random(seed)
    order = list(runs)
    result: Rounds = []
    for _ in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            rng.shuffle(order)
            for name in order:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
        result.append({name: statistics.median(t) for name, t in times.items()})
    return result


def ratio(rounds: Rounds, name: str, reference: str) -> list[float]:
    """Median over rounds of the per-round ratio ``name / reference``, with its minimum and maximum."""
    values = [r[name] / r[reference] for r in rounds]
    return [statistics.median(values), min(values), max(values)]
