"""LightningModules that train and evaluate networks for each task suite."""

from .classification import ClassificationTask, ExperimentResult, MetricHistory, linear_scaled_lr, train_and_test
from .predictions import PredictionWriter
from .training import GradientNormalization, SyncNormalization

__all__ = ["ClassificationTask", "ExperimentResult", "GradientNormalization", "MetricHistory", "PredictionWriter",
           "SyncNormalization", "linear_scaled_lr", "train_and_test"]
