"""What the renderer draws: a field callable over the model cube, the world box of that cube, and its resolution.

The renderer never sees a model class. A :class:`RenderVolume` is built from a trained model
(:meth:`RenderVolume.from_model`) or from raw data through :func:`grid_field`, the trilinear interpolant of a
``(nz, ny, nx)`` tensor with the project's corner-aligned convention, so the same ray marcher renders both and
their images compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import ImageGeometry, check_bounds, check_dims

FieldFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RenderVolume:
    """A field to render: ``values = field(points)`` for model-cube points ``(N, 3)`` in ``[-1, 1]^3``."""

    field: FieldFn
    """The callable (a :class:`~srn_core.fields.Field`, or :func:`grid_field` of raw data)."""
    bounds: tuple[float, float, float, float, float, float]
    """World box ``(xmin, xmax, ymin, ymax, zmin, zmax)`` that maps to the model cube's corners."""
    dims: tuple[int, int, int]
    """Points per axis of the data the field stands for: sets the voxel size (steps are given in voxels)
    and the macro-cell grid."""
    value_range: tuple[float, float] | None = None
    """Data range ``(min, max)``: where a preset's relative points are placed when none is given."""
    is_raw_grid: bool = False
    """True for the trilinear interpolant of raw data (:meth:`from_grid`): its macro-cell ranges are exact (taken
    at every voxel, no margin), and a lookup is so cheap that the renderer evaluates whole sample blocks instead
    of testing each sample's cell first. Any other field is bounded only where it was sampled."""

    def __post_init__(self):
        b = check_bounds(self.bounds)
        d = check_dims(self.dims)
        for a, axis in enumerate("xyz"):
            if d[a] < 2 or not b[2 * a + 1] > b[2 * a]:
                raise ValueError(f"a rendered volume needs at least 2 points and a positive width along {axis}; "
                                 f"got {d[a]} points over [{b[2 * a]}, {b[2 * a + 1]}].")
        object.__setattr__(self, "bounds", b)
        object.__setattr__(self, "dims", d)
        if self.value_range is not None:
            object.__setattr__(self, "value_range", (float(self.value_range[0]), float(self.value_range[1])))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """World size of one voxel per axis."""
        return tuple((self.bounds[2 * a + 1] - self.bounds[2 * a]) / (self.dims[a] - 1) for a in range(3))

    @classmethod
    def from_model(cls, model) -> "RenderVolume":
        """From a :class:`~srn_core.model.NeuralVolume` (its field, world bounds, training dims and range)."""
        return cls(model.field, model.bounds, model.geometry.dims, model.value_range)

    @classmethod
    def from_grid(cls, values_zyx, geometry: ImageGeometry | None = None) -> "RenderVolume":
        """Raw data ``(nz, ny, nx)`` on ``geometry`` (default: unit spacing at the origin), trilinearly interpolated."""
        values = torch.as_tensor(np.ascontiguousarray(values_zyx, dtype=np.float32))
        if values.ndim != 3:
            raise ValueError(f"grid values must be a 3-D (nz, ny, nx) array, got shape {tuple(values.shape)}.")
        nz, ny, nx = values.shape
        geometry = geometry or ImageGeometry((nx, ny, nz))
        if geometry.shape != tuple(values.shape):
            raise ValueError(f"grid shape {tuple(values.shape)} (nz, ny, nx) does not match geometry dims {geometry.dims}.")
        finite = values[torch.isfinite(values)]
        vrange = (float(finite.min()), float(finite.max())) if finite.numel() else None
        return cls(grid_field(values), geometry.bounds, geometry.dims, vrange, is_raw_grid=True)


def grid_field(volume_zyx) -> FieldFn:
    """The trilinear interpolant of ``(nz, ny, nx)`` values as a field over the model cube (corner aligned).

    Voxel ``(i, j, k)`` sits at model point ``(-1 + 2i/(nx-1), -1 + 2j/(ny-1), -1 + 2k/(nz-1))``; points outside
    the cube take the nearest border value. This is what "our renderer on the raw grid" evaluates; render it
    through :meth:`RenderVolume.from_grid`, which marks it as a raw grid.
    """
    vol = torch.as_tensor(np.ascontiguousarray(volume_zyx, dtype=np.float32))
    if vol.ndim != 3:
        raise ValueError(f"volume_zyx must be a 3-D (nz, ny, nx) array, got shape {tuple(vol.shape)}.")
    grid = vol[None, None].contiguous()

    def field(points: torch.Tensor) -> torch.Tensor:
        n = points.shape[0]
        out = F.grid_sample(grid, points.reshape(1, 1, 1, n, 3).to(grid.dtype), mode="bilinear",
                            padding_mode="border", align_corners=True)
        return out.reshape(n)

    return field


def as_render_volume(obj, bounds: Sequence[float] | None = None, dims: Sequence[int] | None = None) -> RenderVolume:
    """Accept a :class:`RenderVolume`, a NeuralVolume-like object (``field``, ``bounds``, ``geometry``), or a bare
    callable with ``bounds`` and ``dims``."""
    if isinstance(obj, RenderVolume):
        return obj
    if hasattr(obj, "field") and hasattr(obj, "geometry") and hasattr(obj, "bounds"):
        return RenderVolume.from_model(obj)
    if callable(obj):
        if bounds is None or dims is None:
            raise ValueError("rendering a bare field callable needs its world bounds and dims.")
        return RenderVolume(obj, tuple(bounds), tuple(dims))
    raise ValueError(f"cannot render a {type(obj).__name__}; pass a RenderVolume, a NeuralVolume or a field callable.")
