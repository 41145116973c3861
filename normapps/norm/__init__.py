"""normapps.norm: the survey's normalization methods as one library (imports torch only).

Public API::

    available(family=None)      registered method names
    describe(name)              NormInfo: family, partition, operation, recovery, paper, year
    signature(name)             the keyword arguments build(name, C, **kw) accepts
    build(name, C, **kw)        a layer for (N, C) / (N, C, *spatial) input
    Normalize(partition, operation, recovery, num_features=C)   compose a new method from parts
    convert(model, name, **kw)  swap a model's normalization layers
    fold(model)                 inference copy with BN folded into the preceding conv/linear
    capture(model, batches)     per-layer input statistics
    recalibrate(model, batches, mode="exact")   AdaBN / precise BN
    use_batch_stats(model, prior=None)          test-batch statistics, optionally mixed with the source
    weight.apply(model, "ws")   weight normalization on every conv/linear (parametrizations)
    gradient.apply(model, "gc") gradient normalization for any optimizer (post-accumulate-grad hooks)
"""

from . import activation, conditional, functional, gradient, weight, whitening  # noqa: F401  (registers the methods)
from .framework import (
    L1,
    RMS,
    Affine,
    Batch,
    BatchGroup,
    Center,
    ConditionalRecovery,
    Group,
    Instance,
    Layer,
    NoRecovery,
    Normalize,
    Operation,
    Partition,
    Position,
    Scale,
    Standardize,
)
from .registry import NormInfo, available, build, describe, register, signature
from .stats import BatchStatsNorm, LayerStats, capture, recalibrate, source_prior, use_batch_stats
from .surgery import ConversionReport, FoldReport, convert, fold

__all__ = [
    "weight", "gradient", "whitening",
    "available", "describe", "signature", "build", "register", "NormInfo", "Normalize", "convert", "fold", "capture",
    "recalibrate", "use_batch_stats", "source_prior", "LayerStats", "BatchStatsNorm", "ConversionReport",
    "FoldReport",
    "Partition", "Batch", "Layer", "Instance", "Group", "Position", "BatchGroup",
    "Operation", "Standardize", "Scale", "Center", "RMS", "L1", "Affine", "NoRecovery", "ConditionalRecovery",
]
