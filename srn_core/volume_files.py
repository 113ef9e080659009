"""Volume files read box by box (out of core): the :class:`~srn_core.volume_source.VolumeSource` of a path.

:func:`open_source` opens what :mod:`srn_core.data` reads whole, without reading it:

* ``.raw`` and ``.npy``: a memory map of only the bytes a box spans, opened for one :meth:`read` and closed after,
  so resident memory follows what is being read, never the file (pages of a map still open count as resident).
* ``.nc``/``.nc4`` (netCDF4) and ``.h5``/``.hdf5`` (h5py): hyperslab reads; fill values become NaN.
* ``.vti``: only ``<AppendedData encoding="raw">`` without a compressor can be mapped (the XML header is parsed
  here: ``srn_core`` never imports VTK). Compressed, base64 or inline files are a clear error: read them whole.
* ``.nii``/``.nii.gz``: read whole (gzip cannot seek), as an :class:`~srn_core.volume_source.ArraySource`.

Every source's boxes are exactly the values the whole-file reader gives (same float32 conversion, same axis
order, same geometry), so its :meth:`~srn_core.volume_source.VolumeSource.checksum` is the same.
"""

from __future__ import annotations

import mmap
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import (_geometry, check_raw_dtype, check_regular_file, netcdf_spatial_selection, open_netcdf_variable, read_nifti,
                   suffix_of)
from .geometry import ImageGeometry
from .volume_source import ArraySource, Box, VolumeSource


def _axis_order(axis_order: str | None) -> str:
    order = (axis_order or "zyx").lower()
    if sorted(order) != ["x", "y", "z"]:
        raise ValueError(f"axis_order must be a permutation of 'xyz', got {axis_order!r}.")
    return order


class _FileAxes:
    """The file's array axes in ``axis_order`` (which world axis each is) against the source's ``(z, y, x)``."""

    def __init__(self, file_shape: Sequence[int], axis_order: str):
        self.file_shape = tuple(int(s) for s in file_shape)
        self.order = axis_order
        # box (z, y, x) -> file slices; file array -> (z, y, x) by a transpose.
        self.from_box = [("zyx".index(a)) for a in axis_order]
        self.to_zyx = [axis_order.index(a) for a in "zyx"]

    def file_box(self, box: Box) -> tuple[slice, ...]:
        return tuple(box[i] for i in self.from_box)

    def as_zyx(self, arr: np.ndarray) -> np.ndarray:
        return np.transpose(arr, self.to_zyx)


class MemmapSource(VolumeSource):
    """A C-ordered array of ``file_shape`` and ``dtype`` at byte ``offset`` of ``path`` (``.raw``, ``.npy``, raw
    appended ``.vti``), read through a memory map of the bytes one box spans, closed again after each read."""

    def __init__(self, path: str | os.PathLike, file_shape: Sequence[int], dtype, offset: int, axis_order: str,
                 geometry: ImageGeometry, name: str, mask_nonfinite: bool = False):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)
        self.axes = _FileAxes(file_shape, axis_order)
        self.geometry, self.name, self.mask_nonfinite = geometry, name, bool(mask_nonfinite)

    def _read(self, box: Box) -> np.ndarray:
        fb = self.axes.file_box(box)
        shape = self.axes.file_shape
        (a0, a1, _), rest = fb[0].indices(shape[0]), fb[1:]
        row = int(np.prod(shape[1:])) * self.dtype.itemsize  # bytes of one index of the outermost file axis
        start = self.offset + a0 * row
        length = (a1 - a0) * row
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), length + (start - aligned), access=mmap.ACCESS_READ, offset=aligned)
        try:
            view = np.frombuffer(mm, dtype=self.dtype, count=length // self.dtype.itemsize,
                                 offset=start - aligned).reshape((a1 - a0,) + shape[1:])
            with np.errstate(over="ignore"):
                out = self.axes.as_zyx(view[(slice(None),) + rest]).astype(np.float32)  # a copy: the map may close
            del view
        finally:
            mm.close()
        return out


class HDF5Source(VolumeSource):
    """Dataset ``dataset`` of an HDF5 file, read by hyperslabs (the file is opened for each read)."""

    def __init__(self, path, dataset: str, file_shape, axis_order: str, geometry: ImageGeometry, name: str,
                 fill_value, mask_nonfinite: bool):
        self.path, self.dataset, self.fill_value = Path(path), dataset, fill_value
        self.axes = _FileAxes(file_shape, axis_order)
        self.geometry, self.name, self.mask_nonfinite = geometry, name, bool(mask_nonfinite)

    def _read(self, box: Box) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            arr = f[self.dataset][self.axes.file_box(box)]
        with np.errstate(over="ignore"):
            out = np.asarray(arr, dtype=np.float32) if arr.dtype != np.float32 else np.array(arr)
        if self.fill_value is not None:
            out[np.asarray(arr) == self.fill_value] = np.nan
        return self.axes.as_zyx(out)


