import pytest
import torch
from torch import nn

from normapps import norm
from normapps.models import SmallCNN, build_norm
from normapps.models.cnn import check_norm_name, default_groups, takes_groups


@pytest.mark.parametrize("name", norm.available("activation"))
def test_cnn_trains_and_evaluates_with_every_activation_norm(name):
    model = SmallCNN(num_classes=10, norm=name, width=8)
    x = torch.randn(4, 1, 16, 16)
    model.train()
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.features[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("channels", [1, 3, 8, 12, 16, 32, 64])
def test_default_groups_divide_the_channels_with_about_four_per_group(channels):
    groups = default_groups(channels)
    assert channels % groups == 0
    assert channels // groups >= min(4, channels)


def test_explicit_groups_override_the_default():
    layer = build_norm("gn", 16, groups=2)
    assert layer(torch.randn(2, 16, 4, 4)).shape == (2, 16, 4, 4)
    with pytest.raises(Exception, match="3"):
        build_norm("gn", 16, groups=3)(torch.randn(2, 16, 4, 4))


def test_norm_can_be_a_layer_class():
    model = SmallCNN(norm=nn.BatchNorm2d, width=4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_norm_kwargs_reach_every_layer():
    model = SmallCNN(norm="bn", norm_kwargs={"momentum": 0.5}, width=4)
    momenta = {m.momentum for m in model.modules() if hasattr(m, "running_mean")}
    assert momenta == {0.5}


def test_unknown_norm_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'"):
        SmallCNN(norm="batchnorm")
    with pytest.raises(ValueError, match="width must be a positive int, got 0"):
        SmallCNN(width=0)


def test_unknown_norm_names_expected_and_found_with_suggestions():
    with pytest.raises(ValueError) as err:
        SmallCNN(norm="bnn")
    message = str(err.value)
    assert "unknown norm 'bnn'" in message and "Did you mean 'bn'" in message
    assert all(name in message for name in norm.available("activation"))


@pytest.mark.parametrize("name", norm.available("conditional"))
def test_conditional_methods_are_refused_by_the_classifier(name):
    with pytest.raises(ValueError, match=f"'{name}' is a conditional method"):
        SmallCNN(norm=name)
    assert check_norm_name("gn") == "gn"


def test_takes_groups_reads_the_registered_signature():
    grouped = {name for name in norm.available() if takes_groups(name)}
    assert {"gn", "bgn", "evonorm_s0"} <= grouped
    assert not grouped & {"bn", "ln", "in", "rmsnorm"}
    assert isinstance(build_norm("evonorm_s0", 16), nn.Module)  # default groups supplied
    with pytest.raises(ValueError, match="unknown normalization method"):
        takes_groups("nope")
