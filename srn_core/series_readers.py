"""Readers that produce a :class:`~srn_core.series.TimeSeries`: a NetCDF variable with a time dimension, a 4-D
NIfTI image, a list (or glob) of single-volume files, and the index of a ParaView ``.pvd`` collection.

Every reader takes the step ``indices`` to read (a ``--time`` selection, :func:`~srn_core.series.
parse_time_selection`) so that unselected steps are never read, checks the memory the selected steps need before
reading them, and names the step (and its file) in any error. No VTK here: ``.vti`` steps are read by a function
the caller passes in (``paraview_plugin.vtk_series`` does, for ``.pvd`` collections).
"""

from __future__ import annotations

import glob
import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import data
from .data import Volume
from .memory import check_allocation
from .series import TimeSeries

GLOB_CHARACTERS = "*?["


# ---- NetCDF ------------------------------------------------------------------------------------

def netcdf_time_steps(path: str | os.PathLike, variable: str | None = None) -> int:
    """How many time steps the NetCDF ``variable`` (default: the only one of 3+ dimensions) has: the length of
    its time dimension, 0 without one."""
    netCDF4 = _netcdf4()
    path = data.check_regular_file(path)
    with netCDF4.Dataset(str(path)) as ds:
        var = data.open_netcdf_variable(ds, path, variable)
        dim = data.netcdf_time_dimension(ds, var)
        return 0 if dim is None else len(ds.dimensions[dim])


def read_netcdf_series(path: str | os.PathLike, variable: str | None = None, axis_order: str | None = None,
                       spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                       indices: Sequence[int] | None = None) -> TimeSeries:
    """Every step (or the steps at ``indices``) of a NetCDF variable with a time dimension, as a series.

    Times are the time coordinate's values and ``time_unit`` its ``units`` (``hours since 1970-01-01``); without
    a coordinate variable the step indices. Other dimensions follow :func:`srn_core.data.read_netcdf`.
    """
    netCDF4 = _netcdf4()
    path = data.check_regular_file(path)
    with netCDF4.Dataset(str(path)) as ds:
        var = data.open_netcdf_variable(ds, path, variable)
        dim = data.netcdf_time_dimension(ds, var)
        if dim is None:
            raise ValueError(f"NetCDF variable {var.name!r} in {str(path)!r} has no time dimension (dimensions "
                             f"{var.dimensions}); it is one volume, not a series.")
        times, unit = data.netcdf_time_values(ds, dim, path)
        indices = _checked_indices(indices, len(times), f"NetCDF variable {var.name!r}")
        _, spatial = data.netcdf_spatial_selection(ds, var, path, {dim: 0})
        points = int(np.prod([len(ds.dimensions[d]) for d in spatial], dtype=np.float64))
        check_allocation(4.0 * points * len(indices), f"NetCDF variable {var.name!r} in {str(path)!r} "
                                                      f"({len(indices)} time steps of {points:,} points)")
        steps = []
        for i in indices:
            index, _ = data.netcdf_spatial_selection(ds, var, path, {dim: i})
            steps.append(_step(i, times[i], path, lambda: data.read_netcdf_step(var, index, var.name, axis_order,
                                                                                 spacing, origin)))
    return _series(steps, [times[i] for i in indices], unit, path)


def _netcdf4():
    try:
        import netCDF4
    except ImportError:
        raise ImportError("reading NetCDF files needs netCDF4: pip install netCDF4") from None
    return netCDF4


# ---- NIfTI -------------------------------------------------------------------------------------

NIFTI_TIME_UNITS = {"sec": "s", "msec": "ms", "usec": "us", "unknown": ""}
"""nibabel's names of NIfTI's time units (``xyzt_units``) and ours; the others (hz, ppm, rads) are not time."""


def nifti_time_steps(path: str | os.PathLike) -> int:
    """How many volumes the NIfTI image holds along its 4th axis: 0 for a 3-D image."""
    img, _ = data.load_nifti(path)
    return int(img.shape[3]) if len(img.shape) >= 4 else 0


