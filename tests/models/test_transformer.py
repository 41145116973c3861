import pytest
import torch

from normapps.models import TransformerNet
from normapps.norm.conditional import ConditionalInstanceNorm

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only add contention


@pytest.mark.parametrize("norm", ["in", "bn", "cin"])
@pytest.mark.parametrize("width", [0.125, 0.25])
def test_output_has_the_input_shape_and_lies_in_the_unit_interval(norm, width):
    net = TransformerNet(width=width, norm=norm, num_styles=3 if norm == "cin" else None)
    x = torch.rand(2, 3, 37, 50)  # sides that are no multiple of 4
    out = net(x, torch.tensor([0, 2])) if norm == "cin" else net(x)
    assert out.shape == x.shape
    assert 0 < out.min() and out.max() < 1


def test_width_scales_the_base_channels():
    net = TransformerNet(width=0.25)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs[:3]] == [8, 16, 32]
    assert convs[0].kernel_size == (9, 9) and convs[-1].kernel_size == (9, 9)
    assert [c.stride for c in convs[1:3]] == [(2, 2), (2, 2)]
    assert len(net.residual) == 5


def test_every_normalization_is_the_chosen_one():
    net = TransformerNet(width=0.125, norm="cin", num_styles=4)
    layers = [m for m in net.modules() if isinstance(m, ConditionalInstanceNorm)]
    assert len(layers) == 3 + 2 * 5 + 2


def test_cin_weights_one_hot_equal_the_style_index():
    net = TransformerNet(width=0.125, norm="cin", num_styles=3)
    with torch.no_grad():  # distinct gamma / beta per style
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.recovery.weight.uniform_(0.5, 1.5)
                m.recovery.bias.normal_()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(net(x, torch.tensor([1.0, 0.0, 0.0])), net(x, 0))
    assert not torch.allclose(net(x, 0), net(x, 1))


def test_cin_convex_weights_interpolate_gamma_and_beta():
    net = TransformerNet(width=0.125, norm="cin", num_styles=2)
    layer = next(m for m in net.modules() if isinstance(m, ConditionalInstanceNorm))
    with torch.no_grad():
        layer.recovery.weight.copy_(torch.stack([torch.full((4,), 1.0), torch.full((4,), 3.0)]))
        layer.recovery.bias.copy_(torch.stack([torch.zeros(4), torch.ones(4)]))
    gamma, beta = layer.recovery.gamma_beta(torch.tensor([0.25, 0.75]), 1)
    torch.testing.assert_close(gamma, torch.full((1, 4), 2.5))
    torch.testing.assert_close(beta, torch.full((1, 4), 0.75))
    x = torch.rand(1, 3, 16, 16)
    out = net(x, torch.tensor([0.25, 0.75]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_style_argument_is_checked():
    with pytest.raises(ValueError, match="style="):
        TransformerNet(width=0.125, norm="cin", num_styles=2)(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="only for a 'cin' network"):
        TransformerNet(width=0.125)(torch.rand(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match="num_styles"):
        TransformerNet(width=0.125, norm="cin")
    with pytest.raises(ValueError, match="norm must be"):
        TransformerNet(width=0.125, norm="nope")
