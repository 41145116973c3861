"""Frechet distance, KID, class accuracy and intra-class FD: formulas, invariants and bad input."""

import numpy as np
import pytest
import torch
from scipy.stats import special_ortho_group

from normapps.metrics import (
    MetricResult,
    class_accuracy,
    distances,
    feature_moments,
    frechet_distance,
    frechet_distance_from_moments,
    intra_class_frechet_distance,
    kernel_inception_distance,
)


def _random_covariance(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    factor = rng.standard_normal((dim, rank or dim))
    return factor @ factor.T / dim


def _reference_fd(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 sum sqrt(eig(S1 S2)): the eigenvalues of the non-symmetric product."""
    eigenvalues = np.linalg.eigvals(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eigenvalues.real, 0, None)).sum())


@pytest.mark.parametrize("dim", [1, 3, 16])
def test_fd_from_moments_equals_formula_with_eigenvalues_of_product(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    assert frechet_distance_from_moments(mu1, s1, mu2, s2) == pytest.approx(_reference_fd(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)


def test_fd_from_moments_equals_closed_form_for_rotated_diagonal_gaussians():
    rng = np.random.default_rng(0)
    dim = 6
    rotation = special_ortho_group.rvs(dim, random_state=1)
    a, b = rng.uniform(0.1, 3, dim), rng.uniform(0.1, 3, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    # Same eigenvectors: (S1 S2)^{1/2} = R diag(sqrt(a b)) R^T, so the trace term is sum (sqrt a - sqrt b)^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    s1, s2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    assert frechet_distance_from_moments(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_fd_of_large_gaussian_samples_approaches_closed_form():
    rng = np.random.default_rng(0)
    dim, n = 4, 100_000
    s1, s2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    mu1, mu2 = np.zeros(dim), np.full(dim, 0.5)
    x = rng.multivariate_normal(mu1, s1, n)
    y = rng.multivariate_normal(mu2, s2, n)
    expected = _reference_fd(mu1, s1, mu2, s2)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.03)


def test_fd_is_symmetric_nonnegative_and_zero_on_identical_sets():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.standard_normal((200, 10))
        y = rng.standard_normal((150, 10)) * rng.uniform(0.5, 2) + rng.uniform(-1, 1)
        assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-8)
        assert frechet_distance(x, y) >= 0
        assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fd_of_singular_covariances_is_finite_symmetric_and_warns():
    rng = np.random.default_rng(0)
    mu = np.zeros(8)
    s1, s2 = _random_covariance(rng, 8, rank=3), _random_covariance(rng, 8, rank=2)
    value = frechet_distance_from_moments(mu, s1, mu, s2)
    assert np.isfinite(value) and value == pytest.approx(frechet_distance_from_moments(mu, s2, mu, s1), rel=1e-8)
    assert value == pytest.approx(_reference_fd(mu, s1, mu, s2), abs=1e-7)
    with pytest.warns(UserWarning, match="rank at most 4 < 8"):
        assert np.isfinite(frechet_distance(rng.standard_normal((5, 8)), rng.standard_normal((50, 8))))


def test_fd_grows_monotonically_with_gaussian_feature_noise():
    rng = np.random.default_rng(0)
    reference, other = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    noise = rng.standard_normal((2000, 16))
    values = [frechet_distance(reference, other + std * noise) for std in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[-1] > 50 * values[0]  # closed form at std 2: 16 (sqrt(5) - 1)^2 = 24.4


def test_feature_moments_are_mean_and_unbiased_covariance():
    x = torch.randn(50, 3, dtype=torch.float64)
    mu, sigma = feature_moments(x)
    np.testing.assert_allclose(mu, x.mean(0).numpy(), atol=1e-12)
    np.testing.assert_allclose(sigma, torch.cov(x.T).numpy(), atol=1e-12)


def _reference_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Double loops over the definition (Gretton et al. 2012, eq. 3) with k(a, b) = (a.b / d + 1)^3."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_with_one_full_subset_equals_unbiased_mmd_definition():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=12)
    assert mean == pytest.approx(_reference_mmd2_unbiased(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # a full subset is a permutation: the same value each time


def test_kid_is_unbiased_on_equal_distributions_and_positive_on_shifted_ones():
    rng = np.random.default_rng(0)
    trials, m, d = 400, 40, 8
    same, biased, shifted = [], [], []
    for _ in range(trials):
        x, y = rng.standard_normal((m, d)), rng.standard_normal((m, d))
        same.append(kernel_inception_distance(x, y, subsets=1, subset_size=m)[0])
        k = lambda a, b: (a @ b.T / d + 1) ** 3
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())  # the V-statistic keeps the diagonal
        shifted.append(kernel_inception_distance(x, y + 0.5, subsets=1, subset_size=m)[0])
    same, biased, shifted = np.array(same), np.array(biased), np.array(shifted)
    standard_error = same.std() / np.sqrt(trials)
    assert abs(same.mean()) < 3 * standard_error
    assert (same < 0).any()
    assert biased.mean() > 10 * biased.std() / np.sqrt(trials)  # the biased estimator would fail the first check
    assert shifted.mean() > 10 * shifted.std() / np.sqrt(trials)


def test_kid_is_reproducible_for_a_seed():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 6)), rng.standard_normal((300, 6))
    assert kernel_inception_distance(x, y, 10, 50, seed=3) == kernel_inception_distance(x, y, 10, 50, seed=3)
    assert kernel_inception_distance(x, y, 10, 50, seed=3) != kernel_inception_distance(x, y, 10, 50, seed=4)


def test_distances_carry_and_print_the_sample_counts():
    results = distances(torch.randn(300, 4), torch.randn(200, 4), kid_subsets=5, kid_subset_size=1000)
    fd, kid = results["fd"], results["kid"]
    assert (fd.n_real, fd.n_fake, fd.feature_dim) == (300, 200, 4)
    assert str(fd).startswith("FD ") and str(fd).endswith("(300 real / 200 fake, 4-d features)")
    assert "5 subsets of 200" in str(kid) and "+-" in str(kid)
    assert float(fd) == fd.value


@pytest.mark.parametrize(
    ("a", "b", "error", "match"),
    [
        (np.zeros((10, 3)), np.zeros((10, 4)), ValueError, "same feature dimension, got 3 and 4"),
        (np.zeros(10), np.zeros((10, 1)), ValueError, r"shape \(N, d\)"),
        (np.ones((1, 3)), np.zeros((10, 3)), ValueError, "1 samples; at least 2"),
        (np.array([[0.0, np.nan]] * 5), np.zeros((5, 2)), ValueError, "NaN or infinite values \\(in 5 of 5"),
        ([[0.0, 1.0]], np.zeros((5, 2)), TypeError, "tensor or numpy array"),
    ],
)
def test_bad_features_raise_clear_errors(a, b, error, match):
    with pytest.raises(error, match=match):
        frechet_distance(a, b)
    with pytest.raises(error, match=match):
        kernel_inception_distance(a, b)


def test_bad_moments_and_kid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"sigma2 must have shape \(3, 3\)"):
        frechet_distance_from_moments(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="sigma1 contains NaN"):
        frechet_distance_from_moments(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="subsets of at least 2 samples"):
        kernel_inception_distance(np.zeros((10, 2)), np.zeros((10, 2)), subset_size=1)
    with pytest.raises(ValueError, match="subsets must be a positive int"):
        kernel_inception_distance(np.zeros((10, 2)), np.zeros((10, 2)), subsets=0)


def test_intra_class_fd_detects_swapped_classes_that_overall_fd_misses():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 4)) * 3
    labels = np.repeat(np.arange(3), 400)
    real = centres[labels] + rng.standard_normal((1200, 4))
    fake = centres[labels] + rng.standard_normal((1200, 4))
    swapped = (labels + 1) % 3  # every sample claims the next class
    good = intra_class_frechet_distance(real, labels, fake, labels)
    bad = intra_class_frechet_distance(real, labels, fake, swapped)
    assert frechet_distance(real, fake) < 0.1
    assert good.value < 0.2 and bad.value > 10 * good.value + 5
    assert good.per_class[1] == pytest.approx(frechet_distance(real[labels == 1], fake[labels == 1]))
    assert good.value == pytest.approx(np.mean(list(good.per_class.values())))
    assert (good.n_real, good.n_fake, good.feature_dim) == (1200, 1200, 4)


def test_intra_class_fd_needs_two_samples_per_shared_class():
    labels = np.array([0, 0, 1])
    with pytest.raises(ValueError, match=r"too few samples in \[1\]"):
        intra_class_frechet_distance(np.zeros((3, 2)), labels, np.ones((3, 2)), labels)
    with pytest.raises(ValueError, match=r"real_labels must have shape \(3,\)"):
        intra_class_frechet_distance(np.zeros((3, 2)), labels[:2], np.ones((3, 2)), labels)


class _SignClassifier(torch.nn.Module):
    """Class 1 when the image mean is positive, else 0."""

    def forward(self, images):
        positive = (images.mean((1, 2, 3)) > 0).float()
        return torch.stack([1 - positive, positive], 1)


def test_class_accuracy_counts_correct_predictions_per_class():
    images = torch.cat([torch.full((6, 1, 4, 4), -1.0), torch.full((4, 1, 4, 4), 1.0)])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])  # one image of class 1 looks like class 0
    result = class_accuracy(_SignClassifier(), images, labels)
    assert isinstance(result, MetricResult)
    assert result.value == pytest.approx(0.9)
    assert result.per_class == {0: 1.0, 1: 0.8}
    assert str(result) == "class accuracy 0.9 (10 images, 5 per class)"
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        class_accuracy(_SignClassifier(), images, labels[:3])
