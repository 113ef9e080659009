"""Choosing the torch device a model runs on."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is a clear error.

    An unknown device type raises torch's own ``RuntimeError`` (callers that name the setting, such as the VTK
    algorithms' ``Device`` property, reword it).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but this machine has no CUDA device; "
                         f"use 'cpu' or 'auto'.")
    return dev
