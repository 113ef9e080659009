"""srn_core.volume_files: every format read box by box equals the same file read whole (values, checksum, range)."""

import numpy as np
import pytest

from core_samples import analytic_volume
from srn_core.data import Volume, read_netcdf, read_nifti, read_numpy, read_raw
from srn_core.geometry import ImageGeometry
from srn_core.volume_files import MemmapSource, open_source


def _values(shape=(7, 9, 11), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 40 + 3


def _same(source, volume: Volume):
    """The source's streaming statistics and an odd box equal the whole-file volume's."""
    stats = source.statistics()
    assert stats.checksum == volume.checksum()
    assert stats.value_range == volume.value_range
    assert source.geometry == volume.geometry and source.name == volume.name
    box = np.s_[1:4, 2:6, 3:5]
    np.testing.assert_array_equal(source.read(box), volume.values[box])
    np.testing.assert_array_equal(source.load().values, volume.values)


@pytest.mark.parametrize("order", ["zyx", "xyz", "yxz"])
@pytest.mark.parametrize("dtype", ["<f4", ">f4", ">i2", "uint8", "<f8"])
def test_raw_memory_map_equals_read_raw(tmp_path, order, dtype):
    arr = _values()
    if np.dtype(dtype).kind in "iu":
        arr = np.clip(arr, 0, 200)
    path = tmp_path / "v.raw"
    arr.astype(dtype).tofile(path)
    kw = dict(spacing=(0.5, 1.0, 2.0), origin=(1.0, 2.0, 3.0), axis_order=order)
    src = open_source(path, raw_shape=arr.shape, raw_dtype=dtype, **kw)
    assert isinstance(src, MemmapSource)
    _same(src, read_raw(path, arr.shape, dtype, **kw))


def test_raw_offset_and_slabs_reach_every_byte(tmp_path):
    arr = _values((5, 7, 6))
    path = tmp_path / "v.raw"
    path.write_bytes(b"HEADER!" + arr.tobytes())
    src = open_source(path, raw_shape=arr.shape, raw_dtype="<f4", raw_offset=7)
    assert src.pass_bytes > 0
    src.pass_bytes = 4 * 7 * 6  # one z-slice per slab: the checksum must not depend on the slab size
    _same(src, read_raw(path, arr.shape, "<f4", offset=7))


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("order", ["zyx", "xzy"])
def test_npy_memory_map_equals_read_numpy(tmp_path, fortran, order):
    arr = _values()
    path = tmp_path / "v.npy"
    np.save(path, np.asfortranarray(arr.astype(">f4")) if fortran else arr)
    _same(open_source(path, axis_order=order), read_numpy(path, axis_order=order))


def test_hdf5_hyperslabs_equal_the_dataset(tmp_path):
    h5py = pytest.importorskip("h5py")
    arr = _values()
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("group/density", data=arr.astype(np.float64), chunks=(2, 3, 4))
        f.create_dataset("other2d", data=np.zeros((3, 3)))
    src = open_source(path, spacing=(1, 2, 3))
    assert src.name == "density"
    _same(src, Volume(arr, ImageGeometry(arr.shape[::-1], spacing=(1, 2, 3)), "density"))
    # A declared fill value becomes NaN (and the source masks it), as NetCDF's do.
    arr[1, 2, 3] = -999
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=arr).attrs["_FillValue"] = -999.0
    src = open_source(path)
    assert src.mask_nonfinite and src.statistics().nonfinite == 1
    assert np.isnan(src.read(np.s_[1:2, 2:3, 3:4])[0, 0, 0])


def test_netcdf_hyperslabs_equal_read_netcdf(tmp_path):
    netCDF4 = pytest.importorskip("netCDF4")
    arr = _values()
    path = tmp_path / "v.nc"
    with netCDF4.Dataset(path, "w") as ds:
        for d, n in zip(("time", "z", "y", "x"), (1,) + arr.shape):
            ds.createDimension(d, n)
        v = ds.createVariable("temp", "f4", ("time", "z", "y", "x"), fill_value=-1e30)
        data = arr.copy()
        data[2, 3, 4] = -1e30  # a fill value: NaN in both readers
        v[0] = data
    whole = read_netcdf(path)
    src = open_source(path)
    assert whole.mask_nonfinite and src.mask_nonfinite
    _same(src, whole)
    assert src.statistics().nonfinite == 1


def test_nifti_is_read_whole(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    arr = _values()
    path = tmp_path / "v.nii.gz"
    nibabel.save(nibabel.Nifti1Image(arr, np.diag([0.5, 1, 2, 1])), str(path))
    _same(open_source(path), read_nifti(path))


def _vti(tmp_path, vol, compress, name="v.vti", appended=True, encode=False):
    pytest.importorskip("vtkmodules")
    from vtkmodules.vtkIOXML import vtkXMLImageDataWriter

    from paraview_plugin.vtk_image import image_from_array

    image = image_from_array(vol.values, vol.geometry, vol.name)
    writer = vtkXMLImageDataWriter()
    writer.SetFileName(str(tmp_path / name))
    writer.SetInputData(image)
    writer.SetDataModeToAppended() if appended else writer.SetDataModeToBinary()
    writer.SetEncodeAppendedData(encode)
    if not compress:
        writer.SetCompressorTypeToNone()
    assert writer.Write() == 1
    return tmp_path / name


def test_raw_appended_vti_equals_vtk_reader(tmp_path):
    pytest.importorskip("vtkmodules")
    from paraview_plugin.vtk_image import read_vti

    vol = analytic_volume()
    path = _vti(tmp_path, vol, compress=False)
    src = open_source(path)
    assert isinstance(src, MemmapSource)
    _same(src, read_vti(path))
    with pytest.raises(ValueError, match="no single-component point array 'nope'"):
        open_source(path, array="nope")


@pytest.mark.parametrize("kind", ["zlib", "base64", "inline"])
def test_vti_that_cannot_be_mapped_is_one_clear_error(tmp_path, kind):
    vol = analytic_volume()
    path = _vti(tmp_path, vol, compress=kind == "zlib", encode=kind == "base64", appended=kind != "inline")
    with pytest.raises(ValueError, match=r"v\.vti' cannot be read out of core"):
        open_source(path)


def test_raw_size_mismatch_names_the_file(tmp_path):
    path = tmp_path / "short.raw"
    _values().tofile(path)
    with pytest.raises(ValueError, match=r"short\.raw' has 2772 bytes but shape \(7, 9, 12\)"):
        open_source(path, raw_shape=(7, 9, 12), raw_dtype="<f4")
    with pytest.raises(ValueError, match="needs raw_shape and raw_dtype"):
        open_source(path)


def test_reads_release_the_map(tmp_path):
    """A read hands back its own float32 copy: nothing keeps the file mapped (the bound on resident memory)."""
    import os

    arr = _values()
    path = tmp_path / "v.raw"
    arr.tofile(path)
    src = open_source(path, raw_shape=arr.shape, raw_dtype="<f4")
    box = src.read(np.s_[2:5, :, :])
    assert box.flags.owndata and box.dtype == np.float32
    maps = open(f"/proc/{os.getpid()}/maps").read() if os.path.exists(f"/proc/{os.getpid()}/maps") else ""
    assert str(path) not in maps
