"""Networks whose normalization layers are chosen by name (see :func:`normapps.norm.build`)."""

from .cnn import SmallCNN, build_norm

__all__ = ["SmallCNN", "build_norm"]
