from pathlib import Path

import pytest
import yaml

from normapps import norm
from normapps.cli import main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "classify" / "digits.yaml")


def _lightning(command, root, *extra):
    return main(
        [command, "-c", CONFIG, "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", *extra]
    )


def test_fit_fast_dev_run_with_another_norm(tmp_path):
    assert _lightning("fit", tmp_path, "--model.norm", "gn", "--trainer.fast_dev_run", "true") == 0


def test_fit_then_validate_test_predict_from_the_checkpoint(tmp_path):
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    assert _lightning("fit", tmp_path, "--model.norm", "gn", *limits) == 0
    (checkpoint,) = tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt")
    saved = yaml.safe_load((tmp_path / "lightning_logs/version_0/config.yaml").read_text())
    assert saved["model"]["init_args"]["norm"] == "gn"
    assert "num_classes" not in saved["model"]["init_args"]  # linked, saved once (by the datamodule)
    hparams = yaml.safe_load((tmp_path / "lightning_logs/version_0/hparams.yaml").read_text())
    assert hparams["num_classes"] == 10
    for command, limit in (("validate", "--trainer.limit_val_batches"), ("test", "--trainer.limit_test_batches"),
                           ("predict", "--trainer.limit_predict_batches")):
        assert _lightning(command, tmp_path, "--model.norm", "gn", "--ckpt_path", str(checkpoint), limit, "1") == 0


def test_print_config_gives_a_runnable_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", CONFIG, "--model.norm", "ln", "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["init_args"]["norm"] == "ln"
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    assert main(["fit", "-c", str(path), "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"]) == 0


def test_norms_lists_every_registered_method(capsys):
    assert main(["norms"]) == 0
    out = capsys.readouterr().out
    for name in norm.available():
        assert f" {name} " in out
    assert "activation" in out and "partition (NAP)" in out


def test_norms_rejects_an_unknown_family(capsys):
    with pytest.raises(SystemExit):
        main(["norms", "--family", "colour"])
    assert "unknown family 'colour'" in capsys.readouterr().err


def test_help_and_unknown_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("fit", "predict", "norms", "demo"))
    assert main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_demo_fast_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Classification on handwritten digits" in html
    assert (out / "classification_val_accuracy.png").read_bytes().startswith(b"\x89PNG")


def test_demo_refuses_to_replace_a_report_without_overwrite(tmp_path, capsys):
    (tmp_path / "report.html").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--fast", "--out", str(tmp_path), "--sections", "classification_section"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "report.html already exists; pass --overwrite to replace it" in err and "Traceback" not in err
    assert (tmp_path / "report.html").read_text() == "mine"


def test_norms_says_when_a_family_has_no_methods(capsys, monkeypatch):
    registered = norm.available
    monkeypatch.setattr(norm, "available", lambda family=None: [] if family == "gradient" else registered(family))
    assert main(["norms", "--family", "gradient"]) == 0
    assert "No normalization methods are registered for the gradient family yet." in capsys.readouterr().out


@pytest.mark.parametrize(("bad", "hint"), [("bnn", "Did you mean 'bn'"), ("cbn", "'cbn' is a conditional method")])
def test_bad_norm_name_exits_with_one_clear_line(tmp_path, capsys, bad, hint):
    with pytest.raises(SystemExit) as exit_info:
        _lightning("fit", tmp_path, "--model.norm", bad, "--trainer.fast_dev_run", "true")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Union subtypes" not in err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith(f"normapps fit: error: --model.norm: unknown norm '{bad}'") and hint in line
    assert "expected one of the activation or whitening methods" in line
    assert not list(tmp_path.iterdir())  # nothing was built or written


def test_existing_config_is_kept_unless_overwrite(tmp_path, capsys):
    run = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
           "--trainer.logger", "false"]  # not fast_dev_run: LightningCLI saves no config in that mode
    assert _lightning("fit", tmp_path, *run) == 0
    config = tmp_path / "config.yaml"
    config.write_text("# mine\n")
    assert _lightning("fit", tmp_path, *run) == 2
    err = capsys.readouterr().err
    assert f"{config} already exists" in err and "pass --overwrite" in err
    assert config.read_text() == "# mine\n"
    assert _lightning("fit", tmp_path, *run, "--overwrite") == 0
    assert "trainer" in yaml.safe_load(config.read_text())


def test_predict_writes_predictions_csv_and_refuses_to_replace_it(tmp_path, capsys):
    from normapps.data import DigitsDataModule

    run = ["--trainer.logger", "false", "--trainer.limit_predict_batches", "2", "--data.batch_size", "16"]
    assert _lightning("predict", tmp_path, *run) == 0
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "index,prediction" and len(lines) == 1 + 32
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(32))
    assert all(0 <= int(line.split(",")[1]) < 10 for line in lines[1:])
    assert DigitsDataModule().split_sizes()["test"] >= 32
    (tmp_path / "predictions.csv").write_text("mine\n")
    (tmp_path / "config.yaml").unlink()
    assert _lightning("predict", tmp_path, *run) == 2
    assert "predictions.csv already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "predictions.csv").read_text() == "mine\n"
    assert _lightning("predict", tmp_path, *run, "--overwrite") == 0
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 33
