import pytest
import torch

from normapps.data import DigitsDataModule
from normapps.tasks import ClassificationTask, linear_scaled_lr, train_and_test


def _batch(n=4):
    return torch.randn(n, 1, 16, 16), torch.randint(0, 10, (n,))


def test_training_step_returns_the_cross_entropy():
    task = ClassificationTask(norm="gn", width=4)
    x, y = _batch()
    loss = task.training_step((x, y), 0)
    assert loss.ndim == 0
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(task(x), y))


def test_predict_step_returns_class_indices_with_or_without_labels():
    task = ClassificationTask(width=4).eval()
    x, y = _batch()
    with_labels = task.predict_step((x, y), 0)
    assert with_labels.shape == (4,) and with_labels.dtype == torch.long
    assert torch.equal(with_labels, task.predict_step(x, 0))
    assert ((with_labels >= 0) & (with_labels < 10)).all()


@pytest.mark.parametrize(("optimizer", "kind"), [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimizer_is_chosen_by_name(optimizer, kind):
    task = ClassificationTask(width=4, optimizer=optimizer, lr=0.05, weight_decay=1e-4)
    config = task.configure_optimizers()
    assert isinstance(config["optimizer"], kind)
    assert config["optimizer"].defaults["lr"] == 0.05
    assert "lr_scheduler" not in config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer must be 'adam' or 'sgd', got 'rmsprop'"),
        ({"lr_schedule": "step"}, "lr_schedule must be"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"momentum": 1.0}, "momentum"),
        ({"norm": "cbn"}, "unknown norm 'cbn'.*expected one of the activation or whitening methods"),
        ({"norm": "gnn"}, "Did you mean 'gn'"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassificationTask(**kwargs)


def test_train_and_test_records_history_and_test_metrics():
    result = train_and_test(
        DigitsDataModule(batch_size=16),
        max_epochs=2,
        trainer_kwargs={"limit_train_batches": 3, "limit_val_batches": 2},
        norm="gn",
        width=4,
        lr_schedule="cosine",
    )
    assert [row["epoch"] for row in result.history] == [0, 1]
    assert {"val_acc", "val_loss"} <= set(result.history[0])
    assert set(result.test) == {"test_acc", "test_loss"}
    assert 0.0 <= result.test["test_acc"] <= 1.0
    assert result.steps == 6
    assert result.num_parameters > 0


def test_train_and_test_is_deterministic_for_a_seed():
    runs = [
        train_and_test(
            DigitsDataModule(batch_size=8),
            max_epochs=1,
            seed=5,
            validate=False,
            trainer_kwargs={"limit_train_batches": 4, "limit_test_batches": 2},
            norm="bn",
            width=4,
        ).test
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_linear_scaled_lr_is_proportional_to_the_batch_size():
    assert linear_scaled_lr(32) == 0.1
    assert linear_scaled_lr(2) == 0.1 * 2 / 32
    assert linear_scaled_lr(8, base_lr=0.2, base_batch_size=16) == 0.1
