"""The `srn` command end to end on real files: train, info, resample (VTI), eval, and bad inputs."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paraview_plugin.vtk_image import image_from_array, read_vti, write_vti
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from srn_runner import run_srn

INIA19 = Path("/usr/share/mricron/templates/inia19-t1-brain.nii.gz")


srn = run_srn


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained by the CLI on a VTI written with VTK (cell data, non-unit geometry)."""
    d = tmp_path_factory.mktemp("cli")
    g = ImageGeometry((25, 21, 17), (-3.0, 1.0, 2.0), (0.25, 0.5, 0.75))
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (17, 21, 25)], indexing="ij")
    values = (100 * np.exp(-((x - 0.4) ** 2 + (y - 0.5) ** 2 + (z - 0.6) ** 2) / 0.08)).astype(np.float32)
    image = image_from_array(values, g, "density")
    image.GetPointData().AddArray(image.GetPointData().GetScalars())  # also keep it as a plain array
    write_vti(d / "in.vti", image)
    out = srn("train", d / "in.vti", "-o", d / "m.srn", "--steps", 200, "--batch-size", 8192, "--ratio", 3,
              "--quiet", "--array", "density")
    assert out.returncode == 0, out.stderr
    return d, g, values, out.stdout


def test_train_prints_psnr_and_ratio_and_writes_a_loadable_model(trained):
    d, g, values, stdout = trained
    psnr = float(stdout.split("PSNR")[1].split()[0])
    assert psnr > 30, stdout  # measured 41.0 dB after 200 steps
    assert "ratio" in stdout and sorted(os.listdir(d)) == ["in.vti", "m.srn"]  # no checkpoint or temp file left
    model = load_model(d / "m.srn")
    assert model.geometry == g and model.array_name == "density"
    assert model.training["psnr"] == pytest.approx(psnr, abs=0.01)
    info = srn("info", d / "m.srn")
    assert info.returncode == 0 and "apmgsrn" in info.stdout and "25 x 21 x 17" in info.stdout
    # every provenance line is "key  value", also for the longest keys
    rows = [line.split() for line in info.stdout.splitlines() if line.startswith("training.")]
    assert ["training.stopped_because", "steps"] in rows and len(rows) == len(model.training)


def test_resample_writes_vti_with_geometry_and_values_of_the_model(trained, tmp_path):
    d, g, values, _ = trained
    model = load_model(d / "m.srn")
    out = srn("resample", d / "m.srn", "-o", tmp_path / "r.vti", "--dims", 13, 11, 9,
              "--bounds", -3, 3, 1, 11, 2, 14)
    assert out.returncode == 0, out.stderr
    vol = read_vti(tmp_path / "r.vti")
    assert vol.geometry.dims == (13, 11, 9) and vol.geometry.bounds == (-3, 3, 1, 11, 2, 14)
    assert vol.name == "density"
    expected = model.resample(ImageGeometry.from_bounds((-3, 3, 1, 11, 2, 14), (13, 11, 9)))
    assert np.abs(vol.values - expected).max() < 1e-5
    # Default: the training grid, so eval against the input reproduces the training PSNR.
    assert srn("resample", d / "m.srn", "-o", tmp_path / "full.vti").returncode == 0
    assert read_vti(tmp_path / "full.vti").geometry == g
    ev = srn("eval", d / "m.srn", d / "in.vti", "--array", "density")
    assert ev.returncode == 0, ev.stderr
    assert float(ev.stdout.split("PSNR")[1].split()[0]) == pytest.approx(model.training["psnr"], abs=0.01)
    assert 0.5 < float(ev.stdout.split("SSIM")[1].split()[0]) <= 1.0


