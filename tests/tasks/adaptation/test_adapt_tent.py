"""Tests of TENT (normapps.tasks.adaptation.tent) and the tent method of adapt / predict_stream."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.models import SmallCNN
from normapps.tasks.adaptation import Tent, adapt, predict_stream, softmax_entropy


def model_and_batches() -> tuple[nn.Module, list[torch.Tensor]]:
    model = SmallCNN(num_classes=5, width=4, in_channels=1).eval()
    g = torch.Generator().manual_seed(2)
    return model, [torch.randn(16, 1, 8, 8, generator=g) * 2 + 1 for _ in range(3)]


def affine_names(model: nn.Module) -> set[str]:
    return {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, _BatchNorm) for p in ("weight", "bias")}


def test_softmax_entropy_is_the_shannon_entropy_in_nats():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    torch.testing.assert_close(softmax_entropy(logits), torch.tensor([torch.log(torch.tensor(2.0)).item(), 0.0]))


def test_tent_updates_only_the_batch_norm_affine_parameters():
    model, batches = model_and_batches()
    adapted = adapt(model, "tent", batches)
    before, after = model.state_dict(), adapted.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == affine_names(model)
    assert [p.requires_grad for p in adapted.parameters()] == [p.requires_grad for p in model.parameters()]


def test_tent_reduces_the_entropy_of_a_fixed_batch_over_steps():
    model, batches = model_and_batches()
    entropies = [softmax_entropy(logits).mean().item() for logits in predict_stream(model, "tent", [batches[0]] * 30)]
    assert entropies[-1] < entropies[0] - 1e-3
    assert sum(b < a for a, b in zip(entropies, entropies[1:])) >= 25


def test_tent_predicts_each_batch_with_the_forward_pass_of_its_update():
    model, batches = model_and_batches()
    norm = adapt(model, "norm")
    tent_logits = list(predict_stream(model, "tent", batches))
    # The first batch is predicted before any update: exactly test-time normalization.
    torch.testing.assert_close(tent_logits[0], norm(batches[0]))
    assert not torch.allclose(tent_logits[1], norm(batches[1]))
    # The second batch is predicted by the model updated once, on the first batch.
    once = adapt(model, "tent", batches[:1])
    torch.testing.assert_close(tent_logits[1], once(batches[1]))


def test_tent_episodic_resets_parameters_and_optimizer_after_each_batch():
    model, batches = model_and_batches()
    norm = adapt(model, "norm")
    for x, logits in zip(batches, predict_stream(model, "tent", batches, episodic=True)):
        torch.testing.assert_close(logits, norm(x))
    adapted = adapt(model, "tent", batches, episodic=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, adapted.state_dict()[key]), key
    tent = Tent(copy.deepcopy(model), episodic=True)
    tent(batches[0])
    assert tent.optimizer.state_dict()["state"] == {}


def test_tent_online_keeps_the_adam_state_across_batches():
    model, batches = model_and_batches()
    tent = Tent(copy.deepcopy(model), lr=1e-3)
    for x in batches:
        tent(x)
    steps = {int(state["step"]) for state in tent.optimizer.state_dict()["state"].values()}
    assert steps == {len(batches)}
    tent.reset()
    assert tent.optimizer.state_dict()["state"] == {}
    for key, value in model.state_dict().items():
        assert torch.equal(value, tent.model.state_dict()[key]), key


def test_tent_sgd_and_several_steps_per_batch():
    model, batches = model_and_batches()
    adam = adapt(model, "tent", batches[:1], lr=1e-2)
    sgd = adapt(model, "tent", batches[:1], lr=1e-2, optimizer="sgd", steps=3)
    assert not torch.allclose(adam(batches[1]), sgd(batches[1]))


def test_tent_errors_say_what_was_expected():
    model, _ = model_and_batches()
    with pytest.raises(ValueError, match="no BatchNorm affine parameter"):
        Tent(SmallCNN(width=4, norm_kwargs={"affine": False}))
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        Tent(copy.deepcopy(model), steps=0)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd', got 'rmsprop'"):
        predict_stream(model, "tent", [], optimizer="rmsprop")
