"""Volumes (a scalar array on an image geometry) and readers for the formats that need no VTK.

NIfTI (``nibabel``), NetCDF (``netCDF4``), ``.npy`` and raw binary. VTK XML images (``.vti``) are read by the
VTK layer (``paraview_plugin.vtk_image``) into the same :class:`Volume`. Optional libraries are imported
only when their format is read.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .geometry import ImageGeometry
from .memory import check_allocation


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
        wide = v if v.dtype.kind == "f" and v.dtype.itemsize > 4 else None
        with np.errstate(over="ignore"):
            v = np.ascontiguousarray(v, dtype=np.float32)
        if tuple(v.shape) != self.geometry.shape:
            raise ValueError(f"volume shape {v.shape} (nz, ny, nx) does not match geometry dims {self.geometry.dims}.")
        bad = ~np.isfinite(v)
        if bad.any() and wide is not None:
            beyond = int((bad & np.isfinite(wide)).sum())
            if beyond:
                raise ValueError(f"volume {self.name!r} holds {beyond} values beyond float32's range "
                                 f"(+-{np.finfo(np.float32).max:.3g}); rescale the data.")
        if bad.any():
            if not self.mask_nonfinite:
                raise ValueError(
                    f"volume {self.name!r} holds {int(bad.sum())} non-finite values (NaN/Inf); pass "
                    f"--mask-nonfinite (mask_nonfinite=True) to exclude them from training and metrics.")
            if bad.all():
                raise ValueError(f"volume {self.name!r} holds no finite value.")
            v = v.copy()
            v[bad] = np.nan
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        if hi - lo > float(np.finfo(np.float32).max):
            # Training normalises by max - min and a model rescales by it, both in float32: it would be inf.
            raise ValueError(f"volume {self.name!r} spans [{lo:.3g}, {hi:.3g}]: its range max - min overflows "
                             f"float32 ({np.finfo(np.float32).max:.3g}); rescale the data.")
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

def check_regular_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, refusing anything but a regular file (or a link to one): reading a FIFO or a device
    would block or never end."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist.")
    if not path.is_file():
        raise ValueError(f"input file {str(path)!r} is not a regular file (a folder, FIFO or device); "
                         f"give a volume file.")
    return path


def read_numpy(path: str | os.PathLike, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), name: str | None = None,
               axis_order: str = "zyx", mask_nonfinite: bool = False) -> Volume:
    """A ``.npy`` file holding a 3-D array; ``axis_order`` says which world axis each array axis is."""
    path = check_regular_file(path)
    arr = np.load(path, allow_pickle=False)  # never unpickle
    return Volume(_to_zyx(arr, axis_order), _geometry(arr.shape, axis_order, spacing, origin),
                  name or path.stem, mask_nonfinite)


def read_raw(path: str | os.PathLike, shape: Sequence[int], dtype: str, spacing=(1.0, 1.0, 1.0),
             origin=(0.0, 0.0, 0.0), name: str | None = None, axis_order: str = "zyx", offset: int = 0,
             mask_nonfinite: bool = False) -> Volume:
    """A headerless binary file of ``shape`` (in ``axis_order``) and ``dtype`` (e.g. ``<f4``, ``uint8``)."""
    path = check_regular_file(path)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"raw shape must be three positive sizes, got {shape}.")
    dt = check_raw_dtype(dtype)
    need = offset + int(np.prod(shape)) * dt.itemsize
    have = os.path.getsize(path)
    if have != need:
        raise ValueError(f"raw file {str(path)!r} has {have} bytes but shape {shape} of {dt} needs {need}.")
    arr = np.fromfile(path, dtype=dt, offset=offset).reshape(shape)
    return Volume(_to_zyx(arr, axis_order), _geometry(shape, axis_order, spacing, origin), name or path.stem,
                  mask_nonfinite)


def check_raw_dtype(dtype) -> np.dtype:
    """``dtype`` of a raw file as a numeric NumPy dtype, or one clear error naming ``--raw-dtype``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"raw dtype {dtype!r} (--raw-dtype) is not a NumPy dtype; use e.g. <f4, uint8 or >i2.") \
            from None
    if dt.kind not in "fiub":
        raise ValueError(f"raw dtype {dtype!r} (--raw-dtype) is not numeric; use e.g. <f4, uint8 or >i2.")
    return dt


