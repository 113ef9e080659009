"""Reading and writing volumes by file name, for the command line (the only layer that knows every format).

VTK XML images go through the VTK layer; everything else through :mod:`srn_core.data`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from srn_core import data
from srn_core.geometry import ImageGeometry
from srn_core.memory import check_allocation, format_bytes
from srn_core.modelfile import atomic_write, check_folder_writable

VOLUME_SUFFIXES = (".vti", ".nii", ".nii.gz", ".nc", ".nc4", ".npy", ".raw", ".h5", ".hdf5")
OUTPUT_SUFFIXES = (".vti", ".npy")


SERIES_SUFFIXES = (".pvd",)
"""Suffixes that always hold a time series; NetCDF and NIfTI files hold one when they have a time axis."""


def read_volume(path: str | os.PathLike, array: str | None = None, mask_nonfinite: bool = False,
                spacing=None, origin=None, axis_order: str | None = None,
                raw_shape=None, raw_dtype: str | None = None) -> data.Volume:
    """Read the volume in ``path``, picking the reader by suffix.

    ``array`` selects the array (VTI), variable (NetCDF) or dataset (HDF5); ``spacing``/``origin`` override or
    supply the geometry for formats that have none (npy, raw, NetCDF, HDF5); ``axis_order`` names the world axis
    of each array axis (default ``zyx``, the C order of a ``(nz, ny, nx)`` array). ``mask_nonfinite`` reaches
    every reader, whose :class:`~srn_core.data.Volume` would otherwise refuse the NaNs before it could apply. A
    file holding a time series of several steps is an error here (:func:`read_input` reads those).
    """
    path = data.check_regular_file(path)  # a FIFO would block every reader below
    suffix = data.suffix_of(path)
    geo = {k: tuple(v) for k, v in (("spacing", spacing), ("origin", origin)) if v is not None}
    if suffix == ".vti":
        from paraview_plugin.vtk_image import read_vti  # needs VTK; imported only for .vti
        vol = read_vti(path, array, mask_nonfinite)
    elif suffix in (".nii", ".nii.gz"):
        vol = data.read_nifti(path, name=array, mask_nonfinite=mask_nonfinite)
    elif suffix in (".nc", ".nc4"):
        vol = data.read_netcdf(path, array, axis_order, **geo)
    elif suffix == ".npy":
        vol = data.read_numpy(path, name=array, axis_order=axis_order or "zyx", mask_nonfinite=mask_nonfinite, **geo)
    elif suffix in (".h5", ".hdf5"):
        from srn_core.volume_files import open_source  # HDF5 is read through its hyperslab source, whole

        vol = open_source(path, array=array, axis_order=axis_order, mask_nonfinite=mask_nonfinite, **geo).load()
    elif suffix == ".raw" or raw_shape is not None:
        if raw_shape is None or raw_dtype is None:
            raise ValueError(f"raw file {str(path)!r} needs --raw-shape and --raw-dtype.")
        vol = data.read_raw(path, raw_shape, raw_dtype, name=array, axis_order=axis_order or "zyx",
                            mask_nonfinite=mask_nonfinite, **geo)
    elif suffix in SERIES_SUFFIXES:
        raise ValueError(f"input file {str(path)!r} is a time series collection; give it alone as the input.")
    else:
        raise ValueError(f"input file {str(path)!r} has an unknown suffix {suffix!r}; "
                         f"supported: {', '.join(VOLUME_SUFFIXES + SERIES_SUFFIXES)}.")
    return _placed(vol, suffix, geo, mask_nonfinite)


def _placed(vol: data.Volume, suffix: str, geo: dict, mask_nonfinite: bool) -> data.Volume:
    """``vol`` with ``--mask-nonfinite`` applied and ``--spacing``/``--origin`` overriding a file's geometry
    (npy, raw and NetCDF readers take them directly)."""
    if mask_nonfinite and not vol.mask_nonfinite:  # NetCDF decides from its own fill values
        vol = data.Volume(vol.values, vol.geometry, vol.name, mask_nonfinite=True)
    if geo and suffix in (".vti", ".nii", ".nii.gz", ".pvd"):
        g = vol.geometry
        vol = data.Volume(vol.values, ImageGeometry(g.dims, geo.get("origin", g.origin), geo.get("spacing", g.spacing)),
                          vol.name, vol.mask_nonfinite)
    return vol


def series_length(path: str | os.PathLike, array: str | None = None) -> int:
    """How many time steps the file ``path`` holds along a time axis: the length of a NetCDF variable's time
    dimension, a NIfTI image's 4th axis or a ``.pvd``'s entries (1 for a single step with a time); 0 for a file
    without time (a 3-D image, a NetCDF variable without a time dimension, ``.vti``, ``.npy``, ``.raw``)."""
    from srn_core import series_readers

    suffix = data.suffix_of(path)
    if suffix == ".pvd":
        return len(series_readers.pvd_entries(path))
    if suffix in (".nc", ".nc4"):
        return series_readers.netcdf_time_steps(path, array)
    if suffix in (".nii", ".nii.gz"):
        return series_readers.nifti_time_steps(path)
    return 0


def read_input(paths, array: str | None = None, mask_nonfinite: bool = False, spacing=None, origin=None,
               axis_order: str | None = None, raw_shape=None, raw_dtype: str | None = None,
               time_selection: str | None = None, times=None, keep_series: bool = False):
    """What ``srn train INPUT...`` (and ``srn eval``'s reference) read: a :class:`~srn_core.data.Volume` or a
    :class:`~srn_core.series.TimeSeries`.

    ``paths`` is one path or several; an argument with ``*``, ``?`` or ``[`` (quoted, so the shell left it) is a
    glob pattern, expanded in natural order (``step2`` before ``step10``). One file of a series format (a NetCDF
    variable with a time dimension, a 4-D NIfTI, a ``.pvd``) is a series with its own times; several files are
    one step each, in the order given, at times ``0..N-1``. ``times`` replaces the time values (one per step of
    the input, before the selection; the unit is then unknown). ``time_selection`` (``--time``, see
    :func:`~srn_core.series.parse_time_selection`) picks steps; only those are read. One step is returned as a
    plain volume (a static model) unless ``keep_series``, which keeps the series of one step and its time.
    The other options are :func:`read_volume`'s, applied to every step.
    """
    from srn_core import series_readers
    from srn_core.series import TimeSeries, parse_time_selection

    files = series_readers.expand_inputs(paths)
    geo = {k: tuple(v) for k, v in (("spacing", spacing), ("origin", origin)) if v is not None}
    options = dict(array=array, mask_nonfinite=mask_nonfinite, axis_order=axis_order, raw_shape=raw_shape,
                   raw_dtype=raw_dtype, **geo)
    first = data.check_regular_file(files[0])
    count = series_length(first, array) if len(files) == 1 else 0
    if count:
        indices = None if time_selection is None else parse_time_selection(time_selection, count)
        if times is not None and len(times) != count:
            raise ValueError(f"--times gives {len(times)} times but {str(first)!r} holds {count} time steps.")
        series = _read_series_file(first, options, indices)
        if times is not None:
            chosen = indices if indices is not None else range(count)
            series = TimeSeries(series.steps, [float(times[i]) for i in chosen])
    else:
        for path in files if len(files) > 1 else []:
            if series_length(data.check_regular_file(path), array) > 1:  # one step with a time is one volume
                raise ValueError(f"input file {path!r} holds a time series; a list of inputs is one volume per "
                                 f"file (give a series file alone).")
        if len(files) == 1 and times is None:  # one plain volume: it has no time to keep
            if time_selection is not None:
                raise ValueError(f"--time {time_selection} selects time steps, but {str(first)!r} holds one volume; "
                                 f"give a series (several files, a glob, a .pvd, a NetCDF variable with a time "
                                 f"dimension or a 4-D NIfTI).")
            return read_volume(first, **options)
        indices = None if time_selection is None else parse_time_selection(time_selection, len(files))
        series = series_readers.read_file_series(files, lambda p: read_volume(p, **options), times,
                                                 indices=indices)
    if len(series) == 1 and not keep_series:
        return series.steps[0]
    return series


STREAMED_SUFFIXES = (".raw", ".npy", ".nc", ".nc4", ".h5", ".hdf5", ".vti")
"""Suffixes :func:`open_input` opens box by box (:func:`srn_core.volume_files.open_source`) when the file holds
one static volume; a VTI only when its data are raw appended, uncompressed (others are read whole)."""


def open_input(paths, array: str | None = None, mask_nonfinite: bool = False, spacing=None, origin=None,
               axis_order: str | None = None, raw_shape=None, raw_dtype: str | None = None,
               time_selection: str | None = None, times=None, data_memory: int | None = None):
    """What ``srn train INPUT...`` trains on: a :class:`~srn_core.volume_source.VolumeSource` read box by box
    from disk for one static volume in a format that allows it (raw, npy, NetCDF and HDF5 hyperslabs, raw
    appended VTI), so that training holds only what ``TrainConfig.data_memory`` allows; otherwise (a series,
    a compressed VTI, NIfTI) what :func:`read_input` reads whole, as before. A VTI read whole although it is
    larger than ``data_memory`` (bytes) is said in a warning. The other options are :func:`read_input`'s."""
    from srn_core import series_readers

    files = series_readers.expand_inputs(paths)
    read = dict(time_selection=time_selection, times=times)
    if len(files) == 1 and time_selection is None and times is None:
        path = data.check_regular_file(files[0])
        suffix = data.suffix_of(path)
        # (A headerless file under another suffix, e.g. data.bin with --raw-shape, is read whole as before.)
        if suffix in STREAMED_SUFFIXES and series_length(path, array) == 0:
            source, why = _open_source(path, suffix, array, mask_nonfinite, spacing, origin, axis_order, raw_shape,
                                       raw_dtype)
            if source is not None:
                return source
            volume = read_input(files, array, mask_nonfinite, spacing, origin, axis_order, raw_shape, raw_dtype,
                                **read)
            nbytes = 4 * volume.geometry.num_points
            if data_memory is not None and nbytes > data_memory:
                warnings.warn(f"{why}; it is read whole ({format_bytes(nbytes)} of float32, more than "
                              f"--data-memory {format_bytes(data_memory)}).", stacklevel=2)
            return volume
    return read_input(files, array, mask_nonfinite, spacing, origin, axis_order, raw_shape, raw_dtype, **read)


def _open_source(path: Path, suffix: str, array, mask_nonfinite, spacing, origin, axis_order, raw_shape,
                 raw_dtype):
    """``(open_source of one file with the command's options, None)``, or ``(None, why)`` for a VTI whose data
    cannot be read box by box (compressed, base64 or inline): :func:`read_input` then reads it whole (and gives
    its own error if it cannot read it either)."""
    from srn_core import volume_files

    if suffix == ".raw" and (raw_shape is None or raw_dtype is None):
        raise ValueError(f"raw file {str(path)!r} needs --raw-shape and --raw-dtype.")
    geo = {k: tuple(v) for k, v in (("spacing", spacing), ("origin", origin)) if v is not None}
    try:
        source = volume_files.open_source(path, array=array, raw_shape=None if raw_shape is None else tuple(raw_shape),
                                          raw_dtype=raw_dtype, axis_order=axis_order, mask_nonfinite=mask_nonfinite,
                                          **geo)
    except ValueError as exc:
        if suffix != ".vti":
            raise
        return None, str(exc).rstrip(".")
    if geo and suffix == ".vti":  # the file's own geometry, overridden as _placed overrides it for a whole read
        g = source.geometry
        source.geometry = ImageGeometry(g.dims, geo.get("origin", g.origin), geo.get("spacing", g.spacing))
    return source, None


def _read_series_file(path: Path, options: dict, indices):
    """The series in one file (``.pvd``, NetCDF with time, 4-D NIfTI), ``--spacing``/``--origin`` applied."""
    from srn_core import series_readers
    from srn_core.series import TimeSeries

    suffix = data.suffix_of(path)
    geo = {k: options[k] for k in ("spacing", "origin") if k in options}
    if suffix == ".pvd":
        from paraview_plugin.vtk_series import read_pvd  # needs VTK

        series = read_pvd(path, options["array"], options["mask_nonfinite"], indices)
    elif suffix in (".nc", ".nc4"):
        series = series_readers.read_netcdf_series(path, options["array"], options["axis_order"], indices=indices,
                                                   **geo)
    else:
        series = series_readers.read_nifti_series(path, options["array"], options["mask_nonfinite"], indices)
    steps = [_placed(step, suffix, geo, options["mask_nonfinite"]) for step in series.steps]
    return TimeSeries(steps, series.times, series.time_unit)


def check_model_output(out: str | os.PathLike, source: str | os.PathLike, what: str = "the input volume",
                       consequence: str = "replace the training data") -> Path:
    """Refuse a model path that would fail only after the work (training, re-encoding), or that would destroy
    ``source`` (``what``: a volume, or a model file or peer folder being re-encoded). Returns ``out`` as a Path."""
    out = Path(out)
    sources = [Path(s) for s in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    suffix = data.suffix_of(out)
    if suffix in VOLUME_SUFFIXES + SERIES_SUFFIXES:
        raise ValueError(f"output {str(out)!r} has the volume suffix {suffix!r} but a model file is written there; "
                         f"name it e.g. {out.name[:-len(suffix)] or 'model'}.srn.")
    if out.is_dir():
        raise ValueError(f"output {str(out)!r} is a directory; it must be a file path in an existing folder.")
    folder = out.parent
    if not folder.resolve().is_dir():
        raise ValueError(f"output {str(out)!r} must be a file path in an existing folder.")
    for source in sources:
        if out.exists() and source.exists() and (os.path.samefile(out, source) or
                                                 (source.is_dir() and out.resolve().is_relative_to(source.resolve()))):
            where = f"inside {what} {str(source)!r}" if source.is_dir() else f"{what} {str(source)!r} (the same file)"
            raise ValueError(f"output {str(out)!r} is {where}; writing the model there would {consequence}.")
    try:
        check_folder_writable(out)
    except OSError as exc:
        raise OSError(f"cannot write the model to folder {str(folder)!r} ({exc.strerror or exc}); "
                      f"choose an output in a writable folder.") from None
    return out


def check_output_suffix(path: str | os.PathLike) -> str:
    """The suffix of an output volume file, refusing one we cannot write (before any work is done)."""
    suffix = data.suffix_of(path)
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"output file {str(path)!r} must end in .vti or .npy.")
    return suffix


def stream_volume(path: str | os.PathLike, geometry: ImageGeometry, name: str, chunks: Iterable,
                  what: str = "the output") -> None:
    """Write a float32 image on ``geometry`` from ``chunks``: 1-D pieces (NumPy arrays or CPU tensors) of its
    values in flat order (x fastest), as :func:`srn_core.evaluate.image_chunks` yields them.

    ``.npy`` stores each piece as it comes (header, then the pieces), so memory stays O(piece) whatever the
    output size; ``.vti`` needs the whole array for VTK's writer, so the pieces fill one float32 array that VTK
    shares without a copy. Both are written atomically. ``what`` names what asked for the output (e.g.
    ``"--dims 512 512 512"``) in the error when it cannot fit on disk or in memory, checked before any work.
    """
    suffix = check_output_suffix(path)
    n = geometry.num_points
    nbytes = n * 4
    what = f"{what} (a float32 output)"
    if suffix == ".npy":
        folder = Path(path).parent if str(Path(path).parent) else Path(".")
        if folder.is_dir():
            free = shutil.disk_usage(folder).free
            if nbytes > free:
                raise OSError(f"{what} needs {format_bytes(nbytes)} on disk but only {format_bytes(free)} is free "
                              f"in {str(folder)!r}; ask for less.")

        def write(tmp):
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                      "shape": geometry.shape}
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                done = 0
                for piece in chunks:
                    piece = np.asarray(piece, dtype="<f4")
                    f.write(memoryview(np.ascontiguousarray(piece)).cast("B"))
                    done += piece.size
            if done != n:
                raise RuntimeError(f"the evaluation gave {done} values for {n} points.")

        atomic_write(path, write)
    else:
        check_allocation(nbytes, what)
        values = _gather(chunks, n)
        _write_vti_without_copy(path, values.reshape(geometry.shape), geometry, name)


def write_volume(path: str | os.PathLike, values: np.ndarray, geometry: ImageGeometry, name: str) -> None:
    """Write ``values`` ``(nz, ny, nx)`` on ``geometry`` as ``.vti`` (VTK) or ``.npy``, atomically."""
    suffix = check_output_suffix(path)
    values = np.ascontiguousarray(values, dtype=np.float32)
    if suffix == ".vti":
        _write_vti_without_copy(path, values, geometry, name)
    else:
        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, values)
        atomic_write(path, write)


