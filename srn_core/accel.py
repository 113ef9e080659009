"""The one place that knows about optional accelerators (tiny-cuda-nn); nothing here is ever required.

``tinycudann`` raises at import time on a machine without CUDA and has no CPU build, so it is imported
lazily, only when CUDA is present, and any failure simply means "not available": every field has a
pure-PyTorch path with the same parameters and the same math.
"""

from __future__ import annotations

from typing import Any

import torch

_TCNN: Any = None
_TCNN_CHECKED = False


def tcnn_available() -> bool:
    """True when ``tinycudann`` imports and a CUDA device exists; False on any failure (never raises)."""
    return tcnn_module() is not None


def tcnn_module():
    """The imported ``tinycudann`` module, or ``None`` when it cannot be used here (result cached)."""
    global _TCNN, _TCNN_CHECKED
    if not _TCNN_CHECKED:
        _TCNN_CHECKED = True
        try:
            if torch.cuda.is_available():
                import tinycudann  # noqa: PLC0415 - deliberately lazy: importing it without CUDA raises

                _TCNN = tinycudann
        except Exception:  # ImportError, EnvironmentError, a CUDA/driver mismatch, ...: all mean "no tcnn"
            _TCNN = None
    return _TCNN


def tcnn_encoding(n_input_dims: int, encoding_config: dict):
    """A float32 ``tinycudann.Encoding`` for ``encoding_config``, or ``None`` when tiny-cuda-nn is unavailable.

    The caller owns the parameters: it hands its own flat ``params`` tensor to :func:`tcnn_encode`, so the
    tcnn module is only a kernel launcher and never a second copy of the weights.
    """
    tcnn = tcnn_module()
    if tcnn is None:
        return None
    try:
        return tcnn.Encoding(n_input_dims, encoding_config, dtype=torch.float32)
    except Exception:  # an unsupported config or an old tcnn: fall back to PyTorch
        return None


def tcnn_encode(encoding, inputs01: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Run a tcnn ``encoding`` on inputs in ``[0, 1]`` with the caller's flat float32 ``params`` (differentiable)."""
    # tcnn modules keep their weights in one attribute ``params``; pointing it at ours shares the storage and
    # keeps autograd flowing into the caller's parameter.
    encoding.params = params
    return encoding(inputs01.contiguous()).float()
