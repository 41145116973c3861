"""LightningModules that train and evaluate networks for each task suite."""

from .classification import ClassificationTask, ExperimentResult, MetricHistory, linear_scaled_lr, train_and_test
from .predictions import PredictionWriter

__all__ = ["ClassificationTask", "ExperimentResult", "MetricHistory", "PredictionWriter", "linear_scaled_lr", "train_and_test"]
