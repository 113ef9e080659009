"""Macro-cells: a coarse grid of the field's value ranges, and per transfer function the most opaque a cell can be.

The volume's voxel lattice is cut into cells of ``cell_size`` voxels per edge; cell ``c`` covers voxel points
``c*C ... (c+1)*C`` *inclusive* (neighbours share a face), so every sample the trilinear raw-data interpolant
takes inside a cell is bounded by the cell's range exactly. A neural field is bounded only where it was
sampled: it is sampled on a coarser lattice, each cell also takes the lattice points just outside it (an
apron), and its ranges are widened by ``margin`` (a fraction of the value range). Ranges are built once per
field (:func:`macrocells_for` caches them); the per-transfer-function max opacity costs microseconds.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..evaluate import DEFAULT_CHUNK_SIZE, check_chunk_size, evaluate
from .transfer_function import TransferTable
from .volume import RenderVolume

DEFAULT_CELL_SIZE = 16
DEFAULT_MARGIN = 0.01


@dataclass
class MacroCells:
    """Value ranges ``vmin``/``vmax`` (float32, ``(cz, cy, cx)``) of cells of ``cell_size`` voxels."""

    vmin: torch.Tensor
    vmax: torch.Tensor
    cell_size: int
    dims: tuple[int, int, int]
    """Points per axis of the volume the cells tile."""
    seconds: float = 0.0
    """Time it took to build them."""
    samples: int = 0
    """Field evaluations it took to build them."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.vmin.shape)  # type: ignore[return-value]

    def max_opacity(self, table: TransferTable) -> torch.Tensor:
        """``(cz, cy, cx)`` upper bound of the table's opacity over each cell's range (0 means skippable)."""
        flat = table.max_opacity(self.vmin.reshape(-1), self.vmax.reshape(-1))
        return flat.reshape(self.shape).float()


def cell_counts(dims, cell_size: int) -> tuple[int, int, int]:
    """Cells per axis ``(cx, cy, cz)`` covering ``dims`` points (each cell spans ``cell_size`` voxel gaps)."""
    return tuple(max(1, math.ceil((int(d) - 1) / cell_size)) for d in dims)  # type: ignore[return-value]


def build_macrocells(volume: RenderVolume, cell_size: int = DEFAULT_CELL_SIZE, margin: float | None = None,
                     chunk_size: int = DEFAULT_CHUNK_SIZE, stride: int | None = None) -> MacroCells:
    """Evaluate the field on a lattice of voxel points and keep each cell's min and max.

    Raw grids (:attr:`~.volume.RenderVolume.is_raw_grid`) are sampled at every voxel and their ranges are exact.
    Any other field is sampled every ``stride`` voxels (default 2 for cells of 8 voxels or more: an eighth of the
    evaluations of the full grid; 1 for smaller cells, where a 2-voxel apron would cover too much), each
    cell also takes the samples one lattice step outside it (an apron covering what lies between samples), and
    every range is widened by ``margin`` (default :data:`DEFAULT_MARGIN`) of the overall value range.
    Memory stays at a few lattice planes.
    """
    import time

    if int(cell_size) != cell_size or cell_size < 1:
        raise ValueError(f"cell_size must be a positive integer of voxels, got {cell_size!r}.")
    chunk_size = check_chunk_size(chunk_size)
    exact = volume.is_raw_grid
    if stride is None:
        stride = 2 if not exact and cell_size >= 8 and cell_size % 2 == 0 else 1
    if int(stride) != stride or stride < 1 or cell_size % stride:
        raise ValueError(f"macro-cell stride must be a positive divisor of cell_size {cell_size}, got {stride!r}.")
    if margin is None:
        margin = 0.0 if exact else DEFAULT_MARGIN
    if margin < 0:
        raise ValueError(f"macro-cell margin must be a non-negative fraction of the value range, got {margin!r}.")
    start = time.perf_counter()
    c, s = int(cell_size), int(stride)
    per = c // s  # lattice steps per cell
    apron = 0 if exact and s == 1 else 1
    cells = cell_counts(volume.dims, c)  # (cx, cy, cz)
    # Lattice coordinates per axis: voxel 0, s, 2s, ... up to the last cell's far face, clamped to the volume.
    axes = []
    for a in range(3):
        idx = torch.arange(0, cells[a] * per + 1) * s
        idx = idx.clamp(max=volume.dims[a] - 1).double()
        axes.append((idx * (2.0 / (volume.dims[a] - 1)) - 1.0).float())
    xs, ys, zs = axes
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    plane = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    planes: dict[int, torch.Tensor] = {}
    samples = 0

    def lattice_plane(k: int) -> torch.Tensor:
        nonlocal samples
        k = min(max(k, 0), len(zs) - 1)  # the apron beyond the volume repeats its face
        if k not in planes:
            pts = torch.cat([plane, zs[k].expand(plane.shape[0], 1)], dim=1)
            planes[k] = evaluate(volume.field, pts, chunk_size).reshape(len(ys), len(xs))
            samples += pts.shape[0]
        return planes[k]

    cx, cy, cz = cells
    vmin = torch.empty(cz, cy, cx)
    vmax = torch.empty(cz, cy, cx)
    window = per + 1 + 2 * apron
    for k in range(cz):
        first = k * per - apron
        slab = torch.stack([lattice_plane(first + i) for i in range(window)])[None, None]
        for old in [key for key in planes if key < first + per]:
            del planes[old]  # the next layer starts at first + per
        if apron:
            slab = F.pad(slab, (apron, apron, apron, apron, 0, 0), mode="replicate")
        # windows of per + 1 (+ apron) lattice points with stride per: each cell's points, shared faces included
        hi = F.max_pool3d(slab, kernel_size=window, stride=per)[0, 0]
        lo = -F.max_pool3d(-slab, kernel_size=window, stride=per)[0, 0]
        vmax[k], vmin[k] = hi[0], lo[0]
    span = float(vmax.max() - vmin.min())
    vmin -= margin * span
    vmax += margin * span
    return MacroCells(vmin, vmax, c, volume.dims, time.perf_counter() - start, samples)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def macrocells_for(volume: RenderVolume, cell_size: int = DEFAULT_CELL_SIZE, margin: float | None = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> MacroCells:
    """:func:`build_macrocells`, cached per field object and invalidated when its parameters change."""
    key = (volume.dims, volume.bounds, volume.is_raw_grid, int(cell_size), margin, _parameter_version(volume.field))
    try:
        per_field = _CACHE.setdefault(volume.field, {})
    except TypeError:  # a field that cannot be weakly referenced: build every time
        return build_macrocells(volume, cell_size, margin, chunk_size)
    if key not in per_field:
        per_field.clear()  # older versions of this field's weights are stale
        per_field[key] = build_macrocells(volume, cell_size, margin, chunk_size)
    return per_field[key]


def _parameter_version(field) -> tuple:
    params = getattr(field, "parameters", None)
    if params is None:
        return ()
    return tuple((id(p), p._version) for p in params())
