"""Training add-ons: gradient normalization as a callback, synchronized statistics as a Lightning plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from normapps.tasks import GradientNormalization, SyncNormalization

ROOT = Path(__file__).resolve().parents[2]


def _model_with_gradients() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    model(torch.randn(2, 3, 6, 6)).square().sum().backward()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_gradient_centralization_callback_gives_zero_mean_filters_before_the_step():
    model, optimizer = _model_with_gradients()
    bias_before = model[0].bias.grad.clone()
    GradientNormalization("gc").on_before_optimizer_step(None, None, optimizer)
    for layer in (model[0], model[3]):
        mean = layer.weight.grad.flatten(1).mean(1)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-7, rtol=0)
    torch.testing.assert_close(model[0].bias.grad, bias_before)  # 1-D parameters are left alone


def test_block_normalized_gradient_callback_scales_every_block_to_the_given_norm():
    model, optimizer = _model_with_gradients()
    GradientNormalization("bng", {"scale": 0.5}).on_before_optimizer_step(None, None, optimizer)
    for p in model.parameters():
        if p is not model[0].bias:  # BN after the conv makes the conv bias's gradient ~0: norm eps-dominated
            assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(0.5, rel=1e-5)


def test_gradient_callback_refuses_unknown_methods_and_options():
    with pytest.raises(ValueError, match="expected one of gc, bng|expected one of bng, gc"):
        GradientNormalization("gcc")
    with pytest.raises(TypeError, match="'bng'.*foo"):
        GradientNormalization("bng", {"foo": 1})


def test_sync_plugin_switches_batch_statistics_layers_and_reverts():
    from normapps import norm

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), norm.build("bgn", 4, groups=2), norm.build("gn", 4, groups=2))
    plugin = SyncNormalization()
    model = plugin.apply(model)
    assert model[1].sync and model[2].sync and not model[3].sync
    plugin.revert(model)
    assert not model[1].sync and not model[2].sync


def test_configs_with_gradient_callback_and_ddp_plugin_parse():
    from normapps.cli.main import NormappsCLI

    for config, check in (("digits_gc.yaml", lambda t: any(isinstance(c, GradientNormalization) for c in t.callbacks)),
                          ("digits_ddp.yaml", lambda t: isinstance(t.strategy._layer_sync, SyncNormalization))):
        cli = NormappsCLI(args=["-c", str(ROOT / "configs" / "classify" / config), "--trainer.devices", "1"], run=False)
        assert check(cli.trainer), config


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_ddp_config_trains_on_two_cpu_processes(tmp_path):
    command = [sys.executable, "-m", "normapps", "fit", "-c", str(ROOT / "configs/classify/digits_ddp.yaml"),
               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
               "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoints = list(tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], weights_only=False)["state_dict"]
    assert any(k.endswith("running_var") for k in state)
