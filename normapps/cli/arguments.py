"""Argument types shared by the task commands."""

from __future__ import annotations

import argparse

import torch


def torch_device(text: str) -> str:
    """An ``argparse`` type: a torch device name that this machine has (``cpu``, ``cuda:0``, ...)."""
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu or cuda:0, got {text!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device; use cpu")
    return text
