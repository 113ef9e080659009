"""srn_core.series_readers and the NetCDF time handling of srn_core.data: a NetCDF variable with a time dimension
and a 4-D NIfTI read as a series with their own times (never silently one step), lists and globs in natural
order, .pvd indexes, and one error naming the step and the file of a step unlike the first."""

import os

import numpy as np
import pytest

from srn_core import data
from srn_core.data import Volume
from srn_core.geometry import ImageGeometry
from srn_core.series_readers import (expand_inputs, natural_key, netcdf_time_steps, nifti_time_steps, pvd_entries,
                                     read_file_series, read_netcdf_series, read_nifti_series)

TIMES = [0.0, 6.0, 12.0, 24.0]


def step_values(i: int, shape=(4, 5, 6)) -> np.ndarray:
    """Step ``i`` of a series: each value says its step and place (``1000 i + flat index``)."""
    return (1000.0 * i + np.arange(np.prod(shape))).reshape(shape).astype(np.float32)


def write_netcdf(path, dims, shape, coordinates=None, variable="theta", fill=None):
    """A NetCDF file with ``variable`` over ``dims`` of ``shape``, value ``1000 * first index + flat index of the
    rest``, and 1-D coordinate variables ``{dim: (values, attributes)}``."""
    import netCDF4

    with netCDF4.Dataset(path, "w") as ds:
        for name, size in zip(dims, shape):
            ds.createDimension(name, size)
        v = ds.createVariable(variable, "f4", dims, fill_value=fill)
        for i in range(shape[0]):
            v[i] = step_values(i, shape[1:])
        for name, (values, attributes) in (coordinates or {}).items():
            c = ds.createVariable(name, "f8", (name,))
            c[:] = values
            c.setncatts(attributes)


# ---- NetCDF ------------------------------------------------------------------------------------

def test_netcdf_time_coordinate_gives_the_times_and_unit_and_every_step(tmp_path):
    path = tmp_path / "a.nc"
    write_netcdf(path, ("time", "z", "y", "x"), (4, 4, 5, 6),
                 {"time": (TIMES, {"units": "hours since 2000-01-01 00:00", "calendar": "standard"})})
    assert netcdf_time_steps(path) == 4
    s = read_netcdf_series(path, spacing=(1, 2, 3))
    assert s.times == TIMES and s.time_unit == "hours since 2000-01-01 00:00" and s.name == "theta"
    assert s.geometry.dims == (6, 5, 4) and s.geometry.spacing == (1, 2, 3)
    for i, step in enumerate(s.steps):
        assert np.array_equal(step.values, step_values(i))
    picked = read_netcdf_series(path, indices=[1, 3])
    assert picked.times == [6.0, 24.0] and np.array_equal(picked.steps[1].values, step_values(3))


def test_a_single_volume_read_never_drops_time_steps_silently(tmp_path):
    """The old reader took index 0 of every extra dimension: 3 of these 4 steps were lost without a word."""
    path = tmp_path / "a.nc"
    write_netcdf(path, ("time", "z", "y", "x"), (4, 4, 5, 6), {"time": (TIMES, {"units": "days since 1970-1-1"})})
    with pytest.raises(ValueError, match=r"NetCDF variable 'theta' in '.*a.nc' has 4 time steps along dimension "
                                         r"'time'; read it as a time series \(srn train reads every step\) or pick "
                                         r"steps with --time."):
        data.read_netcdf(path)
    one = data.read_netcdf(path, index={"time": 2})  # the caller chose the step
    assert np.array_equal(one.values, step_values(2))


@pytest.mark.parametrize("name, attributes", [("tt", {"axis": "T"}), ("when", {"standard_name": "time"}),
                                              ("step", {"units": "seconds since 2020-01-01"})])
def test_time_is_found_by_the_cf_attributes_of_its_coordinate(tmp_path, name, attributes):
    path = tmp_path / "a.nc"
    write_netcdf(path, (name, "z", "y", "x"), (3, 4, 5, 6), {name: ([1.0, 2.0, 4.0], attributes)})
    s = read_netcdf_series(path)
    assert s.times == [1.0, 2.0, 4.0] and s.time_unit == attributes.get("units", "")


