"""``normapps norms``: the registered normalization methods, grouped by the survey's taxonomy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from normapps import norm


def registry_tables(family: str | None = None) -> list[Table]:
    """One table per method family (in registration order), rows sorted by partition (NAP), operation
    (NOP) and name, with recovery (NRR), paper and year."""
    tables = []
    names = norm.available(family)
    families = list(dict.fromkeys(norm.describe(n).family for n in names))
    for fam in families:
        infos = sorted((norm.describe(n) for n in norm.available(fam)), key=lambda i: (i.partition, i.operation, i.name))
        if not infos:
            continue
        table = Table(title=f"{fam} normalization ({len(infos)})", title_justify="left")
        table.add_column("name", no_wrap=True, style="bold")
        table.add_column("partition (NAP)")
        table.add_column("operation (NOP)")
        table.add_column("recovery (NRR)")
        table.add_column("paper")
        table.add_column("year", justify="right")
        for info in infos:
            table.add_row(info.name, info.partition, info.operation, info.recovery, info.paper, str(info.year))
        tables.append(table)
    return tables


def main(args: Sequence[str]) -> int:
    """Print the registry as tables; ``--family`` restricts it to one family."""
    parser = argparse.ArgumentParser(prog="normapps norms", description=__doc__)
    parser.add_argument("--family", help="show only this family (activation, conditional, whitening, ...)")
    options = parser.parse_args(args)
    try:
        tables = registry_tables(options.family)
    except ValueError as err:
        parser.error(str(err))
    console = Console(width=None if sys.stdout.isatty() else 160)
    if not tables:
        scope = f"the {options.family} family" if options.family else "any family"
        console.print(f"No normalization methods are registered for {scope} yet.")
    for table in tables:
        console.print(table)
    return 0
