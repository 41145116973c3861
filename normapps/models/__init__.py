"""Networks whose normalization layers are chosen by name (see :func:`normapps.norm.build`)."""

from .cnn import SmallCNN, build_norm, check_norm_name, default_groups, takes_groups
from .transformer import TransformerNet
from .vgg import VGG19_LAYERS, VGGDecoder, VGGEncoder, find_torchvision_weights

__all__ = [
    "VGG19_LAYERS", "SmallCNN", "TransformerNet", "VGGDecoder", "VGGEncoder", "build_norm", "check_norm_name", "default_groups",
    "find_torchvision_weights", "takes_groups",
]
