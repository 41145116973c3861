from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning import Trainer

from normapps.cli import main
from normapps.data import StyleDataModule
from normapps.models import TransformerNet, VGGDecoder, VGGEncoder
from normapps.tasks.style import (
    FLOAT16_TOLERANCE,
    AdaINTask,
    CINTask,
    FastStyleTask,
    Stylizer,
    WCTDecoderTask,
    checkpoints,
    export_from_lightning,
    load_stylizer,
    save_stylizer,
)

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs" / "style").glob("*.yaml"))
ENCODER = {"encoder_width": 0.125, "encoder_seed": 1}
STYLES = ["stripes", "waves"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only add contention


@pytest.fixture(scope="module")
def datamodule():
    dm = StyleDataModule(styles=STYLES, image_size=32, resize=32, batch_size=2, steps_per_epoch=1, val_pairs=2)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def batch(datamodule):
    return next(iter(datamodule.train_dataloader()))


def _tasks():
    return {
        "adain": lambda: AdaINTask(**ENCODER, style_weight=1.0, identity_weight=1.0, lr=1e-3),
        "wct": lambda: WCTDecoderTask("relu2_1", **ENCODER, lr=1e-3),
        "fast": lambda: FastStyleTask(style_image="waves", style_size=32, width=0.125, style_weight=1e3, **ENCODER, lr=1e-3),
        "fast_bn": lambda: FastStyleTask(style_image="waves", style_size=32, norm="bn", width=0.125, style_weight=1e3, **ENCODER, lr=1e-3),
        "cin": lambda: CINTask(STYLES, width=0.125, style_weight=1e3, **ENCODER, lr=1e-3),
    }


@pytest.mark.parametrize("name", list(_tasks()))
def test_a_few_training_steps_reduce_the_loss(name, batch):
    task = _tasks()[name]().train()
    optimizer = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=task.hparams.lr)
    losses = []
    for _ in range(6):
        loss = task.losses(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert not any(p.requires_grad for p in task.encoder.parameters())


def test_encoder_stays_in_eval_mode_and_is_not_optimized():
    task = AdaINTask(**ENCODER).train()
    assert not task.encoder.training and task.decoder.training
    assert all(not p.requires_grad for p in task.encoder.parameters())


def _stylizers():
    encoder = VGGEncoder.random(0.125, seed=3)
    decoders = {level: VGGDecoder(0.125, level) for level in ("relu4_1", "relu3_1")}
    network = TransformerNet(0.125, "cin", num_styles=2)
    with torch.no_grad():
        for m in network.modules():
            if hasattr(m, "recovery") and m.recovery is not None:
                m.recovery.weight.uniform_(0.5, 1.5)
    return {
        "adain": ("adain", {"encoder": encoder, "decoder": VGGDecoder(0.125)}, {}),
        "wct": ("wct", {"encoder": encoder, "decoders": decoders}, {}),
        "fast": ("fast", {"network": TransformerNet(0.125, "bn").eval()}, {"styles": ["waves"]}),
        "cin": ("cin", {"network": network}, {"styles": STYLES}),
    }


def _run(stylizer, content, style):
    with torch.no_grad():
        if stylizer.method in ("adain", "wct"):
            return stylizer(content, [style], alpha=0.8)
        if stylizer.method == "cin":
            return stylizer(content, style_names=STYLES, weights=[0.3, 0.7])
        return stylizer(content)


@pytest.mark.parametrize("name", ["adain", "wct", "fast", "cin"])
def test_save_load_round_trip_gives_the_same_outputs(name, tmp_path):
    method, modules, config = _stylizers()[name]
    original = Stylizer(method, modules, config.get("styles", ())).eval()
    content, style = torch.rand(2, 3, 40, 44), torch.rand(1, 3, 48, 48)
    expected = _run(original, content, style)
    exact = load_stylizer(method, save_stylizer(tmp_path / "f32.pt", method, modules, config, precision="float32"))
    torch.testing.assert_close(_run(exact, content, style), expected, rtol=0, atol=1e-6)
    path = save_stylizer(tmp_path / "auto.pt", method, modules, config)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "normapps-stylizer" and payload["version"] == 1 and payload["method"] == method
    assert payload["styles"] == config.get("styles", [])
    loaded = load_stylizer(method, path)
    assert loaded.styles == config.get("styles", []) and not loaded.training
    if payload["precision"] == "float16":
        assert payload["float16_max_error"] <= FLOAT16_TOLERANCE
        assert path.stat().st_size < (tmp_path / "f32.pt").stat().st_size
        assert all(t.dtype != torch.float32 for t in payload["state_dicts"]["encoder" if name in ("adain", "wct") else "network"].values())
    assert (_run(loaded, content, style) - expected).abs().max() <= 3 * FLOAT16_TOLERANCE


def test_float16_is_refused_when_outputs_move_too_far(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "FLOAT16_TOLERANCE", 0.0)
    method, modules, config = _stylizers()["fast"]
    path = save_stylizer(tmp_path / "s.pt", method, modules, config)
    assert torch.load(path, weights_only=True)["precision"] == "float32"


def test_save_refuses_to_overwrite(tmp_path):
    method, modules, config = _stylizers()["fast"]
    path = save_stylizer(tmp_path / "s.pt", method, modules, config)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_stylizer(path, method, modules, config)
    assert path.read_bytes() == before
    save_stylizer(path, method, modules, config, overwrite=True)


def test_missing_files_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_stylizer("adain", tmp_path / "nothing.pt")
    monkeypatch.setattr(checkpoints, "checkpoint_path", lambda name: tmp_path / f"style_{name}.pt")
    with pytest.raises(FileNotFoundError, match=r"style_cin\.pt.*normapps fit -c configs/style/cin\.yaml"):
        load_stylizer("cin")
    with pytest.raises(ValueError, match="unknown method"):
        load_stylizer("gatys")


def test_method_mismatch_and_foreign_files_are_refused(tmp_path):
    method, modules, config = _stylizers()["fast"]
    path = save_stylizer(tmp_path / "s.pt", method, modules, config)
    with pytest.raises(ValueError, match="holds a 'fast' stylizer"):
        load_stylizer("cin", path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a normapps stylizer"):
        load_stylizer("fast", tmp_path / "other.pt")


def test_cin_unknown_style_names_the_known_ones():
    method, modules, config = _stylizers()["cin"]
    stylizer = Stylizer(method, modules, config["styles"])
    with pytest.raises(ValueError, match="unknown style 'cubism'.*stripes, waves"):
        stylizer(torch.rand(1, 3, 16, 16), style_names=["cubism"])


def test_cin_weights_one_hot_and_masks_select_styles():
    method, modules, config = _stylizers()["cin"]
    stylizer = Stylizer(method, modules, config["styles"]).eval()
    content = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        first, second = stylizer(content, style_names=["stripes"]), stylizer(content, style_names=["waves"])
        torch.testing.assert_close(stylizer(content, style_names=STYLES, weights=[1.0, 0.0]), first)
        mask = torch.zeros(2, 16, 16)
        mask[0, :, :8], mask[1, :, 8:] = 1, 1
        out = stylizer(content, style_names=STYLES, mask=mask)
    torch.testing.assert_close(out[..., :8], first[..., :8])
    torch.testing.assert_close(out[..., 8:], second[..., 8:])


def test_bad_combinations_say_what_is_accepted():
    stylizers = {name: Stylizer(m, mods, cfg.get("styles", ())) for name, (m, mods, cfg) in _stylizers().items()}
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="adain takes style images"):
        stylizers["adain"](content)
    with pytest.raises(ValueError, match="style_names are for a cin"):
        stylizers["wct"](content, [style], style_names=["waves"])
    with pytest.raises(ValueError, match="fast takes no style"):
        stylizers["fast"](content, [style])
    with pytest.raises(ValueError, match="cin takes style_names"):
        stylizers["cin"](content)
    with pytest.raises(ValueError, match="encode_style is for adain and wct"):
        stylizers["cin"].encode_style([style])
    with pytest.raises(ValueError, match="alpha"):
        stylizers["fast"](content, alpha=0.5)


def test_encoded_style_features_give_the_same_output_as_style_images():
    method, modules, config = _stylizers()["adain"]
    stylizer = Stylizer(method, modules).eval()
    content, styles = torch.rand(2, 3, 32, 32), [torch.rand(3, 32, 32), torch.rand(1, 3, 40, 40)]
    with torch.no_grad():
        features = stylizer.encode_style(styles)
        torch.testing.assert_close(stylizer(content, style_features=features, weights=[0.6, 0.4]),
                                   stylizer(content, styles, weights=[0.6, 0.4]))


def _fit_one_step(task, datamodule, folder):
    trainer = Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=folder)
    trainer.fit(task, datamodule=datamodule)
    path = Path(folder) / "task.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_export_from_lightning_checkpoints(datamodule, tmp_path):
    cin = _fit_one_step(CINTask(style_size=32, width=0.125, **ENCODER), datamodule, tmp_path / "cin")  # styles from the data
    stylizer = load_stylizer("cin", export_from_lightning(cin, tmp_path / "cin.pt"))
    assert stylizer.styles == STYLES
    assert stylizer(torch.rand(1, 3, 32, 32), style_names=["waves"]).shape == (1, 3, 32, 32)
    levels = [_fit_one_step(WCTDecoderTask(level, **ENCODER), datamodule, tmp_path / level) for level in ("relu2_1", "relu1_1")]
    wct = load_stylizer("wct", export_from_lightning(levels, tmp_path / "wct.pt"))
    assert list(wct.transfer.levels) == ["relu2_1", "relu1_1"]
    assert wct(torch.rand(1, 3, 32, 32), [torch.rand(1, 3, 32, 32)]).shape == (1, 3, 32, 32)
    other = _fit_one_step(WCTDecoderTask("relu3_1", encoder_width=0.125, encoder_seed=2), datamodule, tmp_path / "other")
    with pytest.raises(ValueError, match="another encoder"):
        export_from_lightning([*levels, other], tmp_path / "bad.pt")


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_runs_with_fast_dev_run(config, tmp_path):
    small = ["--data.init_args.image_size", "32", "--data.init_args.resize", "32", "--data.init_args.batch_size", "2"]
    if "style_size" in yaml.safe_load(config.read_text())["model"]["init_args"]:
        small += ["--model.init_args.style_size", "32"]
    assert main(["fit", "-c", str(config), "--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run", "true",
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *small]) == 0
