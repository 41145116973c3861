"""Tests of the adaptation configs and of TestTimeAdaptationTask (a test-time method from a config)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from normapps.cli.main import NormappsCLI
from normapps.tasks import ClassificationTask
from normapps.tasks.adaptation import DomainDataModule, TestTimeAdaptationTask, adapt, predict_stream

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs" / "adaptation").rglob("*.yaml"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A ClassificationTask checkpoint (3 input channels) after a few training steps on random images."""
    path = tmp_path_factory.mktemp("source") / "source.ckpt"
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 10, (32,))
    task = ClassificationTask(width=8, in_channels=3)
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(task, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=8))
    trainer.save_checkpoint(path)
    return path


def test_every_adaptation_config_parses_and_builds_its_model_and_data(checkpoint, tmp_path):
    assert len(CONFIGS) == 24, [c.name for c in CONFIGS]
    for config in CONFIGS:
        args = ["-c", str(config), f"--trainer.default_root_dir={tmp_path}"]
        if "TestTimeAdaptationTask" in config.read_text():
            args.append(f"--model.init_args.checkpoint={checkpoint}")
        cli = NormappsCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                          args=args, run=False)
        assert isinstance(cli.datamodule, DomainDataModule), config
        assert cli.model.hparams.num_classes == 10, config


def data(batch_size: int = 16) -> DomainDataModule:
    return DomainDataModule("digits", "digits_c", image_size=16, batch_size=batch_size, target_corruption="fog",
                            target_severity=5, count=48)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMAPPS_CACHE", str(tmp_path))


def evaluator(**kwargs) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


@pytest.mark.parametrize(("method", "options"), [("source", {}), ("adabn", {}), ("adabn_ema", {"momentum": 0.5}),
                                                 ("norm", {}), ("prior", {"n_source": 4.0}), ("tent", {"lr": 0.01})])
def test_test_time_task_predicts_as_adapt_and_predict_stream(checkpoint, method, options):
    task = TestTimeAdaptationTask(str(checkpoint), method, options)
    task.configure_model()
    dm = data()
    source = {k: v.clone() for k, v in task.source.state_dict().items()}
    predictions = torch.cat(evaluator(inference_mode=method != "tent").predict(task, datamodule=dm))
    batches = [x for x, _ in dm.predict_dataloader()]
    model = ClassificationTask.load_from_checkpoint(checkpoint).model.eval()
    if method in ("adabn", "adabn_ema"):
        with torch.no_grad():
            expected = torch.cat([adapt(model, method, batches, **options)(x) for x in batches])
    else:
        expected = torch.cat(list(predict_stream(model, method, batches, **options)))
    assert torch.equal(predictions, expected.argmax(1))
    assert all(torch.equal(v, source[k]) for k, v in task.source.state_dict().items())  # the source is never changed


def test_test_time_task_logs_target_accuracy(checkpoint):
    result = evaluator().test(TestTimeAdaptationTask(str(checkpoint), "norm"), datamodule=data(), verbose=False)[0]
    assert set(result) == {"test_acc", "test_loss"} and 0.0 <= result["test_acc"] <= 1.0


def test_tent_under_inference_mode_says_which_trainer_setting_to_change(checkpoint):
    with pytest.raises(RuntimeError, match="inference_mode: false"):
        evaluator().test(TestTimeAdaptationTask(str(checkpoint), "tent"), datamodule=data(), verbose=False)


def test_bad_test_time_arguments_are_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="dsbn and transnorm are trained"):
        TestTimeAdaptationTask(str(checkpoint), "dsbn")
    with pytest.raises(FileNotFoundError, match="train the source model first"):
        TestTimeAdaptationTask(str(tmp_path / "missing.ckpt"), "norm")
    with pytest.raises(ValueError, match="the data has 2 classes but the checkpoint"):
        TestTimeAdaptationTask(str(checkpoint), "norm", num_classes=2).configure_model()
    with pytest.raises(TypeError, match="unknown options"):
        evaluator().test(TestTimeAdaptationTask(str(checkpoint), "prior", {"strength": 3}), datamodule=data(), verbose=False)


def test_adaptation_benchmark_quick_run_writes_every_table(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "adaptation.py"
    monkeypatch.syspath_prepend(str(path.parent))  # its sibling common
    spec = importlib.util.spec_from_file_location("adaptation_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # dataclasses look their module up there
    spec.loader.exec_module(benchmark)
    threads = torch.get_num_threads()
    try:
        benchmark.main(["--quick", "--out", str(tmp_path / "adaptation")])
    finally:
        torch.set_num_threads(threads)
    text = (tmp_path / "adaptation.md").read_text()
    for heading in ("per corruption", "Continual stream", "Test batch size", "held-out corruptions only", "Speed", "TENT paper"):
        assert heading in text
    assert json.loads((tmp_path / "adaptation.json").read_text())["main"]["digits->digits_m"]["tent"]
