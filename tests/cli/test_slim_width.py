"""normapps slim --width: one width of a SlimmableTask checkpoint as a plain pruned file that normapps fold reads, with
the accuracy of that width; the option checks."""

import hashlib
import re
from pathlib import Path

import pytest
import torch

from normapps.cli import fold, slim
from normapps.cli.slim import split_data
from normapps.tasks import ClassificationTask
from normapps.tasks.efficient import load_model
from normapps.tasks.efficient.slimmable import UniversalBatchNorm2d, calibrate, use_width
from normapps.tasks.efficient.slimmable_task import SlimmableTask

CLASS_PATH = "normapps.tasks.efficient.slimmable_task.SlimmableTask"


def _slimmable_checkpoint(path: Path, mode: str = "slimmable") -> tuple[Path, SlimmableTask]:
    """A SlimmableTask checkpoint of width 4 with non-trivial BN parameters and statistics (universal: calibrated at
    its listed widths on random images), saved as ``normapps fit`` saves one (no datamodule: the digits defaults)."""
    task = SlimmableTask(mode=mode, width_mults=(0.25, 0.5, 1.0), width=4)
    with torch.no_grad():
        for module in task.model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, UniversalBatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    if mode == "universal":
        for w in task.width_mults:
            calibrate(task.model, w, [torch.randn(16, 1, 16, 16)])
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": {"_class_path": CLASS_PATH, **task.hparams}}, path)
    return path, task.eval()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_width_export_prints_the_width_accuracy_and_folds(tmp_path, capsys, one_thread):
    checkpoint, task = _slimmable_checkpoint(tmp_path / "slimmable.ckpt")
    before = _digest(checkpoint)
    out = tmp_path / "w50.pt"
    args = ["--ckpt", str(checkpoint), "--width", "0.5", "--count", "64", "--batch-size", "16", "--out", str(out)]
    assert slim.main(args) == 0
    printed = capsys.readouterr().out
    assert _digest(checkpoint) == before

    exported = load_model(out)
    images, labels = split_data("digits", "test", exported.preprocessing, 64).tensors
    with torch.no_grad(), use_width(task.model, 0.5):
        expected = task.model(images)
    torch.testing.assert_close(exported.model(images), expected, rtol=1e-6, atol=1e-6)
    accuracy = float((expected.argmax(1) == labels).float().mean())
    assert torch.load(out, weights_only=True)["info"]["accuracy"]["width 0.5"] == pytest.approx(accuracy)
    row = re.search(r"^width 0\.5\s+\S+\s+\S+\s+(\S+)%$", printed, re.MULTILINE)
    assert row and f"{row.group(1)}%" == f"{accuracy:.2%}"  # the table formats the same fraction
    assert re.search(r"^width 1\s", printed, re.MULTILINE) and "features.1 2/4" in printed
    assert exported.keep == {"features.1": [0, 1], "features.4": [0, 1, 2, 3], "features.7": [0, 1, 2, 3]}

    folded_path = tmp_path / "w50_folded.pt"
    assert fold.main(["--ckpt", str(out), "--out", str(folded_path), "--count", "32"]) == 0
    with torch.no_grad():
        torch.testing.assert_close(load_model(folded_path).model(images), expected, rtol=1e-5, atol=1e-5)

    assert slim.main(args) == 2  # never overwrites without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_universal_width_between_the_calibrated_ones_needs_recalibrate(tmp_path, capsys, one_thread):
    checkpoint, _ = _slimmable_checkpoint(tmp_path / "universal.ckpt", mode="universal")
    args = ["--ckpt", str(checkpoint), "--width", "0.4", "--count", "64", "--batch-size", "16", "--out", str(tmp_path / "w40.pt")]
    assert slim.main(args) == 2
    assert "calibrated widths: 0.25, 0.5, 1" in capsys.readouterr().err and not (tmp_path / "w40.pt").exists()
    assert slim.main([*args, "--recalibrate"]) == 0
    assert re.search(r"^recalibrated\s", capsys.readouterr().out, re.MULTILINE)
    assert load_model(tmp_path / "w40.pt").keep["features.4"] == [0, 1, 2]  # round(8 * 0.4) = 3 channels


def test_each_checkpoint_kind_names_the_option_that_fits(tmp_path, capsys):
    slimmable_checkpoint, _ = _slimmable_checkpoint(tmp_path / "slimmable.ckpt")
    classifier = ClassificationTask(width=4)
    plain_checkpoint = tmp_path / "plain.ckpt"
    torch.save(
        {
            "state_dict": classifier.state_dict(),
            "hyper_parameters": {"_class_path": "normapps.tasks.ClassificationTask", **classifier.hparams},
        },
        plain_checkpoint,
    )
    out = tmp_path / "out.pt"
    cases = [
        (
            ["--ckpt", str(plain_checkpoint), "--width", "0.5"],
            "not a SlimmableTask checkpoint; prune a ClassificationTask checkpoint with --ratio",
        ),
        (["--ckpt", str(slimmable_checkpoint), "--ratio", "0.5"], "export one of its widths (0.25, 0.5, 1) with --width"),
        (["--ckpt", str(slimmable_checkpoint), "--width", "0.75"], "expected one of 0.25, 0.5, 1"),
        (["--ckpt", str(slimmable_checkpoint), "--width", "0.5", "--min-channels", "2"], "--min-channels applies to --ratio"),
    ]
    for options, message in cases:
        assert slim.main([*options, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1
    assert slim.main(["--ckpt", str(slimmable_checkpoint), "--width", "0.5", "--out", str(slimmable_checkpoint), "--overwrite"]) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
    for options in (["--width", "0.5", "--ratio", "0.5"], [], ["--width", "1.5"], ["--width", "0"]):
        with pytest.raises(SystemExit):
            slim.main(["--ckpt", str(slimmable_checkpoint), *options, "--out", str(out)])
    assert "one of the arguments --ratio --width is required" in capsys.readouterr().err
    assert not out.exists()
