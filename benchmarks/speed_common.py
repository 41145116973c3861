"""Command-line pieces shared by the speed benchmarks (imported as a sibling module when a
benchmark runs as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from normapps.io import check_overwrite


def add_timing_arguments(parser: argparse.ArgumentParser, name: str, repeats: int) -> None:
    """``--repeats``, ``--rounds``, ``--threads``, ``--out`` (results/<name> without suffix) and ``--overwrite``."""
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per layer and round")
    parser.add_argument("--rounds", type=int, default=5, help="independent rounds; ratios are reported over them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / name,
                        help="output path without suffix (.md and .json are written)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files (else refuse before timing)")


def parse_and_check_outputs(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the arguments; exit with a usage error if ``--out``'s .md or .json exists without ``--overwrite``."""
    args = parser.parse_args()
    try:
        for suffix in (".md", ".json"):
            check_overwrite(args.out.with_suffix(suffix), args.overwrite)
    except FileExistsError as err:
        parser.error(str(err))
    return args
