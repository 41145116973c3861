"""``normapps``: LightningCLI subcommands plus the project's own commands.

``normapps fit|validate|test|predict -c CONFIG`` runs a LightningModule / LightningDataModule pair
given by class path in the config (the digits classifier when none is given);
``normapps norms`` lists the registered normalization methods; ``normapps demo`` trains small
experiments and writes an HTML report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from . import demo, norms

COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "norms": (norms.main, "list the registered normalization methods by the survey's taxonomy"),
    "demo": (demo.main, "train small experiments and write an HTML report"),
}
LIGHTNING_COMMANDS = {
    "fit": "train a model (e.g. normapps fit -c configs/classify/digits.yaml)",
    "validate": "evaluate on the validation set",
    "test": "evaluate on the test set",
    "predict": "predict on the predict set",
}


class NormappsCLI(LightningCLI):
    """LightningCLI in subclass mode with the digits classifier as default model and data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data's class count into the model and default to the digits classifier."""
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.set_defaults(
            {
                "model": {"class_path": "normapps.tasks.ClassificationTask"},
                "data": {"class_path": "normapps.data.DigitsDataModule"},
            }
        )


def usage() -> str:
    """Overview of every subcommand."""
    lines = ["usage: normapps COMMAND [options]   (normapps COMMAND --help for the options)", ""]
    for name, help_text in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<10}{help_text}")
    for name, (_, help_text) in COMMANDS.items():
        lines.append(f"  {name:<10}{help_text}")
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``normapps`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    if argv[0] not in LIGHTNING_COMMANDS:
        print(f"normapps: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    NormappsCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults={"accelerator": "cpu", "devices": 1, "default_root_dir": "runs"},
        save_config_kwargs={"overwrite": True},
        args=None if args is None else argv,
    )
    return 0
