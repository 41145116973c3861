"""normapps fold: folded outputs equal the unfolded model's, weights-only output, pt2 and ONNX export, refusals."""

import hashlib
import re

import pytest
import torch

from normapps.cli import fold
from normapps.cli.fold import main
from normapps.tasks import ClassificationTask
from normapps.tasks.efficient import load_model, load_onnx, load_program
from normapps.tasks.efficient.export import onnx_available, onnxruntime_available


def _checkpoint(path, **hyper_parameters):
    task = ClassificationTask(width=4, **hyper_parameters)
    with torch.no_grad():
        for name, buffer in task.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2)
            elif name.endswith("running_mean"):
                buffer.uniform_(-0.5, 0.5)
    torch.save({"state_dict": task.state_dict(),
                "hyper_parameters": {"_class_path": "normapps.tasks.ClassificationTask", **task.hparams}}, path)
    return path


def test_fold_equals_and_exports(tmp_path, capsys, one_thread):
    checkpoint = _checkpoint(tmp_path / "m.ckpt", arch="resnet")
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    out = tmp_path / "folded.pt"
    args = ["--ckpt", str(checkpoint), "--out", str(out), "--export", "pt2", "--count", "32"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    differences = [float(d) for d in re.findall(r"max relative difference to the unfolded model (\S+)", printed)]
    assert len(differences) == 2 and max(differences) <= 1e-5
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before
    torch.load(out, weights_only=True)
    folded, original = load_model(out), load_model(checkpoint)
    assert folded.folded and not any("norm" in type(m).__name__.lower() for m in folded.model.modules())
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded.model(x), original.model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load_program(out.with_suffix(".pt2"))(x), original.model(x), rtol=1e-5, atol=1e-5)

    assert main(args) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["--ckpt", str(out), "--out", str(tmp_path / "twice.pt")]) == 2
    assert "already folded" in capsys.readouterr().err


def test_tolerance_failure_writes_nothing(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "folded.pt"
    assert main(["--ckpt", str(checkpoint), "--out", str(out), "--count", "16", "--tolerance", "-1"]) == 1
    assert "above the tolerance" in capsys.readouterr().err and not out.exists()


@pytest.mark.skipif(not (onnx_available() and onnxruntime_available()), reason="needs onnx, onnxscript and onnxruntime")
def test_fold_exports_a_checked_onnx_file(tmp_path, capsys, one_thread):
    checkpoint = _checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "folded.pt"
    assert main(["--ckpt", str(checkpoint), "--out", str(out), "--export", "onnx", "--count", "32"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"exported \(onnx\): max relative difference to the unfolded model \S+", printed)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_onnx(out.with_suffix(".onnx"))(x), load_model(checkpoint).model(x),
                                   rtol=1e-5, atol=1e-5)


def test_onnx_export_without_the_packages_is_refused(tmp_path, capsys, monkeypatch):
    checkpoint = _checkpoint(tmp_path / "m.ckpt")
    monkeypatch.setattr(fold, "onnx_available", lambda: False)
    out = tmp_path / "folded.pt"
    assert main(["--ckpt", str(checkpoint), "--out", str(out), "--export", "onnx", "--count", "16"]) == 2
    assert "pip install onnx onnxscript onnxruntime" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".onnx").exists()


def test_onnx_file_unchecked_without_onnxruntime_is_said(tmp_path, capsys, monkeypatch):
    if not onnx_available():
        pytest.skip("needs onnx and onnxscript")
    checkpoint = _checkpoint(tmp_path / "m.ckpt")
    monkeypatch.setattr(fold, "onnxruntime_available", lambda: False)
    out = tmp_path / "folded.pt"
    assert main(["--ckpt", str(checkpoint), "--out", str(out), "--export", "onnx", "--count", "16"]) == 0
    assert "not checked: onnxruntime is not installed" in capsys.readouterr().err
    assert out.exists() and out.with_suffix(".onnx").exists()
