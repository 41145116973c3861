"""Distances between sets of features: Frechet distance, kernel inception distance, class accuracy.

These are the generative-model metrics of Heusel et al. (2017, "GANs trained by a two time-scale
update rule converge to a local Nash equilibrium", the FID) and Binkowski et al. (2018,
"Demystifying MMD GANs", the KID), computed in any feature space: here the penultimate features of
the project's own digit classifier (:mod:`normapps.metrics.features`), never Inception's, so the
numbers are comparable with each other and not with published FIDs.

Both estimators depend on the sample counts (the Frechet distance is biased upward by a term that
shrinks like ``1 / n``; KID's variance shrinks with the subset size), so every number is reported
with them: :class:`MetricResult` carries the counts and prints them.

Features are ``(N, d)`` tensors or arrays; everything is computed in float64 with numpy / scipy.

>>> import torch
>>> a, b = torch.randn(500, 8), torch.randn(500, 8) + 1.0
>>> round(frechet_distance(a, b))  # ||mu_a - mu_b||^2 = 8, equal covariances
8
>>> print(distances(a, b)["fd"])  # doctest: +ELLIPSIS
FD 8... (500 real / 500 fake, 8-d features)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

__all__ = [
    "MetricResult", "class_accuracy", "distances", "feature_moments", "frechet_distance", "frechet_distance_from_moments",
    "intra_class_frechet_distance", "kernel_inception_distance",
]

ArrayLike = Tensor | np.ndarray


@dataclass(frozen=True)
class MetricResult:
    """One metric value with the sample counts it was computed from.

    Attributes:
        name: what was measured ("FD", "KID", "class accuracy", "intra-class FD").
        value: the number (for KID the mean over subsets).
        n_real: real samples used (None where no real samples enter, e.g. class accuracy).
        n_fake: generated samples used (or images classified, for class accuracy).
        feature_dim: dimension of the feature space (None where no features enter).
        std: standard deviation over KID subsets (None otherwise).
        details: how the value was computed beyond the counts (e.g. KID subsets and subset size).
        per_class: the per-class values (intra-class FD, class accuracy), by class index.
    """

    name: str
    value: float
    n_real: int | None
    n_fake: int
    feature_dim: int | None = None
    std: float | None = None
    details: str = ""
    per_class: Mapping[int, float] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def counts(self) -> str:
        """The sample counts as printed: ``"5000 real / 5000 fake, 128-d features"``."""
        parts = [f"{self.n_real} real / {self.n_fake} fake" if self.n_real is not None else f"{self.n_fake} images"]
        if self.feature_dim is not None:
            parts.append(f"{self.feature_dim}-d features")
        if self.details:
            parts.append(self.details)
        return ", ".join(parts)

    def __str__(self) -> str:
        value = f"{self.value:.4g}" if self.std is None else f"{self.value:.4g} +- {self.std:.2g}"
        return f"{self.name} {value} ({self.counts()})"


# ------------------------------------------------------------------------------------------- checks


def _as_features(features: ArrayLike, name: str, min_samples: int = 2) -> np.ndarray:
    """``features`` as a float64 array ``(N, d)``, checked: two dimensions, enough rows, finite."""
    if isinstance(features, Tensor):
        array = features.detach().to("cpu", torch.float64).numpy()
    elif isinstance(features, np.ndarray):
        array = features.astype(np.float64, copy=False)
    else:
        raise TypeError(f"{name} must be a tensor or numpy array of shape (N, d), got {type(features).__name__}")
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, d) (one feature vector per sample), got shape {tuple(array.shape)}")
    if array.shape[0] < min_samples:
        raise ValueError(f"{name} has {array.shape[0]} samples; at least {min_samples} are needed")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(f"{name} contains NaN or infinite values (in {bad} of {array.shape[0]} samples)")
    return array


def _check_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same feature dimension, got {a.shape[1]} and {b.shape[1]}")


def _warn_rank(n: int, dim: int, name: str) -> None:
    if n <= dim:
        warnings.warn(f"{name} has {n} samples in {dim} dimensions: its covariance has rank at most {n - 1} < {dim}, "
                      f"so the Frechet distance is strongly biased upward; use more than {dim} samples (ideally several times "
                      f"more) and the same counts whenever numbers are compared", stacklevel=3)


# ---------------------------------------------------------------------------------------- Frechet


def feature_moments(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of features ``(N, d)``, in float64 (N >= 2)."""
    array = _as_features(features, "features")
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = scipy.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_moments(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Frechet (2-Wasserstein) distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (Dowson & Landau 1982; the FID of
    Heusel et al. 2017, eq. 6, in another feature space).

    The trace of the matrix square root is computed by the symmetric eigen route, not by
    ``scipy.linalg.sqrtm`` of the non-symmetric ``S1 S2``: ``S1 S2`` is similar to the symmetric
    positive semi-definite ``M = S1^{1/2} S2 S1^{1/2}``, so ``Tr (S1 S2)^{1/2} = sum_i sqrt(lambda_i(M))``.
    Both symmetric eigendecompositions are stable for singular (rank-deficient) covariances, where
    ``sqrtm`` returns complex or non-finite values and needs an ``eps * I`` offset; eigenvalues that
    rounding makes slightly negative are clipped at 0. Float64 throughout; the result is clipped at
    0 (a squared distance, negative only by rounding).

    Args:
        mu1, mu2: means, shape ``(d,)``.
        sigma1, sigma2: covariances, shape ``(d, d)``, symmetric positive semi-definite.

    Returns:
        The squared Frechet distance (a float).
    """
    mu1, mu2 = (np.asarray(m.detach().cpu() if isinstance(m, Tensor) else m, dtype=np.float64) for m in (mu1, mu2))
    s1, s2 = (np.asarray(s.detach().cpu() if isinstance(s, Tensor) else s, dtype=np.float64) for s in (sigma1, sigma2))
    dim = mu1.shape[0] if mu1.ndim == 1 else -1
    for name, mean in (("mu1", mu1), ("mu2", mu2)):
        if mean.ndim != 1 or mean.shape[0] != dim:
            raise ValueError(f"{name} must have shape ({dim},) like mu1, got shape {mean.shape}")
    for name, cov in (("sigma1", s1), ("sigma2", s2)):
        if cov.shape != (dim, dim):
            raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the means, got shape {cov.shape}")
    for name, x in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    eigenvalues = scipy.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt))


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance_from_moments(a.mean(0), np.atleast_2d(np.cov(a, rowvar=False)),
                                         b.mean(0), np.atleast_2d(np.cov(b, rowvar=False)))


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N_a, d)`` and ``(N_b, d)``.

    Means and unbiased covariances of each set, then :func:`frechet_distance_from_moments`. Each set
    needs at least 2 samples; with ``N <= d`` samples the covariance is singular and the distance is
    strongly biased upward, so a warning is issued (use more than ``d`` samples, ideally several
    times more, and the same counts whenever two numbers are compared).

    Raises:
        ValueError: for non-2-D input, different feature dimensions, fewer than 2 samples, NaN or inf.
    """
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    _check_pair(a, b, ("features_a", "features_b"))
    _warn_rank(a.shape[0], a.shape[1], "features_a")
    _warn_rank(b.shape[0], b.shape[1], "features_b")
    return _frechet(a, b)


# -------------------------------------------------------------------------------------------- KID


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(features_a: ArrayLike, features_b: ArrayLike, subsets: int = 100, subset_size: int | None = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

    ``k(x, y) = (x . y / d + 1)^3``; on each of ``subsets`` random subsets of ``m`` samples drawn
    without replacement from each set, the unbiased estimator (Gretton et al. 2012, eq. 3)::

        MMD^2_u = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2

    Its expectation is 0 when both sets come from the same distribution, so a single estimate can
    be negative; unlike the Frechet distance it has no bias that depends on the sample count.

    Args:
        features_a, features_b: feature sets ``(N_a, d)``, ``(N_b, d)``.
        subsets: number of random subsets.
        subset_size: ``m``; None or larger than the smaller set means the smaller set's size.
        seed: seed of the subset draws (same seed, same number).

    Returns:
        ``(mean, std)`` of the estimates over the subsets.

    Raises:
        ValueError: for bad features (see :func:`frechet_distance`), ``subsets < 1`` or ``subset_size < 2``.
    """
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    _check_pair(a, b, ("features_a", "features_b"))
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be a positive int, got {subsets!r}")
    m = min(a.shape[0], b.shape[0]) if subset_size is None else min(subset_size, a.shape[0], b.shape[0])
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples; subset_size={subset_size!r} with {a.shape[0]} and "
                         f"{b.shape[0]} samples gives {m}")
    rng = np.random.default_rng(seed)
    values = np.array([_mmd2_unbiased(a[rng.choice(a.shape[0], m, replace=False)], b[rng.choice(b.shape[0], m, replace=False)])
                       for _ in range(subsets)])
    return float(values.mean()), float(values.std())


def distances(real_features: ArrayLike, fake_features: ArrayLike, kid_subsets: int = 100, kid_subset_size: int | None = 1000,
              seed: int = 0) -> dict[str, MetricResult]:
    """FD and KID between real and generated features, with their counts: ``{"fd": ..., "kid": ...}``.

    See :func:`frechet_distance` and :func:`kernel_inception_distance` (same arguments).
    """
    real, fake = _as_features(real_features, "real_features"), _as_features(fake_features, "fake_features")
    _check_pair(real, fake, ("real_features", "fake_features"))
    n_real, n_fake, dim = real.shape[0], fake.shape[0], real.shape[1]
    fd = frechet_distance(real, fake)
    kid, kid_std = kernel_inception_distance(real, fake, kid_subsets, kid_subset_size, seed)
    m = min(n_real, n_fake) if kid_subset_size is None else min(kid_subset_size, n_real, n_fake)
    return {"fd": MetricResult("FD", fd, n_real, n_fake, dim),
            "kid": MetricResult("KID", kid, n_real, n_fake, dim, std=kid_std, details=f"{kid_subsets} subsets of {m}")}


# ------------------------------------------------------------------------------------- per class


def _labels(labels: ArrayLike, n: int, name: str) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one label per sample), got shape {tuple(array.shape)}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64)


def class_accuracy(classifier: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor) -> MetricResult:
    """Fraction of ``images`` that ``classifier`` assigns to their ``labels``, overall and per class.

    For class-conditioned samples (the labels the generator was asked for), a high accuracy means
    the samples carry their class (the classification-accuracy score of conditional GANs).

    Args:
        classifier: maps images ``(N, C, H, W)`` to logits ``(N, K)``, e.g. a
            :class:`~normapps.metrics.features.DigitFeatures` (its :meth:`logits` is used) or a module.
        images: ``(N, C, H, W)`` in the classifier's input range.
        labels: ``(N,)`` integer class indices.

    Returns:
        A :class:`MetricResult` "class accuracy" with ``per_class`` accuracies.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor (N, C, H, W), got {getattr(images, 'shape', type(images).__name__)}")
    target = torch.as_tensor(_labels(labels, images.shape[0], "labels"))
    if images.shape[0] == 0:
        raise ValueError("images is empty; class accuracy needs at least one image")
    predict = getattr(classifier, "logits", classifier)
    with torch.inference_mode():
        logits = predict(images)
    if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        raise ValueError(f"the classifier must return logits (N, K) for N = {images.shape[0]} images, got shape {tuple(logits.shape)}")
    correct = (logits.argmax(1).cpu() == target).double()
    per_class = {int(c): float(correct[target == c].mean()) for c in target.unique()}
    balance = np.bincount(target.numpy())
    detail = f"{balance[0]} per class" if balance.size and (balance == balance[0]).all() else f"{len(per_class)} classes"
    return MetricResult("class accuracy", float(correct.mean()), None, images.shape[0], details=detail, per_class=per_class)


def intra_class_frechet_distance(real_features: ArrayLike, real_labels: ArrayLike, fake_features: ArrayLike,
                                 fake_labels: ArrayLike) -> MetricResult:
    """Mean over classes of the Frechet distance between the real and the generated features of each class.

    The intra-class FD of Miyato & Koyama (2018, projection discriminator): a conditional generator
    can match the overall distribution while mixing up classes; this measures each class's fit.
    Classes are those present in both sets; each needs at least 2 samples in each. Per-class counts
    are usually below the feature dimension, which biases every per-class value upward: compare only
    numbers computed with the same counts (one warning is issued, not one per class).

    Returns:
        A :class:`MetricResult` "intra-class FD" whose ``per_class`` holds each class's distance and
        whose counts are the totals over the classes used.
    """
    real, fake = _as_features(real_features, "real_features"), _as_features(fake_features, "fake_features")
    _check_pair(real, fake, ("real_features", "fake_features"))
    y_real, y_fake = _labels(real_labels, real.shape[0], "real_labels"), _labels(fake_labels, fake.shape[0], "fake_labels")
    classes = sorted(set(np.unique(y_real).tolist()) & set(np.unique(y_fake).tolist()))
    too_few = [c for c in classes if min((y_real == c).sum(), (y_fake == c).sum()) < 2]
    if not classes or too_few:
        raise ValueError(f"intra-class FD needs at least 2 real and 2 generated samples of each shared class; "
                         f"shared classes {classes}, too few samples in {too_few}")
    per_class = {c: _frechet(real[y_real == c], fake[y_fake == c]) for c in classes}
    smallest = min(min((y_real == c).sum(), (y_fake == c).sum()) for c in classes)
    if smallest <= real.shape[1]:
        warnings.warn(f"intra-class FD with as few as {smallest} samples per class in {real.shape[1]} dimensions: every "
                      f"per-class distance is biased upward; compare only numbers computed with the same counts", stacklevel=2)
    n_real = int(sum((y_real == c).sum() for c in classes))
    n_fake = int(sum((y_fake == c).sum() for c in classes))
    return MetricResult("intra-class FD", float(math.fsum(per_class.values()) / len(classes)), n_real, n_fake, real.shape[1],
                        details=f"{len(classes)} classes", per_class=per_class)
