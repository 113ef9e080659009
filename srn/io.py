"""Reading and writing volumes by file name, for the command line (the only layer that knows every format).

VTK XML images go through the VTK layer; everything else through :mod:`srn_core.data`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from srn_core import data
from srn_core.geometry import ImageGeometry
from srn_core.memory import check_allocation, format_bytes
from srn_core.modelfile import atomic_write, check_folder_writable

VOLUME_SUFFIXES = (".vti", ".nii", ".nii.gz", ".nc", ".nc4", ".npy", ".raw")
OUTPUT_SUFFIXES = (".vti", ".npy")


def read_volume(path: str | os.PathLike, array: str | None = None, mask_nonfinite: bool = False,
                spacing=None, origin=None, axis_order: str | None = None,
                raw_shape=None, raw_dtype: str | None = None) -> data.Volume:
    """Read the volume in ``path``, picking the reader by suffix.

    ``array`` selects the array (VTI) or variable (NetCDF); ``spacing``/``origin`` override or supply the
    geometry for formats that have none (npy, raw, NetCDF); ``axis_order`` names the world axis of each array
    axis (default ``zyx``, the C order of a ``(nz, ny, nx)`` array). ``mask_nonfinite`` reaches every reader,
    whose :class:`~srn_core.data.Volume` would otherwise refuse the NaNs before it could apply.
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
    elif suffix == ".raw" or raw_shape is not None:
        if raw_shape is None or raw_dtype is None:
            raise ValueError(f"raw file {str(path)!r} needs --raw-shape and --raw-dtype.")
        vol = data.read_raw(path, raw_shape, raw_dtype, name=array, axis_order=axis_order or "zyx",
                            mask_nonfinite=mask_nonfinite, **geo)
    else:
        raise ValueError(f"input file {str(path)!r} has an unknown suffix {suffix!r}; "
                         f"supported: {', '.join(VOLUME_SUFFIXES)}.")
    if mask_nonfinite and not vol.mask_nonfinite:  # NetCDF decides from its own fill values
        vol = data.Volume(vol.values, vol.geometry, vol.name, mask_nonfinite=True)
    if geo and suffix in (".vti", ".nii", ".nii.gz"):
        g = vol.geometry
        vol = data.Volume(vol.values, ImageGeometry(g.dims, geo.get("origin", g.origin), geo.get("spacing", g.spacing)),
                          vol.name, vol.mask_nonfinite)
    return vol


def check_model_output(out: str | os.PathLike, source: str | os.PathLike, what: str = "the input volume",
                       consequence: str = "replace the training data") -> Path:
    """Refuse a model path that would fail only after the work (training, re-encoding), or that would destroy
    ``source`` (``what``: a volume, or a model file or peer folder being re-encoded). Returns ``out`` as a Path."""
    out, source = Path(out), Path(source)
    suffix = data.suffix_of(out)
    if suffix in VOLUME_SUFFIXES:
        raise ValueError(f"output {str(out)!r} has the volume suffix {suffix!r} but a model file is written there; "
                         f"name it e.g. {out.name[:-len(suffix)] or 'model'}.srn.")
    if out.is_dir():
        raise ValueError(f"output {str(out)!r} is a directory; it must be a file path in an existing folder.")
    folder = out.parent
    if not folder.resolve().is_dir():
        raise ValueError(f"output {str(out)!r} must be a file path in an existing folder.")
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
        values = np.empty(n, dtype=np.float32)
        done = 0
        for piece in chunks:
            piece = np.asarray(piece, dtype=np.float32)
            values[done:done + piece.size] = piece
            done += piece.size
        if done != n:
            raise RuntimeError(f"the evaluation gave {done} values for {n} points.")
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


def _write_vti_without_copy(path, values: np.ndarray, geometry: ImageGeometry, name: str) -> None:
    """``values`` (C-contiguous float32) as the point scalars of a ``.vti``; VTK's array shares their memory."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    from paraview_plugin.vtk_image import write_vti

    image = vtkImageData()
    image.SetExtent(*geometry.whole_extent)
    image.SetOrigin(*geometry.origin)
    image.SetSpacing(*geometry.spacing)
    flat = values.reshape(-1)  # a view; it (and ``values``) outlive the write below
    array = numpy_support.numpy_to_vtk(flat, deep=0)
    array.SetName(name)
    image.GetPointData().SetScalars(array)
    write_vti(path, image)
