"""Tests of normapps.tasks.adaptation.methods: adapt, predict_stream and the METHODS registry."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.models import SmallCNN
from normapps.norm import capture, source_prior, use_batch_stats
from normapps.tasks.adaptation import METHODS, adapt, applicable_methods, predict_stream

TEST_METHODS = [name for name, m in METHODS.items() if m.stage == "test"]
ONLINE_METHODS = [name for name, m in METHODS.items() if m.online]


def shifted_batches(n: int = 3, size: int = 8) -> list[torch.Tensor]:
    """Target batches whose per-channel statistics differ from batch to batch."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, 1, 8, 8, generator=g) * (1 + i) + 0.5 * i for i in range(n)]


def trained_model() -> nn.Module:
    """A tiny classifier whose BatchNorm statistics and affine parameters are not at their defaults."""
    model = SmallCNN(num_classes=5, width=4, in_channels=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def batch_norms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def snapshot(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "classes": [type(m) for m in model.modules()],
        "hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["tensors"].keys() == after["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(value, after["tensors"][key]), key
    for field in ("requires_grad", "modes", "classes", "hooks"):
        assert before[field] == after[field], field


def test_adabn_equals_statistics_of_concatenated_target_data_and_ema_differs():
    model, batches = trained_model(), shifted_batches()
    # The reference pass: every BatchNorm normalizes with its batch statistics, as AdaBN's pass does;
    # the inputs of every BatchNorm are kept and pooled in float64.
    reference = copy.deepcopy(model).train()
    inputs = {name: [] for name in batch_norms(reference)}
    for name, bn in batch_norms(reference).items():
        bn.register_forward_pre_hook(lambda m, args, name=name: inputs[name].append(args[0].detach().double()))
    with torch.no_grad():
        for x in batches:
            reference(x)
    adapted = adapt(model, "adabn", batches)
    ema = adapt(model, "adabn_ema", batches)
    assert len(batch_norms(adapted)) == 3
    for name, bn in batch_norms(adapted).items():
        data = torch.cat(inputs[name]).transpose(0, 1).flatten(1)
        torch.testing.assert_close(bn.running_mean.double(), data.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), data.var(1, correction=1), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(batch_norms(ema)[name].running_var, bn.running_var, rtol=1e-3)
    assert not adapted.training


@pytest.mark.parametrize("reset", [False, True])
def test_adabn_ema_is_the_moving_average_of_training_mode_from_source_or_reset_statistics(reset):
    model, batches = trained_model(), shifted_batches()
    reference = copy.deepcopy(model)
    for bn in batch_norms(reference).values():
        if reset:
            bn.reset_running_stats()
        bn.momentum = 0.3
    reference.train()  # the default is what model.train() and forward passes over the target set do
    with torch.no_grad():
        for x in batches:
            reference(x)
    adapted = adapt(model, "adabn_ema", batches, momentum=0.3, **({"reset": True} if reset else {}))
    for name, bn in batch_norms(adapted).items():
        torch.testing.assert_close(bn.running_mean, batch_norms(reference)[name].running_mean)
        torch.testing.assert_close(bn.running_var, batch_norms(reference)[name].running_var)


@pytest.mark.parametrize("method", TEST_METHODS)
def test_adapt_never_changes_the_input_model(method):
    model, batches = trained_model(), shifted_batches()
    before = snapshot(model)
    adapted = adapt(model, method, batches)
    adapted(batches[0])
    assert_same(before, snapshot(model))
    assert adapted is not model


@pytest.mark.parametrize("method", ONLINE_METHODS)
def test_predict_stream_never_changes_the_input_model(method):
    model, batches = trained_model(), shifted_batches()
    before = snapshot(model)
    assert len(list(predict_stream(model, method, batches))) == len(batches)
    assert_same(before, snapshot(model))


def test_norm_normalizes_each_batch_with_its_own_biased_statistics():
    model, batches = trained_model(), shifted_batches()
    adapted = adapt(model, "norm")
    for x in batches:
        # A model whose running statistics are this batch's (biased) statistics, layer by layer.
        reference = copy.deepcopy(model)
        stats = capture(copy.deepcopy(model).train(), [x])
        with torch.no_grad():
            for name, bn in batch_norms(reference).items():
                bn.running_mean.copy_(stats[name].mean)
                bn.running_var.copy_(stats[name].var)
        torch.testing.assert_close(adapted(x), reference.eval()(x), rtol=1e-4, atol=1e-5)
    streamed = list(predict_stream(model, "norm", batches))
    for x, logits in zip(batches, streamed):
        torch.testing.assert_close(logits, adapted(x))


def test_prior_without_source_strength_is_norm_and_with_huge_strength_is_source():
    model, batches = trained_model(), shifted_batches()
    norm, source = adapt(model, "norm"), adapt(model, "source")
    no_prior, full_prior = adapt(model, "prior", n_source=0), adapt(model, "prior", n_source=1e12)
    for x in batches:
        torch.testing.assert_close(no_prior(x), norm(x))
        torch.testing.assert_close(full_prior(x), source(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(norm(x), source(x), atol=1e-3)


def test_prior_weights_the_source_by_n_over_n_plus_each_batch_size():
    model = trained_model()
    adapted = adapt(model, "prior", n_source=16)
    for size in (4, 16, 32):
        x = torch.randn(size, 1, 8, 8) * 2 + 1
        reference = use_batch_stats(copy.deepcopy(model), prior=source_prior(16, size))
        torch.testing.assert_close(adapted(x), reference(x))
    streamed = list(predict_stream(model, "prior", [x[:3], x], n_source=16))
    torch.testing.assert_close(streamed[1], adapted(x))


def test_methods_refuse_a_model_without_batch_norm_and_name_what_applies():
    model = SmallCNN(num_classes=5, width=4, norm="gn").eval()
    for method in ("adabn", "adabn_ema", "norm", "prior", "tent"):
        with pytest.raises(ValueError, match=r"needs a BatchNorm.*GroupNorm.*apply to this model: source$"):
            adapt(model, method, shifted_batches())
    with pytest.raises(ValueError, match="apply to this model: source"):
        predict_stream(model, "tent", shifted_batches())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(adapt(model, "source")(x), model(x))
    assert applicable_methods(model) == ["source"]


def test_methods_needing_running_statistics_name_the_batch_statistics_methods():
    model = SmallCNN(num_classes=5, width=4, norm_kwargs={"track_running_stats": False})
    assert applicable_methods(model) == ["source", "norm", "tent", "dsbn", "transnorm"]
    with pytest.raises(ValueError, match=r"track_running_stats=True.*apply to this model: source, norm, tent$"):
        adapt(model, "adabn", shifted_batches())


def test_adapt_errors_say_what_was_expected():
    model = trained_model()
    with pytest.raises(ValueError, match="unknown adaptation method 'adabnn'.*'adabn'"):
        adapt(model, "adabnn", shifted_batches())
    with pytest.raises(TypeError, match=r"unknown options \['lr'\]; it accepts \['n_source'\]"):
        adapt(model, "prior", lr=0.1)
    with pytest.raises(ValueError, match="adapts on target batches; got batches=None"):
        adapt(model, "tent")
    with pytest.raises(ValueError, match="at least one"):
        adapt(model, "adabn", [])
    with pytest.raises(ValueError, match="DSBNTask with a DomainPairDataModule"):
        adapt(model, "dsbn", shifted_batches())
    with pytest.raises(ValueError, match=r"needs the whole target set.*Online methods"):
        predict_stream(model, "adabn", shifted_batches())


def test_adapt_reads_pairs_and_dicts_like_tensors():
    model, batches = trained_model(), shifted_batches()
    plain = adapt(model, "adabn", batches)
    pairs = adapt(model, "adabn", [(x, torch.zeros(len(x))) for x in batches])
    dicts = adapt(model, "adabn", [{"image": x} for x in batches])
    for other in (pairs, dicts):
        for key, value in plain.state_dict().items():
            assert torch.equal(value, other.state_dict()[key]), key


def test_adapted_state_dict_loads_into_the_source_architecture():
    model, batches = trained_model(), shifted_batches()
    for method in TEST_METHODS:
        fresh = SmallCNN(num_classes=5, width=4, in_channels=1)
        fresh.load_state_dict(adapt(model, method, batches).state_dict())


def test_registry_describes_every_method():
    assert list(METHODS) == ["source", "adabn", "adabn_ema", "norm", "prior", "tent", "dsbn", "transnorm"]
    for name, method in METHODS.items():
        assert method.name == name and method.summary and method.paper
        assert (method.task is not None) == (method.stage == "training")
    assert ONLINE_METHODS == ["source", "norm", "prior", "tent"]


def test_adapt_works_on_a_torchvision_model():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=3).eval()
    batches = [torch.randn(4, 3, 16, 16) + 1 for _ in range(2)]
    before = snapshot(model)
    for method in ("adabn", "tent"):
        assert adapt(model, method, batches)(batches[0]).shape == (4, 3)
    assert_same(before, snapshot(model))
