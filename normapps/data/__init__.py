"""Data sets that ship with installed packages, and Lightning datamodules around them."""

from .digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
