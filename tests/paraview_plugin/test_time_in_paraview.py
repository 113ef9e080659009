"""Time in Debian's real pvpython / pvbatch: a time-varying model's source in ParaView's animation, at any time,
saved over time, in MPI pieces; Train Neural Volume on a PVD series; Neural Volume Error at a series step.

Each test writes a small ParaView script, runs it in a subprocess (``pv_scripts``) and checks what it wrote
against the model evaluated here, in the test process. Skipped when ParaView or the ParaView venv is missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import paraview_env
from core_samples import SERIES_GEOMETRY, SERIES_TIMES
from paraview_plugin.vtk_series import read_pvd, write_pvd_series
from pv_scripts import MPI_RANK, read_image, run_ok, script, values_of
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from srn_core.series import series_psnr

pytestmark = [pytest.mark.paraview,
              pytest.mark.skipif(paraview_env.missing_reason() is not None,
                                 reason=str(paraview_env.missing_reason()))]

TIMES = SERIES_TIMES
BETWEEN = 1.75
"""A time between two stored steps: only the model's interpolation answers it."""
GEOMETRY = SERIES_GEOMETRY
DIMS = (11, 9, 7)


FETCH = """
    from paraview import servermanager
    from vtkmodules.util.numpy_support import vtk_to_numpy
    import numpy

    def fetch(proxy, name):
        data = servermanager.Fetch(proxy)
        info = data.GetInformation()
        numpy.save(os.path.join(OUT, name + ".npy"), vtk_to_numpy(data.GetPointData().GetArray("density")))
        return info.Get(data.DATA_TIME_STEP()) if info.Has(data.DATA_TIME_STEP()) else None
"""

SOURCE_BODY = FETCH + """
    src = NeuralVolumeSource(FileName=sys.argv[1], SamplingDimensions=[{dims}], Device="cpu")
    report = {{"steps": list(src.TimestepValues), "range": list(src.GetProperty("TimeRange"))}}
    scene = GetAnimationScene()
    scene.UpdateAnimationUsingDataTimeSteps()
    report["keeper"] = list(GetTimeKeeper().TimestepValues)
    src.UpdatePipeline(time={between})
    report["fetched_time"] = fetch(src, "between")
    # The animation toolbar: the view's time reaches the source through the representation.
    view = CreateRenderView()
    view.ViewSize = [120, 100]
    Show(src, view)
    scene.AnimationTime = 0.4
    Render(view)
    shown = src.GetClientSideObject().GetOutputDataObject(0)
    report["shown_time"] = shown.GetInformation().Get(shown.DATA_TIME_STEP())
    numpy.save(os.path.join(OUT, "shown.npy"), vtk_to_numpy(shown.GetPointData().GetArray("density")))
    SaveData(os.path.join(OUT, "all.pvd"), proxy=src, WriteTimeSteps=1)
    reader = PVDReader(FileName=os.path.join(OUT, "all.pvd"))
    report["reread_steps"] = list(reader.TimestepValues)
    reader.UpdatePipeline(time={middle})
    report["reread_time"] = fetch(reader, "reread")
    json.dump(report, open(os.path.join(OUT, "report.json"), "w"))
"""


def test_source_in_pvpython_offers_the_steps_and_answers_any_time(pv_env, time_model, tmp_path):
    path, model = time_model
    body = SOURCE_BODY.format(dims=", ".join(map(str, DIMS)), between=BETWEEN, middle=TIMES[1])
    run_ok(["pvpython", script(tmp_path, body), str(path)], pv_env)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"] == report["keeper"] == TIMES and report["range"] == [TIMES[0], TIMES[-1]]
    geometry = ImageGeometry.from_bounds(model.bounds, DIMS)

    def check(name, t):
        values = np.load(tmp_path / f"{name}.npy").reshape(geometry.shape)
        np.testing.assert_allclose(values, model.resample(geometry, time=t), rtol=0, atol=1e-5)

    assert report["fetched_time"] == BETWEEN
    check("between", BETWEEN)
    assert report["shown_time"] == 0.4
    check("shown", 0.4)
    # SaveData(..., WriteTimeSteps=1): one image per model step, listed in a .pvd that ParaView reads back.
    assert report["reread_steps"] == TIMES and report["reread_time"] == TIMES[1]
    check("reread", TIMES[1])
    written = read_pvd(tmp_path / "all.pvd", "density")
    assert written.times == TIMES
    for t, step in zip(written.times, written.steps):
        np.testing.assert_allclose(step.values, model.resample(geometry, time=t), rtol=0, atol=1e-5)


