"""How far a target domain moves the input statistics of each BatchNorm layer from the source ones.

Statistics shift of a BatchNorm layer, averaged over its ``C`` channels: with ``mu_s``, ``v_s`` the
source running mean and variance and ``mu_t``, ``v_t`` target statistics of the layer's input --
typically the exact mean and biased variance over the target set while every BatchNorm normalizes
with batch statistics, the statistics AdaBN installs::

    target = capture(use_batch_stats(copy.deepcopy(model)), target_batches, layers=batch_norm_names)

-- and the layer's ``eps`` added to both variances::

    mean_shift     = mean_c |mu_t - mu_s| / sqrt(v_s)
    log_var_ratio  = mean_c log(v_t / v_s)
    symmetric_kl   = mean_c KL(N_s || N_t) + KL(N_t || N_s)
                   = mean_c (v_s / v_t + v_t / v_s - 2) / 2 + (mu_t - mu_s)^2 (1 / v_s + 1 / v_t) / 2

(nats; ``N_s``, ``N_t`` the per-channel Gaussians). All three are 0 when the target statistics
equal the source running statistics.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from normapps.norm import LayerStats


def statistics_shift(module: nn.Module, target: dict[str, LayerStats]) -> list[dict[str, Any]]:
    """Per BatchNorm layer, the channel means of the shift measures of the module docstring.

    Args:
        module: the source model; ``target``'s names are BatchNorm layers of it that keep running
            statistics (``running_mean``, ``running_var``, ``eps``).
        target: ``{layer name: LayerStats}`` of the target, as :func:`normapps.norm.capture` gives them.

    Returns:
        One dict per layer, in ``target``'s order: ``layer``, ``channels``, ``values_per_channel``
        (``LayerStats.count``), ``mean_shift``, ``log_var_ratio`` and ``symmetric_kl`` (floats).

    Example::

        layers = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        target = capture(use_batch_stats(copy.deepcopy(model)), target_batches, layers=layers)
        [row["mean_shift"] for row in statistics_shift(model, target)]
    """
    rows = []
    for name, stats in target.items():
        bn = module.get_submodule(name)
        mu_s, v_s = bn.running_mean.double().cpu(), bn.running_var.double().cpu() + bn.eps
        mu_t, v_t = stats.mean.cpu(), stats.var.cpu() + bn.eps
        difference = mu_t - mu_s
        symmetric_kl = (v_s / v_t + v_t / v_s - 2) / 2 + difference.square() * (1 / v_s + 1 / v_t) / 2
        rows.append({
            "layer": name,
            "channels": len(mu_s),
            "values_per_channel": stats.count,
            "mean_shift": float((difference.abs() / v_s.sqrt()).mean()),
            "log_var_ratio": float((v_t / v_s).log().mean()),
            "symmetric_kl": float(symmetric_kl.mean()),
        })
    return rows
