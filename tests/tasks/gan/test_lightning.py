from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning import Trainer

from normapps.cli.main import main
from normapps.data.generative import GenerativeDataModule
from normapps.tasks.gan import SETTINGS, GANTask, SampleGrid, ema_with_warmup

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs" / "gan").glob("*.yaml"))
SMALL = {"width": 0.0625, "image_size": 16, "z_dim": 16}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def datamodule():
    dm = GenerativeDataModule("digits", image_size=16, batch_size=4, count=16, val_count=4)
    dm.setup("fit")
    return dm


def _trainer(tmp_path, max_steps, callbacks=()):
    return Trainer(default_root_dir=tmp_path, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=list(callbacks), limit_val_batches=0)


def test_all_five_configs_exist():
    assert {c.stem for c in CONFIGS} >= {"cgan_digits", "sngan_cnn", "sngan_resnet", "wgan_gp", "sngan_syndigits"}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_trains_a_few_steps_and_writes_a_sample_grid(config, tmp_path):
    init = yaml.safe_load(config.read_text())["model"]["init_args"]
    assert init["d_norm"] in ("spectral", "none") and init["image_size"] == 32
    small = ["--model.init_args.width", "0.0625", "--model.init_args.image_size", "16", "--model.init_args.z_dim", "16",
             "--data.init_args.image_size", "16", "--data.init_args.batch_size", "4", "--data.init_args.count", "8",
             "--data.init_args.val_count", "4", "--data.init_args.cache_dir", str(tmp_path / "cache")]
    args = ["fit", "-c", str(config), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.callbacks.dirpath", str(tmp_path / "ckpt"), *small]
    assert main(args) == 0
    grids = list(tmp_path.rglob("samples/*.png"))
    assert len(grids) == 1 and grids[0].stat().st_size > 0
    (checkpoint,) = (tmp_path / "ckpt").glob("*.ckpt")
    assert checkpoint.stem == config.stem
    task = GANTask.load_from_checkpoint(checkpoint)
    assert task.sample(2).shape == (2, 3, 16, 16)


@pytest.mark.parametrize(("n_dis", "max_steps", "d_steps", "g_steps"), [(3, 8, 6, 2), (1, 6, 3, 3), (5, 4, 4, 0)])
def test_n_dis_discriminator_updates_per_generator_update(datamodule, tmp_path, n_dis, max_steps, d_steps, g_steps):
    task = GANTask(**SMALL, n_dis=n_dis)
    g_before = [p.detach().clone() for p in task.generator.parameters()]
    trainer = _trainer(tmp_path, max_steps)
    trainer.fit(task, datamodule)
    opt_g, opt_d = trainer.optimizers
    adam_steps = lambda opt: int(opt.state[opt.param_groups[0]["params"][0]]["step"]) if opt.state else 0
    assert (task.d_steps, task.g_steps) == (d_steps, g_steps)
    assert (adam_steps(opt_d), adam_steps(opt_g)) == (d_steps, g_steps)
    assert trainer.global_step == d_steps + g_steps
    unchanged = all(torch.equal(a, b) for a, b in zip(g_before, task.generator.parameters()))
    assert unchanged == (g_steps == 0)


@pytest.mark.parametrize("loss", ["hinge", "ns", "wgan_gp"])
@pytest.mark.parametrize("d_norm", ["bn", "ln"])
def test_losses_and_activation_norms_train_conditionally(datamodule, tmp_path, loss, d_norm):
    task = GANTask(**SMALL, loss=loss, d_norm=d_norm, conditional=True, num_classes=10, generator="resnet", n_dis=1)
    trainer = _trainer(tmp_path, 4)
    trainer.fit(task, datamodule)
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["d_loss"]) and torch.isfinite(logged["g_loss"])
    assert ("gp" in logged) == (loss == "wgan_gp")


