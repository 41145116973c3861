"""``normapps``: LightningCLI subcommands plus the project's own commands.

``normapps fit|validate|test|predict -c CONFIG`` runs a LightningModule / LightningDataModule pair
given by class path in the config (the digits classifier when none is given); they refuse to
replace an existing ``config.yaml`` (or ``predictions.csv``) in the log folder unless
``--overwrite`` is given;
``normapps norms`` lists the registered normalization methods; ``normapps demo`` trains small
experiments and writes an HTML report; ``normapps analyze``, ``normapps adapt``,
``normapps stylize``, ``normapps generate``, ``normapps slim`` and ``normapps fold`` are the task
commands (``normapps COMMAND --help``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import Namespace
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from normapps.models import check_norm_name
from normapps.tasks import ClassificationTask, PredictionWriter

from . import adapt, analyze, demo, fold, generate, norms, slim, stylize

COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "norms": (norms.main, "list the registered normalization methods by the survey's taxonomy"),
    "demo": (demo.main, "train small experiments and write an HTML report"),
    "analyze": (analyze.main, "conditioning of layer inputs and of the Fisher per normalization (-c CONFIG)"),
    "adapt": (adapt.main, "adapt a trained classifier to unlabelled target images (adabn, norm, prior, tent)"),
    "stylize": (stylize.main, "stylize a photo or a folder of photos (adain, wct, cin, fast; style mixing, masks, colour)"),
    "generate": (generate.main, "sample grids, class morphs or latent interpolations from a GAN (default: the shipped digit cGAN)"),
    "slim": (slim.main, "prune a classifier by |BatchNorm gamma| (network slimming) or export one width of a slimmable network; "
             "recalibrate / fine-tune"),
    "fold": (fold.main, "fold BatchNorm into the convolutions of a trained or pruned classifier; check outputs; export"),
}
LIGHTNING_COMMANDS = {
    "fit": "train a model (e.g. normapps fit -c configs/classify/digits.yaml)",
    "validate": "evaluate on the validation set",
    "test": "evaluate on the test set",
    "predict": "predict on the predict set; the config's PredictionWriter callback writes predictions.csv "
    "to the log folder (without one, predictions are only returned)",
}


class ClearSaveConfigCallback(SaveConfigCallback):
    """Lightning's config saver, with a refusal that tells a command-line user what to do."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Save the config; raise :class:`FileExistsError` (not a RuntimeError about Python kwargs) if one exists."""
        try:
            super().setup(trainer, pl_module, stage)
        except RuntimeError as err:
            if "to NOT exist" not in str(err):
                raise
            path = f"{trainer.log_dir}/{self.config_filename}"
            raise FileExistsError(
                f"{path} already exists (the config of an earlier run); pass --overwrite to replace it, "
                "or choose another --trainer.default_root_dir"
            ) from None


class NormappsCLI(LightningCLI):
    """LightningCLI in subclass mode with the digits classifier as default model and data.

    ``overwrite`` (``--overwrite`` on the command line) lets the run replace an existing
    ``config.yaml`` and the predictions of a :class:`~normapps.tasks.PredictionWriter`.
    """

    def __init__(self, *args: Any, overwrite: bool = False, **kwargs: Any) -> None:
        self.overwrite = overwrite
        super().__init__(*args, save_config_callback=ClearSaveConfigCallback, save_config_kwargs={"overwrite": overwrite},
                         **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data's class count into the model and default to the digits classifier."""
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.set_defaults(
            {
                "model": {"class_path": "normapps.tasks.ClassificationTask"},
                "data": {"class_path": "normapps.data.DigitsDataModule"},
            }
        )

    def before_instantiate_classes(self) -> None:
        """Check the classifier's ``norm`` before anything is built: a bad name exits with one clear line."""
        config = self.config.get(str(self.subcommand), self.config)
        model = config.get("model")
        if not isinstance(model, Namespace) or not isinstance(model.get("init_args"), Namespace):
            return
        norm = model.init_args.get("norm")
        class_path = model.get("class_path", "")
        if isinstance(norm, str) and class_path.rsplit(".", 1)[-1] == ClassificationTask.__name__:
            try:
                check_norm_name(norm)
            except ValueError as err:
                print(f"normapps {self.subcommand}: error: --model.norm: {err}", file=sys.stderr)
                raise SystemExit(2) from None

    def before_predict(self) -> None:
        """Pass ``--overwrite`` on to the prediction writers."""
        for callback in self.trainer.callbacks:
            if isinstance(callback, PredictionWriter) and self.overwrite:
                callback.overwrite = True


def usage() -> str:
    """Overview of every subcommand."""
    lines = ["usage: normapps COMMAND [options]   (normapps COMMAND --help for the options)", ""]
    lines.append("  fit, validate, test and predict also take --overwrite: replace config.yaml / predictions.csv")
    lines.append("")
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
    overwrite = "--overwrite" in argv[1:]
    argv = [a for i, a in enumerate(argv) if i == 0 or a != "--overwrite"]
    if args is None:  # LightningCLI reads sys.argv itself (and warns when given args as well)
        sys.argv[1:] = argv
    try:
        NormappsCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults={"accelerator": "cpu", "devices": 1, "default_root_dir": "runs"},
            overwrite=overwrite,
            args=None if args is None else argv,
        )
    except FileExistsError as err:
        print(f"normapps {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    return 0
