import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from normapps import norm
from normapps.models.gan import (
    DISCRIMINATOR_NORMS,
    GENERATOR_NORMS,
    DCGANDiscriminator,
    DCGANGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    build_discriminator,
    build_generator,
)
from normapps.norm.weight import SpectralNorm

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, WIDTH, Z = 16, 0.125, 16


def _generator(arch, g_norm, **kw):
    return build_generator(arch, z_dim=Z, width=WIDTH, g_norm=g_norm, num_classes=10 if g_norm == "cbn" else None,
                           image_size=SIZE, **kw)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("g_norm", GENERATOR_NORMS)
def test_generator_output_shape_and_range(arch, g_norm):
    g = _generator(arch, g_norm, channels=1)
    out = g(torch.randn(5, Z), torch.arange(5) if g_norm == "cbn" else None)
    assert out.shape == (5, 1, SIZE, SIZE)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("d_norm", DISCRIMINATOR_NORMS)
@pytest.mark.parametrize("num_classes", [None, 4])
def test_discriminator_output_shape_and_gradients(arch, d_norm, num_classes):
    d = build_discriminator(arch, width=WIDTH, d_norm=d_norm, num_classes=num_classes, image_size=SIZE)
    x = torch.randn(3, 3, SIZE, SIZE, requires_grad=True)
    out = d(x, None if num_classes is None else torch.tensor([0, 3, 1]))
    assert out.shape == (3,)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_paper_sizes_at_width_one():
    """The standard CNN and the ResNets of Miyato et al. 2018 (tables 3, 4) at 32 px."""
    g = DCGANGenerator()
    assert g.linear.out_features == 4 * 4 * 512 and [m.out_channels for m in g.deconvs] == [256, 128, 64]
    d = DCGANDiscriminator(d_norm="none")
    convs = [m for m in d.convs if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs] == [
        (64, 3, 1), (64, 4, 2), (128, 3, 1), (128, 4, 2), (256, 3, 1), (256, 4, 2), (512, 3, 1)]
    assert d.psi.in_features == 4 * 4 * 512
    assert ResNetGenerator().linear.out_features == 4 * 4 * 256
    assert ResNetDiscriminator(d_norm="none").psi.in_features == 128


def _spectral_layers(d):
    return [m for m in d.modules() if parametrize.is_parametrized(m, "weight")]


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_spectral_norm_makes_every_weight_unit_sigma(arch):
    d = build_discriminator(arch, width=WIDTH, d_norm="spectral", num_classes=4, image_size=SIZE).train()
    layers = _spectral_layers(d)
    assert d.embed in layers and d.psi in layers
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) for m in d.modules())
    d(torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 1]))
    for m in layers:
        with torch.no_grad():
            for _ in range(200):  # every read of the weight in training mode is one power iteration
                _ = m.weight
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=5e-3)


def test_spectral_norm_equals_torch_spectral_norm_from_the_same_vectors():
    reference = torch.nn.utils.parametrizations.spectral_norm(nn.Conv2d(8, 16, 3), n_power_iterations=1)
    ours = nn.Conv2d(8, 16, 3)
    ours.weight.data.copy_(reference.parametrizations.weight.original.detach())
    norm.weight.apply(ours, "spectral")
    ours_sn = ours.parametrizations.weight[0]
    ours_sn._u.copy_(reference.parametrizations.weight[0]._u)
    ours_sn._v.copy_(reference.parametrizations.weight[0]._v)
    for _ in range(5):  # one power iteration per read in training mode, in both
        torch.testing.assert_close(ours.weight, reference.weight, rtol=1e-5, atol=1e-6)
    reference.eval(), ours.eval()
    torch.testing.assert_close(ours.weight, reference.weight, rtol=1e-5, atol=1e-6)


def test_spectral_u_updates_only_in_training():
    d = DCGANDiscriminator(width=WIDTH, d_norm="spectral", image_size=SIZE)
    param = next(p for m in d.modules() if parametrize.is_parametrized(m, "weight")
                 for p in m.parametrizations.weight if isinstance(p, SpectralNorm))
    # restart far from the fixed point so that an iteration must move u
    param._u.copy_(torch.nn.functional.normalize(torch.randn_like(param._u), dim=0))
    x = torch.randn(2, 3, SIZE, SIZE)
    d.eval()
    before = param._u.clone()
    d(x)
    assert torch.equal(param._u, before)
    d.train()
    d(x)
    assert not torch.allclose(param._u, before)