def check_series_output(path: str | os.PathLike) -> Path:
    """A ``.pvd`` output path for a series in a writable folder, checked before any work."""
    path = Path(path)
    if data.suffix_of(path) != ".pvd":
        raise ValueError(f"output {str(path)!r} must end in .pvd: --all-steps writes a ParaView collection (one "
                         f".vti per time step beside it).")
    if path.is_dir() or not (path.parent if str(path.parent) else Path(".")).resolve().is_dir():
        raise ValueError(f"output {str(path)!r} must be a file path in an existing folder.")
    try:
        check_folder_writable(path)
    except OSError as exc:
        raise OSError(f"cannot write to folder {str(path.parent)!r} ({exc.strerror or exc}); choose an output in "
                      f"a writable folder.") from None
    return path


def stream_series(path: str | os.PathLike, geometry: ImageGeometry, name: str, steps: Iterable, count: int,
                  what: str = "the output") -> Path:
    """Write a ``.pvd`` collection at ``path`` with one ``.vti`` per ``(time, chunks)`` of ``steps`` (``chunks`` as
    :func:`stream_volume` takes them); one step's values are in memory at a time. Returns the ``.pvd`` path."""
    from paraview_plugin.vtk_series import write_pvd_series

    check_series_output(path)
    n = geometry.num_points
    check_allocation(n * 4, f"{what} (a float32 output per time step)")

    def images():
        for t, chunks in steps:
            values = _gather(chunks, n)
            yield t, _image_sharing(values.reshape(geometry.shape), geometry, name)

    return write_pvd_series(path, images(), count)