MPI_BODY = MPI_RANK + """
    src = NeuralVolumeSource(FileName=sys.argv[1], SamplingDimensions=[{dims}], Device="cpu")
    src.UpdatePipeline(time={between})
    algorithm = src.GetClientSideObject()  # this rank's own VTK object (pvbatch --symmetric)
    local = algorithm.GetOutputDataObject(0)
    json.dump({{"ranks": ranks, "evaluated_points": algorithm.evaluated_points, "points": local.GetNumberOfPoints(),
               "time": local.GetInformation().Get(local.DATA_TIME_STEP())}},
              open(os.path.join(OUT, "rank%d.json" % rank), "w"))
    CreateWriter(os.path.join(OUT, "between.pvti"), src).UpdatePipeline(time={between})
"""


def test_mpi_ranks_write_their_pieces_at_a_time_between_steps(pv_env, time_model, tmp_path):
    path, model = time_model
    body = MPI_BODY.format(dims=", ".join(map(str, DIMS)), between=BETWEEN)
    cmd = paraview_env.mpirun_command(2, "pvbatch", pv_env) + ["--symmetric", script(tmp_path, body, load="py"),
                                                               str(path)]
    run_ok(cmd, pv_env, timeout=240)
    whole = int(np.prod(DIMS))
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["ranks"] == 2 and r["time"] == BETWEEN
        assert 0 < r["evaluated_points"] == r["points"] < whole  # each rank evaluated only its piece
    stitched = read_image(tmp_path / "between.pvti")
    geometry = ImageGeometry.from_bounds(model.bounds, DIMS)
    assert stitched.GetExtent() == geometry.whole_extent
    assert len(list((tmp_path / "between").glob("*.vti"))) == 2
    np.testing.assert_allclose(values_of(stitched, "density"), model.resample(geometry, time=BETWEEN), rtol=0,
                               atol=1e-5)


TRAIN_BODY = FETCH + """
    reader = PVDReader(FileName=sys.argv[1])
    trainer = TrainNeuralVolume(Input=reader, ModelFileName=os.path.join(OUT, "series.srn"), Steps=200,
                                ParameterBudget=5000, BatchSize=2048, Device="cpu")
    trainer.UpdatePipeline(time={between})
    algorithm = trainer.GetClientSideObject()
    report = {{"error": algorithm.last_error, "trained_time": fetch(trainer, "trained")}}
    trainer.UpdatePipeline(time=0.3)  # another time: the model answers, nothing is read or trained again
    report["later_time"] = fetch(trainer, "later")
    report["counts"] = [algorithm.gathers, algorithm.trainings]
    error = NeuralVolumeError(Input=reader, ModelFileName=os.path.join(OUT, "series.srn"), Device="cpu")
    error.UpdatePipeline(time={middle})
    report["metrics"] = error.GetClientSideObject().metrics
    json.dump(report, open(os.path.join(OUT, "train.json"), "w"))
"""


def test_train_neural_volume_learns_a_pvd_series_and_error_compares_its_steps(pv_env, series, tmp_path):
    pvd = write_pvd_series(tmp_path / "input.pvd", [(t, (s.values, s.geometry, s.name))
                                                    for t, s in zip(series.times, series.steps)])
    body = TRAIN_BODY.format(between=BETWEEN, middle=TIMES[1])
    run_ok(["pvpython", script(tmp_path, body), str(pvd)], pv_env, timeout=240)
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["error"] is None
    model = load_model(tmp_path / "series.srn")
    assert model.is_time_varying and model.time_steps == TIMES and model.geometry == GEOMETRY
    measured = series_psnr(model, series)
    assert measured["psnr"] > 30.0
    assert report["counts"] == [1, 1]
    for name, t in (("trained", BETWEEN), ("later", 0.3)):
        assert report[f"{name}_time"] == t
        values = np.load(tmp_path / f"{name}.npy").reshape(GEOMETRY.shape)
        np.testing.assert_allclose(values, model.resample(time=t), rtol=0, atol=1e-5)
    metrics = report["metrics"]
    assert metrics["ModelTime"] == TIMES[1]
    assert metrics["PSNR"] == pytest.approx(measured["psnr_per_step"][1], abs=1e-5)