def read_nifti_series(path: str | os.PathLike, name: str | None = None, mask_nonfinite: bool = False,
                      indices: Sequence[int] | None = None) -> TimeSeries:
    """The volumes of a 4-D NIfTI image ``(x, y, z, t)`` (or those at ``indices``) as a series.

    Times are ``toffset + index * pixdim[4]`` in the header's time unit (``s``, ``ms``, ``us``) when the time
    step ``pixdim[4]`` is positive, else the indices (unit empty). A 4th axis in spectral units (Hz, ppm,
    rad/s) is not time: that is an error.
    """
    img, path = data.load_nifti(path)
    shape = tuple(img.shape)
    if len(shape) != 4:
        raise ValueError(f"NIfTI file {str(path)!r} holds a {len(shape)}-D image of shape {shape}; a time series "
                         f"is a 4-D image (x, y, z, t).")
    count = shape[3]
    time_unit = img.header.get_xyzt_units()[1]
    if time_unit not in NIFTI_TIME_UNITS:
        raise ValueError(f"NIfTI file {str(path)!r} has a 4th axis in {time_unit!r}, not time; it is not a time "
                         f"series.")
    step = float(img.header.get_zooms()[3])
    if step > 0 and np.isfinite(step):
        offset = float(img.header["toffset"]) if np.isfinite(float(img.header["toffset"])) else 0.0
        times, unit = [offset + i * step for i in range(count)], NIFTI_TIME_UNITS[time_unit]
    else:
        times, unit = [float(i) for i in range(count)], ""
    indices = _checked_indices(indices, count, f"NIfTI file {str(path)!r}")
    points = int(np.prod(shape[:3], dtype=np.float64))
    check_allocation(4.0 * points * len(indices),
                     f"NIfTI file {str(path)!r} ({len(indices)} time steps of {' x '.join(map(str, shape[:3]))} "
                     f"points)")
    steps = []
    for i in indices:
        def read(i=i):
            xyz = data.read_nifti_data(img, path, lambda image: image.dataobj[..., i])
            return data.nifti_volume(img, path, xyz, name, mask_nonfinite)
        steps.append(_step(i, times[i], path, read))
    return _series(steps, [times[i] for i in indices], unit, path)


# ---- lists of files ----------------------------------------------------------------------------

