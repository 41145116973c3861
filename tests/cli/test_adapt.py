"""``normapps adapt`` end to end: torchvision and normapps models, image folders and embedded domains, bad input."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pytorch_lightning import LightningDataModule, Trainer
from torch.nn.modules.batchnorm import _BatchNorm

import normapps.data
from normapps.cli import main
from normapps.cli.adapt import load_checkpoint
from normapps.data import DigitsDataModule
from normapps.norm import source_prior
from normapps.tasks import ClassificationTask
from normapps.tasks.adaptation import DomainDataModule

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CLASSES = ("ant", "bee", "cat", "dog")


pytestmark = pytest.mark.usefixtures("one_thread")


def write_folder(folder: Path, classes=CLASSES, per_class: int = 3) -> Path:
    """32x32 PNGs in class folders, each class with its own colour cast."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, size=(32, 32, 3)) + np.array([40 * label, 20, 90 - 20 * label])
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / name / f"{i}.png")
    return folder


def folder_images(folder: Path) -> torch.Tensor:
    """Every image of ``folder`` under resnet18's preprocessing at 32 pixels, read with PIL alone."""
    paths = sorted(folder.glob("*/*.png"))
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])
    return (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD


def resnet(num_classes: int = 4) -> torch.nn.Module:
    """A torchvision resnet18 with BatchNorm statistics and affine parameters away from their defaults."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model


def exact_target_statistics(weights: Path, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """AdaBN's statistics computed by torch alone: one training-mode pass over all images as one batch, momentum 1."""
    model = torchvision.models.resnet18(num_classes=4)
    model.load_state_dict(torch.load(weights, weights_only=True))
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(images)
    return {name: (m.running_mean, m.running_var) for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def digest(*paths: Path) -> dict[str, str]:
    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder" for p in files}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A weights file of a 4-class resnet18 and a folder of 4 classes x 3 images."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    torch.save(resnet().state_dict(), root / "resnet18.pt")
    return root / "resnet18.pt", write_folder(root / "target")


def adapt(weights, folder, out, *extra, model="torchvision:resnet18"):
    return main(["adapt", "--model", model, "--weights", str(weights), "--target", str(folder), "--image-size", "32",
                 "--batch-size", "5", "--out", str(out), *extra])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("normapps adapt: error: ")
    return lines[0]


def test_adabn_checkpoint_holds_the_exact_target_statistics_and_the_inputs_are_unchanged(inputs, tmp_path, capsys):
    weights, folder = inputs
    before = digest(weights, folder)
    assert adapt(weights, folder, tmp_path / "out", "--num-classes", "4", "--method", "adabn") == 0
    assert digest(weights, folder) == before
    assert "normapps adapt: wrote" in capsys.readouterr().err

    adapted = torchvision.models.resnet18(num_classes=4)
    adapted.load_state_dict(torch.load(tmp_path / "out" / "adapted.pt", weights_only=True))
    source = torch.load(weights, weights_only=True)
    # bn1's input does not depend on how the 3 batches are normalized: pooled over them, it is the full data's
    exact = exact_target_statistics(weights, folder_images(folder))
    torch.testing.assert_close(adapted.bn1.running_mean, exact["bn1"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adapted.bn1.running_var, exact["bn1"][1], rtol=1e-4, atol=1e-5)
    for key, value in adapted.state_dict().items():
        if "running" in key:
            assert not torch.allclose(value, source[key]), key
        elif "num_batches_tracked" not in key:
            assert torch.equal(value, source[key]), key

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"]["name"] == "adabn" and report["model"]["num_classes"] == 4
    assert report["model"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert report["model"]["preprocessing"]["image_size"] == 32 and report["model"]["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    assert report["target"] | {"name": None} == {
        "name": None, "split": "test", "corruption": None, "severity": None, "images": 12, "skipped_files": 0, "used_images": 12,
        "batches": 3, "batch_size": 5, "seed": 0, "labelled": True, "num_classes": 4, "class_names": list(CLASSES),
    }
    accuracy = report["accuracy"]
    assert set(accuracy) == {"source", "online", "checkpoint"} and accuracy["online"] == accuracy["checkpoint"]
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())
    assert "exact pooled statistics" in report["checkpoint"]["contains"]
    shift = {row["layer"]: row for row in report["statistics_shift"]}
    assert list(shift) == list(exact)
    count = 12 * 16 * 16  # values per channel at bn1: 12 images, 16x16 after the stride-2 conv1
    mu_t, var_t = exact["bn1"][0].double(), exact["bn1"][1].double() * (count - 1) / count
    mu_s, var_s = source["bn1.running_mean"].double(), source["bn1.running_var"].double() + 1e-5
    assert shift["bn1"]["mean_shift"] == pytest.approx(float(((mu_t - mu_s).abs() / var_s.sqrt()).mean()), rel=1e-4)
    assert shift["bn1"]["log_var_ratio"] == pytest.approx(float(((var_t + 1e-5) / var_s).log().mean()), rel=1e-4)
    assert all(row["symmetric_kl"] >= 0 and row["channels"] > 0 for row in shift.values())


def test_one_batch_adabn_equals_a_training_mode_pass_over_all_images(inputs, tmp_path):
    weights, folder = inputs
    assert adapt(weights, folder, tmp_path, "--num-classes", "4", "--method", "adabn", "--batch-size", "11", "--max-batches", "1") == 0
    target = json.loads((tmp_path / "report.json").read_text())["target"]
    assert (target["batches"], target["used_images"]) == (1, 12)  # 11 + 1: the single image joins the batch before
    state = torch.load(tmp_path / "adapted.pt", weights_only=True)
    for layer, (mean, var) in exact_target_statistics(weights, folder_images(folder)).items():
        torch.testing.assert_close(state[f"{layer}.running_mean"], mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(state[f"{layer}.running_var"], var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["norm", "prior", "tent", "tent --episodic"])
def test_test_time_methods_save_their_static_checkpoint(inputs, tmp_path, method):
    # one batch of all 12 images: the exact statistics of every layer are those of one training-mode pass
    weights, folder = inputs
    name, *extra = method.split()
    assert adapt(weights, folder, tmp_path, "--num-classes", "4", "--method", name, *extra, "--batch-size", "12") == 0
    state = torch.load(tmp_path / "adapted.pt", weights_only=True)
    torchvision.models.resnet18(num_classes=4).load_state_dict(state)
    source = torch.load(weights, weights_only=True)
    exact = exact_target_statistics(weights, folder_images(folder))
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["accuracy"]) == {"source", "online", "checkpoint"}
    if name == "prior":  # bn1's input does not depend on any normalization: its target statistics are exact
        p = source_prior(16, 12)
        assert report["method"]["options"] == {"n_source": 16.0, "source_weight": p}
        count = 12 * 16 * 16
        expected_var = p * source["bn1.running_var"] + (1 - p) * exact["bn1"][1] * (count - 1) / count
        torch.testing.assert_close(state["bn1.running_mean"], p * source["bn1.running_mean"] + (1 - p) * exact["bn1"][0])
        torch.testing.assert_close(state["bn1.running_var"], expected_var)
        return
    changed = [key for key in source if key.endswith(("bn1.weight", "bn2.weight")) and not torch.equal(state[key], source[key])]
    if name == "tent" and not extra:
        assert changed and "affine parameters after one online pass" in report["checkpoint"]["contains"]
        return
    assert not changed  # norm, episodic tent: the source affine and AdaBN's statistics
    for layer, (mean, var) in exact.items():
        torch.testing.assert_close(state[f"{layer}.running_mean"], mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(state[f"{layer}.running_var"], var, rtol=1e-4, atol=1e-5)


def test_refuses_to_replace_outputs_without_overwrite(inputs, tmp_path, capsys):
    weights, folder = inputs
    for name in ("adapted.pt", "report.json"):
        out = tmp_path / name.split(".")[0]
        out.mkdir()
        (out / name).write_text("mine")
        assert adapt(weights, folder, out, "--num-classes", "4", "--method", "adabn") == 2
        assert f"{out / name} already exists; pass --overwrite to replace it" in error_line(capsys)
        assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == "mine"
    assert adapt(weights, folder, out, "--num-classes", "4", "--method", "adabn", "--max-batches", "1", "--overwrite") == 0
    assert json.loads((out / "report.json").read_text())["target"]["batches"] == 1


def test_flat_folder_with_a_corrupt_file_is_adapted_without_labels(inputs, tmp_path, capsys):
    weights, folder = inputs
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(folder.glob("*/*.png"))[:6]):
        (flat / f"{i}.png").write_bytes(path.read_bytes())
    (flat / "broken.png").write_bytes(b"\x89PNG truncated")
    assert adapt(weights, flat, tmp_path / "out", "--num-classes", "4", "--method", "norm") == 0
    err = capsys.readouterr().err
    assert f"normapps adapt: warning: skipped 1 of 7 image files in {flat} that could not be read: broken.png" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accuracy"] is None and report["target"]["labelled"] is False
    assert (report["target"]["images"], report["target"]["skipped_files"]) == (6, 1)


def test_unlabelled_ignores_the_class_folders(inputs, tmp_path):
    weights, _ = inputs
    three = write_folder(tmp_path / "three", CLASSES[:3])
    assert adapt(weights, three, tmp_path / "out", "--num-classes", "4", "--method", "adabn", "--unlabelled") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accuracy"] is None and report["target"]["num_classes"] is None and report["options"]["unlabelled"]


def test_a_normapps_digits_checkpoint_adapts_to_an_embedded_domain(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMAPPS_CACHE", str(tmp_path / "cache"))
    data = DigitsDataModule(batch_size=32)
    task = ClassificationTask(width=4)
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    before = digest(checkpoint)
    out = tmp_path / "out"
    assert main(["adapt", "--model", str(checkpoint), "--target", "digits_m", "--method", "adabn", "--batch-size", "32",
                 "--max-batches", "3", "--out", str(out)]) == 0
    assert digest(checkpoint) == before
    report = json.loads((out / "report.json").read_text())
    preprocessing = report["model"]["preprocessing"]
    assert (preprocessing["image_size"], preprocessing["mean"], preprocessing["std"]) == (16, [data.mean], [data.std])
    assert preprocessing["origin"] == "DigitsDataModule settings from the datamodule hyper-parameters in last.ckpt"
    assert report["target"]["used_images"] == 96 and report["target"]["num_classes"] == 10
    assert report["statistics_shift"][0]["layer"] == "model.features.1"
    fresh = ClassificationTask(width=4)
    fresh.load_state_dict(torch.load(out / "adapted.pt", weights_only=True))
    assert not torch.equal(fresh.model.features[1].running_mean, task.model.features[1].running_mean)


def test_a_domain_datamodule_checkpoint_records_its_preprocessing(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMAPPS_CACHE", str(tmp_path / "cache"))
    data = DomainDataModule("digits", "digits_m", image_size=12, batch_size=16, count=48)
    task = ClassificationTask(width=4, in_channels=3)
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    checkpoint = tmp_path / "elsewhere" / "source.ckpt"  # no config.yaml beside it, as with a ModelCheckpoint dirpath
    trainer.save_checkpoint(checkpoint)
    preprocessing = load_checkpoint(checkpoint).preprocessing
    assert (preprocessing.image_size, preprocessing.mean, preprocessing.std) == (12, (0.0,) * 3, (1.0,) * 3)
    assert preprocessing.origin.startswith("DomainDataModule settings from the datamodule hyper-parameters")


def test_checkpoint_preprocessing_comes_from_the_run_config(tmp_path):
    task = ClassificationTask(width=4, in_channels=3)
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch=0.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, checkpoint)
    (tmp_path / "run" / "config.yaml").write_text(
        "data:\n  class_path: normapps.data.DigitsDataModule\n  init_args:\n    batch_size: 8\n    image_size: 12\n")
    classifier = load_checkpoint(checkpoint)
    expected = DigitsDataModule(image_size=12)
    assert classifier.preprocessing.image_size == 12 and classifier.preprocessing.mean == (expected.mean,) * 3
    assert str(tmp_path / "run" / "config.yaml") in classifier.preprocessing.origin
    assert load_checkpoint(checkpoint, image_size=20).preprocessing.image_size == 20


class PlainImages(LightningDataModule):
    """A datamodule that serves images in [0, 1] without standardizing them."""

    def __init__(self, image_size: int = 24, batch_size: int = 8) -> None:
        super().__init__()
        self.image_size = image_size


def test_checkpoint_preprocessing_of_a_datamodule_without_mean_and_std(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(normapps.data, "PlainImages", PlainImages, raising=False)
    checkpoint = _checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", in_channels=3)
    config = tmp_path / "run" / "config.yaml"
    config.write_text("data:\n  class_path: normapps.data.PlainImages\n  init_args:\n    image_size: 20\n")
    preprocessing = load_checkpoint(checkpoint).preprocessing
    assert (preprocessing.image_size, preprocessing.mean, preprocessing.std) == (20, (0.0,) * 3, (1.0,) * 3)
    config.write_text("data:\n  class_path: normapps.data.Missing\n")
    assert main(["adapt", "--model", str(checkpoint), "--target", "digits", "--method", "adabn", "--out", str(tmp_path / "out")]) == 2
    assert f"the model was trained on normapps.data.Missing (the data section of {config}), which cannot be imported" in error_line(capsys)


def _checkpoint(path: Path, drop: str | None = None, **hyper_parameters) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    task = ClassificationTask(width=4, **hyper_parameters)
    state = {key: value for key, value in task.state_dict().items() if key != drop}
    torch.save({"state_dict": state, "hyper_parameters": {"_class_path": "normapps.tasks.ClassificationTask", **task.hparams}},
               path)
    return path


BAD_INPUTS = {
    "empty folder": (lambda root, inputs: (["--target", str(_mkdir(root / "empty" / "cat").parent)], "no images found in")),
    "folder of corrupt files": (lambda root, inputs: (["--target", str(_corrupt_folder(root))],
                                                      "none of the 2 image files in")),
    "target is a file": (lambda root, inputs: (["--target", str(inputs[0])], "is a file; expected an image folder")),
    "missing folder": (lambda root, inputs: (["--target", str(root / "nowhere")], "image folder")),
    "unknown domain": (lambda root, inputs: (["--target", "digits_x"], "unknown domain 'digits_x'; expected one of syndigits")),
    "class count": (lambda root, inputs: (["--target", str(write_folder(root / "three", CLASSES[:3]))],
                                          "the model's head has 4 classes but --target")),
    "output in the target": (lambda root, inputs: (["--out", str(inputs[1] / "out")], "is inside the target folder")),
    "head size": (lambda root, inputs: (["--num-classes", "5"], "2 of another shape (fc.weight: file [4, 512], model [5, 512]")),
    "other architecture": (lambda root, inputs: (["--model", "torchvision:resnet34"], "does not fit torchvision:resnet34")),
    "unknown timm name": (lambda root, inputs: (["--model", "timm:resnt18"], "unknown timm model 'resnt18'; did you mean 'resnet18'")),
    "unknown torchvision name": (lambda root, inputs: (["--model", "torchvision:resnet81"],
                                                       "unknown torchvision classifier 'resnet81'; did you mean")),
    "missing weights file": (lambda root, inputs: (["--weights", str(root / "none.pt")], "weights file")),
    "garbage weights": (lambda root, inputs: (["--weights", str(_write(root / "junk.pt", b"junk"))], "cannot read")),
    "no --weights": (lambda root, inputs: (["--weights", None], "--model torchvision:resnet18 needs --weights FILE")),
    "state dict as --model": (lambda root, inputs: (["--model", str(inputs[0]), "--weights", None, "--num-classes", None],
                                                    "is not a normapps checkpoint")),
    "missing checkpoint": (lambda root, inputs: (["--model", str(root / "none.ckpt"), "--weights", None, "--num-classes", None],
                                                 "none.ckpt does not exist: expected a normapps checkpoint file")),
    "checkpoint that does not fit": (
        lambda root, inputs: (["--model", str(_checkpoint(root / "cut.ckpt", drop="model.head.bias")), "--weights", None,
                               "--num-classes", None], "does not fit the ClassificationTask of its hyper-parameters: 1 missing "
                                                       "(model.head.bias)")),
    "no BatchNorm": (
        lambda root, inputs: (["--model", str(_checkpoint(root / "gn.ckpt", norm="gn")), "--weights", None, "--num-classes", None,
                               "--target", "digits"], "has none (its normalization layers: 3 GroupNorm); methods that still "
                                                      "apply: none of adabn, norm, prior, tent")),
    "no running statistics": (
        lambda root, inputs: (["--model", str(_checkpoint(root / "bn.ckpt", norm_kwargs={"track_running_stats": False})),
                               "--weights", None, "--num-classes", None, "--target", "digits"],
                              "needs a BatchNorm layer that keeps running statistics, but")),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _corrupt_folder(root: Path) -> Path:
    folder = _mkdir(root / "corrupt" / "cat")
    _write(folder / "a.png", b"not an image")
    _write(folder / "b.jpg", b"\xff\xd8\xff")
    return folder.parent


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case, inputs, tmp_path, capsys):
    extra, message = BAD_INPUTS[case](tmp_path, inputs)
    options = {"--model": "torchvision:resnet18", "--weights": str(inputs[0]), "--num-classes": "4",
               "--target": str(inputs[1]), "--method": "adabn", "--image-size": "32", "--out": str(tmp_path / "out")}
    options.update(zip(extra[::2], extra[1::2]))
    args = [item for key, value in options.items() if value is not None for item in (key, value)]
    assert main(["adapt", *args]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_target_folder_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    from normapps.data import real

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(real.os, "scandir", refuse)
    assert adapt(inputs[0], inputs[1], tmp_path / "out", "--num-classes", "4", "--method", "adabn") == 2
    assert f"cannot read image folder {inputs[1]}: Permission denied" in error_line(capsys)


def test_a_model_without_batch_norm_names_the_methods_that_still_apply(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "bn.ckpt", norm_kwargs={"track_running_stats": False})
    assert main(["adapt", "--model", str(checkpoint), "--target", "digits", "--method", "prior", "--out", str(tmp_path)]) == 2
    assert "methods that still apply: norm, tent" in error_line(capsys)
