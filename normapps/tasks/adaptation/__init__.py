"""Domain adaptation by editing normalization statistics (survey section 2).

Test-time and post-hoc methods for any trained classifier (:mod:`.methods`)::

    adapt(model, "adabn", target_batches)            adapted deep copy (source, adabn, adabn_ema, norm, prior, tent)
    predict_stream(model, "tent", target_batches)    logits per batch, adapting online (source, norm, prior, tent)
    METHODS                                          name -> Method (summary, paper, needs, stage)
    statistics_shift(model, target_stats)            per BatchNorm layer: how far target statistics lie from the source (:mod:`.shift`)

Training on labelled source and unlabelled target data (:mod:`.lightning`)::

    DSBNTask, TransNormTask, DomainPairDataModule

From a config, by data set names (:mod:`.data`, :mod:`.test_time`)::

    DomainDataModule(source, target, ...)                      labelled source, target test (paired for DSBN / TransNorm)
    TestTimeAdaptationTask(checkpoint, method, options)        a test-time method on a ClassificationTask checkpoint

and their layers: :class:`DomainSpecificBatchNorm` (:mod:`.dsbn`), :class:`TransNorm` (:mod:`.transnorm`),
with :func:`set_domain` / :func:`use_domain` choosing :data:`SOURCE` or :data:`TARGET` statistics.
"""

from .data import DomainDataModule
from .domains import SOURCE, TARGET, DomainSpecificLayer, set_domain, use_domain
from .dsbn import DomainSpecificBatchNorm, convert_to_dsbn, export_domain
from .lightning import DomainAdaptationTask, DomainPairDataModule, DSBNTask, TransNormTask
from .methods import METHODS, Method, SourcePriorPerBatch, adapt, applicable_methods, predict_stream
from .shift import statistics_shift
from .tent import Tent, softmax_entropy
from .test_time import TestTimeAdaptationTask
from .transnorm import TransNorm, convert_to_transnorm, paired, transferability_alpha

__all__ = [
    "METHODS", "Method", "adapt", "predict_stream", "applicable_methods", "SourcePriorPerBatch", "statistics_shift",
    "Tent", "softmax_entropy",
    "SOURCE", "TARGET", "DomainSpecificLayer", "set_domain", "use_domain",
    "DomainSpecificBatchNorm", "convert_to_dsbn", "export_domain",
    "TransNorm", "convert_to_transnorm", "paired", "transferability_alpha",
    "DomainAdaptationTask", "DomainPairDataModule", "DSBNTask", "TransNormTask",
    "DomainDataModule", "TestTimeAdaptationTask",
]