def read_nifti(path: str | os.PathLike, name: str | None = None, mask_nonfinite: bool = False) -> Volume:
    """A 3-D NIfTI image: array axes (i, j, k) are VTK's (x, y, z); spacing from the voxel sizes (``zooms``).

    A 4-D image of one volume is that volume; one of several (a time series) is an error that says how to read
    it (:func:`srn_core.series_readers.read_nifti_series`): no step is silently dropped."""
    img, path = load_nifti(path)
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        raise ValueError(f"NIfTI file {str(path)!r} holds {shape[3]} time steps (a 4-D image of shape {shape}); "
                         f"read it as a time series (srn train reads every step) or pick steps with --time.")
    if len(shape) != 3:
        raise ValueError(f"NIfTI file {str(path)!r} holds a {len(shape)}-D image of shape {shape}; need 3-D.")
    # A few compressed bytes can declare any size: check the header's before decompressing into it.
    check_allocation(4 * int(np.prod(shape, dtype=np.float64)),
                     f"NIfTI file {str(path)!r} (an image of {' x '.join(map(str, shape))} points)")
    arr = read_nifti_data(img, path, lambda image: image.get_fdata(dtype=np.float32)).reshape(shape)
    return nifti_volume(img, path, arr, name, mask_nonfinite)


def load_nifti(path: str | os.PathLike):
    """``(image, path)``: the NIfTI header of ``path`` (nibabel reads the data lazily, on demand)."""
    try:
        import nibabel
        from nibabel.filebasedimages import ImageFileError
    except ImportError:
        raise ImportError("reading NIfTI files needs nibabel: pip install nibabel") from None
    path = check_regular_file(path)
    try:
        return nibabel.load(str(path)), path
    except (ImageFileError, EOFError) as exc:
        raise ValueError(f"NIfTI file {str(path)!r} is truncated or corrupt ({exc}).") from None


def read_nifti_data(img, path: Path, read) -> np.ndarray:
    """``read(img)`` as a float32 array, a cut-off or corrupt file one clear error (nibabel reads lazily: a
    truncated gzip stream only shows when the data are decompressed)."""
    import gzip
    import zlib

    from nibabel.filebasedimages import ImageFileError

    try:
        return np.asarray(read(img), dtype=np.float32)
    except (ImageFileError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"NIfTI file {str(path)!r} is truncated or corrupt ({exc}).") from None


def nifti_volume(img, path: Path, xyz: np.ndarray, name: str | None, mask_nonfinite: bool) -> Volume:
    """A volume of ``xyz`` (a NIfTI image's ``(i, j, k)`` array) with the image's voxel sizes as spacing."""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    stem = path.name.split(".")[0]
    return Volume(_to_zyx(xyz, "xyz"), _geometry(xyz.shape, "xyz", zooms, (0.0, 0.0, 0.0)), name or stem,
                  mask_nonfinite)


# ---- NetCDF ------------------------------------------------------------------------------------

_TIME_UNITS = re.compile(r"^\s*[A-Za-z]+\s+since\s+\S")
"""CF time units: ``<unit> since <reference date>`` (``hours since 1970-01-01``)."""
TIME_DIMENSION_NAMES = ("time", "t")
"""Dimension names taken for time when no coordinate variable says so."""


def netcdf_time_dimension(ds, var) -> str | None:
    """The time dimension of NetCDF variable ``var`` in dataset ``ds``, or ``None``.

    CF first: a dimension whose coordinate variable (1-D, named like it) has ``axis = "T"``,
    ``standard_name = "time"`` or units ``<unit> since <date>``; else a dimension named ``time`` or ``t``."""
    for dim in var.dimensions:
        coord = ds.variables.get(dim)
        if coord is None or tuple(coord.dimensions) != (dim,):
            continue
        attrs = {k: str(coord.getncattr(k)) for k in coord.ncattrs()}
        if (attrs.get("axis", "").strip().upper() == "T" or attrs.get("standard_name", "").strip() == "time"
                or _TIME_UNITS.match(attrs.get("units", ""))):
            return dim
    named = [d for d in var.dimensions if d.lower() in TIME_DIMENSION_NAMES]
    return named[0] if named else None


def netcdf_time_values(ds, dim: str, path) -> tuple[list[float], str]:
    """``(times, unit)`` along time dimension ``dim``: its coordinate variable's values and ``units``, or the
    indices ``0..T-1`` and ``""`` when it has no (numeric) coordinate variable."""
    count = len(ds.dimensions[dim])
    coord = ds.variables.get(dim)
    if coord is None or tuple(coord.dimensions) != (dim,):
        return [float(i) for i in range(count)], ""
    if np.dtype(coord.dtype).kind not in "iuf":  # e.g. ISO date strings: not a number a time axis can use
        warnings.warn(f"NetCDF file {str(path)!r}: time coordinate {dim!r} is not numeric ({coord.dtype}); the "
                      f"steps get the times 0..{count - 1} instead.", stacklevel=2)
        return [float(i) for i in range(count)], ""
    coord.set_auto_mask(True)
    values = np.ma.asarray(coord[:], dtype=np.float64)
    if np.ma.is_masked(values):
        missing = [int(i) for i in np.flatnonzero(np.ma.getmaskarray(values))[:4]]
        raise ValueError(f"NetCDF file {str(path)!r}: time coordinate {dim!r} has missing values at steps "
                         f"{missing}; every step needs a time.")
    unit = str(coord.getncattr("units")).strip() if "units" in coord.ncattrs() else ""
    return [float(v) for v in np.ma.getdata(values)], unit