def test_a_time_dimension_without_coordinate_counts_its_steps(tmp_path):
    path = tmp_path / "a.nc"
    write_netcdf(path, ("t", "z", "y", "x"), (3, 4, 5, 6))
    s = read_netcdf_series(path)
    assert s.times == [0.0, 1.0, 2.0] and s.time_unit == ""
    assert np.array_equal(s.steps[2].values, step_values(2))


def test_other_extra_dimensions_are_an_error_naming_them_and_length_one_ones_are_squeezed(tmp_path):
    path = tmp_path / "member.nc"
    write_netcdf(path, ("member", "z", "y", "x"), (2, 4, 5, 6))
    with pytest.raises(ValueError, match=r"has dimension 'member' of length 2 besides its spatial dimensions "
                                         r"\('z', 'y', 'x'\); a volume has 3 axes: extract one 'member' first"):
        data.read_netcdf(path)
    path = tmp_path / "one.nc"
    write_netcdf(path, ("member", "level", "z", "y", "x"), (1, 1, 4, 5, 6))
    assert np.array_equal(data.read_netcdf(path).values, step_values(0))
    path = tmp_path / "series.nc"
    write_netcdf(path, ("time", "member", "z", "y", "x"), (2, 3, 4, 5, 6))
    with pytest.raises(ValueError, match=r"^NetCDF variable 'theta' in '.*series.nc' has dimension 'member' of "
                                         r"length 3 besides"):
        read_netcdf_series(path)


def test_a_time_dimension_of_one_step_is_squeezed_and_time_is_never_a_spatial_axis(tmp_path):
    path = tmp_path / "one.nc"
    write_netcdf(path, ("time", "z", "y", "x"), (1, 4, 5, 6), {"time": ([42.0], {"units": "hours since 2000-1-1"})})
    assert np.array_equal(data.read_netcdf(path).values, step_values(0))
    assert read_netcdf_series(path).times == [42.0]
    path = tmp_path / "plane.nc"  # (time, y, x): 2-D over time, not a volume whose z is time
    write_netcdf(path, ("time", "y", "x"), (3, 5, 6))
    with pytest.raises(ValueError, match="has 3 time steps along dimension 'time'"):
        data.read_netcdf(path)
    with pytest.raises(ValueError, match=r"leaves dimensions \['y', 'x'\], need exactly 3"):
        read_netcdf_series(path)


def test_missing_time_values_and_bad_selections_are_clear_errors(tmp_path):
    import netCDF4

    path = tmp_path / "a.nc"
    write_netcdf(path, ("time", "z", "y", "x"), (3, 4, 5, 6), {"time": ([0.0, 1.0, 2.0], {"units": "s since 2000"})})
    with netCDF4.Dataset(path, "a") as ds:
        ds.variables["time"][1] = np.ma.masked
    with pytest.raises(ValueError, match=r"time coordinate 'time' has missing values at steps \[1\]"):
        read_netcdf_series(path)
    write_netcdf(path, ("time", "z", "y", "x"), (3, 4, 5, 6), {"time": ([0.0, 2.0, 1.0], {"units": "s since 2000"})})
    with pytest.raises(ValueError, match=r"a.nc': time step 2 has time 1, not after step 1's 2; times must increase"):
        read_netcdf_series(path)
    with pytest.raises(ValueError, match=r"time step indices \[5\] are out of range for NetCDF variable 'theta', "
                                         r"which has steps 0 to 2"):
        read_netcdf_series(path, indices=[0, 5])


# ---- NIfTI -------------------------------------------------------------------------------------

