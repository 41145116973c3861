"""WCT operations of normapps.norm.whitening: whiten, color, whiten_color_transform (Li et al., NeurIPS 2017)."""

import pytest
import torch

from normapps.norm.whitening import color, whiten, whiten_color_transform

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second thread only adds contention

F64 = torch.float64


def correlated_features(n: int, c: int, h: int, w: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Feature maps whose channels are correlated and whose means differ from zero."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=F64) + torch.eye(c, dtype=F64)
    x = torch.randn(n, h, w, c, generator=g, dtype=F64) @ mix.T + shift + torch.randn(c, generator=g, dtype=F64)
    return x.permute(0, 3, 1, 2).contiguous()


def mean_and_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.flatten(2)
    mean = rows.mean(-1, keepdim=True)
    centred = rows - mean
    return mean, centred @ centred.mT / rows.shape[-1]


def test_whiten_gives_zero_mean_and_identity_covariance_per_sample():
    y = whiten(correlated_features(3, 6, 5, 7, seed=0, shift=2.0), eps=1e-12)
    mean, cov = mean_and_covariance(y)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-10, rtol=0)
    torch.testing.assert_close(cov, torch.eye(6, dtype=F64).expand_as(cov), atol=1e-4, rtol=0)


def test_color_of_whitened_features_has_the_style_mean_and_covariance():
    style = correlated_features(1, 4, 3, 9, seed=1, shift=-1.0)
    y = color(whiten(correlated_features(2, 4, 6, 6, seed=2), eps=1e-12), style, eps=1e-12)
    for got, want in zip(mean_and_covariance(y), mean_and_covariance(style)):
        torch.testing.assert_close(got, want.expand_as(got), atol=1e-8, rtol=0)


@pytest.mark.parametrize("style_batch", [1, 2])
def test_wct_with_alpha_one_gives_the_style_mean_and_covariance(style_batch):
    content = correlated_features(2, 5, 6, 6, seed=3, shift=1.0)
    style = correlated_features(style_batch, 5, 4, 11, seed=4, shift=-2.0)  # another H x W than the content
    y = whiten_color_transform(content, style, alpha=1.0, eps=1e-12)
    for got, want in zip(mean_and_covariance(y), mean_and_covariance(style)):
        torch.testing.assert_close(got, want.expand_as(got), atol=1e-8, rtol=0)


def test_wct_equals_color_of_whiten():
    content, style = correlated_features(2, 4, 5, 5, seed=5), correlated_features(2, 4, 3, 3, seed=6)
    torch.testing.assert_close(whiten_color_transform(content, style), color(whiten(content), style))


def test_wct_with_alpha_zero_is_the_identity():
    content = correlated_features(2, 4, 5, 5, seed=7, shift=3.0)
    torch.testing.assert_close(whiten_color_transform(content, correlated_features(1, 4, 5, 5, seed=8), alpha=0.0),
                               content, atol=1e-12, rtol=0)


def test_wct_alpha_blends_linearly_with_the_content():
    content, style = correlated_features(1, 4, 5, 5, seed=9), correlated_features(1, 4, 5, 5, seed=10)
    full = whiten_color_transform(content, style)
    torch.testing.assert_close(whiten_color_transform(content, style, alpha=0.3), 0.3 * full + 0.7 * content)


def test_float32_input_gives_float32_output_close_to_float64():
    content, style = correlated_features(2, 8, 6, 6, seed=11), correlated_features(1, 8, 4, 4, seed=12)
    y = whiten_color_transform(content.float(), style.float())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), whiten_color_transform(content, style), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("style_size", [(2, 4), (1, 3)], ids=["full rank", "rank-deficient style"])
def test_wct_gradcheck_float64(style_size):
    content = correlated_features(2, 3, 3, 3, seed=13).requires_grad_()
    style = correlated_features(1, 3, *style_size, seed=14).requires_grad_()  # 1 x 3: rank 2, one clamped eigenvalue
    assert torch.autograd.gradcheck(lambda c, s: whiten_color_transform(c, s, alpha=0.7), (content, style))


@pytest.mark.parametrize("case", ["constant channels", "fewer positions than channels", "constant map"])
def test_rank_deficient_covariance_stays_finite_with_finite_gradients(case):
    content = correlated_features(2, 6, 4, 4, seed=15)
    if case == "constant channels":
        content[:, 2:4] = 0.5
    elif case == "fewer positions than channels":
        content = content[:, :, :2, :2]
    else:
        content = torch.ones(2, 6, 3, 3, dtype=F64)
    style = correlated_features(1, 6, 1, 3, seed=16)  # rank 2 style covariance
    content.requires_grad_()
    for y in (whiten(content), whiten_color_transform(content, style, alpha=0.5)):
        assert torch.isfinite(y).all()
        (grad,) = torch.autograd.grad(y.square().sum(), content)
        assert torch.isfinite(grad).all()


def test_errors_name_what_was_expected_and_found():
    content = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"\(N, 4, \*spatial\).*got 5 channels"):
        whiten_color_transform(content, torch.randn(1, 5, 3, 3))
    with pytest.raises(ValueError, match="1 or 2 samples.*got 3"):
        whiten_color_transform(content, torch.randn(3, 4, 3, 3))
    with pytest.raises(ValueError, match=r"feature maps \(N, C, \*spatial\), got shape \(2, 4\)"):
        whiten(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        whiten_color_transform(content, content, alpha=1.5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        whiten(content, eps=0.0)
    with pytest.raises(ValueError, match="got 3 channels"):
        color(content, torch.randn(1, 3, 3, 3))
