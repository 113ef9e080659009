"""`srn` on time series: train on a glob of VTIs (steps, times, the file ratio of every step), resample at any time
in range and every step as a .pvd, list the steps, evaluate per step; series inputs (NetCDF with time, 4-D NIfTI,
.pvd, --time, --times) and the one clear error of a step unlike the others, with no model written."""

import functools
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from core_samples import analytic_series_values, write_vti_series
from srn_core.geometry import ImageGeometry
from srn_runner import run_srn

srn = functools.partial(run_srn, timeout=120)
GEOMETRY = ImageGeometry((16, 16, 16), (1.0, -2.0, 0.5), (0.5, 1.0, 2.0))
TIMES = [0.0, 1.0, 2.0]
TRAIN = ("--steps", 200, "--batch-size", 4096, "--params", 5000, "--seed", 0, "--quiet")


def srn_here(capsys, *args):
    """``srn ARGS`` in this process (an error path is fast here; what a user runs is tested with :func:`srn`):
    a :class:`subprocess.CompletedProcess`-like result."""
    from types import SimpleNamespace

    from srn.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def one_error(out, command: str) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"srn {command}: error: "), out.stderr
    return lines[0][len(f"srn {command}: error: "):]


def pvd_steps(path):
    """``[(time, vti path)]`` of a .pvd, parsed here independently of the readers under test."""
    root = ElementTree.parse(path).getroot()
    return [(float(d.get("timestep")), os.path.join(os.path.dirname(path), d.get("file")))
            for d in root.find("Collection").findall("DataSet")]


@pytest.fixture(scope="module")
def series_model(tmp_path_factory):
    """``(folder, model path, stdout of srn train)``: a time-varying model trained by `srn train` on a quoted glob
    of three VTIs whose names sort wrongly as text (step_10 is the last step)."""
    folder = tmp_path_factory.mktemp("series")
    paths = write_vti_series(folder, GEOMETRY, TIMES)
    os.rename(paths[2], folder / "step_10.vti")  # step_2 -> step_10: natural order keeps it last
    out = srn("train", folder / "step_*.vti", "-o", folder / "m.srn", *TRAIN)
    assert out.returncode == 0, out.stderr
    return folder, folder / "m.srn", out.stdout


def test_train_on_a_glob_learns_every_step_at_its_time(series_model):
    from srn_core.loading import load_model
    from srn_core.series import TimeSeries, series_psnr
    from srn_core.data import Volume

    folder, path, stdout = series_model
    model = load_model(path)
    assert model.time_steps == TIMES and model.is_time_varying
    assert "time      3: 0, 1, 2" in stdout
    assert "over all 4,096 voxels x 3 time steps" in stdout
    # The file ratio counts every step's data: 3 x 16^3 float32 values over the file's bytes.
    assert model.file_ratio == pytest.approx(3 * 4096 * 4 / os.path.getsize(path))
    assert f"data 49.2 kB / file {os.path.getsize(path):,} bytes" in stdout
    series = TimeSeries([Volume(analytic_series_values(GEOMETRY, t), GEOMETRY, "v") for t in TIMES], TIMES)
    measured = series_psnr(model, series)
    assert measured["psnr"] > 30  # measured 35.8 dB
    assert float(stdout.split("PSNR")[1].split()[0]) == pytest.approx(measured["psnr"], abs=0.01)


