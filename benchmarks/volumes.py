"""The real volumes the benchmarks run on, each loaded by name with :func:`load_volume`.

* ``inia19``: the INIA19 macaque T1 template (Debian ``mricron-data``), 168x206x128 float32.
* ``mni152``: nilearn's bundled MNI152 2009a T1 template, 197x233x189, values in [0, 1].
* ``disk_out_ref``: ParaView's classic CFD tutorial set (``mayavi/tests/data/disk_out_ref.ex2`` from the PyPI
  ``mayavi`` wheel, installed ``--no-deps`` by ``scripts/setup.sh``; mayavi itself is never imported), its
  temperature ``Temp`` resampled with ``vtkResampleToImage`` to a regular grid of about 5.9 M points with the
  mesh's own aspect ratio (150 x 150 x 262, equal spacing).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from srn_core.data import Volume, read_nifti
from srn_core.geometry import ImageGeometry

NAMES = ("inia19", "mni152", "disk_out_ref")

DISK_OUT_REF_XY_POINTS = 150
"""Points along x and y of the resampled disk_out_ref grid; z gets as many as keep the spacing equal (262)."""


def load_volume(name: str) -> Volume:
    if name == "inia19":
        return read_nifti("/usr/share/mricron/templates/inia19-t1-brain.nii.gz", name="inia19_t1")
    if name == "mni152":
        import nilearn.datasets
        img = nilearn.datasets.load_mni152_template(resolution=1)
        arr = np.asarray(img.get_fdata(), dtype=np.float32)  # (x, y, z) axes
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        return Volume(np.ascontiguousarray(arr.transpose(2, 1, 0)), ImageGeometry(arr.shape, (0, 0, 0), zooms),
                      "mni152_t1")
    if name == "disk_out_ref":
        return disk_out_ref_temperature()
    raise ValueError(f"unknown volume {name!r}; choose one of {', '.join(NAMES)}.")


def disk_out_ref_temperature(xy_points: int = DISK_OUT_REF_XY_POINTS) -> Volume:
    """``Temp`` of disk_out_ref.ex2 on a regular grid; ``Volume.masked_fraction`` says how much was filled.

    The mesh is a cylinder inside its bounding box, so ``vtkResampleToImage`` marks the points outside it invalid
    (``vtkValidPointMask`` = 0) and leaves 0 K there. Those points are filled with the value of the nearest valid
    point (Euclidean distance transform): every compressor and model then sees a field that continues the
    cylinder's boundary values outward, with no artificial 0 K cliff that would dominate PSNR and no NaN the
    classical compressors cannot take. PSNR is taken over every voxel, filled ones included.
    """
    import vtk
    from scipy import ndimage
    from vtk.util.numpy_support import vtk_to_numpy

    spec = importlib.util.find_spec("mayavi")  # locates the data without importing mayavi (a GUI stack)
    if spec is None or spec.origin is None:
        raise ValueError("volume disk_out_ref needs the mayavi wheel's data: .venv/bin/pip install --no-deps mayavi")
    path = os.path.join(os.path.dirname(spec.origin), "tests", "data", "disk_out_ref.ex2")
    reader = vtk.vtkExodusIIReader()
    reader.SetFileName(path)
    reader.UpdateInformation()
    reader.SetObjectArrayStatus(vtk.vtkExodusIIReader.NODAL, "Temp", 1)
    reader.Update()
    bounds = [0.0] * 6
    reader.GetOutput().GetBounds(bounds)  # of the whole multiblock (a composite data set fills a given array)
    x0, x1, y0, y1, z0, z1 = bounds
    spacing = (x1 - x0) / (xy_points - 1)
    dims = (xy_points, int(round((y1 - y0) / spacing)) + 1, int(round((z1 - z0) / spacing)) + 1)
    resample = vtk.vtkResampleToImage()
    resample.SetInputConnection(reader.GetOutputPort())
    resample.SetSamplingDimensions(*dims)
    resample.Update()
    image = resample.GetOutput()
    pd = image.GetPointData()
    shape = image.GetDimensions()[::-1]  # VTK's x-fastest points as (nz, ny, nx)
    temp = vtk_to_numpy(pd.GetArray("Temp")).reshape(shape).astype(np.float32)
    valid = vtk_to_numpy(pd.GetArray(resample.GetMaskArrayName())).reshape(shape).astype(bool)
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    filled = np.ascontiguousarray(temp[tuple(nearest)])
    volume = Volume(filled, ImageGeometry(image.GetDimensions(), image.GetOrigin(), image.GetSpacing()),
                    "disk_out_ref_temp")
    volume.masked_fraction = float(1 - valid.mean())  # reported by the benchmark beside the volume's size
    return volume


# ---- time series (benchmarks/time_varying.py) ------------------------------------------------------------------
SERIES_NAMES = ("u_wind", "colpex")
"""Real time-varying Met Office model output from PyPI ``iris-sample-data`` (read with ``scitools-iris``):

