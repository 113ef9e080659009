"""The one place that knows about optional accelerators (tiny-cuda-nn); nothing here is ever required.

``tinycudann`` raises at import time on a machine without CUDA and has no CPU build, so it is imported
lazily, only when CUDA is present. Every field has a pure-PyTorch path with the same parameters and the
same math: without CUDA, or without tiny-cuda-nn installed, that path is simply the one used. A tiny-cuda-nn
that is installed but fails (a broken build, a driver mismatch, an unsupported encoding) also falls back to
PyTorch, and says so once per process with a ``RuntimeWarning``: the results are the same, the speed is not.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

_TCNN: Any = None
_TCNN_CHECKED = False
_WARNED = False


def tcnn_available() -> bool:
    """True when ``tinycudann`` imports and a CUDA device exists; False otherwise (never raises)."""
    return tcnn_module() is not None


def tcnn_module():
    """The imported ``tinycudann`` module, or ``None`` when it cannot be used here (result cached)."""
    global _TCNN, _TCNN_CHECKED
    if not _TCNN_CHECKED:
        _TCNN_CHECKED = True
        _TCNN = None
        if torch.cuda.is_available():
            try:
                import tinycudann  # noqa: PLC0415 - deliberately lazy: importing it without CUDA raises

                _TCNN = tinycudann
            except ModuleNotFoundError as exc:
                if exc.name != "tinycudann":  # installed, but a part of it is missing
                    _warn_fallback("import", exc)
            except Exception as exc:  # noqa: BLE001 - ImportError, OSError, a CUDA/driver mismatch, ...
                _warn_fallback("import", exc)
    return _TCNN


def tcnn_encoding(n_input_dims: int, encoding_config: dict):
    """A float32 ``tinycudann.Encoding`` for ``encoding_config``, or ``None`` when tiny-cuda-nn is unavailable
    or cannot build it (then the caller runs its PyTorch path; a failure is reported once, see the module).

    The caller owns the parameters: it hands its own flat ``params`` tensor to :func:`tcnn_encode`, so the
    tcnn module is only a kernel launcher and never a second copy of the weights.
    """
    tcnn = tcnn_module()
    if tcnn is None:
        return None
    try:
        return tcnn.Encoding(n_input_dims, encoding_config, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - an unsupported config, an old tcnn, a kernel failure
        _warn_fallback(f"encoding {encoding_config.get('otype', '?')}", exc)
        return None


def tcnn_encode(encoding, inputs01: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Run a tcnn ``encoding`` on inputs in ``[0, 1]`` with the caller's flat float32 ``params`` (differentiable)."""
    # tcnn modules keep their weights in one attribute ``params``; pointing it at ours shares the storage and
    # keeps autograd flowing into the caller's parameter.
    encoding.params = params
    return encoding(inputs01.contiguous()).float()


def _warn_fallback(what: str, exc: BaseException) -> None:
    """Say once per process that tiny-cuda-nn failed and PyTorch runs instead."""
    global _WARNED
    if _WARNED:
        return
    _WARNED = True
    detail = str(exc).splitlines()[0] if str(exc) else ""
    warnings.warn(f"tiny-cuda-nn {what} failed ({type(exc).__name__}{': ' + detail if detail else ''}); "
                  f"using the PyTorch implementation instead (same results, slower).", RuntimeWarning, stacklevel=3)
