"""``normapps analyze -c CONFIG``: conditioning analysis of normalized networks on the digits.

Per normalization method, the eigen-spectrum and condition numbers of every CNN layer's input
covariance and of a small MLP's empirical Fisher, at initialization and after a short training
(:mod:`normapps.tasks.conditioning`). Writes ``conditioning.md``, ``conditioning.json`` and two PNG
plots into ``out``; refuses to replace them unless ``--overwrite`` is given.

The config is plain YAML whose keys are the fields of
:class:`~normapps.tasks.conditioning.ConditioningConfig` (``--print_config`` prints a runnable
one); every key can also be given on the command line (``--steps 100``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import fields

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from normapps.io import check_overwrite
from normapps.tasks.conditioning import OUTPUT_FILES, ConditioningConfig, analyze, write_results


def build_parser() -> ArgumentParser:
    """The parser: ``-c/--config``, one option per config key, ``--overwrite``, ``--print_config``."""
    parser = ArgumentParser(prog="normapps analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config (e.g. configs/analyze/conditioning.yaml)")
    parser.add_class_arguments(ConditioningConfig)
    parser.add_argument("--overwrite", action="store_true", help=f"replace existing {', '.join(OUTPUT_FILES)} in out (else refuse)")
    return parser


def main(args: Sequence[str]) -> int:
    """Parse the config, check it and the output folder, run the analysis and write the results."""
    parser = build_parser()
    options = parser.parse_args(list(args))
    try:
        config = ConditioningConfig(**{f.name: options[f.name] for f in fields(ConditioningConfig)})
    except ValueError as err:
        parser.error(f"bad config: {err}")
    try:
        for name in OUTPUT_FILES:
            check_overwrite(f"{config.out}/{name}", options.overwrite)
    except FileExistsError as err:
        parser.error(str(err))
    console = Console(stderr=True)
    result = analyze(config, progress=lambda message: console.print(f"[dim]analyze:[/dim] {message}"))
    command = shlex.join(["normapps", "analyze", *args])
    paths = write_results(result, config.out, command=command, overwrite=options.overwrite)
    console.print(f"results written to [bold]{paths[0]}[/bold] (and {', '.join(p.name for p in paths[1:])})")
    return 0
