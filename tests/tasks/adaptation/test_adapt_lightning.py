"""Tests of the LightningModules trained on both domains: DomainPairDataModule, DSBNTask, TransNormTask."""

import pytest
import torch
from pytorch_lightning import Trainer
from torch import nn
from torch.utils.data import TensorDataset

from normapps.data import DigitsDataModule
from normapps.tasks.adaptation import (
    SOURCE,
    TARGET,
    DomainPairDataModule,
    DomainSpecificBatchNorm,
    DSBNTask,
    TransNorm,
    TransNormTask,
    use_domain,
)


def domain_pair(batch_size: int = 16) -> DomainPairDataModule:
    """Two-class blobs; the target is the source scaled and shifted (a covariate shift)."""
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (96,), generator=g)
    x = torch.randn(96, 1, 6, 6, generator=g) + 2.0 * y.view(-1, 1, 1, 1)
    target = x[:64] * 2.0 + 3.0
    return DomainPairDataModule(
        TensorDataset(x, y), TensorDataset(target), target_test=TensorDataset(target, y[:64]),
        batch_size=batch_size, target_batch_size=8, num_classes=2,
    )


def trainer(steps: int, **kwargs) -> Trainer:
    return Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_domain_pair_datamodule_zips_labelled_source_and_unlabelled_target():
    dm = domain_pair()
    loader = dm.train_dataloader()
    batches = [batch for batch, _, _ in loader]
    assert len(batches) == 8  # the longer of 6 source batches (96 / 16, cycled) and 8 target batches (64 / 8)
    source_x, source_y = batches[0]["source"]
    (target_x,) = batches[0]["target"]
    assert source_x.shape == (16, 1, 6, 6) and source_y.shape == (16,) and target_x.shape == (8, 1, 6, 6)
    assert dm.val_dataloader() == [] and len(dm.test_dataloader()) == 4
    with pytest.raises(ValueError, match="target training set has 64 samples, fewer than one batch of 100"):
        DomainPairDataModule(TensorDataset(torch.zeros(200, 1)), TensorDataset(torch.zeros(64, 1)), target_batch_size=100)


def test_dsbn_task_trains_source_and_target_branches_and_evaluates_on_the_target():
    dm = domain_pair()
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    task = DSBNTask(model, num_classes=2, lr=1e-2, confidence=0.0)
    fit = trainer(8)
    fit.fit(task, datamodule=dm)
    assert {"train_loss", "train_source_loss", "train_target_loss", "train_pseudo_label_fraction"} <= set(fit.logged_metrics)
    layer = next(m for m in task.model.modules() if isinstance(m, DomainSpecificBatchNorm))
    source_bn, target_bn = layer.layers
    # Each branch's statistics follow its own domain: the target's inputs are larger.
    assert (target_bn.running_mean - source_bn.running_mean).abs().min() > 0.1
    assert not torch.equal(source_bn.weight, target_bn.weight)
    test = fit.test(task, datamodule=dm, verbose=False)[0]
    assert {"test_acc", "test_loss"} <= set(test)
    x, y = dm.target_test.tensors
    task.eval()
    with use_domain(task.model, TARGET):
        expected = (task.model(x).argmax(1) == y).float().mean()
    assert test["test_acc"] == pytest.approx(expected.item(), abs=1e-6)


def test_dsbn_pseudo_labels_start_from_the_source_branch_and_restore_modes():
    task = DSBNTask(num_classes=3, width=4, fusion_steps=10)
    task.model.train()
    task.model.features[3].eval()
    modes = [m.training for m in task.model.modules()]
    x = torch.randn(8, 1, 8, 8)
    labels, confidences = task.pseudo_labels(x)
    assert [m.training for m in task.model.modules()] == modes
    task.model.eval()
    probabilities = task(x, SOURCE).softmax(1)
    torch.testing.assert_close(confidences, probabilities.max(1).values)
    assert torch.equal(labels, probabilities.argmax(1))
    assert task.fusion_weight() == 0.0


def test_transnorm_task_learns_each_domain_statistics_on_digits():
    digits = DigitsDataModule(batch_size=32, image_size=8)
    digits.setup("fit")
    source = digits.splits["train"]
    x, y = source.tensors
    target = TensorDataset(x * 0.5 + 1.0, y)
    dm = DomainPairDataModule(source, target, target_val=TensorDataset(*(t[:64] for t in target.tensors)),
                              batch_size=32, num_classes=10)
    task = TransNormTask(num_classes=10, width=4)
    fit = trainer(8, val_check_interval=8)
    fit.fit(task, datamodule=dm)
    assert {"train_loss", "val_acc", "val_loss"} <= set(fit.logged_metrics)
    layer = next(m for m in task.model.modules() if isinstance(m, TransNorm))
    # The first layer sees the input's shift: its target statistics move away from the source ones.
    mean_source, var_source = layer.running_statistics(SOURCE)
    mean_target, var_target = layer.running_statistics(TARGET)
    assert not torch.allclose(mean_source, mean_target, atol=1e-2)
    assert not torch.allclose(layer.alpha(), torch.ones_like(layer.alpha()))
    task.eval()
    assert task(x[:4]).shape == (4, 10)


def test_tasks_refuse_a_model_without_batch_norm():
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        TransNormTask(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), num_classes=2)
    with pytest.raises(ValueError, match="confidence must be in"):
        DSBNTask(confidence=2.0)
