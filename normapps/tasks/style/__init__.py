"""Style transfer: the statistics are the style (survey section 3)."""

from .losses import content_loss, gram_matrix, style_loss_gram, style_loss_moments

__all__ = ["content_loss", "gram_matrix", "style_loss_gram", "style_loss_moments"]
