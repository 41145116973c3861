"""Tests of transferable normalization (normapps.tasks.adaptation.transnorm)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normapps.models import SmallCNN
from normapps.tasks.adaptation import SOURCE, TARGET, TransNorm, convert_to_transnorm, paired, transferability_alpha


def channel_stats(x: torch.Tensor, correction: int) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, correction=correction)


def test_alpha_matches_a_hand_computation():
    # d = |1 / sqrt(3 + 1) - 0|, |0 - 0| = 0.5, 0;  1 / (1 + d) = 2/3, 1;  alpha = 2 * (2/3, 1) / (5/3)
    alpha = transferability_alpha(torch.tensor([1.0, 0.0]), torch.tensor([3.0, 1.0]),
                                  torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), eps=1.0)
    torch.testing.assert_close(alpha, torch.tensor([0.8, 1.2]))
    random = transferability_alpha(torch.randn(7), torch.rand(7) + 0.1, torch.randn(7), torch.rand(7) + 0.1)
    torch.testing.assert_close(random.sum(), torch.tensor(7.0))


def test_training_output_follows_the_paper_formula():
    layer = TransNorm(4, eps=1e-5)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    source, target = torch.randn(6, 4, 3, 3), torch.randn(10, 4, 3, 3) * 2 + 1
    layer.source_size = 6
    out = layer(torch.cat([source, target]))
    gamma, beta = layer.weight.view(1, -1, 1, 1), layer.bias.view(1, -1, 1, 1)
    z = []
    for x in (source, target):
        mean, var = channel_stats(x, correction=0)
        z.append(gamma * (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) + beta)
    (ms, vs), (mt, vt) = channel_stats(source, correction=1), channel_stats(target, correction=1)
    d = (ms / torch.sqrt(vs + 1e-5) - mt / torch.sqrt(vt + 1e-5)).abs()
    alpha = 4 * (1 / (1 + d)) / (1 / (1 + d)).sum()
    torch.testing.assert_close(out, torch.cat(z) * (1 + alpha).view(1, -1, 1, 1), rtol=1e-5, atol=1e-5)


def test_equal_domain_statistics_give_twice_batch_norm_with_the_shared_affine():
    layer = TransNorm(3)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    source = torch.randn(8, 3, 4, 4) * 2 + 1
    x = torch.cat([source, source.flip(0)])
    with paired(layer, 8):
        out = layer(x)
    reference = F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
    torch.testing.assert_close(out, 2 * reference, rtol=1e-5, atol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer.alpha(), torch.ones(3))


def test_training_updates_each_domain_statistics_and_evaluation_uses_them():
    layer = TransNorm(3, momentum=0.5)
    source, target = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4) * 3 + 2
    layer.source_size = 8
    layer(torch.cat([source, target]))
    for domain, x in ((SOURCE, source), (TARGET, target)):
        mean, var = channel_stats(x, correction=1)
        running_mean, running_var = layer.running_statistics(domain)
        torch.testing.assert_close(running_mean, 0.5 * mean)
        torch.testing.assert_close(running_var, 0.5 + 0.5 * var)
    assert int(layer.num_batches_tracked) == 1
    layer.eval()
    layer.select(TARGET)
    mean, var = layer.running_statistics(TARGET)
    expected = F.batch_norm(target, mean, var, layer.weight, layer.bias, False, 0.0, layer.eps)
    alpha = transferability_alpha(*layer.running_statistics(SOURCE), mean, var)
    torch.testing.assert_close(layer(target), expected * (1 + alpha).view(1, -1, 1, 1))
    assert not torch.allclose(alpha, torch.ones(3))


def test_no_gradient_flows_through_alpha():
    layer = TransNorm(2, affine=False)
    x = torch.randn(8, 2, 3, 3, requires_grad=True)
    weights = torch.randn(8, 2, 3, 3)
    with paired(layer, 4):
        out = layer(x)
    parts = (x[:4], x[4:])
    z = torch.cat([F.batch_norm(part, None, None, None, None, True, 0.0, layer.eps) for part in parts])
    with torch.no_grad():
        alpha = transferability_alpha(*channel_stats(parts[0], 1), *channel_stats(parts[1], 1), eps=layer.eps)
    expected = z * (1 + alpha).view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected)
    grad, reference = (torch.autograd.grad((y * weights).sum(), x)[0] for y in (out, expected))
    torch.testing.assert_close(grad, reference)


def test_convert_carries_affine_and_statistics_into_both_domains():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3)).eval()
    bn = model[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 1, 8, 8)
    features = model[:2](x)
    converted = convert_to_transnorm(model)
    layer = converted[1]
    assert isinstance(layer, TransNorm) and torch.equal(layer.weight, bn.weight) and torch.equal(layer.bias, bn.bias)
    for domain in (SOURCE, TARGET):
        assert torch.equal(layer.running_statistics(domain)[0], bn.running_mean)
        assert torch.equal(layer.running_statistics(domain)[1], bn.running_var)
    # Equal statistics in both domains: the converted layer's output is the BatchNorm's, doubled.
    torch.testing.assert_close(converted[:2](x), 2 * features)
    assert converted(x).shape == (4, 3)


def test_timm_style_batch_norm_with_activation_keeps_it():
    class BatchNormAct(nn.BatchNorm2d):
        def __init__(self, channels: int) -> None:
            super().__init__(channels)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(super().forward(x))

    converted = convert_to_transnorm(nn.Sequential(nn.Conv2d(1, 2, 3), BatchNormAct(2))).eval()
    assert isinstance(converted[1], nn.Sequential) and isinstance(converted[1][0], TransNorm)
    assert (converted(torch.randn(2, 1, 5, 5)) >= 0).all()


def test_transnorm_errors_say_what_was_expected():
    layer = TransNorm(3)
    with pytest.raises(ValueError, match=r"paired batch.*paired\(model, source_size\)"):
        layer(torch.randn(4, 3))
    layer.source_size = 4
    with pytest.raises(ValueError, match="needs 1 to 3 source samples, got 4"):
        layer(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, \*\), got \(4, 2\)"):
        layer(torch.randn(4, 2))
    with pytest.raises(ValueError, match="no TransNorm layer"):
        with paired(nn.Linear(2, 2), 2):
            pass
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        convert_to_transnorm(SmallCNN(width=4, norm="gn"))
    with pytest.raises(ValueError, match="same shape"):
        transferability_alpha(torch.zeros(2), torch.ones(2), torch.zeros(3), torch.ones(3))
