"""Metrics that need no download: distances between real and generated images in the feature space
of the project's own digit classifier.

* :mod:`~normapps.metrics.generative`: Frechet distance, kernel inception distance, class accuracy,
  intra-class Frechet distance, each reported with its sample counts (:class:`MetricResult`).
* :mod:`~normapps.metrics.features`: the shipped digit classifier (``checkpoints/digit_features.pt``)
  as a feature extractor; :mod:`~normapps.metrics.train` trains it.
"""

from .features import DigitFeatures, DigitNet, load_digit_features, save_digit_features
from .generative import (
    MetricResult,
    class_accuracy,
    distances,
    feature_moments,
    frechet_distance,
    frechet_distance_from_moments,
    intra_class_frechet_distance,
    kernel_inception_distance,
)

__all__ = [
    "DigitFeatures", "DigitNet", "MetricResult", "class_accuracy", "distances", "feature_moments", "frechet_distance",
    "frechet_distance_from_moments", "intra_class_frechet_distance", "kernel_inception_distance", "load_digit_features",
    "save_digit_features",
]