def test_sample_is_deterministic_in_eval_mode_and_restores_training_mode():
    task = GANTask(**SMALL, conditional=True, num_classes=10).train()
    a = task.sample(6, torch.arange(6), generator=torch.Generator().manual_seed(3))
    b = task.sample(6, torch.arange(6), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.shape == (6, 3, 16, 16) and a.abs().max() <= 1 and not a.requires_grad
    assert task.generator.training
    assert task.sample(4).shape == (4, 3, 16, 16)  # classes drawn uniformly


def test_morph_endpoints_are_the_two_classes_and_midpoint_mixes_them():
    task = GANTask(**SMALL, conditional=True, num_classes=10)
    with torch.no_grad():
        for m in task.generator.modules():
            if hasattr(m, "recovery") and hasattr(m.recovery, "num_embeddings"):
                m.recovery.weight.normal_(1.0, 0.3)
    z = torch.randn(2, 16)
    strip = task.morph(z, 3, 8, steps=3)
    assert strip.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(strip[:, 0], task.generate(z, 3))
    torch.testing.assert_close(strip[:, 2], task.generate(z, 8))
    half = torch.zeros(2, 10)
    half[:, 3] = half[:, 8] = 0.5
    torch.testing.assert_close(strip[:, 1], task.generate(z, half))
    assert not torch.allclose(strip[:, 0], strip[:, 2])


def test_interpolate_endpoints_are_the_two_latents():
    task = GANTask(**SMALL, g_norm="smbn")
    z_a, z_b = torch.randn(2, 16), torch.randn(2, 16)
    rows = task.interpolate(z_a, z_b, steps=4)
    assert rows.shape == (2, 4, 3, 16, 16)
    torch.testing.assert_close(rows[:, 0], task.generate(z_a))
    torch.testing.assert_close(rows[:, -1], task.generate(z_b))
    conditional = GANTask(**SMALL, conditional=True, num_classes=10)
    y = torch.tensor([1, 5])
    torch.testing.assert_close(conditional.interpolate(z_a, z_b, 2, y)[:, 1], conditional.generate(z_b, y))


def test_ema_generator_is_used_for_sampling_and_moves_with_training(datamodule, tmp_path):
    task = GANTask(**SMALL, n_dis=1, ema=0.5)
    assert task.sampler is task.generator_ema.module
    assert not any(p.requires_grad for p in task.generator_ema.parameters())
    _trainer(tmp_path, 6).fit(task, datamodule)
    ema, trained = task.generator_ema.module, task.generator
    assert not all(torch.equal(a, b) for a, b in zip(ema.parameters(), trained.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(ema.buffers(), trained.buffers()))  # BN statistics copied
    z = torch.randn(3, 16)
    torch.testing.assert_close(task.generate(z), ema.eval()(z))


def test_ema_decay_warms_up_to_its_value():
    update = ema_with_warmup(0.9)
    for n, decay in [(1, 2 / 11), (8, 0.5), (1000, 0.9)]:
        averaged = [torch.zeros(3)]
        update(averaged, [torch.ones(3)], torch.tensor(n))
        torch.testing.assert_close(averaged[0], torch.full((3,), 1.0 - decay))


def test_settings_replace_lr_betas_and_n_dis():
    assert SETTINGS["A"] == {"lr": 1e-4, "betas": (0.5, 0.9), "n_dis": 5}
    assert SETTINGS["F"] == {"lr": 1e-3, "betas": (0.9, 0.999), "n_dis": 5}
    task = GANTask(**SMALL, setting="B", lr=5.0)
    assert (task.hparams.lr, task.hparams.betas, task.hparams.n_dis) == (1e-4, (0.5, 0.999), 1)
    opt_g, opt_d = task.configure_optimizers()
    assert opt_d.defaults["lr"] == 1e-4 and opt_g.defaults["betas"] == (0.5, 0.999)


def test_sample_grid_has_one_row_per_class(tmp_path):
    task = GANTask(**SMALL, conditional=True, num_classes=4)
    trainer = _trainer(tmp_path, 1)
    grid = SampleGrid(samples_per_class=3)
    z, y, columns = grid.latents(task)
    assert z.shape == (12, 16) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and columns == 3
    path = grid.write(trainer, task)
    from PIL import Image
    assert Image.open(path).size == (2 + 3 * 18, 2 + 4 * 18)  # 16 px images, 2 px padding


def test_data_image_size_must_match_the_model(tmp_path):
    dm = GenerativeDataModule("digits", image_size=8, batch_size=4, count=8, val_count=4)
    with pytest.raises(ValueError, match=r"model was built for \(3, 16, 16\)"):
        _trainer(tmp_path, 1).fit(GANTask(**SMALL), dm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conditional": True, "num_classes": 10, "g_norm": "bn"}, "set g_norm='cbn'"),
        ({"g_norm": "cbn"}, "set conditional=True"),
        ({"conditional": True}, "needs num_classes"),
        ({"g_norm": "in"}, "expected one of 'bn', 'cbn', 'smbn'"),
        ({"d_norm": "gn"}, "expected one of 'none', 'bn', 'ln', 'wn', 'spectral'"),
        ({"loss": "lsgan"}, "expected one of 'hinge', 'ns', 'wgan_gp'"),
        ({"setting": "G"}, "expected one of A, B, C, D, E, F"),
        ({"n_dis": 0}, "n_dis must be"),
        ({"betas": (0.0, 1.0)}, "betas must be"),
        ({"ema": 1.0}, "ema must be"),
        ({"generator": "vgg"}, "expected one of 'dcgan', 'resnet'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GANTask(**{**SMALL, **kwargs})


def test_bad_sampling_inputs_raise_clear_errors():
    task, conditional = GANTask(**SMALL), GANTask(**SMALL, conditional=True, num_classes=10)
    with pytest.raises(ValueError, match="n must be a positive int"):
        task.sample(0)
    with pytest.raises(ValueError, match="unconditional .* takes no class labels"):
        task.sample(2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 9\]"):
        conditional.sample(2, torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="morph needs a conditional GAN"):
        task.morph(torch.randn(1, 16), 0, 1, 3)
    with pytest.raises(ValueError, match=r"class_b must be a class index in \[0, 9\]"):
        conditional.morph(torch.randn(1, 16), 0, 10, 3)
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        conditional.morph(torch.randn(1, 16), 0, 1, 1)
    with pytest.raises(ValueError, match=r"latents of shape \(N, 16\)"):
        task.interpolate(torch.randn(16), torch.randn(16), 3)
    with pytest.raises(ValueError, match="needs class labels y"):
        conditional.interpolate(torch.randn(1, 16), torch.randn(1, 16), 3)
