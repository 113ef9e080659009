"""Macro-cells: a coarse grid of the field's value ranges, and per transfer function the most opaque a cell can be.

The volume's voxel lattice is cut into cells of ``cell_size`` voxels per edge; cell ``c`` covers voxel points
``c*C ... (c+1)*C`` *inclusive* (neighbours share a face: the one-sample apron), so every sample the trilinear
raw-data interpolant takes inside a cell is bounded by the cell's range exactly. A neural field is bounded only
where it was sampled, so its ranges are widened by ``margin`` (a fraction of the value range). Ranges are built
once per field (:func:`macrocells_for` caches them); the per-transfer-function max opacity costs microseconds.
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

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to keep beside a model in its file (``NeuralVolume.save(extra_tensors=...)``)."""
        return {"macrocells.vmin": self.vmin.contiguous(), "macrocells.vmax": self.vmax.contiguous(),
                "macrocells.info": torch.tensor([self.cell_size, *self.dims], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "MacroCells | None":
        if "macrocells.vmin" not in tensors:
            return None
        info = tensors["macrocells.info"].tolist()
        return cls(tensors["macrocells.vmin"].float(), tensors["macrocells.vmax"].float(), int(info[0]),
                   tuple(int(v) for v in info[1:4]))


def cell_counts(dims, cell_size: int) -> tuple[int, int, int]:
    """Cells per axis ``(cx, cy, cz)`` covering ``dims`` points (each cell spans ``cell_size`` voxel gaps)."""
    return tuple(max(1, math.ceil((int(d) - 1) / cell_size)) for d in dims)  # type: ignore[return-value]


def build_macrocells(volume: RenderVolume, cell_size: int = DEFAULT_CELL_SIZE, margin: float | None = None,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> MacroCells:
    """Evaluate the field on every voxel point, slab by slab of cells, and keep each cell's min and max.

    ``margin`` widens every range by that fraction of the field's overall range (default: 0 for raw grids,
    :data:`DEFAULT_MARGIN` for anything else), covering what a network does between the points it was sampled at.
    Memory stays at one slab of ``cell_size + 1`` voxel slices.
    """
    import time

    if int(cell_size) != cell_size or cell_size < 1:
        raise ValueError(f"cell_size must be a positive integer of voxels, got {cell_size!r}.")
    chunk_size = check_chunk_size(chunk_size)
    start = time.perf_counter()
    nx, ny, nz = volume.dims
    cx, cy, cz = cell_counts(volume.dims, cell_size)
    c = int(cell_size)
    xs = torch.linspace(-1.0, 1.0, nx)
    ys = torch.linspace(-1.0, 1.0, ny)
    zs = torch.linspace(-1.0, 1.0, nz)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    plane = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (ny*nx, 2), x fastest
    vmin = torch.empty(cz, cy, cx)
    vmax = torch.empty(cz, cy, cx)
    samples = 0
    for k in range(cz):
        z0, z1 = k * c, min((k + 1) * c, nz - 1)
        slab = []
        for z in range(z0, z1 + 1):
            pts = torch.cat([plane, zs[z].expand(plane.shape[0], 1)], dim=1)
            slab.append(evaluate(volume.field, pts, chunk_size).reshape(ny, nx))
            samples += pts.shape[0]
        slab_t = torch.stack(slab)[None, None]  # (1, 1, z, ny, nx)
        # Pad by replication so every cell window is full; max-pool windows of C+1 points with stride C give the
        # inclusive (apron) ranges.
        pad = (0, cx * c + 1 - nx, 0, cy * c + 1 - ny, 0, c + 1 - slab_t.shape[2])
        slab_t = F.pad(slab_t, pad, mode="replicate")
        hi = F.max_pool3d(slab_t, kernel_size=c + 1, stride=c)[0, 0]
        lo = -F.max_pool3d(-slab_t, kernel_size=c + 1, stride=c)[0, 0]
        vmax[k], vmin[k] = hi[0], lo[0]
    if margin is None:
        margin = 0.0 if getattr(volume.field, "volume", None) is not None else DEFAULT_MARGIN
    if margin < 0:
        raise ValueError(f"macro-cell margin must be a non-negative fraction of the value range, got {margin!r}.")
    span = float(vmax.max() - vmin.min())
    vmin -= margin * span
    vmax += margin * span
    return MacroCells(vmin, vmax, c, volume.dims, time.perf_counter() - start, samples)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def macrocells_for(volume: RenderVolume, cell_size: int = DEFAULT_CELL_SIZE, margin: float | None = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> MacroCells:
    """:func:`build_macrocells`, cached per field object and invalidated when its parameters change."""
    key = (volume.dims, volume.bounds, int(cell_size), margin, _parameter_version(volume.field))
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