class NetCDFSource(VolumeSource):
    """A NetCDF variable read by hyperslabs (fill and missing values become NaN, as :func:`~srn_core.data.read_netcdf`)."""

    def __init__(self, path, variable: str, index: dict[str, int], spatial: list[str], file_shape,
                 axis_order: str, geometry: ImageGeometry, mask_nonfinite: bool):
        self.path, self.variable, self.index, self.spatial = Path(path), variable, dict(index), list(spatial)
        self.axes = _FileAxes(file_shape, axis_order)
        self.geometry, self.name, self.mask_nonfinite = geometry, variable, bool(mask_nonfinite)

    def _read(self, box: Box) -> np.ndarray:
        import netCDF4

        fb = iter(self.axes.file_box(box))
        with netCDF4.Dataset(str(self.path)) as ds:
            var = ds.variables[self.variable]
            var.set_auto_mask(True)
            sel = tuple(int(self.index[d]) if d in self.index else next(fb) for d in var.dimensions)
            arr = np.ma.filled(np.ma.asarray(var[sel], dtype=np.float32), np.nan)
        return self.axes.as_zyx(arr)


# ---- opening ----------------------------------------------------------------------------------------

def open_source(path: str | os.PathLike, array: str | None = None, raw_shape: Sequence[int] | None = None,
                raw_dtype: str | None = None, axis_order: str | None = None, spacing=None, origin=None,
                mask_nonfinite: bool = False, raw_offset: int = 0) -> VolumeSource:
    """The volume of ``path`` as a source that reads box by box (see the module docstring for each format).

    ``array``: the NetCDF variable, HDF5 dataset path or VTI point array (default: the only/active one).
    ``raw_shape`` (in ``axis_order``), ``raw_dtype`` and ``raw_offset`` describe a headerless ``.raw`` file.
    ``axis_order`` says which world axis each array axis is (default ``zyx``; not for ``.vti``/NIfTI, whose files
    say it). ``spacing``/``origin`` default to 1 and 0 (a ``.vti`` file's own unless given).
    """
    path = check_regular_file(path)
    suffix = suffix_of(path)
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    origin = (0.0, 0.0, 0.0) if origin is None else tuple(float(o) for o in origin)
    if suffix in (".nii", ".nii.gz"):
        return ArraySource(read_nifti(path, name=array, mask_nonfinite=mask_nonfinite))
    if suffix == ".raw":
        return _open_raw(path, raw_shape, raw_dtype, raw_offset, _axis_order(axis_order), spacing, origin,
                         array, mask_nonfinite)
    if suffix == ".npy":
        return _open_npy(path, _axis_order(axis_order), spacing, origin, array, mask_nonfinite)
    if suffix in (".nc", ".nc4"):
        return _open_netcdf(path, array, axis_order, spacing, origin, mask_nonfinite)
    if suffix in (".h5", ".hdf5"):
        return _open_hdf5(path, array, _axis_order(axis_order), spacing, origin, mask_nonfinite)
    if suffix == ".vti":
        return open_vti(path, array, mask_nonfinite)
    raise ValueError(f"input file {str(path)!r} has suffix {suffix!r}; out-of-core reading knows .raw, .npy, .nc, "
                     f".h5/.hdf5, .vti (raw appended) and .nii/.nii.gz.")


def _numeric(dtype, path, what: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"{what} of {str(path)!r} is {dtype!r}, not a NumPy dtype; use e.g. <f4, uint8 or >i2.") \
            from None
    if dt.kind not in "fiub":
        raise ValueError(f"{what} of {str(path)!r} is {dt}, not numeric; need integers or floats.")
    return dt


def _open_raw(path, shape, dtype, offset, order, spacing, origin, name, mask_nonfinite) -> MemmapSource:
    if shape is None or dtype is None:
        raise ValueError(f"raw file {str(path)!r} needs raw_shape and raw_dtype (--raw-shape, --raw-dtype).")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"raw shape must be three positive sizes, got {shape}.")
    dt = check_raw_dtype(dtype)
    need = int(offset) + int(np.prod(shape)) * dt.itemsize
    have = os.path.getsize(path)
    if have != need:
        raise ValueError(f"raw file {str(path)!r} has {have} bytes but shape {shape} of {dt} needs {need}.")
    return MemmapSource(path, shape, dt, offset, order, _geometry(shape, order, spacing, origin),
                        name or path.stem, mask_nonfinite)