def write_nifti_4d(path, xyzt: np.ndarray, zooms, unit="sec"):
    import nibabel

    img = nibabel.Nifti1Image(xyzt, np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", unit)
    nibabel.save(img, str(path))


@pytest.mark.parametrize("unit, ours", [("sec", "s"), ("msec", "ms"), ("usec", "us")])
def test_4d_nifti_times_from_the_time_step_and_unit(tmp_path, unit, ours):
    steps = [step_values(i) for i in range(3)]  # (z, y, x)
    xyzt = np.stack([np.transpose(v, (2, 1, 0)) for v in steps], axis=3)
    write_nifti_4d(tmp_path / "a.nii.gz", xyzt, (1.0, 2.0, 3.0, 0.5), unit)
    assert nifti_time_steps(tmp_path / "a.nii.gz") == 3
    s = read_nifti_series(tmp_path / "a.nii.gz")
    assert s.times == [0.0, 0.5, 1.0] and s.time_unit == ours and s.name == "a"
    assert s.geometry.dims == (6, 5, 4) and s.geometry.spacing == (1.0, 2.0, 3.0)
    for got, want in zip(s.steps, steps):
        assert np.array_equal(got.values, want)
    assert read_nifti_series(tmp_path / "a.nii.gz", indices=[2]).times == [1.0]
    with pytest.raises(ValueError, match=r"NIfTI file '.*a.nii.gz' holds 3 time steps \(a 4-D image of shape "
                                         r"\(6, 5, 4, 3\)\); read it as a time series"):
        data.read_nifti(tmp_path / "a.nii.gz")


def test_4d_nifti_without_a_time_step_counts_and_a_spectral_axis_is_refused(tmp_path):
    xyzt = np.zeros((3, 4, 5, 2), np.float32)
    write_nifti_4d(tmp_path / "a.nii", xyzt, (1.0, 1.0, 1.0, 0.0))
    s = read_nifti_series(tmp_path / "a.nii")
    assert s.times == [0.0, 1.0] and s.time_unit == ""
    write_nifti_4d(tmp_path / "hz.nii", xyzt, (1.0, 1.0, 1.0, 5.0), "hz")
    with pytest.raises(ValueError, match=r"has a 4th axis in 'hz', not time"):
        read_nifti_series(tmp_path / "hz.nii")
    assert nifti_time_steps(tmp_path / "hz.nii") == 2


def test_nibabels_example4d_reads_as_a_series_of_two_steps():
    import nibabel

    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "example4d.nii.gz")
    s = read_nifti_series(path)
    assert len(s) == 2 and s.times == [0.0, 2000.0] and s.time_unit == "s"
    assert s.geometry.dims == (128, 96, 24) and s.geometry.spacing == pytest.approx((2.0, 2.0, 2.2), rel=1e-6)
    whole = nibabel.load(path).get_fdata(dtype=np.float32)
    assert np.array_equal(s.steps[1].values, np.transpose(whole[..., 1], (2, 1, 0)))


# ---- lists, globs, .pvd ------------------------------------------------------------------------

def test_globs_expand_in_natural_order_and_lists_keep_theirs(tmp_path):
    for i in (10, 2, 1):
        np.save(tmp_path / f"step{i}.npy", step_values(i))
    assert [os.path.basename(p) for p in expand_inputs([str(tmp_path / "step*.npy")])] == \
        ["step1.npy", "step2.npy", "step10.npy"]
    listed = [str(tmp_path / n) for n in ("step10.npy", "step1.npy")]
    assert expand_inputs(listed) == listed
    assert sorted(["b10", "b9", "a2", "b10a"], key=natural_key) == ["a2", "b9", "b10", "b10a"]
    with pytest.raises(FileNotFoundError, match=r"input pattern '.*nope\*.npy' matches no file"):
        expand_inputs([str(tmp_path / "nope*.npy")])
    literal = tmp_path / "odd[1].npy"  # an existing name with glob characters is that file
    np.save(literal, step_values(0))
    assert expand_inputs([str(literal)]) == [str(literal)]


def test_a_file_series_reads_the_selected_files_at_their_times():
    read = []
    geometry = ImageGeometry((6, 5, 4))

    def read_one(path):
        read.append(path)
        return Volume(step_values(int(path[1:])), geometry, "v")

    s = read_file_series(["f0", "f1", "f2", "f3"], read_one, times=[0.0, 0.5, 2.0, 3.0], indices=[1, 3])
    assert s.times == [0.5, 3.0] and read == ["f1", "f3"] and np.array_equal(s.steps[1].values, step_values(3))
    with pytest.raises(ValueError, match="--times gives 3 times for 4 input files"):
        read_file_series(["f0", "f1", "f2", "f3"], read_one, times=[0.0, 1.0, 2.0])