MPI_TRAIN_BODY = MPI_RANK + """
    reader = PVDReader(FileName=sys.argv[1])
    trainer = TrainNeuralVolume(Input=reader, ModelFileName=os.path.join(OUT, "mpi.srn"), Steps=60,
                                ParameterBudget=5000, BatchSize=2048, Device="cpu")
    trainer.UpdatePipeline(time={between})
    algorithm = trainer.GetClientSideObject()  # this rank's own VTK object (pvbatch --symmetric)
    local = algorithm.GetOutputDataObject(0)
    json.dump({{"ranks": ranks, "points": local.GetNumberOfPoints(), "error": algorithm.last_error,
               "time": local.GetInformation().Get(local.DATA_TIME_STEP()),
               "counts": [algorithm.gathers, algorithm.trainings]}},
              open(os.path.join(OUT, "train%d.json" % rank), "w"))
    CreateWriter(os.path.join(OUT, "trained.pvti"), trainer).UpdatePipeline(time={between})
"""


def test_training_over_time_under_mpi_trains_once_and_each_rank_outputs_its_piece(pv_env, series, tmp_path):
    """Every rank reads every step (rank 0 the whole volume, to train); only rank 0 trains; each rank outputs
    its piece of the model at the requested time."""
    pvd = write_pvd_series(tmp_path / "input.pvd", [(t, (s.values, s.geometry, s.name))
                                                    for t, s in zip(series.times, series.steps)])
    body = MPI_TRAIN_BODY.format(between=BETWEEN)
    cmd = paraview_env.mpirun_command(2, "pvbatch", pv_env) + ["--symmetric", script(tmp_path, body, load="py"),
                                                               str(pvd)]
    run_ok(cmd, pv_env, timeout=300)
    model = load_model(tmp_path / "mpi.srn")
    assert model.time_steps == TIMES and model.geometry == GEOMETRY and model.training["steps"] == 60
    ranks = [json.loads((tmp_path / f"train{r}.json").read_text()) for r in range(2)]
    assert [r["counts"] for r in ranks] == [[1, 1], [1, 0]]
    for r in ranks:
        assert r["ranks"] == 2 and r["error"] is None and r["time"] == BETWEEN
        assert 0 < r["points"] < GEOMETRY.num_points
    stitched = read_image(tmp_path / "trained.pvti")
    assert stitched.GetExtent() == GEOMETRY.whole_extent
    np.testing.assert_allclose(values_of(stitched, "density"), model.resample(time=BETWEEN), rtol=0, atol=1e-5)


ATTACH_BODY = """
    sys.path.insert(0, os.path.join(os.path.dirname(XML_DIR), "examples"))
    import render_paraview
    src = NeuralVolumeSource(FileName=sys.argv[1], SamplingDimensions=[{dims}], Device="cpu")
    view = CreateRenderView()
    view.ViewSize = [96, 80]
    Show(src, view)
    mapper = render_paraview.attach(src, view)
    times = [mapper.GetTime()]
    GetAnimationScene().UpdateAnimationUsingDataTimeSteps()
    for t in ({between}, {last}):
        view.ViewTime = t
        Render(view)
        times.append(mapper.GetTime())
    json.dump({{"times": times, "steps": list(mapper.GetTimeSteps())}}, open(os.path.join(OUT, "attach.json"), "w"))
"""


def test_the_neural_renderer_follows_the_view_time(pv_env, time_model, tmp_path):
    path, model = time_model
    body = ATTACH_BODY.format(dims=", ".join(map(str, DIMS)), between=BETWEEN, last=TIMES[-1])
    run_ok(["pvpython", script(tmp_path, body), str(path)], pv_env)
    report = json.loads((tmp_path / "attach.json").read_text())
    assert report["steps"] == TIMES and report["times"] == [TIMES[0], BETWEEN, TIMES[-1]]
