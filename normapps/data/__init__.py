"""Data sets that ship with installed packages, data generated from them (domain shift, style images), image file I/O,
and Lightning datamodules."""

from .corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS, corrupt
from .digits import DigitsDataModule
from .domains import available_domains, default_cache_dir, load_domain
from .images import list_images, load_image, load_mask, save_image
from .style import StyleDataModule, content_images, content_names, content_paths, style_image, style_names
from .syndigits import font_split

__all__ = [
    "CORRUPTIONS",
    "HELD_OUT_CORRUPTIONS",
    "DigitsDataModule",
    "StyleDataModule",
    "available_domains",
    "content_images",
    "content_names",
    "content_paths",
    "corrupt",
    "default_cache_dir",
    "font_split",
    "list_images",
    "load_domain",
    "load_image",
    "load_mask",
    "save_image",
    "style_image",
    "style_names",
]