def _gather(chunks: Iterable, n: int) -> np.ndarray:
    """The 1-D float32 pieces of ``chunks`` in one array of ``n`` values."""
    values = np.empty(n, dtype=np.float32)
    done = 0
    for piece in chunks:
        piece = np.asarray(piece, dtype=np.float32)
        values[done:done + piece.size] = piece
        done += piece.size
    if done != n:
        raise RuntimeError(f"the evaluation gave {done} values for {n} points.")
    return values


def _image_sharing(values: np.ndarray, geometry: ImageGeometry, name: str):
    """A ``vtkImageData`` whose point scalars are ``values`` (C-contiguous float32 ``(nz, ny, nx)``) without a
    copy: VTK's array keeps a reference to them."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    image = vtkImageData()
    image.SetExtent(*geometry.whole_extent)
    image.SetOrigin(*geometry.origin)
    image.SetSpacing(*geometry.spacing)
    array = numpy_support.numpy_to_vtk(values.reshape(-1), deep=0)  # a view; numpy_to_vtk keeps it alive
    array.SetName(name)
    image.GetPointData().SetScalars(array)
    return image


def _write_vti_without_copy(path, values: np.ndarray, geometry: ImageGeometry, name: str) -> None:
    """``values`` (C-contiguous float32) as the point scalars of a ``.vti``; VTK's array shares their memory."""
    from paraview_plugin.vtk_image import write_vti

    write_vti(path, _image_sharing(values, geometry, name))
