"""Volumes (a scalar array on an image geometry) and readers for the formats that need no VTK.

NIfTI (``nibabel``), NetCDF (``netCDF4``), ``.npy`` and raw binary. VTK XML images (``.vti``) are read by the
VTK layer (``paraview_plugin.vtk_image``) into the same :class:`Volume`. Optional libraries are imported
only when their format is read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .geometry import ImageGeometry


@dataclass
class Volume:
    """A scalar volume: ``values`` float32 ``(nz, ny, nx)`` (x fastest) on ``geometry``, named ``name``.

    Non-finite values (NaN, Inf) are kept as NaN only with ``mask_nonfinite``; they are then excluded from
    training and from error metrics. Otherwise they are an error.
    """

    values: np.ndarray
    geometry: ImageGeometry
    name: str = "values"
    mask_nonfinite: bool = False

    def __post_init__(self):
        v = np.asarray(self.values)
        if v.ndim != 3:
            raise ValueError(f"a volume needs 3 axes, got an array of shape {v.shape}.")
        if v.dtype.kind not in "fiub":
            raise ValueError(f"volume {self.name!r} has non-numeric dtype {v.dtype}.")
        v = np.ascontiguousarray(v, dtype=np.float32)
        if tuple(v.shape) != self.geometry.shape:
            raise ValueError(f"volume shape {v.shape} (nz, ny, nx) does not match geometry dims {self.geometry.dims}.")
        bad = ~np.isfinite(v)
        if bad.any():
            if not self.mask_nonfinite:
                raise ValueError(
                    f"volume {self.name!r} holds {int(bad.sum())} non-finite values (NaN/Inf); pass "
                    f"--mask-nonfinite (mask_nonfinite=True) to exclude them from training and metrics.")
            if bad.all():
                raise ValueError(f"volume {self.name!r} holds no finite value.")
            v = v.copy()
            v[bad] = np.nan
        self.values = v

    @property
    def finite_mask(self) -> np.ndarray | None:
        return None if not self.mask_nonfinite else np.isfinite(self.values)

    @property
    def value_range(self) -> tuple[float, float]:
        return float(np.nanmin(self.values)), float(np.nanmax(self.values))

    def checksum(self) -> str:
        """SHA-256 of the float32 values and the geometry: ties a model to the exact data it learned."""
        h = hashlib.sha256(self.values.tobytes())
        h.update(repr(self.geometry.to_dict()).encode())
        return h.hexdigest()


# ---- readers -----------------------------------------------------------------------------------

def read_numpy(path: str | os.PathLike, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), name: str | None = None,
               axis_order: str = "zyx") -> Volume:
    """A ``.npy`` file holding a 3-D array; ``axis_order`` says which world axis each array axis is."""
    arr = np.load(path, allow_pickle=False)  # never unpickle
    return Volume(_to_zyx(arr, axis_order), _geometry(arr.shape, axis_order, spacing, origin),
                  name or Path(path).stem)


def read_raw(path: str | os.PathLike, shape: Sequence[int], dtype: str, spacing=(1.0, 1.0, 1.0),
             origin=(0.0, 0.0, 0.0), name: str | None = None, axis_order: str = "zyx", offset: int = 0) -> Volume:
    """A headerless binary file of ``shape`` (in ``axis_order``) and ``dtype`` (e.g. ``<f4``, ``uint8``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"raw shape must be three positive sizes, got {shape}.")
    dt = np.dtype(dtype)
    need = offset + int(np.prod(shape)) * dt.itemsize
    have = os.path.getsize(path)
    if have != need:
        raise ValueError(f"raw file {str(path)!r} has {have} bytes but shape {shape} of {dt} needs {need}.")
    arr = np.fromfile(path, dtype=dt, offset=offset).reshape(shape)
    return Volume(_to_zyx(arr, axis_order), _geometry(shape, axis_order, spacing, origin), name or Path(path).stem)


def read_nifti(path: str | os.PathLike, name: str | None = None) -> Volume:
    """A NIfTI image: array axes (i, j, k) are VTK's (x, y, z); spacing from the voxel sizes (``zooms``)."""
    try:
        import nibabel
    except ImportError:
        raise ImportError("reading NIfTI files needs nibabel: pip install nibabel") from None
    img = nibabel.load(str(path))
    arr = np.asanyarray(img.dataobj)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"NIfTI file {str(path)!r} holds a {arr.ndim}-D image of shape {arr.shape}; need 3-D.")
    arr = np.asarray(img.get_fdata(dtype=np.float32)).reshape(arr.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    stem = Path(path).name.split(".")[0]
    return Volume(_to_zyx(arr, "xyz"), _geometry(arr.shape, "xyz", zooms, (0.0, 0.0, 0.0)), name or stem)


def read_netcdf(path: str | os.PathLike, variable: str | None = None, axis_order: str | None = None,
                spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), index: dict[str, int] | None = None) -> Volume:
    """A NetCDF variable. ``variable`` defaults to the only 3-D variable; extra dimensions (e.g. time) are
    fixed by ``index`` (default 0). ``axis_order`` gives the world axis of each remaining dimension (default:
    NetCDF's C order is (z, y, x), the CF convention)."""
    try:
        import netCDF4
    except ImportError:
        raise ImportError("reading NetCDF files needs netCDF4: pip install netCDF4") from None
    with netCDF4.Dataset(str(path)) as ds:
        candidates = [n for n, v in ds.variables.items() if v.ndim >= 3]
        if variable is None:
            if len(candidates) != 1:
                raise ValueError(f"NetCDF file {str(path)!r} has variables {candidates} of 3 or more dimensions; "
                                 f"choose one with --array.")
            variable = candidates[0]
        if variable not in ds.variables:
            raise ValueError(f"NetCDF file {str(path)!r} has no variable {variable!r}; it has {list(ds.variables)}.")
        var = ds.variables[variable]
        var.set_auto_mask(True)
        index = dict(index or {})
        free = [d for d in var.dimensions if d not in index]
        for dim in free[:max(0, len(free) - 3)]:
            index[dim] = 0  # leading extra dimensions (time, ensemble member): take the first
        sel = tuple(int(index[d]) if d in index else slice(None) for d in var.dimensions)
        spatial = [d for d in var.dimensions if d not in index]
        data = var[sel]
    if len(spatial) != 3:
        raise ValueError(f"NetCDF variable {variable!r} leaves dimensions {spatial}, need exactly 3 after indexing.")
    arr = np.ma.filled(np.ma.asarray(data, dtype=np.float32), np.nan)
    order = axis_order or "zyx"
    return Volume(_to_zyx(arr, order), _geometry(arr.shape, order, spacing, origin), variable,
                  mask_nonfinite=bool(np.isnan(arr).any()))


def _to_zyx(arr: np.ndarray, axis_order: str) -> np.ndarray:
    order = axis_order.lower()
    if sorted(order) != ["x", "y", "z"]:
        raise ValueError(f"axis_order must be a permutation of 'xyz', got {axis_order!r}.")
    if arr.ndim != 3:
        raise ValueError(f"need a 3-D array, got shape {arr.shape}.")
    return np.transpose(arr, [order.index(a) for a in "zyx"])


def _geometry(shape, axis_order: str, spacing, origin) -> ImageGeometry:
    order = axis_order.lower()
    dims = tuple(int(shape[order.index(a)]) for a in "xyz")
    return ImageGeometry(dims, tuple(origin), tuple(spacing))


READERS = {".npy": read_numpy, ".nii": read_nifti, ".nii.gz": read_nifti, ".nc": read_netcdf, ".nc4": read_netcdf,
           ".raw": read_raw}


def suffix_of(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
