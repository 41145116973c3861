"""normapps slim end to end on a tiny checkpoint made here: table, weights-only output, input untouched, bad input."""

import hashlib
from pathlib import Path

import pytest
import torch

from normapps.cli.slim import main
from normapps.tasks import ClassificationTask
from normapps.tasks.efficient import load_model


def _checkpoint(path: Path, **hyper_parameters) -> Path:
    task = ClassificationTask(width=4, bn_gamma_init=0.5, **hyper_parameters)
    with torch.no_grad():
        for name, p in task.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.uniform_(0.05, 1)
    torch.save({"state_dict": task.state_dict(),
                "hyper_parameters": {"_class_path": "normapps.tasks.ClassificationTask", **task.hparams}}, path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_end_to_end(tmp_path, capsys, arch, one_thread):
    checkpoint = _checkpoint(tmp_path / "model.ckpt", arch=arch)
    before = _digest(checkpoint)
    out = tmp_path / "pruned.pt"
    args = ["--ckpt", str(checkpoint), "--ratio", "0.5", "--recalibrate", "--finetune-epochs", "1", "--count", "64",
            "--batch-size", "16", "--out", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    for stage in ("original", "pruned", "recalibrated", "fine-tuned", "params", "FLOPs"):
        assert stage in table
    assert _digest(checkpoint) == before
    content = torch.load(out, weights_only=True)
    assert content["info"]["source_sha256"] == before and content["info"]["ratio"] == 0.5
    loaded = load_model(out)
    original = load_model(checkpoint)
    assert sum(p.numel() for p in loaded.model.parameters()) < sum(p.numel() for p in original.model.parameters())
    assert loaded.preprocessing == original.preprocessing and loaded.keep

    assert main(args) == 2  # never overwrites without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["--ckpt", str(out), "--ratio", "0.5", "--out", str(tmp_path / "again.pt")]) == 2
    assert "already pruned" in capsys.readouterr().err


def test_bad_input(tmp_path, capsys):
    assert main(["--ckpt", str(tmp_path / "missing.ckpt"), "--ratio", "0.5", "--out", str(tmp_path / "o.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    checkpoint = _checkpoint(tmp_path / "gn.ckpt", norm="gn")
    assert main(["--ckpt", str(checkpoint), "--ratio", "0.5", "--count", "32", "--out", str(tmp_path / "o.pt")]) == 2
    assert "BatchNorm" in capsys.readouterr().err
    broken = torch.load(_checkpoint(tmp_path / "m.ckpt"), weights_only=True)
    broken["hyper_parameters"]["width"] = 8  # weights of width 4 for an architecture of width 8
    torch.save(broken, tmp_path / "broken.ckpt")
    assert main(["--ckpt", str(tmp_path / "broken.ckpt"), "--ratio", "0.5", "--out", str(tmp_path / "o.pt")]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["--ckpt", str(tmp_path / "m.ckpt"), "--ratio", "0.5", "--out", str(tmp_path / "m.ckpt")]) == 2
    with pytest.raises(SystemExit):
        main(["--ckpt", "x", "--ratio", "1.5", "--out", "y"])
    assert not (tmp_path / "o.pt").exists()
