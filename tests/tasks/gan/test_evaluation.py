"""GenerativeMetrics: logged keys, printed counts, reproducibility, real-image sources, mode restoring."""

import csv

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from normapps.data import load_domain
from normapps.tasks.gan.evaluation import GenerativeMetrics


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_domain("digits", split, 32).tensors
    return images * 2 - 1, labels


class _BankGAN(pl.LightningModule):
    """A stand-in GAN whose samples are real test digits of the asked class plus seeded Gaussian noise."""

    def __init__(self, conditional: bool = True, noise: float = 0.05) -> None:
        super().__init__()
        self.conditional, self.num_classes, self.noise = conditional, 10, noise
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.bank, self.bank_labels = _digits("test")
        self.calls: list[tuple[bool, torch.Tensor | None]] = []

    def sample(self, n, y=None, *, generator=None):
        self.calls.append((self.training, None if y is None else y.clone()))
        classes = torch.randint(10, (n,), generator=generator) if y is None else y
        members = [torch.nonzero(self.bank_labels == c).squeeze(1) for c in classes.tolist()]
        pick = torch.stack([m[torch.randint(len(m), (1,), generator=generator)].squeeze() for m in members])
        noise = torch.randn(n, 3, 32, 32, generator=generator) * self.noise
        return (self.bank[pick] + noise).clamp(-1, 1)

    def training_step(self, batch, batch_idx):
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4)


class _ValDigits(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(*_digits("val")), batch_size=64)


def _trainer(tmp_path, callback, epochs=2):
    return pl.Trainer(max_epochs=epochs, limit_train_batches=1, logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                      callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1)


def _logged(tmp_path) -> list[dict[str, str]]:
    (path,) = tmp_path.glob("run/version_*/metrics.csv")
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.filterwarnings("ignore:intra-class FD with as few")
def test_conditional_metrics_logged_every_epoch_reproducible_and_printed_with_counts(tmp_path, capsys, one_thread):
    callback = GenerativeMetrics(every_n_epochs=1, n_real=1000, n_fake=200, kid_subsets=5, kid_subset_size=100)
    module = _BankGAN()
    trainer = _trainer(tmp_path, callback)
    trainer.fit(module)
    assert len(callback.history) == 2  # fit end follows an evaluated epoch: not measured twice
    first, second = callback.history
    for key in ("fd", "kid", "class_acc", "intra_fd"):
        assert first[key].value == second[key].value  # same seed, same generator: same numbers
        assert f"metrics/{key}" in trainer.callback_metrics
    assert (first["fd"].n_real, first["fd"].n_fake) == (360, 200)  # the 360 digits val images; 20 per class
    assert first["class_acc"].value > 0.9
    assert first["class_acc"].details == "20 per class"
    logged = [row for row in _logged(tmp_path) if row.get("metrics/fd")]
    assert len(logged) == 2 and float(logged[0]["metrics/n_fake"]) == 200
    out = capsys.readouterr().out
    assert out.count("generative metrics, epoch") == 2 and "360 real / 200 fake (20 per class)" in out
    for training, y in module.calls:
        assert not training
        assert y is not None
    asked = torch.cat([y for _, y in module.calls[: len(module.calls) // 2]])
    assert torch.equal(asked.bincount(), torch.full((10,), 20))

    module.noise = 0.5
    module.train()
    noisy = callback.evaluate(trainer, module)
    assert module.training and not module.calls[-1][0]  # sampled in eval mode, the mode restored afterwards
    assert noisy["fd"].value > 5 * first["fd"].value
    assert noisy["kid"].value > first["kid"].value


@pytest.mark.filterwarnings("ignore:features_. has")
def test_unconditional_metrics_at_fit_end_use_the_datamodule_val_images(tmp_path, capsys, one_thread):
    callback = GenerativeMetrics(every_n_epochs=0, n_real=100, n_fake=60, kid_subsets=3, kid_subset_size=50)
    module = _BankGAN(conditional=False)
    trainer = _trainer(tmp_path, callback, epochs=1)
    trainer.fit(module, datamodule=_ValDigits())
    (result,) = callback.history
    assert set(result) == {"epoch", "step", "fd", "kid"}  # no class metrics for an unconditional generator
    assert (result["fd"].n_real, result["fd"].n_fake) == (100, 60)
    logged = [row for row in _logged(tmp_path) if row.get("metrics/fd")]
    assert len(logged) == 1 and float(logged[0]["metrics/fd"]) == pytest.approx(result["fd"].value)
    assert "100 real / 60 fake" in capsys.readouterr().out
    assert all(y is None for _, y in module.calls)


def test_too_few_conditional_samples_and_bad_arguments_raise(tmp_path, one_thread):
    with pytest.raises(ValueError, match="n_fake must be an int >= 2"):
        GenerativeMetrics(n_fake=1)
    with pytest.raises(ValueError, match="every_n_epochs must be an int >= 0"):
        GenerativeMetrics(every_n_epochs=-1)
    callback = GenerativeMetrics(n_real=50, n_fake=15)
    with pytest.raises(ValueError, match="1 samples per class for 10 classes"):
        callback.evaluate(_trainer(tmp_path, callback), _BankGAN())
