"""srn_core.data: Volume checks and the readers (npy, raw, NIfTI), including non-finite values and bad files."""

import os

import numpy as np
import pytest

from srn_core import data
from srn_core.geometry import ImageGeometry


def _with_nan() -> np.ndarray:
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 1] = np.inf
    return arr


def _write_nifti(path, xyz: np.ndarray, zooms=(1.0, 1.0, 1.0)):
    import nibabel

    img = nibabel.Nifti1Image(xyz, np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    nibabel.save(img, str(path))


@pytest.mark.parametrize("fmt", ["npy", "raw", "nifti"])
def test_mask_nonfinite_reaches_every_reader(tmp_path, fmt):
    """The readers used to build the Volume (which refuses NaN) before the flag could apply; now they take it."""
    arr = _with_nan()  # (z, y, x)
    if fmt == "npy":
        np.save(tmp_path / "a.npy", arr)
        read = lambda **kw: data.read_numpy(tmp_path / "a.npy", **kw)
    elif fmt == "raw":
        arr.tofile(tmp_path / "a.raw")
        read = lambda **kw: data.read_raw(tmp_path / "a.raw", (4, 5, 6), "<f4", **kw)
    else:
        _write_nifti(tmp_path / "a.nii.gz", np.transpose(arr, (2, 1, 0)).copy())
        read = lambda **kw: data.read_nifti(tmp_path / "a.nii.gz", **kw)
    with pytest.raises(ValueError, match="holds 2 non-finite values"):
        read()
    vol = read(mask_nonfinite=True)
    assert vol.mask_nonfinite and vol.values.shape == (4, 5, 6)
    assert int(np.isnan(vol.values).sum()) == 2 and np.isnan(vol.values[1, 2, 3]) and np.isnan(vol.values[0, 0, 1])
    assert vol.finite_mask.sum() == 118 and vol.value_range == (0.0, 119.0)


def test_raw_dtype_that_is_not_a_numeric_dtype_is_one_clear_error(tmp_path):
    np.zeros(8, np.float32).tofile(tmp_path / "a.raw")
    with pytest.raises(ValueError, match=r"raw dtype 'bogus' \(--raw-dtype\) is not a NumPy dtype"):
        data.read_raw(tmp_path / "a.raw", (2, 2, 2), "bogus")
    with pytest.raises(ValueError, match=r"raw dtype 'U1' \(--raw-dtype\) is not numeric"):
        data.read_raw(tmp_path / "a.raw", (2, 2, 2), "U1")


def test_truncated_nifti_is_one_clear_error(tmp_path):
    _write_nifti(tmp_path / "a.nii.gz", np.random.default_rng(0).random((30, 20, 10)).astype(np.float32))
    whole = (tmp_path / "a.nii.gz").read_bytes()
    for n, name in ((len(whole) // 2, "half"), (60, "head")):
        (tmp_path / f"{name}.nii.gz").write_bytes(whole[:n])
        with pytest.raises(ValueError, match=rf"NIfTI file '.*{name}.nii.gz' is truncated or corrupt"):
            data.read_nifti(tmp_path / f"{name}.nii.gz")


def test_values_whose_range_overflows_float32_are_refused():
    """max - min = 6e38 is inf in float32, where training normalises and the model rescales: refuse it clearly."""
    g = ImageGeometry((2, 2, 2))
    values = np.zeros((2, 2, 2), np.float32)
    values[0, 0, 0], values[1, 1, 1] = -3e38, 3e38
    with pytest.raises(ValueError, match=r"spans \[-3e\+38, 3e\+38\]: its range max - min overflows float32"):
        data.Volume(values, g, "big")
    values[0, 0, 0] = 0.0  # range 3e38: representable
    assert data.Volume(values, g).value_range == (0.0, pytest.approx(3e38, rel=1e-6))
    # float64 data beyond float32's largest value become inf on conversion: say so instead of "non-finite".
    with pytest.raises(ValueError, match=r"holds 1 values beyond float32's range"):
        data.Volume(np.full((2, 2, 2), 1.0) * np.array([1e300, 1, 1, 1, 1, 1, 1, 1]).reshape(2, 2, 2), g, "f64")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_opening_it(tmp_path):
    """Opening a FIFO for reading blocks until a writer appears: the readers check first."""
    os.mkfifo(tmp_path / "a.npy")
    with pytest.raises(ValueError, match=r"input file '.*a.npy' is not a regular file"):
        data.read_numpy(tmp_path / "a.npy")
    os.mkfifo(tmp_path / "a.raw")
    with pytest.raises(ValueError, match="is not a regular file"):
        data.read_raw(tmp_path / "a.raw", (1, 1, 1), "<f4")


def test_nifti_header_declaring_a_huge_image_is_refused_before_allocating(tmp_path, monkeypatch):
    """A few compressed bytes can declare any size; the header's is checked against the memory budget."""
    import nibabel

    import gzip
    import struct

    nibabel.save(nibabel.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(tmp_path / "small.nii"))
    raw = bytearray((tmp_path / "small.nii").read_bytes())
    raw[40:48] = struct.pack("<4h", 3, 4000, 4000, 4000)  # NIfTI-1 dim[0:4]: 256 GB of float32 declared
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setenv("SRN_MEMORY_LIMIT", "1GB")
    with pytest.raises(MemoryError, match=r"NIfTI file '.*huge.nii.gz' \(an image of 4000 x 4000 x 4000 points\) "
                                          r"needs 256 GB of memory"):
        data.read_nifti(tmp_path / "huge.nii.gz")
