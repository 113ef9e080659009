"""The one owner of index order and coordinate conventions.

Conventions (binding for every layer, see README "Conventions"):

* World coordinates are VTK's: point ``(i, j, k)`` of an image sits at ``origin + (i, j, k) * spacing``;
  flattened point order is x fastest, so a NumPy/torch volume is shaped ``(nz, ny, nx)``.
* ``dims`` are points per axis ``(nx, ny, nz)``; ``bounds`` are ``(xmin, xmax, ymin, ymax, zmin, zmax)``;
  ``extent`` is VTK's inclusive index range ``(i0, i1, j0, j1, k0, k1)``.
* Inside a model, coordinates are normalised to ``[-1, 1]^3`` with corner alignment: the model's world
  ``bounds`` map to the cube's corners, so voxel ``i`` of ``N`` sits at ``-1 + 2 i / (N - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

Bounds = tuple[float, float, float, float, float, float]
Extent = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class ImageGeometry:
    """A VTK image's geometry: ``dims`` points per axis, ``origin`` and ``spacing`` in world units."""

    dims: tuple[int, int, int]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        dims = tuple(int(d) for d in self.dims)
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"dims must be three positive point counts, got {tuple(self.dims)}.")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers, got {tuple(self.spacing)}.")
        origin = tuple(float(o) for o in self.origin)
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise ValueError(f"origin must be three finite numbers, got {tuple(self.origin)}.")
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)

    @classmethod
    def from_bounds(cls, bounds: Sequence[float], dims: Sequence[int]) -> "ImageGeometry":
        """The image with ``dims`` points whose corner points lie on ``bounds`` (an axis with one point sits at its min)."""
        b = check_bounds(bounds)
        d = check_dims(dims)
        spacing = tuple((b[2 * a + 1] - b[2 * a]) / (d[a] - 1) if d[a] > 1 else 1.0 for a in range(3))
        spacing = tuple(s if s > 0 else 1.0 for s in spacing)  # a flat axis (min == max) keeps unit spacing
        return cls(d, (b[0], b[2], b[4]), spacing)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The torch/NumPy volume shape ``(nz, ny, nx)``."""
        return self.dims[2], self.dims[1], self.dims[0]

    @property
    def num_points(self) -> int:
        return self.dims[0] * self.dims[1] * self.dims[2]

    @property
    def bounds(self) -> Bounds:
        return tuple(  # type: ignore[return-value]
            v for a in range(3) for v in (self.origin[a], self.origin[a] + (self.dims[a] - 1) * self.spacing[a])
        )

    @property
    def whole_extent(self) -> Extent:
        return (0, self.dims[0] - 1, 0, self.dims[1] - 1, 0, self.dims[2] - 1)

    def sub_geometry(self, extent: Sequence[int]) -> "ImageGeometry":
        """The geometry of the points inside ``extent`` (a VTK extent of this image)."""
        e = check_extent(extent, self.whole_extent)
        dims = (e[1] - e[0] + 1, e[3] - e[2] + 1, e[5] - e[4] + 1)
        origin = tuple(self.origin[a] + e[2 * a] * self.spacing[a] for a in range(3))
        return ImageGeometry(dims, origin, self.spacing)

    def to_dict(self) -> dict:
        return {"dims": list(self.dims), "origin": list(self.origin), "spacing": list(self.spacing),
                "bounds": list(self.bounds)}


def check_dims(dims: Sequence[int]) -> tuple[int, int, int]:
    try:
        d = tuple(int(v) for v in dims)
    except (TypeError, ValueError):
        raise ValueError(f"dims must be three positive integers, got {dims!r}.") from None
    if len(d) != 3 or min(d) < 1 or any(int(v) != v for v in dims):
        raise ValueError(f"dims must be three positive integers, got {tuple(dims)}.")
    return d  # type: ignore[return-value]


def check_bounds(bounds: Sequence[float]) -> Bounds:
    try:
        b = tuple(float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be six numbers (xmin, xmax, ymin, ymax, zmin, zmax), got {bounds!r}.") from None
    if len(b) != 6 or not all(np.isfinite(b)):
        raise ValueError(f"bounds must be six finite numbers (xmin, xmax, ymin, ymax, zmin, zmax), got {tuple(bounds)}.")
    for a, axis in enumerate("xyz"):
        if b[2 * a] > b[2 * a + 1]:
            raise ValueError(f"bounds are inverted on {axis}: {axis}min={b[2 * a]} > {axis}max={b[2 * a + 1]}.")
    return b  # type: ignore[return-value]


def check_extent(extent: Sequence[int], whole: Sequence[int] | None = None) -> Extent:
    e = tuple(int(v) for v in extent)
    if len(e) != 6 or any(e[2 * a] > e[2 * a + 1] for a in range(3)):
        raise ValueError(f"extent must be six indices (i0, i1, j0, j1, k0, k1) with i0 <= i1, got {tuple(extent)}.")
    if whole is not None and any(e[2 * a] < whole[2 * a] or e[2 * a + 1] > whole[2 * a + 1] for a in range(3)):
        raise ValueError(f"extent {e} lies outside the whole extent {tuple(whole)}.")
    return e  # type: ignore[return-value]


def world_to_model(points: torch.Tensor, bounds: Sequence[float]) -> torch.Tensor:
    """Map world points ``(N, 3)`` to the model cube ``[-1, 1]^3`` spanned by ``bounds`` (corner aligned).

    A flat axis (min == max) maps to 0.
    """
    b = torch.as_tensor(bounds, dtype=points.dtype, device=points.device).reshape(3, 2)
    lo, hi = b[:, 0], b[:, 1]
    width = hi - lo
    safe = torch.where(width > 0, width, torch.ones_like(width))
    out = (points - lo) * (2.0 / safe) - 1.0
    return torch.where(width > 0, out, torch.zeros_like(out))


def axis_coordinates(geometry: ImageGeometry, extent: Sequence[int] | None = None,
                     model_bounds: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Per-axis world (or, with ``model_bounds``, model-cube) coordinates of the points of ``extent``, float64."""
    e = geometry.whole_extent if extent is None else check_extent(extent)
    axes = []
    for a in range(3):
        idx = torch.arange(e[2 * a], e[2 * a + 1] + 1, dtype=torch.float64)
        w = geometry.origin[a] + idx * geometry.spacing[a]
        if model_bounds is not None:
            lo, hi = float(model_bounds[2 * a]), float(model_bounds[2 * a + 1])
            w = (w - lo) * (2.0 / (hi - lo)) - 1.0 if hi > lo else torch.zeros_like(w)
        axes.append(w)
    return axes