def test_resample_at_a_time_between_steps_is_the_models_value_there(series_model, tmp_path):
    from paraview_plugin.vtk_image import read_vti
    from srn_core.loading import load_model

    folder, path, _ = series_model
    out = srn("resample", path, "--time", 0.5, "-o", tmp_path / "half.vti", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "at time 0.5" in out.stdout
    expected = load_model(path).resample(time=0.5)
    got = read_vti(tmp_path / "half.vti")
    assert got.geometry == GEOMETRY and got.name == "v"
    assert np.abs(got.values - expected).max() <= 1e-6
    # Between steps it differs from both neighbours (a blend, not the nearest step).
    model = load_model(path)
    assert np.abs(got.values - model.resample(time=0.0)).max() > 0.05
    assert np.abs(got.values - model.resample(time=1.0)).max() > 0.05


def test_resample_all_steps_writes_a_pvd_of_every_step(series_model, tmp_path):
    from paraview_plugin.vtk_image import read_vti
    from srn_core.loading import load_model

    folder, path, _ = series_model
    out = srn("resample", path, "--all-steps", "-o", tmp_path / "all.pvd", "--quiet")
    assert out.returncode == 0, out.stderr
    steps = pvd_steps(tmp_path / "all.pvd")
    assert [t for t, _ in steps] == TIMES
    assert sorted(os.listdir(tmp_path)) == ["all.pvd", "all_0000.vti", "all_0001.vti", "all_0002.vti"]
    model = load_model(path)
    for t, vti in steps:
        assert np.abs(read_vti(vti).values - model.resample(time=t)).max() <= 1e-6
    mode = os.stat(tmp_path / "all.pvd").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask and os.stat(steps[0][1]).st_mode & 0o777 == 0o666 & ~umask


def test_resample_asks_for_a_time_in_range(series_model, trained_model, tmp_path, capsys):
    folder, path, _ = series_model
    srn = functools.partial(srn_here, capsys)
    assert one_error(srn("resample", path, "-o", tmp_path / "a.vti"), "resample") == (
        f"model {str(path)!r} is time-varying (3 steps from 0 to 2); give --time T (any time in that range) or "
        f"--all-steps -o OUT.pvd.")
    assert one_error(srn("resample", path, "--time", 2.5, "-o", tmp_path / "a.vti"), "resample") == (
        "--time 2.5 is outside the model's time range [0, 2].")
    assert one_error(srn("resample", path, "--all-steps", "-o", tmp_path / "a.vti"), "resample").startswith(
        f"output {str(tmp_path / 'a.vti')!r} must end in .pvd")
    static = trained_model[0]
    assert one_error(srn("resample", static, "--time", 1, "-o", tmp_path / "a.vti"), "resample") == (
        f"--time: model {str(static)!r} is static, it has no time; resample it without --time.")
    assert one_error(srn("resample", static, "--all-steps", "-o", tmp_path / "a.pvd"), "resample") == (
        f"--all-steps: model {str(static)!r} is static, it has no time; resample it without --all-steps.")
    assert os.listdir(tmp_path) == []


def test_info_lists_the_time_steps(series_model):
    out = srn("info", series_model[1])
    assert out.returncode == 0, out.stderr
    assert "time steps    3: 0, 1, 2" in out.stdout.splitlines()
    assert "data dims     16 x 16 x 16 points (4,096 x 3 steps; 49.2 kB as float32)" in out.stdout.splitlines()


def test_eval_of_a_series_prints_psnr_per_step_and_over_the_series(series_model, capsys):
    from paraview_plugin.vtk_image import read_vti
    from srn_core.loading import load_model
    from srn_core.metrics import psnr
    from srn_core.series import TimeSeries, series_psnr

    folder, path, _ = series_model
    out = srn("eval", path, folder / "step_0.vti", folder / "step_1.vti", folder / "step_10.vti")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    files = [folder / n for n in ("step_0.vti", "step_1.vti", "step_10.vti")]
    expected = series_psnr(load_model(path), TimeSeries([read_vti(f) for f in files], TIMES))
    lines = out.stdout.splitlines()
    per_step = [float(line.split("PSNR")[1].split()[0]) for line in lines if line.startswith("t=")]
    assert per_step == pytest.approx(expected["psnr_per_step"], abs=6e-4)
    assert [line.split()[0] for line in lines if line.startswith("t=")] == ["t=0", "t=1", "t=2"]
    overall = next(line for line in lines if line.startswith("PSNR "))
    assert overall.endswith("dB over all 3 time steps")
    assert float(overall.split()[1]) == pytest.approx(expected["psnr"], abs=6e-4)
    # One file at a stated time is a series of one step (its own value range); without a time it is refused.
    one = srn("eval", path, folder / "step_1.vti", "--times", 1)
    assert one.returncode == 0, one.stderr
    alone = psnr(read_vti(files[1]).values, load_model(path).resample(time=1.0))
    assert float(one.stdout.split("\nt=1")[1].split("PSNR")[1].split()[0]) == pytest.approx(alone, abs=6e-4)
    assert one_error(srn_here(capsys, "eval", path, folder / "step_1.vti"), "eval").startswith(
        f"model {str(path)!r} is time-varying (time 0 to 2) but reference {str(folder / 'step_1.vti')!r} has no "
        f"time; give its time with --times T")


def test_a_step_unlike_the_others_is_one_error_and_no_model_is_written(tmp_path):
    from paraview_plugin.vtk_image import image_from_array, write_vti

    write_vti_series(tmp_path, GEOMETRY, [0.0, 1.0])
    other = ImageGeometry((16, 16, 15), GEOMETRY.origin, GEOMETRY.spacing)
    write_vti(tmp_path / "step_2.vti", image_from_array(analytic_series_values(other, 2.0), other, "v"))
    before = sorted(os.listdir(tmp_path))
    message = one_error(srn("train", tmp_path / "step_*.vti", "-o", tmp_path / "m.srn", *TRAIN), "train")
    assert message == (f"time step 2 (t=2, file {str(tmp_path / 'step_2.vti')!r}) has dims (16, 16, 15) but step 0 "
                       f"(file {str(tmp_path / 'step_0.vti')!r}) has (16, 16, 16); every step of a series needs the "
                       f"same grid.")
    assert sorted(os.listdir(tmp_path)) == before


def test_a_pvd_collection_trains_with_its_times_and_key_frames_size_the_file(tmp_path, capsys):
    """A .pvd written by write_pvd_series, read back with its own times; --ratio counts all steps, --key-frames."""
    from paraview_plugin.vtk_series import read_pvd, write_pvd_series
    from srn_core.loading import load_model

    times = [0.0, 0.5, 1.5, 3.0]
    pvd = write_pvd_series(tmp_path, ((t, (analytic_series_values(GEOMETRY, t), GEOMETRY, "v")) for t in times))
    assert pvd == tmp_path / "series.pvd" and [t for t, _ in pvd_steps(pvd)] == times
    series = read_pvd(pvd)
    assert series.times == times and np.array_equal(series.steps[2].values, analytic_series_values(GEOMETRY, 1.5))
    (tmp_path / "mesh.pvd").write_text(pvd.read_text().replace("series_0002.vti", "mesh.vtu"))
    with pytest.raises(ValueError, match=r"mesh.pvd': time step 2 \(t=1.5\) is '.*mesh.vtu'; only image \(.vti\) "
                                         r"steps can be read"):
        read_pvd(tmp_path / "mesh.pvd")
    out = srn("train", pvd, "-o", tmp_path / "m.srn", "--steps", 5, "--batch-size", 512, "--ratio", 4,
              "--key-frames", 2, "--float32", "--quiet")
    assert out.returncode == 0, out.stderr
    model = load_model(tmp_path / "m.srn")
    assert model.time_steps == times and model.field.config.key_times == [0.0, 3.0]
    # --ratio 4 of all four steps' bytes (float32 files are sized exactly; compressed ones are estimated)
    assert 0.9 * 16384 <= model.file_bytes <= len(times) * GEOMETRY.num_points * 4 / 4 == 16384
    assert one_error(srn_here(capsys, "train", pvd, "-o", tmp_path / "n.srn", "--key-frames", 9, "--steps", 5),
                     "train") == (
        "--key-frames 9: key_frames must be from 2 to the series' 4 steps, got 9.")


def test_time_selection_of_a_series_file(tmp_path, capsys):
    """--time picks steps (one step is a static model); on a single volume it is an error."""
    from srn import io
    from srn_core.loading import load_model
    from srn_core.series import TimeSeries

    write_vti_series(tmp_path, GEOMETRY, TIMES)
    picked = io.read_input([str(tmp_path / "step_*.vti")], time_selection="0:3:2")
    assert isinstance(picked, TimeSeries) and picked.times == [0.0, 2.0]
    out = srn("train", tmp_path / "step_*.vti", "--time", 1, "-o", tmp_path / "m.srn", "--steps", 5, "--params",
              2000, "--quiet")
    assert out.returncode == 0, out.stderr
    assert load_model(tmp_path / "m.srn").time_steps is None
    assert one_error(srn_here(capsys, "train", tmp_path / "step_0.vti", "--time", 0, "-o", tmp_path / "n.srn"),
                     "train") == (
        f"--time 0 selects time steps, but {str(tmp_path / 'step_0.vti')!r} holds one volume; give a series "
        f"(several files, a glob, a .pvd, a NetCDF variable with a time dimension or a 4-D NIfTI).")
    assert one_error(srn_here(capsys, "train", tmp_path / "step_*.vti", "--time", 5, "-o", tmp_path / "n.srn"),
                     "train") == (
        "--time selection '5' selects steps [5]; the series has steps 0 to 2.")


def test_netcdf_and_4d_nifti_inputs_are_series_with_their_times(tmp_path):
    import netCDF4
    import nibabel

    from srn import io

    values = [analytic_series_values(GEOMETRY, t) for t in TIMES]
    with netCDF4.Dataset(tmp_path / "a.nc", "w") as ds:
        for name, size in zip(("time", "z", "y", "x"), (3, *GEOMETRY.shape)):
            ds.createDimension(name, size)
        ds.createVariable("v", "f4", ("time", "z", "y", "x"))[:] = np.stack(values)
        t = ds.createVariable("time", "f8", ("time",))
        t[:] = [0.0, 6.0, 12.0]
        t.units = "hours since 2000-01-01"
    s = io.read_input([str(tmp_path / "a.nc")], spacing=GEOMETRY.spacing, origin=GEOMETRY.origin)
    assert s.times == [0.0, 6.0, 12.0] and s.time_unit == "hours since 2000-01-01" and s.geometry == GEOMETRY
    assert np.array_equal(s.steps[1].values, values[1])
    step = io.read_input([str(tmp_path / "a.nc")], time_selection="2")  # one step: a plain volume
    assert step.__class__.__name__ == "Volume" and np.array_equal(step.values, values[2])
    kept = io.read_input([str(tmp_path / "a.nc")], time_selection="2", keep_series=True)
    assert kept.times == [12.0]
    with pytest.raises(ValueError, match="has 3 time steps along dimension 'time'"):
        io.read_volume(tmp_path / "a.nc")
    restamped = io.read_input([str(tmp_path / "a.nc")], times=[0.0, 0.25, 0.5], time_selection="1:")
    assert restamped.times == [0.25, 0.5] and restamped.time_unit == ""

    xyzt = np.stack([np.transpose(v, (2, 1, 0)) for v in values], axis=3)
    img = nibabel.Nifti1Image(xyzt, np.diag([*GEOMETRY.spacing, 1.0]))
    img.header.set_zooms((*GEOMETRY.spacing, 2.5))
    img.header.set_xyzt_units("mm", "msec")
    nibabel.save(img, str(tmp_path / "b.nii.gz"))
    s = io.read_input([str(tmp_path / "b.nii.gz")])
    assert s.times == [0.0, 2.5, 5.0] and s.time_unit == "ms" and s.geometry.spacing == GEOMETRY.spacing
    assert np.array_equal(s.steps[2].values, values[2])
    # A series file among several inputs is refused, first or not: the list is one volume per file.
    np.save(tmp_path / "a.npy", values[0])
    with pytest.raises(ValueError, match=r"input file '.*b.nii.gz' holds a time series; a list of inputs is one "
                                         r"volume per file"):
        io.read_input([str(tmp_path / "a.npy"), str(tmp_path / "b.nii.gz")])
    with pytest.raises(ValueError, match=r"input file '.*a.nc' holds a time series"):
        io.read_input([str(tmp_path / "a.nc"), str(tmp_path / "a.npy")])
