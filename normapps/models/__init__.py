"""Networks whose normalization layers are chosen by name (see :func:`normapps.norm.build`)."""

from .cnn import SmallCNN, build_norm, check_norm_name, default_groups, takes_groups

__all__ = ["SmallCNN", "build_norm", "check_norm_name", "default_groups", "takes_groups"]
