"""Data sets that ship with installed packages, domain-shift data generated from them, and Lightning datamodules."""

from .corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS, corrupt
from .digits import DigitsDataModule
from .domains import available_domains, default_cache_dir, load_domain
from .syndigits import font_split

__all__ = [
    "CORRUPTIONS",
    "HELD_OUT_CORRUPTIONS",
    "DigitsDataModule",
    "available_domains",
    "corrupt",
    "default_cache_dir",
    "font_split",
    "load_domain",
]