def test_weight_norm_parametrizes_every_layer_and_keeps_the_function():
    torch.manual_seed(1)
    plain = DCGANDiscriminator(width=WIDTH, d_norm="none", image_size=SIZE)
    torch.manual_seed(1)
    wn = DCGANDiscriminator(width=WIDTH, d_norm="wn", image_size=SIZE)
    assert len(_spectral_layers(wn)) == 8
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(wn(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_cbn_classes_change_the_output_and_one_hot_weights_equal_indices(arch):
    g = _generator(arch, "cbn").eval()
    with torch.no_grad():  # distinct per-class parameters (they start at gamma 1, beta 0)
        for m in g.modules():
            if hasattr(m, "recovery") and hasattr(m.recovery, "num_embeddings"):
                m.recovery.weight.normal_(1.0, 0.3)
                m.recovery.bias.normal_(0.0, 0.3)
    z = torch.randn(1, Z).expand(3, -1)
    out = g(z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    labels = torch.tensor([4, 7, 0])
    torch.testing.assert_close(g(z, torch.nn.functional.one_hot(labels, 10).float()), g(z, labels))


def test_cbn_mixing_weights_average_the_two_classes_parameters():
    g = _generator("dcgan", "cbn").eval()
    with torch.no_grad():
        for m in g.modules():
            if hasattr(m, "recovery") and hasattr(m.recovery, "num_embeddings"):
                m.recovery.weight.normal_(1.0, 0.3)
                m.recovery.bias.normal_(0.0, 0.3)
    mixed = _generator("dcgan", "cbn").eval()
    mixed.load_state_dict(g.state_dict())
    with torch.no_grad():  # class 0 of `mixed` holds the average of classes 2 and 5 of `g`
        for m in mixed.modules():
            if hasattr(m, "recovery") and hasattr(m.recovery, "num_embeddings"):
                m.recovery.weight[0] = (m.recovery.weight[2] + m.recovery.weight[5]) / 2
                m.recovery.bias[0] = (m.recovery.bias[2] + m.recovery.bias[5]) / 2
    z = torch.randn(2, Z)
    weights = torch.zeros(2, 10)
    weights[:, 2] = weights[:, 5] = 0.5
    torch.testing.assert_close(g(z, weights), mixed(z, torch.zeros(2, dtype=torch.long)), rtol=1e-5, atol=1e-6)


def test_smbn_depends_on_z_through_the_norm_layers():
    g = _generator("resnet", "smbn").eval()
    layers = [m for m in g.modules() if hasattr(m, "recovery") and hasattr(m.recovery, "latent_dim")]
    assert len(layers) == 7 and all(m.recovery.latent_dim == Z for m in layers)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_projection_term_is_the_inner_product_of_embedding_and_features(arch):
    d = build_discriminator(arch, width=WIDTH, d_norm="spectral", num_classes=5, image_size=SIZE).eval()
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 4, 2, 2])
    phi = d.features(x)
    unconditional = d.psi(phi).squeeze(1)
    expected = (d.embed.weight[y] * phi).sum(dim=1)
    torch.testing.assert_close(d(x, y) - unconditional, expected, rtol=1e-4, atol=1e-4)
    sigma = torch.linalg.matrix_norm(d.embed.weight.detach(), ord=2)
    assert sigma == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DCGANGenerator(g_norm="gn"), "expected one of 'bn', 'cbn', 'smbn'"),
        (lambda: DCGANDiscriminator(d_norm="sn"), "expected one of 'none', 'bn', 'ln', 'wn', 'spectral'"),
        (lambda: build_generator("vgg"), "expected one of 'dcgan', 'resnet'"),
        (lambda: DCGANGenerator(image_size=20), "multiple of 8"),
        (lambda: ResNetDiscriminator(image_size=6), "multiple of 4"),
        (lambda: DCGANGenerator(width=0.001), "no channels"),
        (lambda: DCGANGenerator(width=-1.0), "width must be"),
        (lambda: DCGANGenerator(g_norm="cbn"), "needs num_classes"),
        (lambda: DCGANGenerator(g_norm="bn", num_classes=10), "needs g_norm='cbn'"),
        (lambda: DCGANGenerator(z_dim=0), "z_dim must be"),
    ],
)
def test_bad_construction_raises_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_inputs_raise_clear_errors():
    g, g_cond = _generator("dcgan", "bn"), _generator("dcgan", "cbn")
    d, d_proj = DCGANDiscriminator(width=WIDTH, image_size=SIZE), DCGANDiscriminator(width=WIDTH, image_size=SIZE, num_classes=10)
    z, x = torch.randn(2, Z), torch.randn(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="unconditional .* takes no class labels"):
        g(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="conditional .* give class labels"):
        g_cond(z)
    with pytest.raises(ValueError, match=r"must lie in \[0, 9\], got values in \[0, 10\]"):
        g_cond(z, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"class weights must have shape \(2, 10\)"):
        g_cond(z, torch.ones(2, 3))
    with pytest.raises(ValueError, match=rf"latent z of shape \(N, {Z}\)"):
        g(torch.randn(2, Z + 1))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, 16, 16\)"):
        d(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="unconditional and takes no class labels"):
        d(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="projection discriminator .* give class labels"):
        d_proj(x)
    with pytest.raises(ValueError, match=r"must lie in \[0, 9\]"):
        d_proj(x, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="takes class indices"):
        d_proj(x, torch.ones(2, 10))
