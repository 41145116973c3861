"""``normapps demo``: run every report section's experiment and write ``report.html``."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from normapps.io import check_overwrite
from normapps.report import build_report, registered_sections


def main(args: Sequence[str]) -> int:
    """Build the report; ``--fast`` runs the smallest experiments (seconds, numbers not meaningful)."""
    sections = [spec.name for spec in registered_sections()]
    parser = argparse.ArgumentParser(prog="normapps demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="folder of report.html and its figures (default: %(default)s)")
    parser.add_argument("--fast", action="store_true", help="tiny experiments, for a smoke test")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report.html in --out (else refuse)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every experiment (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the experiments (default: %(default)s; they are small, and more threads than "
                             "free cores stall)")
    parser.add_argument("--sections", nargs="+", choices=sections, metavar="NAME", help=f"only these sections: {', '.join(sections)}")
    options = parser.parse_args(args)
    if options.threads < 1:
        parser.error(f"--threads must be >= 1, got {options.threads}")
    console = Console(stderr=True)
    try:
        check_overwrite(Path(options.out) / "report.html", options.overwrite)
    except FileExistsError as err:
        parser.error(str(err))
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pytorch_lightning")
        path = build_report(
            options.out,
            sections=options.sections,
            fast=options.fast,
            seed=options.seed,
            progress=lambda message: console.print(f"[dim]demo:[/dim] {message}"),
            overwrite=options.overwrite,
            threads=options.threads,
        )
    console.print(f"report written to [bold]{path}[/bold]")
    return 0