def test_a_step_unlike_the_first_is_one_error_naming_its_index_and_file_and_stops_reading():
    read = []

    def read_one(path):
        read.append(path)
        dims = (6, 5, 3) if path == "c.vti" else (6, 5, 4)
        return Volume(np.zeros(dims[::-1], np.float32), ImageGeometry(dims), "v")

    with pytest.raises(ValueError, match=r"^time step 2 \(t=2, file 'c.vti'\) has dims \(6, 5, 3\) but step 0 "
                                         r"\(file 'a.vti'\) has \(6, 5, 4\); every step of a series needs the same "
                                         r"grid.$"):
        read_file_series(["a.vti", "b.vti", "c.vti", "d.vti"], read_one)
    assert read == ["a.vti", "b.vti", "c.vti"]
    read.clear()
    with pytest.raises(ValueError, match=r"^time step 2 \(t=2, file 'c.vti'\) has dims \(6, 5, 3\) but step 1 "
                                         r"\(file 'b.vti'\) has"):
        read_file_series(["a.vti", "b.vti", "c.vti"], read_one, indices=[1, 2])

    def broken(path):
        raise ValueError("input file 'b.vti' holds no image points (truncated or corrupt?).")
    with pytest.raises(ValueError, match=r"^time step 0 \(t=0, file 'b.vti'\): input file 'b.vti' holds no image"):
        read_file_series(["b.vti"], broken)


def write_pvd(path, datasets: str):
    path.write_text(f'<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n<Collection>\n{datasets}\n'
                    f'</Collection>\n</VTKFile>\n')


def test_pvd_entries_give_times_and_files_beside_the_collection(tmp_path):
    write_pvd(tmp_path / "s.pvd", '<DataSet timestep="0.5" part="0" file="d/a.vti"/>\n'
                                  '<DataSet timestep="1.25" part="0" file="b.vti"/>')
    assert pvd_entries(tmp_path / "s.pvd") == [(0.5, tmp_path / "d" / "a.vti"), (1.25, tmp_path / "b.vti")]
    write_pvd(tmp_path / "n.pvd", '<DataSet file="a.vti"/><DataSet file="b.vti"/>')
    assert [t for t, _ in pvd_entries(tmp_path / "n.pvd")] == [0.0, 1.0]


@pytest.mark.parametrize("datasets, message", [
    ('<DataSet timestep="0" part="0" file="a0.vti"/><DataSet timestep="0" part="1" file="a1.vti"/>',
     r"has several datasets at timestep 0 \(DataSets 0 and 1, parts 0 and 1\); a collection of several parts per "
     r"step is not supported"),
    ('<DataSet timestep="0" file="a.vti"/><DataSet file="b.vti"/>', "DataSet 1 has no timestep attribute"),
    ('<DataSet timestep="soon" file="a.vti"/>', "DataSet 0 has timestep 'soon', not a number"),
    ('<DataSet timestep="0"/>', "DataSet 0 has no file attribute"),
    ("", r"lists no <DataSet>"),
])
def test_bad_pvd_collections_are_one_clear_error(tmp_path, datasets, message):
    write_pvd(tmp_path / "s.pvd", datasets)
    with pytest.raises(ValueError, match=message):
        pvd_entries(tmp_path / "s.pvd")


def test_a_file_that_is_not_a_collection_is_refused(tmp_path):
    (tmp_path / "a.pvd").write_text('<VTKFile type="ImageData"><ImageData/></VTKFile>')
    with pytest.raises(ValueError, match=r"is not a ParaView collection \(.pvd\)"):
        pvd_entries(tmp_path / "a.pvd")
    (tmp_path / "b.pvd").write_text("<VTKFile")
    with pytest.raises(ValueError, match="is not valid XML"):
        pvd_entries(tmp_path / "b.pvd")
