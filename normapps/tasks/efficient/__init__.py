"""Efficient models from normalization: network slimming (prune by BN gamma), recalibration, folding and export,
slimmable networks with switchable BN and universally slimmable networks."""

from .checkpoints import PrunedFile, load_model, save_model
from .counting import count, count_parameters
from .export import export_onnx, export_program, load_onnx, load_program
from .slimmable import (
    SlimmableCNN,
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm2d,
    UniversalBatchNorm2d,
    calibrate,
    export_width,
    get_width,
    set_width,
    use_width,
)
from .slimmable_task import SlimmableTask
from .slimming import (
    BNSparsity,
    PrunedLayer,
    PruneGroup,
    PruneReport,
    finetune,
    global_threshold,
    init_bn_gamma,
    prunable_groups,
    prune,
    recalibrate_pruned,
    remove_channels,
    sparsity_penalty,
)

__all__ = [
    "BNSparsity", "PruneGroup", "PruneReport", "PrunedFile", "PrunedLayer", "count", "count_parameters", "export_onnx", "load_onnx",
    "export_program", "finetune", "global_threshold", "init_bn_gamma", "load_model", "load_program", "prunable_groups",
    "prune", "recalibrate_pruned", "remove_channels", "save_model", "sparsity_penalty",
    "SlimmableCNN", "SlimmableConv2d", "SlimmableLinear", "SlimmableTask", "SwitchableBatchNorm2d", "UniversalBatchNorm2d",
    "calibrate", "export_width", "get_width", "set_width", "use_width",
]