def extent_points(geometry: ImageGeometry, extent: Sequence[int] | None = None,
                  model_bounds: Sequence[float] | None = None,
                  start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Points ``(N, 3)`` float32 of ``extent`` in VTK order (x fastest), rows ``start:stop`` of the flattened extent.

    Generating a slice of rows directly is what lets evaluation bound its memory by a chunk size.
    With ``model_bounds`` the points are in the model cube, otherwise in world coordinates.
    """
    ax, ay, az = axis_coordinates(geometry, extent, model_bounds)
    nx, ny, nz = len(ax), len(ay), len(az)
    n = nx * ny * nz
    stop = n if stop is None else min(stop, n)
    flat = torch.arange(start, stop, dtype=torch.int64)
    i = flat % nx
    j = (flat // nx) % ny
    k = flat // (nx * ny)
    return torch.stack([ax[i], ay[j], az[k]], dim=1).to(torch.float32)


def voxel_grid_points(shape_zyx: Sequence[int]) -> torch.Tensor:
    """Model-cube points ``(nz*ny*nx, 3)`` of every voxel of a ``(nz, ny, nx)`` volume, x fastest."""
    nz, ny, nx = (int(s) for s in shape_zyx)
    return extent_points(ImageGeometry((nx, ny, nz)), model_bounds=(0, nx - 1, 0, ny - 1, 0, nz - 1))