def _open_npy(path, order, spacing, origin, name, mask_nonfinite) -> MemmapSource:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0  # 2.0 and 3.0 (utf8 names) share the layout
            shape, fortran, dtype = read_header(f)
        except ValueError as exc:
            raise ValueError(f".npy file {str(path)!r} has no valid header ({exc}).") from None
        offset = f.tell()
    if len(shape) != 3:
        raise ValueError(f".npy file {str(path)!r} holds an array of shape {shape}; need 3-D.")
    if dtype.hasobject:
        raise ValueError(f".npy file {str(path)!r} holds Python objects; need a numeric array.")
    dt = _numeric(dtype, path, "the dtype")
    need = offset + int(np.prod(shape)) * dt.itemsize
    if os.path.getsize(path) < need:
        raise ValueError(f".npy file {str(path)!r} has {os.path.getsize(path)} bytes but its header's shape "
                         f"{shape} of {dt} needs {need} (truncated?).")
    geometry = _geometry(shape, order, spacing, origin)
    if fortran:  # stored as the C array of the reversed shape, whose axes are the reversed order
        return MemmapSource(path, shape[::-1], dt, offset, order[::-1], geometry, name or path.stem, mask_nonfinite)
    return MemmapSource(path, shape, dt, offset, order, geometry, name or path.stem, mask_nonfinite)


def _open_netcdf(path, variable, axis_order, spacing, origin, mask_nonfinite) -> NetCDFSource:
    try:
        import netCDF4
    except ImportError:
        raise ImportError("reading NetCDF files needs netCDF4: pip install netCDF4") from None
    with netCDF4.Dataset(str(path)) as ds:
        var = open_netcdf_variable(ds, path, variable)
        index, spatial = netcdf_spatial_selection(ds, var, path)
        file_shape = tuple(len(ds.dimensions[d]) for d in spatial)
        declared = any(a in var.ncattrs() for a in ("_FillValue", "missing_value", "valid_min", "valid_max",
                                                    "valid_range"))
        name = var.name
    order = _axis_order(axis_order)
    # read_netcdf masks exactly when a value is missing; a declared fill value is the streaming equivalent.
    return NetCDFSource(path, name, index, spatial, file_shape, order, _geometry(file_shape, order, spacing, origin),
                        mask_nonfinite or declared)


def _open_hdf5(path, dataset, order, spacing, origin, mask_nonfinite) -> HDF5Source:
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 files needs h5py: pip install h5py") from None
    with h5py.File(path, "r") as f:
        if dataset is None:
            found = []
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 3 else None)
            if len(found) != 1:
                raise ValueError(f"HDF5 file {str(path)!r} has 3-D datasets {found}; choose one with --array.")
            dataset = found[0]
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise ValueError(f"HDF5 file {str(path)!r} has no dataset {dataset!r}.")
        d = f[dataset]
        if d.ndim != 3:
            raise ValueError(f"HDF5 dataset {dataset!r} in {str(path)!r} has shape {d.shape}; need 3-D.")
        _numeric(d.dtype, path, f"dataset {dataset!r}'s dtype")
        fill = None
        for key in ("_FillValue", "missing_value"):
            if key in d.attrs:
                fill = np.asarray(d.attrs[key]).reshape(-1)[0]
        shape = d.shape
    name = dataset.strip("/").split("/")[-1]
    return HDF5Source(path, dataset, shape, order, _geometry(shape, order, spacing, origin), name, fill,
                      mask_nonfinite or fill is not None)


# ---- VTK XML images -----------------------------------------------------------------------------------

_VTK_TYPES = {"Int8": "i1", "UInt8": "u1", "Int16": "i2", "UInt16": "u2", "Int32": "i4", "UInt32": "u4",
              "Int64": "i8", "UInt64": "u8", "Float32": "f4", "Float64": "f8"}


def _vti_header(path: Path) -> tuple[str, int]:
    """``(xml text up to and including the <AppendedData ...> tag, byte offset just after its '_' marker)``."""
    head = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            head += chunk
            m = re.search(rb"<AppendedData[^>]*>\s*_", head)
            if m:
                return head[:m.end() - 1].decode("utf-8", "replace").rstrip().rstrip("_"), m.end()
            if not chunk or len(head) > (16 << 20):
                return head.decode("utf-8", "replace"), -1


