"""Chunked evaluation: every model query in the project goes through here, with memory bounded by a chunk size.

On the CPU, fields the fused kernel supports (APMGSRN and ensembles of them, :mod:`srn_core.kernels`) are
evaluated by it: the same values to float32 rounding (about 1e-6 of the value range), about 10x faster. Every
function here takes ``fused=False`` for the PyTorch reference path (``field(points)`` itself); the environment
variable ``SRN_FUSED=0`` turns the kernel off everywhere.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .geometry import ImageGeometry, check_extent, extent_points
from .kernels import fused_evaluator

DEFAULT_CHUNK_SIZE = 1 << 16
OUTSIDE_POLICIES = ("clamp", "nan", "fill")


def evaluate(field: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
             chunk_size: int = DEFAULT_CHUNK_SIZE, fused: bool = True) -> torch.Tensor:
    """``field(points)`` for model-cube points ``(N, 3)``, in chunks of ``chunk_size`` rows, on the field's device.

    Returns a float32 tensor ``(N,)`` on the device of ``points``. ``fused`` (default) evaluates CPU float32
    points with the fused kernel where it supports ``field`` (see the module docstring); ``False`` always calls
    ``field`` itself.
    """
    chunk_size = check_chunk_size(chunk_size)
    device = _device_of(field, points.device)
    call = _evaluator(field, device, fused and points.dtype == torch.float32)
    out = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    with torch.inference_mode():
        for start in range(0, points.shape[0], chunk_size):
            stop = min(start + chunk_size, points.shape[0])
            out[start:stop] = call(points[start:stop].to(device)).to(out.device, torch.float32)
    return out


def evaluate_image(field: Callable[[torch.Tensor], torch.Tensor], geometry: ImageGeometry,
                   model_bounds: Sequence[float], extent: Sequence[int] | None = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, outside: str = "clamp",
                   fill_value: float = 0.0, fused: bool = True) -> np.ndarray:
    """Values of ``field`` at the points of ``extent`` of ``geometry`` as float32 ``(nz, ny, nx)`` (x fastest).

    ``model_bounds`` is the world box that maps to the model cube. Points are generated chunk by chunk
    (:func:`image_chunks`), so peak memory is the output plus a few ``chunk_size`` rows whatever the image size.
    Points outside the model box follow ``outside``: ``"clamp"`` evaluates at the nearest point of the box
    (border extension, finite everywhere), ``"nan"`` gives NaN, ``"fill"`` gives ``fill_value``. ``fused`` as in
    :func:`evaluate`.
    """
    e = geometry.whole_extent if extent is None else check_extent(extent)
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    out = np.empty(shape, dtype=np.float32)
    flat = torch.from_numpy(out.reshape(-1))  # a view: chunks land in ``out`` itself
    start = 0
    for values in image_chunks(field, geometry, model_bounds, e, chunk_size, outside, fill_value, fused):
        flat[start:start + values.shape[0]] = values
        start += values.shape[0]
    return out


def image_chunks(field: Callable[[torch.Tensor], torch.Tensor], geometry: ImageGeometry,
                 model_bounds: Sequence[float], extent: Sequence[int] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, outside: str = "clamp",
                 fill_value: float = 0.0, fused: bool = True) -> Iterator[torch.Tensor]:
    """The values of :func:`evaluate_image` as they are evaluated: float32 CPU tensors ``(m,)`` of at most
    ``chunk_size`` points each, in the image's flat order (x fastest). A writer that stores each piece as it
    comes (``srn resample`` to ``.npy``) holds O(``chunk_size``) whatever the output size. ``fused`` as in
    :func:`evaluate`."""
    chunk_size = check_chunk_size(chunk_size)
    if outside not in OUTSIDE_POLICIES:
        raise ValueError(f"outside must be one of {OUTSIDE_POLICIES}, got {outside!r}.")
    e = geometry.whole_extent if extent is None else check_extent(extent)
    n = (e[5] - e[4] + 1) * (e[3] - e[2] + 1) * (e[1] - e[0] + 1)
    device = _device_of(field, torch.device("cpu"))
    call = _evaluator(field, device, fused)
    tol = 1e-6  # points on the box's faces count as inside despite rounding
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        with torch.inference_mode():  # per chunk: the mode must not leak to the consumer between pieces
            pts = extent_points(geometry, e, model_bounds, start, stop)
            inside = None
            if outside != "clamp":
                inside = (pts.abs() <= 1 + tol).all(dim=1)
            values = call(pts.clamp_(-1.0, 1.0).to(device)).to("cpu", torch.float32)
            if inside is not None:
                values = torch.where(inside, values, torch.tensor(np.nan if outside == "nan" else fill_value))
        yield values


def check_chunk_size(chunk_size: int) -> int:
    if int(chunk_size) != chunk_size or int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    return int(chunk_size)


def _evaluator(field, device: torch.device, fused: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fused kernel for ``field`` when asked for, on the CPU and supported; ``field`` itself otherwise."""
    if fused and device.type == "cpu":
        kernel = fused_evaluator(field)
        if kernel is not None:
            return kernel
    return field


def _device_of(field, default: torch.device) -> torch.device:
    params = getattr(field, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return default
