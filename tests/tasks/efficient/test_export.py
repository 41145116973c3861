"""torch.export and ONNX export of pruned and folded models: the saved program computes what the model computes."""

import pytest
import torch

from normapps import norm
from normapps.models.resnet import SmallResNet
from normapps.tasks.efficient import export, export_onnx, export_program, load_onnx, load_program, prune
from normapps.tasks.efficient.export import onnx_available, onnxruntime_available


@pytest.fixture
def pruned(one_thread):
    model = SmallResNet(width=4).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) or hasattr(m, "running_var"):
                m.weight.uniform_(0, 1)
                m.running_var.uniform_(0.5, 2)
    return prune(model, 0.5, torch.randn(2, 1, 16, 16))[0].eval()


@pytest.mark.parametrize("fold", [False, True])
def test_exported_program_equals_the_model(tmp_path, pruned, fold):
    model = norm.fold(pruned) if fold else pruned
    path = tmp_path / "model.pt2"
    export_program(model, torch.randn(4, 1, 16, 16), path)
    x = torch.randn(3, 1, 16, 16)  # another batch size: the batch dimension is dynamic
    with torch.no_grad():
        torch.testing.assert_close(load_program(path)(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_program(model, torch.randn(4, 1, 16, 16), path)


def test_export_needs_a_batch(tmp_path, pruned):
    with pytest.raises(ValueError, match="at least 2"):
        export_program(pruned, torch.randn(1, 1, 16, 16), tmp_path / "m.pt2")


@pytest.mark.skipif(not (onnx_available() and onnxruntime_available()), reason="needs onnx, onnxscript and onnxruntime")
@pytest.mark.parametrize("fold", [False, True])
def test_onnx_file_equals_the_model(tmp_path, pruned, fold, capsys):
    model = norm.fold(pruned) if fold else pruned
    path = export_onnx(model, torch.randn(4, 1, 16, 16), tmp_path / "model.onnx")
    assert capsys.readouterr().out == ""  # the exporter's progress messages are not printed
    run = load_onnx(path)
    for batch in (1, 3):  # the batch dimension is dynamic
        x = torch.randn(batch, 1, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_onnx(model, torch.randn(4, 1, 16, 16), path)
    assert list(tmp_path.iterdir()) == [path]  # no external-data or temporary files left beside it


def test_onnx_without_the_packages_says_so(tmp_path, pruned, monkeypatch):
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(RuntimeError, match="pip install onnx onnxscript onnxruntime"):
        export_onnx(pruned, torch.randn(2, 1, 16, 16), tmp_path / "m.onnx")
    with pytest.raises(RuntimeError, match="onnxruntime"):
        load_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