def open_vti(path: str | os.PathLike, array: str | None = None, mask_nonfinite: bool = False) -> MemmapSource:
    """A point array of an uncompressed, raw-appended VTK XML image, memory mapped.

    Any other ``.vti`` (zlib/lz4 compressed, base64 encoded, inline data, several pieces) is one ``ValueError``
    saying it cannot be read out of core: callers read it whole (``paraview_plugin.vtk_image.read_vti``)."""
    path = check_regular_file(path)
    text, data_start = _vti_header(path)
    cannot = f"VTK image {str(path)!r} cannot be read out of core"
    if data_start < 0:
        raise ValueError(f"{cannot}: it has no raw <AppendedData> section (inline or base64-encoded data); "
                         f"read it whole or rewrite it uncompressed with appended raw data.")
    try:
        root = ET.fromstring(text + "</AppendedData></VTKFile>")
    except ET.ParseError as exc:
        raise ValueError(f"{cannot}: its XML header does not parse ({exc}).") from None
    if root.tag != "VTKFile" or root.get("type") != "ImageData":
        raise ValueError(f"{str(path)!r} is not a VTK XML image file (type {root.get('type')!r}).")
    if root.get("compressor"):
        raise ValueError(f"{cannot}: its data are compressed ({root.get('compressor')}); read it whole or rewrite "
                         f"it uncompressed.")
    appended = root.find("AppendedData")
    if appended is None or appended.get("encoding", "raw") != "raw":
        raise ValueError(f"{cannot}: its appended data are {appended.get('encoding') if appended is not None else '?'}"
                         f"-encoded, not raw.")
    image = root.find("ImageData")
    pieces = image.findall("Piece") if image is not None else []
    if len(pieces) != 1:
        raise ValueError(f"{cannot}: it holds {len(pieces)} pieces; need exactly one.")
    piece = pieces[0]
    point_data = piece.find("PointData")
    arrays = [a for a in (point_data if point_data is not None else []) if a.tag == "DataArray"]
    singles = [a for a in arrays if int(a.get("NumberOfComponents", "1")) == 1]
    if array is None:
        active = point_data.get("Scalars") if point_data is not None else None
        chosen = [a for a in singles if a.get("Name") == active] or (singles if len(singles) == 1 else [])
        if not chosen:
            raise ValueError(f"VTK image {str(path)!r}: choose an array; its single-component point arrays are "
                             f"{[a.get('Name') for a in singles]}.")
    else:
        chosen = [a for a in singles if a.get("Name") == array]
        if not chosen:
            raise ValueError(f"VTK image {str(path)!r} has no single-component point array {array!r}; it has "
                             f"{[a.get('Name') for a in singles]} (out of core reads point data only).")
    da = chosen[0]
    if da.get("format") != "appended":
        raise ValueError(f"{cannot}: array {da.get('Name')!r} is stored {da.get('format')!r} (inline), not appended.")
    if da.get("type") not in _VTK_TYPES:
        raise ValueError(f"VTK image {str(path)!r}: array {da.get('Name')!r} has type {da.get('type')!r}, not a "
                         f"number type.")
    endian = ">" if root.get("byte_order", "LittleEndian") == "BigEndian" else "<"
    dtype = np.dtype(endian + _VTK_TYPES[da.get("type")])
    header = np.dtype(endian + {"UInt32": "u4", "UInt64": "u8"}.get(root.get("header_type", "UInt32"), "u4"))
    extent = [int(v) for v in (piece.get("Extent") or image.get("WholeExtent")).split()]
    vtk_origin = [float(v) for v in image.get("Origin", "0 0 0").split()]
    spacing = tuple(float(v) for v in image.get("Spacing", "1 1 1").split())
    direction = [float(v) for v in image.get("Direction", "1 0 0 0 1 0 0 0 1").split()]
    if not np.allclose(direction, np.eye(3).ravel()):
        raise ValueError(f"{cannot}: its Direction {direction} is not the identity (a rotated image).")
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    origin = tuple(vtk_origin[a] + extent[2 * a] * spacing[a] for a in range(3))  # as image_geometry does
    geometry = ImageGeometry(dims, origin, spacing)
    start = data_start + int(da.get("offset", "0"))
    with open(path, "rb") as f:
        f.seek(start)
        prefix = f.read(header.itemsize)
    need = int(np.prod(dims)) * dtype.itemsize
    size = int(np.frombuffer(prefix, dtype=header)[0]) if len(prefix) == header.itemsize else -1
    if size != need or os.path.getsize(path) < start + header.itemsize + need:
        raise ValueError(f"VTK image {str(path)!r}: array {da.get('Name')!r} declares {size} bytes but "
                         f"{dims} points of {dtype} need {need} (truncated or corrupt?).")
    return MemmapSource(path, geometry.shape, dtype, start + header.itemsize, "zyx", geometry, da.get("Name"),
                        mask_nonfinite)


__all__ = ["open_source", "open_vti", "MemmapSource", "HDF5Source", "NetCDFSource"]
