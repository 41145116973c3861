"""Style-transfer losses: content MSE, AdaIN's mean / std loss, Gram matrices and their loss."""

import pytest
import torch
import torch.nn.functional as F

from normapps.tasks.style import content_loss, gram_matrix, style_loss_gram, style_loss_moments

pytestmark = pytest.mark.usefixtures("one_thread")


def shuffled(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its pixels in another order: the same per-channel statistics and Gram matrix, other content."""
    n, c, h, w = x.shape
    return x.flatten(2)[:, :, torch.randperm(h * w)].view(n, c, h, w)


def level_features(n=3, sizes=((8, 12, 12), (16, 6, 6))):
    return {f"relu{i + 1}_1": torch.randn(n, *size).relu() * (i + 1) for i, size in enumerate(sizes)}


def test_content_loss_is_the_mean_squared_error_and_its_per_image_values_average_to_it():
    x, t = torch.randn(4, 8, 5, 5), torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(content_loss(x, t), F.mse_loss(x, t))
    per_image = content_loss(x, t, reduction="none")
    assert per_image.shape == (4,)
    torch.testing.assert_close(per_image, ((x - t) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(per_image.mean(), content_loss(x, t))
    torch.testing.assert_close(content_loss(x, t[:1]), content_loss(x, t[:1].expand_as(x)))


def test_moments_loss_is_zero_for_features_with_the_styles_statistics_in_another_arrangement_and_size():
    style = level_features(n=1)
    feats = {k: shuffled(v).repeat(2, 1, 2, 3) for k, v in style.items()}  # tiling keeps mean and std
    loss = style_loss_moments(feats, style, reduction="none")
    assert loss.shape == (2,)
    assert loss.abs().max() < 1e-10


def test_moments_loss_equals_the_hand_formula():
    feats, style = level_features(), level_features(n=1, sizes=((8, 7, 9), (16, 4, 5)))
    expected = 0.0
    for level in feats:
        x, s = feats[level].double(), style[level].double()
        mu_x, mu_s = x.mean(dim=(2, 3)), s.mean(dim=(2, 3)).expand(3, -1)
        sd_x = (x.var(dim=(2, 3), unbiased=False) + 1e-5).sqrt()
        sd_s = (s.var(dim=(2, 3), unbiased=False) + 1e-5).sqrt().expand(3, -1)
        expected = expected + ((mu_x - mu_s) ** 2).mean(1) + ((sd_x - sd_s) ** 2).mean(1)
    per_image = style_loss_moments(feats, style, reduction="none")
    torch.testing.assert_close(per_image.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(style_loss_moments(feats, style).double(), expected.mean(), rtol=1e-5, atol=1e-7)
    only = style_loss_moments(feats, style, levels=["relu2_1"])
    assert only < style_loss_moments(feats, style)


def test_gram_matrix_equals_an_einsum_normalized_by_the_feature_size():
    x = torch.randn(2, 5, 4, 6)
    torch.testing.assert_close(gram_matrix(x), torch.einsum("nchw,ndhw->ncd", x, x) / (5 * 4 * 6))
    g = gram_matrix(x)
    torch.testing.assert_close(g, g.transpose(1, 2))


def test_gram_loss_is_zero_for_the_same_texture_at_another_size_and_positive_otherwise():
    style = level_features(n=1)
    tiled = {k: shuffled(v).repeat(1, 1, 2, 2) for k, v in style.items()}
    assert style_loss_gram(tiled, style) < 1e-10
    feats = level_features(n=2)
    expected = sum(((gram_matrix(feats[k]) - gram_matrix(style[k])) ** 2).mean(dim=(1, 2)) for k in feats)
    torch.testing.assert_close(style_loss_gram(feats, style, reduction="none"), expected)
    assert (expected > 0).all()


def test_style_losses_pass_gradients_to_the_features():
    feats = {k: v.requires_grad_() for k, v in level_features(n=2).items()}
    style = level_features(n=1)
    (style_loss_moments(feats, style) + style_loss_gram(feats, style)).backward()
    assert all(torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0 for v in feats.values())


def test_losses_refuse_bad_input():
    feats = level_features()
    with pytest.raises(ValueError, match="levels relu2_1 are missing"):
        style_loss_moments(feats, {"relu1_1": feats["relu1_1"]})
    with pytest.raises(ValueError, match="at relu1_1"):
        style_loss_gram(feats, {k: v[:, :4] for k, v in feats.items()})
    with pytest.raises(ValueError, match="reduction must be one of mean, none"):
        content_loss(feats["relu1_1"], feats["relu1_1"], reduction="sum")
    with pytest.raises(ValueError, match="does not match"):
        content_loss(feats["relu1_1"], feats["relu1_1"][:, :4])
    with pytest.raises(ValueError, match="at least one level"):
        style_loss_moments(feats, feats, levels=[])
