"""Writing what ``normapps predict`` returns to a CSV file in the run's log folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from normapps.io import atomic_write, check_overwrite


class PredictionWriter(BasePredictionWriter):
    """Write every prediction to ``<log dir>/<filename>`` (CSV) at the end of ``predict``.

    One row per sample, in the order of the predict dataloader: ``index`` (position in that
    dataloader) and ``prediction`` (or ``prediction_0``, ``prediction_1``, ... when each sample's
    prediction is a vector); with several predict dataloaders a leading ``dataloader`` column
    tells them apart. The file is written atomically; an existing one is refused, before
    predicting, unless ``overwrite`` (``normapps predict --overwrite``).

    In a config::

        trainer:
          callbacks:
            - class_path: normapps.tasks.PredictionWriter
              init_args: {filename: predictions.csv}
    """

    def __init__(self, filename: str = "predictions.csv", overwrite: bool = False) -> None:
        """Initialize the writer.

        Args:
            filename: name of the CSV file, in the trainer's ``log_dir`` (``default_root_dir``
                without a logger).
            overwrite: replace an existing file of that name.
        """
        super().__init__(write_interval="epoch")
        if not filename or Path(filename).name != filename:
            raise ValueError(f"filename must be a plain file name (it is written in the log folder), got {filename!r}")
        self.filename = filename
        self.overwrite = overwrite

    def path(self, trainer: Trainer) -> Path:
        """Where the predictions of ``trainer`` go."""
        return Path(trainer.log_dir or trainer.default_root_dir) / self.filename

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse an existing file before any prediction is made."""
        if stage == "predict" and trainer.is_global_zero:
            check_overwrite(self.path(trainer), self.overwrite)

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        """Write all predictions as CSV."""
        if not trainer.is_global_zero:
            return
        several = bool(predictions) and isinstance(predictions[0], list)
        per_loader = list(predictions) if several else [list(predictions)]
        rows: list[list[str]] = []
        width = 1
        for loader, batches in enumerate(per_loader):
            index = 0
            for batch in batches:
                values = batch.detach().cpu() if isinstance(batch, Tensor) else batch
                if not isinstance(values, Tensor):
                    raise TypeError(f"PredictionWriter writes tensors; predict_step returned {type(values).__name__}")
                values = values.reshape(len(values), -1)
                width = values.shape[1]
                for row in values.tolist():
                    rows.append(([str(loader)] if several else []) + [str(index)] + [str(v) for v in row])
                    index += 1
        header = (["dataloader"] if several else []) + ["index"]
        header += ["prediction"] if width == 1 else [f"prediction_{j}" for j in range(width)]
        text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
        path = atomic_write(self.path(trainer), text, overwrite=self.overwrite)
        rank_zero_info(f"predictions written to {path}")
