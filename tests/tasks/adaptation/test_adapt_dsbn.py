"""Tests of domain-specific batch normalization (normapps.tasks.adaptation.dsbn) and domain selection."""

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normapps.models import SmallCNN
from normapps.tasks.adaptation import (
    SOURCE,
    TARGET,
    DomainSpecificBatchNorm,
    convert_to_dsbn,
    export_domain,
    set_domain,
    use_domain,
)


def source_model() -> nn.Module:
    model = SmallCNN(num_classes=5, width=4, in_channels=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-1, 1)
    return model


def dsbn_layers(model: nn.Module) -> list[DomainSpecificBatchNorm]:
    return [m for m in model.modules() if isinstance(m, DomainSpecificBatchNorm)]


def test_convert_keeps_shared_weights_shared_and_copies_each_batch_norm_per_domain():
    model = source_model()
    shared = {name: p for name, p in model.named_parameters() if "features.1" not in name and "features.4" not in name
              and "features.7" not in name}
    originals = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    converted = convert_to_dsbn(model)
    assert converted is model
    for name, p in converted.named_parameters():
        if ".layers." not in name:
            assert p is shared[name]
    layers = dsbn_layers(converted)
    assert len(layers) == 3
    for layer, original in zip(layers, originals):
        source, target = layer.layers
        assert type(source) is type(original) and source is not original
        for key, value in original.state_dict().items():
            assert torch.equal(source.state_dict()[key], value) and torch.equal(target.state_dict()[key], value)
        assert source.weight.data_ptr() != target.weight.data_ptr()
        assert source.running_mean.data_ptr() != target.running_mean.data_ptr()
    bn_parameters = sum(p.numel() for m in originals for p in m.parameters())
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in shared.values()) + 2 * bn_parameters


def test_each_domain_trains_only_its_own_batch_norm():
    model = convert_to_dsbn(source_model()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with use_domain(model, TARGET):
        model(torch.randn(8, 1, 8, 8) * 3 + 2).square().mean().backward()
    assert all(layer.domain == SOURCE for layer in dsbn_layers(model))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".layers.1." in k for k in changed)
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    assert not any(".layers.0." in name for name in grads)
    assert {"features.0.weight", "head.weight"} <= grads


def test_dsbn_state_dict_loads_into_a_fresh_converted_model():
    model = set_domain(convert_to_dsbn(source_model()).eval(), TARGET)
    with torch.no_grad():
        for layer in dsbn_layers(model):
            layer.layers[TARGET].running_var.uniform_(0.5, 2)
    fresh = set_domain(convert_to_dsbn(SmallCNN(num_classes=5, width=4, in_channels=1)).eval(), TARGET)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(fresh(x), model(x))
    assert any(".layers.1.running_var" in key for key in model.state_dict())


def test_export_domain_gives_back_the_original_architecture():
    model = convert_to_dsbn(source_model()).eval()
    with torch.no_grad():
        for layer in dsbn_layers(model):
            layer.layers[TARGET].running_mean.add_(1.0)
    x = torch.randn(4, 1, 8, 8)
    for domain in (SOURCE, TARGET):
        plain = SmallCNN(num_classes=5, width=4, in_channels=1).eval()
        plain.load_state_dict(export_domain(model, domain).state_dict())
        with use_domain(model, domain):
            torch.testing.assert_close(plain(x), model(x))
    assert dsbn_layers(model)  # the model itself is unchanged


def test_a_batch_norm_root_and_timm_style_subclasses_are_converted():
    class BatchNormAct(nn.BatchNorm2d):
        def __init__(self, channels: int) -> None:
            super().__init__(channels)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(super().forward(x))

    root = convert_to_dsbn(BatchNormAct(3), num_domains=3)
    assert isinstance(root, DomainSpecificBatchNorm) and root.num_domains == 3
    root.select(2)
    assert (root(torch.randn(4, 3, 2, 2)) >= 0).all()


def test_domain_errors_say_what_was_expected():
    model = convert_to_dsbn(source_model())
    with pytest.raises(ValueError, match=r"domain must be an int in \[0, 1\], got 2"):
        set_domain(model, 2)
    with pytest.raises(ValueError, match="no domain-specific layer"):
        set_domain(SmallCNN(width=4), TARGET)
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        convert_to_dsbn(SmallCNN(width=4, norm="gn"))
    with pytest.raises(ValueError, match="num_domains must be an int >= 2, got 1"):
        convert_to_dsbn(source_model(), num_domains=1)
    with pytest.raises(ValueError, match="same num_features"):
        DomainSpecificBatchNorm([nn.BatchNorm2d(3), nn.BatchNorm2d(4)])
    with pytest.raises(ValueError, match=r"domain must be an int in \[0, 1\], got 5"):
        export_domain(model, 5)
