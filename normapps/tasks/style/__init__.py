"""Style transfer: the statistics are the style (survey section 3)."""

from .checkpoints import (
    FLOAT16_TOLERANCE,
    METHODS,
    SHIPPED,
    Stylizer,
    checkpoint_path,
    export_from_lightning,
    load_encoder,
    load_stylizer,
    save_stylizer,
)
from .lightning import AdaINTask, CINTask, FastStyleTask, StyleTask, WCTDecoderTask, total_variation
from .losses import content_loss, gram_matrix, style_loss_gram, style_loss_moments
from .transfer import WCT_LEVELS, AdaINStylizer, WCTStylizer, adain_target, color_transfer, preserve_color, wct_target

__all__ = [
    "FLOAT16_TOLERANCE", "METHODS", "SHIPPED", "WCT_LEVELS", "AdaINStylizer", "AdaINTask", "CINTask", "FastStyleTask",
    "StyleTask", "Stylizer", "WCTDecoderTask", "WCTStylizer", "adain_target", "checkpoint_path", "color_transfer",
    "content_loss", "export_from_lightning", "gram_matrix", "load_encoder", "load_stylizer", "preserve_color",
    "save_stylizer", "style_loss_gram", "style_loss_moments", "total_variation", "wct_target",
]