def open_netcdf_variable(ds, path, variable: str | None):
    """The variable ``variable`` of open dataset ``ds`` (default: its only variable of 3 or more dimensions)."""
    if variable is None:
        candidates = [n for n, v in ds.variables.items() if v.ndim >= 3]
        if len(candidates) != 1:
            raise ValueError(f"NetCDF file {str(path)!r} has variables {candidates} of 3 or more dimensions; "
                             f"choose one with --array.")
        variable = candidates[0]
    if variable not in ds.variables:
        raise ValueError(f"NetCDF file {str(path)!r} has no variable {variable!r}; it has {list(ds.variables)}.")
    var = ds.variables[variable]
    var.set_auto_mask(True)
    return var


def netcdf_spatial_selection(ds, var, path, index: dict[str, int] | None = None) -> tuple[dict[str, int], list[str]]:
    """``(index, spatial)``: the index fixing every dimension of ``var`` that is not one of its 3 spatial ones,
    and those 3 (in the variable's order).

    ``index`` fixes dimensions the caller chose (a time step). Dimensions of length 1 are squeezed. What is
    left beyond 3 dimensions is an error naming it, never silently its first entry: a time dimension of
    several steps (read it as a series, or pick a step) or another one (an ensemble member, a level).
    """
    index = dict(index or {})
    for dim in index:
        if dim not in var.dimensions:
            raise ValueError(f"NetCDF variable {var.name!r} has no dimension {dim!r}; it has {var.dimensions}.")
    sizes = {d: len(ds.dimensions[d]) for d in var.dimensions}
    time_dim = netcdf_time_dimension(ds, var)
    if time_dim is not None and time_dim not in index:
        if sizes[time_dim] > 1:
            raise ValueError(f"NetCDF variable {var.name!r} in {str(path)!r} has {sizes[time_dim]} time steps "
                             f"along dimension {time_dim!r}; read it as a time series (srn train reads every "
                             f"step) or pick steps with --time.")
        index[time_dim] = 0
    free = [d for d in var.dimensions if d not in index]
    for dim in list(free):  # length-1 dimensions beyond three (a single level, member or time) carry nothing
        if len(free) > 3 and sizes[dim] == 1:
            index[dim] = 0
            free.remove(dim)
    if len(free) > 3:
        extra = free[:len(free) - 3]
        named = ", ".join(f"{d!r} of length {sizes[d]}" for d in extra)
        raise ValueError(f"NetCDF variable {var.name!r} in {str(path)!r} has dimension {named} besides its spatial "
                         f"dimensions {tuple(free[len(extra):])}; a volume has 3 axes: extract one "
                         f"{extra[0]!r} first (e.g. ncks -d {extra[0]},0).")
    if len(free) != 3:
        raise ValueError(f"NetCDF variable {var.name!r} leaves dimensions {free}, need exactly 3 after indexing.")
    for dim, i in index.items():
        if not 0 <= int(i) < sizes[dim]:
            raise ValueError(f"NetCDF dimension {dim!r} has {sizes[dim]} entries; index {i} is out of range.")
    return index, free


def read_netcdf_step(var, index: dict[str, int], variable: str, axis_order: str | None, spacing, origin) -> Volume:
    """The volume of ``var`` at ``index`` (every non-spatial dimension fixed), fill values as masked NaN."""
    sel = tuple(int(index[d]) if d in index else slice(None) for d in var.dimensions)
    arr = np.ma.filled(np.ma.asarray(var[sel], dtype=np.float32), np.nan)
    order = axis_order or "zyx"
    return Volume(_to_zyx(arr, order), _geometry(arr.shape, order, spacing, origin), variable,
                  mask_nonfinite=bool(np.isnan(arr).any()))


def read_netcdf(path: str | os.PathLike, variable: str | None = None, axis_order: str | None = None,
                spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), index: dict[str, int] | None = None) -> Volume:
    """A NetCDF variable as one volume. ``variable`` defaults to the only variable of 3 or more dimensions;
    ``index`` fixes dimensions by name (e.g. ``{"time": 3}``, one step of a series); length-1 dimensions are
    squeezed and any other one beyond three is an error (:func:`netcdf_spatial_selection`); a time series is
    read whole by :func:`srn_core.series_readers.read_netcdf_series`. ``axis_order`` gives the world axis of each
    remaining dimension (default: NetCDF's C order is (z, y, x), the CF convention)."""
    try:
        import netCDF4
    except ImportError:
        raise ImportError("reading NetCDF files needs netCDF4: pip install netCDF4") from None
    path = check_regular_file(path)
    with netCDF4.Dataset(str(path)) as ds:
        var = open_netcdf_variable(ds, path, variable)
        index, _ = netcdf_spatial_selection(ds, var, path, index)
        return read_netcdf_step(var, index, var.name, axis_order, spacing, origin)


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
