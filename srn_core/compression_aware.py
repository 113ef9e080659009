"""Compression-aware training: grid penalties and quantization-aware fine-tuning (the hooks of :mod:`.training`).

* :func:`grid_penalty`: AMGSRN++-style regularisers on the feature grids, added to the reconstruction loss.
  Total variation (mean absolute difference between neighbouring cells along each grid axis, summed over the
  three axes) makes grids smoother, which a predictive coder (SZ3) turns into fewer bytes; L1 (mean absolute
  value) pulls unused cells to zero, which narrows the code histogram the lossless stage (LZMA) codes. Both are
  means, so a weight means the same at every grid size.
* :func:`quantized_forward`: the field evaluated with every grid and decoder tensor replaced by its
  :func:`~srn_core.compression.fake_quantize` image at the file's bits (straight-through gradient), so the last
  steps of training optimise the model the file will hold rather than the float32 one. The float32 parameters
  keep receiving the gradient; APMGSRN's transforms and the value range stay exact, as in the file.

The error-bound search for SZ3 files lives in :mod:`.compression_search` (``loosest_setting``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .compression import Compression, fake_quantize, tensor_roles


def total_variation(grid: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a grid ``[..., D, H, W]``: the mean of ``|g[i+1] - g[i]|`` along each of
    the last three axes, summed over the axes (an axis with one cell adds 0)."""
    total = grid.new_zeros(())
    for axis in (-3, -2, -1):
        if grid.shape[axis] > 1:
            total = total + grid.diff(dim=axis).abs().mean()
    return total


def l1_sparsity(grid: torch.Tensor) -> torch.Tensor:
    """Mean absolute value of the grid's cells."""
    return grid.abs().mean()


def grid_tensors(field: nn.Module) -> list[torch.Tensor]:
    """The field's feature-grid / hash-table parameters (those a compressed file codes with the grid bits)."""
    roles = tensor_roles(field)
    return [p for name, p in field.named_parameters() if roles.get(name) == "grid"]


def grid_penalty(field: nn.Module, tv_weight: float = 0.0, l1_weight: float = 0.0) -> torch.Tensor | None:
    """``tv_weight * TV + l1_weight * L1`` summed over the field's grids; ``None`` when both weights are 0.

    Total variation applies to 3-D grids (``[M, C, D, H, W]`` and the like) only: a hash table's neighbours in
    memory are not neighbours in space.
    """
    if not (tv_weight or l1_weight):
        return None
    penalty = None
    for grid in grid_tensors(field):
        term = grid.new_zeros(())
        if tv_weight and grid.dim() >= 4:
            term = term + tv_weight * total_variation(grid)
        if l1_weight:
            term = term + l1_weight * l1_sparsity(grid)
        penalty = term if penalty is None else penalty + term
    return penalty


def channel_dims(shape, role: str) -> int:
    """Leading axes that index :func:`~srn_core.compression.quantize`'s channels (its ``channel_count``):
    grid ``[M, C, ...]`` 2, a 1-D hash table 0; a weight matrix 1 (one per output row), a bias 0."""
    if role == "grid":
        return len(shape) - 3 if len(shape) >= 4 else 0
    return 1 if len(shape) >= 2 else 0


def quantized_parameters(field: nn.Module, compression: Compression) -> dict[str, torch.Tensor]:
    """``{parameter name: its fake-quantized image}`` for every grid and decoder parameter.

    Grids are quantized at ``compression.bits`` unless the file stores them with SZ3 (whose error is not a
    uniform grid: they stay float32 here); decoder weights at ``compression.decoder_bits``. Exact tensors are
    left out, so they are used as they are.
    """
    roles = tensor_roles(field)
    out: dict[str, torch.Tensor] = {}
    for name, p in field.named_parameters():
        role = roles.get(name)
        if role == "grid" and compression.codec != "sz3":
            out[name] = fake_quantize(p, compression.bits, channel_dims(p.shape, role))
        elif role == "weights":
            out[name] = fake_quantize(p, compression.decoder_bits, channel_dims(p.shape, role))
    return out


class _Normalized(nn.Module):
    """A module whose ``forward`` is the field's :meth:`normalized`, so :func:`torch.func.functional_call` can
    substitute parameters (names gain the prefix ``field.``)."""

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field

    def forward(self, points: torch.Tensor, t=None) -> torch.Tensor:
        if t is None:
            return self.field.normalized(points)
        if isinstance(t, (list, tuple)):  # a time-varying field's batch of times, points (S, n, 3)
            return self.field.normalized_times(points, t)
        return self.field.normalized_at(points, t)


def quantized_forward(field: nn.Module, points: torch.Tensor, compression: Compression,
                      t=None) -> torch.Tensor:
    """``field.normalized(points)`` (a time-varying field's ``normalized_at(points, t)``, or ``normalized_times``
    for a list of times) computed with the parameters as ``compression`` stores them (straight-through gradient
    to the float32 parameters)."""
    params = {f"field.{k}": v for k, v in quantized_parameters(field, compression).items()}
    return functional_call(_Normalized(field), params, (points, t), strict=False)