* ``u_wind``: ``time_varying_hybrid_height/*.pp`` (15 monthly files, 360-day calendar), eastward wind (STASH
  m01s00i002), 15 steps x 5 model levels x 144 x 192 (a global 1.875 x 1.25 degree grid);
* ``colpex``: ``colpex.pp`` (a high-resolution UM run), potential temperature (STASH m01s00i004), 6 steps 10
  minutes apart x 10 levels x 83 x 83.

The level index is the z axis and every spacing is 1 (the models normalise each axis to [-1, 1] anyway, so the
spacing only places the data in a viewer; the hybrid-height levels are not evenly spaced). Times are hours since
the first step, from the fields' own validity times (cftime, so the 360-day calendar is respected).
"""

SERIES_STASH = {"u_wind": ("time_varying_hybrid_height", "m01s00i002", "u_wind"),
                "colpex": ("colpex.pp", "m01s00i004", "colpex_theta")}


def load_series(name: str):
    """The time series ``name`` (one of :data:`SERIES_NAMES`) as a :class:`srn_core.series.TimeSeries`."""
    import glob

    from srn_core.series import TimeSeries

    if name not in SERIES_STASH:
        raise ValueError(f"unknown time series {name!r}; choose one of {', '.join(SERIES_NAMES)}.")
    where, stash, array = SERIES_STASH[name]
    spec = importlib.util.find_spec("iris_sample_data")
    if spec is None or spec.origin is None:
        raise ValueError(f"time series {name} needs the iris sample data: .venv/bin/pip install iris-sample-data "
                         f"scitools-iris")
    path = os.path.join(os.path.dirname(spec.origin), "sample_data", where)
    files = sorted(glob.glob(os.path.join(path, "*.pp"))) if os.path.isdir(path) else [path]
    times, values = _read_pp_fields(files, stash)
    hours = [(t - times[0]).total_seconds() / 3600.0 for t in times]
    nt, nz, ny, nx = values.shape
    geometry = ImageGeometry((nx, ny, nz))
    steps = [Volume(values[i], geometry, array) for i in range(nt)]
    return TimeSeries(steps, hours, time_unit=f"hours since {times[0]}")


def _read_pp_fields(files, stash: str):
    """``(validity times, float32 values (time, level, y, x))`` of every field with ``stash`` in ``files``.

    ``iris.fileformats.pp.load`` reads the raw fields; ``iris.load`` is avoided (its cube merging crashes in this
    environment: xxhash "Strings must be encoded before hashing").
    """
    import iris.fileformats.pp as pp

    fields = [f for path in files for f in pp.load(path) if str(f.stash) == stash]
    if not fields:
        raise ValueError(f"no field with STASH {stash} in {', '.join(files)}.")
    times = sorted({f.t1 for f in fields})
    levels = sorted({int(f.lblev) for f in fields})
    out = np.full((len(times), len(levels), fields[0].lbrow, fields[0].lbnpt), np.nan, np.float32)
    for f in fields:
        out[times.index(f.t1), levels.index(int(f.lblev))] = np.ma.filled(f.data, np.nan)
    if not np.isfinite(out).all():
        raise ValueError(f"STASH {stash} in {files[0]}: {int((~np.isfinite(out)).sum())} values are missing.")
    return times, out