@pytest.mark.parametrize("args, message", [
    (["train", "{d}/missing.vti", "-o", "{t}/x.srn"], "input file '{d}/missing.vti' does not exist"),
    (["train", "{d}/in.vti", "-o", "{t}/x.srn", "--array", "nope"], "array 'nope' is not a single-component"),
    (["train", "{d}/in.vti", "-o", "{t}/nofolder/x.srn"], "must be a file path in an existing folder"),
    (["info", "{t}/corrupt.srn"], "is truncated or not a safetensors file"),
    (["info", "{t}/pickle.srn"], "is truncated or not a safetensors file"),
    (["resample", "{d}/m.srn", "-o", "{t}/x.vti", "--dims", "0", "4", "4"], "argument --dims: must be a positive integer"),
    (["resample", "{d}/m.srn", "-o", "{t}/x.vti", "--dims", "4", "-2", "4"], "argument --dims: must be a positive integer"),
    (["resample", "{d}/m.srn", "-o", "{t}/x.vti", "--bounds", "0", "1", "5", "2", "0", "1"],
     "bounds are inverted on y: ymin=5.0 > ymax=2.0"),
    (["resample", "{d}/m.srn", "-o", "{t}/x.txt"], "must end in .vti or .npy"),
])
def test_bad_inputs_give_one_clear_error_and_leave_no_file(trained, tmp_path, args, message):
    d = trained[0]
    data = (d / "m.srn").read_bytes()
    (tmp_path / "corrupt.srn").write_bytes(data[:300])
    import pickle
    (tmp_path / "pickle.srn").write_bytes(pickle.dumps({"a": 1}))
    before = set(os.listdir(tmp_path))
    out = srn(*[a.format(d=d, t=tmp_path) for a in args])
    assert out.returncode != 0
    lines = [line for line in out.stderr.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and message.format(d=d, t=tmp_path) in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert set(os.listdir(tmp_path)) == before  # nothing partial written


@pytest.mark.skipif(not INIA19.exists(), reason="Debian package mricron-data is not installed")
def test_nifti_input_geometry_from_the_header():
    from srn import io
    vol = io.read_volume(INIA19)
    assert vol.geometry.dims == (168, 206, 128) and vol.geometry.spacing == (0.5, 0.5, 0.5)
    assert vol.values.shape == (128, 206, 168) and vol.value_range[1] == pytest.approx(383.1755, abs=1e-3)


def test_netcdf_npy_and_raw_readers(tmp_path):
    import netCDF4
    from srn import io
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    with netCDF4.Dataset(tmp_path / "a.nc", "w") as ds:
        for n, s in zip(("t", "z", "y", "x"), (2, 4, 5, 6)):
            ds.createDimension(n, s)
        v = ds.createVariable("theta", "f4", ("t", "z", "y", "x"))
        v[0] = arr
        v[1] = arr + 1000
        ds.createVariable("coord", "f4", ("x",))[:] = np.arange(6)
    # Two time steps are never read as one volume by silently taking the first (issue 10): a series, or --time.
    with pytest.raises(ValueError, match="has 2 time steps along dimension 't'"):
        io.read_volume(tmp_path / "a.nc", array="theta")
    series = io.read_input(tmp_path / "a.nc", array="theta")
    assert series.times == [0.0, 1.0] and np.array_equal(series.steps[1].values, arr + 1000)
    vol = io.read_input(tmp_path / "a.nc", array="theta", time_selection="0")
    assert vol.geometry.dims == (6, 5, 4) and np.array_equal(vol.values, arr)  # the first time step, as asked
    xzy = io.read_input(tmp_path / "a.nc", array="theta", axis_order="xzy", time_selection="0")
    assert xzy.geometry.dims == (4, 6, 5) and xzy.values[2, 3, 1] == arr[1, 2, 3]
    with pytest.raises(ValueError, match="no variable 'nope'"):
        io.read_volume(tmp_path / "a.nc", array="nope")
    np.save(tmp_path / "a.npy", arr.astype(np.uint8))
    vol = io.read_volume(tmp_path / "a.npy", spacing=(1, 2, 3))
    assert vol.values.dtype == np.float32 and vol.geometry.spacing == (1, 2, 3) and vol.values[3, 4, 5] == 119
    arr.astype(">i2").tofile(tmp_path / "a.raw")
    vol = io.read_volume(tmp_path / "a.raw", raw_shape=(4, 5, 6), raw_dtype=">i2")
    assert np.array_equal(vol.values, arr)
    with pytest.raises(ValueError, match="has 240 bytes but shape"):
        io.read_volume(tmp_path / "a.raw", raw_shape=(4, 5, 7), raw_dtype=">i2")


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    """A real SIGINT to `srn train`: exit code 130, a checkpoint, no model; --resume then completes the run."""
    import signal
    import time
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (12, 14, 16)], indexing="ij")
    np.save(tmp_path / "v.npy", (np.sin(4 * x) * y + z).astype(np.float32))
    cmd = [sys.executable, "-m", "srn.cli", "train", str(tmp_path / "v.npy"), "-o", str(tmp_path / "m.srn"),
           "--steps", "100000", "--batch-size", "2048", "--ratio", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = proc.stderr.readline()  # "training apmgsrn (...) on ..." is printed just before the first step
    assert started.startswith("training apmgsrn"), started
    time.sleep(6.0)  # well into the training loop, even on a loaded machine
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C) at step" in err and "--resume" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["m.srn.checkpoint", "v.npy"]
    step = int(err.split("interrupted (Ctrl-C) at step")[1].split(";")[0])
    assert step > 0
    done = subprocess.run(cmd[:8] + [str(step + 20)] + cmd[9:] + ["--resume"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"steps     {step + 20} in" in done.stdout
    assert sorted(os.listdir(tmp_path)) == ["m.srn", "v.npy"]
    assert load_model(tmp_path / "m.srn").training["steps"] == step + 20
