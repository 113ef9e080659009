"""Reading and writing volumes by file name, for the command line (the only layer that knows every format).

VTK XML images go through the VTK layer; everything else through :mod:`srn_core.data`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from srn_core import data
from srn_core.geometry import ImageGeometry
from srn_core.modelfile import atomic_write

VOLUME_SUFFIXES = (".vti", ".nii", ".nii.gz", ".nc", ".nc4", ".npy", ".raw")


def read_volume(path: str | os.PathLike, array: str | None = None, mask_nonfinite: bool = False,
                spacing=None, origin=None, axis_order: str | None = None,
                raw_shape=None, raw_dtype: str | None = None) -> data.Volume:
    """Read the volume in ``path``, picking the reader by suffix.

    ``array`` selects the array (VTI) or variable (NetCDF); ``spacing``/``origin`` override or supply the
    geometry for formats that have none (npy, raw, NetCDF); ``axis_order`` names the world axis of each array
    axis (default ``zyx``, the C order of a ``(nz, ny, nx)`` array).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist.")
    suffix = data.suffix_of(path)
    geo = {k: tuple(v) for k, v in (("spacing", spacing), ("origin", origin)) if v is not None}
    if suffix == ".vti":
        from paraview_plugin.vtk_image import read_vti  # needs VTK; imported only for .vti
        vol = read_vti(path, array, mask_nonfinite)
    elif suffix in (".nii", ".nii.gz"):
        vol = data.read_nifti(path, name=array)
    elif suffix in (".nc", ".nc4"):
        vol = data.read_netcdf(path, array, axis_order, **geo)
    elif suffix == ".npy":
        vol = data.read_numpy(path, name=array, axis_order=axis_order or "zyx", **geo)
    elif suffix == ".raw" or raw_shape is not None:
        if raw_shape is None or raw_dtype is None:
            raise ValueError(f"raw file {str(path)!r} needs --raw-shape and --raw-dtype.")
        vol = data.read_raw(path, raw_shape, raw_dtype, name=array, axis_order=axis_order or "zyx", **geo)
    else:
        raise ValueError(f"input file {str(path)!r} has an unknown suffix {suffix!r}; "
                         f"supported: {', '.join(VOLUME_SUFFIXES)}.")
    if mask_nonfinite and not vol.mask_nonfinite:
        vol = data.Volume(vol.values, vol.geometry, vol.name, mask_nonfinite=True)
    if geo and suffix in (".vti", ".nii", ".nii.gz"):
        g = vol.geometry
        vol = data.Volume(vol.values, ImageGeometry(g.dims, geo.get("origin", g.origin), geo.get("spacing", g.spacing)),
                          vol.name, vol.mask_nonfinite)
    return vol


def write_volume(path: str | os.PathLike, values: np.ndarray, geometry: ImageGeometry, name: str) -> None:
    """Write ``values`` ``(nz, ny, nx)`` on ``geometry`` as ``.vti`` (VTK) or ``.npy``, atomically."""
    suffix = data.suffix_of(path)
    if suffix == ".vti":
        from paraview_plugin.vtk_image import image_from_array, write_vti
        write_vti(path, image_from_array(values, geometry, name))
    elif suffix == ".npy":
        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(values, dtype=np.float32))
        atomic_write(path, write)
    else:
        raise ValueError(f"output file {str(path)!r} must end in .vti or .npy.")