def natural_key(path: str | os.PathLike) -> list:
    """Sort key comparing the numbers in a name as numbers: ``step2`` before ``step10``."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", str(path)) if part]


def has_glob_characters(text: str) -> bool:
    return any(c in str(text) for c in GLOB_CHARACTERS)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """The files ``inputs`` name, in the order given: an argument with ``*``, ``?`` or ``[`` that is not itself
    an existing file is a glob pattern (quoted on the command line, so the shell did not expand it), expanded in
    natural order; a pattern that matches nothing is an error."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[str] = []
    for item in inputs:
        item = os.path.expanduser(str(item))
        if has_glob_characters(item) and not os.path.exists(item):
            matches = sorted(glob.glob(item), key=natural_key)
            if not matches:
                raise FileNotFoundError(f"input pattern {item!r} matches no file.")
            paths.extend(matches)
        else:
            paths.append(item)
    if not paths:
        raise ValueError("no input file given.")
    return paths


def read_file_series(paths: Sequence[str | os.PathLike], read_one: Callable[[str], Volume],
                     times: Sequence[float] | None = None, time_unit: str = "",
                     indices: Sequence[int] | None = None) -> TimeSeries:
    """One step per file of ``paths`` (in that order), read by ``read_one(path)``, at ``times`` (default
    ``0..N-1``). Only the files at ``indices`` are read. An error in a file, or a file unlike the first, is
    one error naming the step and the file."""
    paths = [str(p) for p in paths]
    if times is None:
        times = [float(i) for i in range(len(paths))]
    elif len(times) != len(paths):
        raise ValueError(f"--times gives {len(times)} times for {len(paths)} input files; give one per file.")
    indices = _checked_indices(indices, len(paths), f"the {len(paths)} input files")
    steps = []
    for i in indices:
        steps.append(_step(i, times[i], paths[i], lambda p=paths[i]: read_one(p)))
        if len(steps) > 1:
            _check_like_first(steps, [float(times[j]) for j in indices], indices, paths)
    return TimeSeries(steps, [float(times[i]) for i in indices], time_unit)


# ---- ParaView .pvd collections -----------------------------------------------------------------

def pvd_entries(path: str | os.PathLike) -> list[tuple[float, Path]]:
    """``[(time, file)]`` of a ParaView ``.pvd`` collection (``<Collection><DataSet timestep= file=/>``) in
    file order, files relative to the ``.pvd``'s folder. Times are the ``timestep`` attributes (the indices when
    no entry has one). Several datasets at one time step (parts of a pieced collection) are an error."""
    path = data.check_regular_file(path)
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise ValueError(f"collection {str(path)!r} is not valid XML ({exc}).") from None
    collection = root.find("Collection")
    if root.tag != "VTKFile" or root.get("type") != "Collection" or collection is None:
        raise ValueError(f"{str(path)!r} is not a ParaView collection (.pvd): it needs <VTKFile type=\"Collection\">"
                         f" holding a <Collection>.")
    datasets = collection.findall("DataSet")
    if not datasets:
        raise ValueError(f"collection {str(path)!r} lists no <DataSet>.")
    stamped = [d.get("timestep") is not None for d in datasets]
    if any(stamped) and not all(stamped):
        missing = stamped.index(False)
        raise ValueError(f"collection {str(path)!r}: DataSet {missing} has no timestep attribute but others do.")
    entries, by_time = [], {}
    for i, d in enumerate(datasets):
        file = d.get("file")
        if not file:
            raise ValueError(f"collection {str(path)!r}: DataSet {i} has no file attribute.")
        try:
            t = float(d.get("timestep")) if all(stamped) else float(i)
        except ValueError:
            raise ValueError(f"collection {str(path)!r}: DataSet {i} has timestep {d.get('timestep')!r}, not a "
                             f"number.") from None
        if t in by_time:
            raise ValueError(f"collection {str(path)!r} has several datasets at timestep {t:g} (DataSets "
                             f"{by_time[t]} and {i}, parts {datasets[by_time[t]].get('part', '?')} and "
                             f"{d.get('part', '?')}); a collection of several parts per step is not supported: "
                             f"give one image per time step.")
        by_time[t] = i
        entries.append((t, path.parent / file))
    return entries


# ---- shared ------------------------------------------------------------------------------------

def _checked_indices(indices, count: int, what: str) -> list[int]:
    if indices is None:
        return list(range(count))
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < count]
    if bad or not indices:
        raise ValueError(f"time step indices {bad or 'none'} are out of range for {what}, which has steps 0 to "
                         f"{count - 1}.")
    return indices


def _step(index: int, time: float, source, read: Callable[[], Volume]) -> Volume:
    """``read()``, its error (or a result that is not 3-D) naming time step ``index`` and ``source``."""
    try:
        return read()
    except (ValueError, OSError) as exc:
        raise type(exc)(f"time step {index} (t={time:g}, file {str(source)!r}): {exc}") from None


def _check_like_first(steps: list[Volume], times: list[float], indices: list[int], paths: list[str]) -> None:
    """Check the newest of ``steps`` against the first as soon as it is read (not after reading every file),
    with :class:`TimeSeries`'s own checks; its error then names both steps by their index and file."""
    try:
        TimeSeries([steps[0], steps[-1]], [times[0], times[len(steps) - 1]])
    except ValueError as exc:
        first, last = indices[0], indices[len(steps) - 1]
        text = re.sub(r"^time step 1 \(t=([^)]*)\)", lambda m: f"time step {last} (t={m.group(1)}, file "
                                                             f"{paths[last]!r})", str(exc))
        text = re.sub(r"^time step 1 has", f"time step {last} (file {paths[last]!r}) has", text)
        text = re.sub(r"\bstep 0(?:'s)?\b", lambda m: f"step {first}{m.group(0)[6:]} (file {paths[first]!r})",
                      text)
        raise ValueError(text) from None


def _series(steps: list[Volume], times: list[float], unit: str, source) -> TimeSeries:
    try:
        return TimeSeries(steps, times, unit)
    except ValueError as exc:
        raise ValueError(f"{str(source)!r}: {exc}") from None
