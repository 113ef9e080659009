"""Time in the VTK algorithms (PyPI vtk wheel): a time-varying model's source publishes its steps and evaluates
any requested time, Train Neural Volume trains one model over a temporal input, Neural Volume Error compares
the step the pipeline asks for."""

from __future__ import annotations

import os

import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.util.vtkAlgorithm import VTKPythonAlgorithmBase
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkImageData
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as SDDP

from core_samples import SERIES_GEOMETRY, SERIES_TIMES, analytic_series_values
from paraview_plugin import NeuralVolumeError, NeuralVolumeSource, TrainNeuralVolume
from paraview_plugin.vtk_image import image_from_array
from srn_core.data import Volume
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from srn_core.series import series_psnr
from vtk_events import Events, field_value, no_unobserved_vtk_errors  # noqa: F401 (autouse fixture)

TIMES = SERIES_TIMES
GEOMETRY = SERIES_GEOMETRY


class SeriesSource(VTKPythonAlgorithmBase):
    """A file-series reader stand-in: publishes ``TIME_STEPS`` and answers a time with the step at or before it
    (as VTK's series readers do), recording every time it was asked for."""

    def __init__(self, steps: list[Volume], times: list[float]):
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=0, nOutputPorts=1, outputType="vtkImageData")
        self.steps, self.times = steps, times
        self.requests: list[float | None] = []

    def RequestInformation(self, request, inInfo, outInfo):
        info = outInfo.GetInformationObject(0)
        info.Set(SDDP.WHOLE_EXTENT(), self.steps[0].geometry.whole_extent, 6)
        info.Set(SDDP.TIME_STEPS(), self.times, len(self.times))
        info.Set(SDDP.TIME_RANGE(), [self.times[0], self.times[-1]], 2)
        return 1

    def RequestData(self, request, inInfo, outInfo):
        info = outInfo.GetInformationObject(0)
        t = info.Get(SDDP.UPDATE_TIME_STEP()) if info.Has(SDDP.UPDATE_TIME_STEP()) else None
        self.requests.append(t)
        times = self.times
        i = 0 if t is None else max([k for k, s in enumerate(times) if s <= t] or [0])
        output = vtkImageData.GetData(outInfo)
        step = self.steps[i]
        image_from_array(step.values, step.geometry, step.name, image=output)
        output.GetInformation().Set(vtkDataObject.DATA_TIME_STEP(), times[i])
        return 1


def values_of(image) -> np.ndarray:
    e = image.GetExtent()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)


def data_time(data):
    info = data.GetInformation()
    return info.Get(vtkDataObject.DATA_TIME_STEP()) if info.Has(vtkDataObject.DATA_TIME_STEP()) else None


def make_source(path, dims=(11, 9, 7)):
    source = NeuralVolumeSource()
    source.SetFileName(str(path))
    source.SetSamplingDimensions(*dims)
    source.SetDevice("cpu")
    return source, Events(source)


# ---- Neural Volume Source ------------------------------------------------------------------------------------
def test_source_publishes_the_models_time_steps_and_range(time_model):
    path, model = time_model
    assert model.is_time_varying and model.time_steps == TIMES
    source, events = make_source(path)
    source.UpdateInformation()
    info = source.GetOutputInformation(0)
    assert list(info.Get(SDDP.TIME_STEPS())) == TIMES
    assert list(info.Get(SDDP.TIME_RANGE())) == [TIMES[0], TIMES[-1]]
    assert source.GetTimestepValues() == tuple(TIMES) and source.GetTimeRange() == (TIMES[0], TIMES[-1])
    assert source.evaluations == 0 and events.errors == []


@pytest.mark.parametrize("t", [0.4, 1.75, TIMES[1]])
def test_source_evaluates_the_model_at_the_requested_time(time_model, series, t):
    """Between two steps the output is exactly the model's interpolation at ``t``; at a stored step it is that
    step of the model, close to the data it learned."""
    path, model = time_model
    dims = (11, 9, 7)
    source, events = make_source(path, dims)
    source.UpdateTimeStep(t)
    image = source.GetOutputDataObject(0)
    geometry = ImageGeometry.from_bounds(model.bounds, dims)
    np.testing.assert_array_equal(values_of(image), model.resample(geometry, time=t))
    assert data_time(image) == t
    if t in TIMES:  # on the training grid the stored step reproduces its data
        source.SetSamplingDimensions(*GEOMETRY.dims)
        source.UpdateTimeStep(t)
        step = series.steps[TIMES.index(t)].values
        error = np.sqrt(np.mean((values_of(source.GetOutputDataObject(0)) - step) ** 2))
        assert 20 * np.log10(np.ptp(series.value_range) / error) > 30.0
    else:  # strictly between its neighbours' answers: not a copy of either stored step
        for neighbour in TIMES:
            assert np.abs(values_of(image) - model.resample(geometry, time=neighbour)).max() > 1e-3
    assert events.errors == [] and events.warnings == []


def test_a_time_outside_the_range_is_clamped_and_no_time_means_the_first_step(time_model):
    path, model = time_model
    geometry = ImageGeometry.from_bounds(model.bounds, (11, 9, 7))
    source, events = make_source(path)
    source.Update()  # a request without a time
    assert data_time(source.GetOutputDataObject(0)) == TIMES[0]
    np.testing.assert_array_equal(values_of(source.GetOutputDataObject(0)), model.resample(geometry, time=TIMES[0]))
    for asked, answered in ((-3.0, TIMES[0]), (7.5, TIMES[-1])):
        source.UpdateTimeStep(asked)
        image = source.GetOutputDataObject(0)
        assert data_time(image) == answered
        np.testing.assert_array_equal(values_of(image), model.resample(geometry, time=answered))
    assert events.errors == [] and events.warnings == []


def test_pieces_at_a_time_stitch_to_the_whole_image_at_that_time(time_model):
    path, model = time_model
    dims, t = (13, 9, 8), 1.3
    whole = model.resample(ImageGeometry.from_bounds(model.bounds, dims), time=t)
    stitched = np.full(whole.shape, np.nan, np.float32)
    for piece in range(3):
        source, events = make_source(path, dims)
        source.UpdateTimeStep(t, piece, 3, 0)
        image = source.GetOutputDataObject(0)
        e = image.GetExtent()
        assert data_time(image) == t and source.evaluated_points == image.GetNumberOfPoints() < whole.size
        stitched[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1] = values_of(image)
        assert events.errors == []
    np.testing.assert_allclose(stitched, whole, rtol=0, atol=1e-6)


def test_the_evaluation_cache_keys_on_the_time(time_model):
    path, model = time_model
    geometry = ImageGeometry.from_bounds(model.bounds, (11, 9, 7))
    source, _ = make_source(path)
    source.UpdateTimeStep(0.5)
    source.UpdateTimeStep(0.5)
    assert source.evaluations == 1  # the same time again: nothing to do
    for t, evaluations in ((2.0, 2), (0.5, 3)):
        source.UpdateTimeStep(t)
        assert source.evaluations == evaluations
        np.testing.assert_array_equal(values_of(source.GetOutputDataObject(0)), model.resample(geometry, time=t))


def test_a_static_model_publishes_no_time_and_removes_stale_steps(time_model, trained_model):
    path, _ = time_model
    static_path, static = trained_model
    source, events = make_source(path)
    source.UpdateTimeStep(1.0)
    assert source.GetOutputInformation(0).Has(SDDP.TIME_STEPS())
    source.SetFileName(str(static_path))
    source.UpdateInformation()
    info = source.GetOutputInformation(0)
    assert not info.Has(SDDP.TIME_STEPS()) and not info.Has(SDDP.TIME_RANGE())
    assert source.GetTimestepValues() == () and source.GetTimeRange() == ()
    source.UpdateTimeStep(1.0)
    image = source.GetOutputDataObject(0)
    assert data_time(image) is None
    np.testing.assert_array_equal(values_of(image), static.resample(ImageGeometry.from_bounds(static.bounds,
                                                                                               (11, 9, 7))))
    assert events.errors == [] and events.warnings == []


# ---- Train Neural Volume -------------------------------------------------------------------------------------
def make_trainer(reader, path, steps=200, **settings):
    trainer = TrainNeuralVolume()
    trainer.SetInputConnection(reader.GetOutputPort())
    trainer.SetInputArrayToProcess(0, 0, 0, vtkDataObject.FIELD_ASSOCIATION_POINTS, "density")
    trainer.SetModelFileName(str(path))
    trainer.SetSteps(steps)
    trainer.SetBatchSize(2048)
    trainer.SetParameterBudget(5000)
    trainer.SetDevice("cpu")
    for name, value in settings.items():
        getattr(trainer, f"Set{name}")(value)
    return trainer, Events(trainer)


def test_training_over_a_temporal_input_reads_each_step_once_and_answers_any_time(series, tmp_path):
    reader = SeriesSource(series.steps, series.times)
    path = tmp_path / "over_time.srn"
    trainer, events = make_trainer(reader, path)
    progress = []
    trainer.AddObserver("ProgressEvent", lambda o, e: progress.append(o.GetProgress()))
    trainer.UpdateTimeStep(1.75)
    assert events.errors == [] and events.warnings == []
    assert reader.requests == TIMES  # each step asked for once, through the pipeline
    model = load_model(path)
    assert model.is_time_varying and model.time_steps == TIMES and model.geometry == GEOMETRY
    assert model.field.config.key_times == TIMES  # one key frame per step by default
    out = trainer.GetOutputDataObject(0)
    assert out.GetExtent() == GEOMETRY.whole_extent and out.GetPointData().GetScalars().GetName() == "density"
    np.testing.assert_array_equal(values_of(out), model.resample(time=1.75))
    assert data_time(out) == 1.75
    assert list(trainer.GetOutputInformation(0).Get(SDDP.TIME_STEPS())) == TIMES  # the output is temporal too
    measured = series_psnr(model, series)
    assert field_value(out, "PSNR") == pytest.approx(measured["psnr"], abs=1e-4) and measured["psnr"] > 30.0
    per_step = out.GetFieldData().GetArray("PSNRPerStep")
    assert [per_step.GetValue(i) for i in range(per_step.GetNumberOfTuples())] == \
        pytest.approx(measured["psnr_per_step"], abs=1e-4)
    assert field_value(out, "TrainingSteps") == 200
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    # Another time: the trained model answers; nothing is read for training or trained again.
    trainer.UpdateTimeStep(0.3)
    np.testing.assert_array_equal(values_of(trainer.GetOutputDataObject(0)), model.resample(time=0.3))
    assert (trainer.gathers, trainer.trainings) == (1, 1)
    # Upstream modified but the same data: the steps are read again, the model is kept.
    reader.Modified()
    trainer.UpdateTimeStep(2.5)
    assert (trainer.gathers, trainer.trainings) == (2, 1)
    np.testing.assert_array_equal(values_of(trainer.GetOutputDataObject(0)), model.resample(time=2.5))
    # A setting that changes the model: read and trained again.
    trainer.SetSteps(20)
    trainer.UpdateTimeStep(2.5)
    assert (trainer.gathers, trainer.trainings) == (3, 2) and load_model(path).training["steps"] == 20
    assert events.errors == [] and events.warnings == []


def test_key_frames_and_train_over_time_off(series, tmp_path):
    reader = SeriesSource(series.steps, series.times)
    trainer, events = make_trainer(reader, tmp_path / "keys.srn", steps=20, KeyFrames=2)
    trainer.UpdateTimeStep(0.0)
    model = load_model(tmp_path / "keys.srn")
    assert model.time_steps == TIMES and model.field.config.key_times == [TIMES[0], TIMES[-1]]
    reader.requests.clear()
    static, _ = make_trainer(reader, tmp_path / "static.srn", steps=20, TrainOverTime=0)
    static.UpdateTimeStep(1.2)  # the step the reader gives for 1.2: step 1, as a single volume
    assert reader.requests == [1.2]
    model = load_model(tmp_path / "static.srn")
    assert not model.is_time_varying
    assert events.errors == []


def test_bad_series_input_gives_one_error_naming_the_setting_or_step(series, tmp_path):
    reader = SeriesSource(series.steps, series.times)
    trainer, events = make_trainer(reader, tmp_path / "bad.srn", steps=20, KeyFrames=5)
    trainer.UpdateTimeStep(0.0)
    assert len(events.errors) == 1 and "KeyFrames must be 0 (one per time step) or from 2 to the input's 3 time " \
                                       "steps, got 5." in events.errors[0]
    assert reader.requests == [TIMES[0]]  # stopped at the first step: nothing else read
    assert trainer.GetOutputDataObject(0).GetNumberOfPoints() == 0
    smaller = ImageGeometry((16, 14, 11), GEOMETRY.origin, GEOMETRY.spacing)
    steps = list(series.steps)
    steps[1] = Volume(analytic_series_values(smaller, 1.0), smaller, "density")
    odd = SeriesSource(steps, TIMES)
    trainer, events = make_trainer(odd, tmp_path / "odd.srn", steps=20)
    trainer.UpdateTimeStep(0.0)
    assert len(events.errors) == 1 and "time step 1 (t=1) has dims" in events.errors[0]
    assert not (tmp_path / "bad.srn").exists() and not (tmp_path / "odd.srn").exists()


# ---- Neural Volume Error -------------------------------------------------------------------------------------
def test_error_compares_the_step_the_pipeline_asks_for(series, time_model):
    path, model = time_model
    reader = SeriesSource(series.steps, series.times)
    error = NeuralVolumeError()
    error.SetInputConnection(0, reader.GetOutputPort())
    error.SetModelFileName(str(path))
    error.SetDevice("cpu")
    events = Events(error)
    per_step = series_psnr(model, series)["psnr_per_step"]
    for asked, step in ((TIMES[1], 1), (TIMES[2], 2), (1.7, 1)):  # 1.7: the reader gives step 1
        error.UpdateTimeStep(asked)
        out = error.GetOutputDataObject(0)
        assert field_value(out, "PSNR") == pytest.approx(per_step[step], abs=1e-6)
        assert field_value(out, "ModelTime") == TIMES[step] and data_time(out) == TIMES[step]
        assert field_value(out, "DataRange") == pytest.approx(np.ptp(series.value_range), rel=1e-6)
        recon = model.resample(time=TIMES[step])
        signed = vtk_to_numpy(out.GetPointData().GetArray("SignedError")).reshape(recon.shape)
        np.testing.assert_allclose(signed, recon - series.steps[step].values, atol=1e-6)
    assert events.errors == [] and events.warnings == []


# ---- Neural Volume Mapper ------------------------------------------------------------------------------------
def test_mapper_draws_a_time_varying_model_at_the_time_it_is_given(time_model, trained_model):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import torch
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL factories)
    import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401

    from paraview_plugin.neural_volume_mapper import NeuralVolumeMapper, volume_property_from_tf
    from srn_core.render import TransferFunction
    from vtk_reference import grab, window

    path, model = time_model
    points = torch.rand(1000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def drawn_field_is_the_model_at(t):
        with torch.no_grad():
            np.testing.assert_allclose(mapper.GetRenderVolume().field(points).numpy(),
                                       model.at_time(t).field(points).numpy(), rtol=0, atol=1e-6)

    mapper = NeuralVolumeMapper()
    mapper.SetFileName(str(path))
    assert mapper.GetTimeSteps() == tuple(TIMES) and mapper.GetTime() == TIMES[0]
    drawn_field_is_the_model_at(TIMES[0])
    ren, win = window(64, 64)
    mapper.SetVolumeProperty(volume_property_from_tf(TransferFunction.from_preset("Viridis", model.value_range)))
    mapper.AddToRenderer(ren)
    ren.ResetCamera(*model.bounds)
    win.Render()
    first, cache = grab(win, 64, 64), mapper.GetCache()
    decoded = cache.points_decoded
    win.Render()
    assert decoded > 0 and mapper.GetCache() is cache and cache.points_decoded == decoded  # nothing new to decode
    mapper.SetTime(1.75)
    volume = mapper.GetRenderVolume()
    drawn_field_is_the_model_at(1.75)
    win.Render()
    assert mapper.GetCache() is not cache and mapper.GetCache().points_decoded > 0  # the new time is decoded
    assert np.abs(grab(win, 64, 64).astype(int) - first).max() > 10  # and looks different
    mapper.SetTime(1.75)
    assert mapper.GetRenderVolume() is volume  # the same time again changes nothing
    mapper.SetTime(9.0)
    assert mapper.GetTime() == TIMES[-1]
    static_path, _ = trained_model
    mapper.SetFileName(str(static_path))
    mapper.SetTime(1.0)
    assert mapper.GetTimeSteps() == () and mapper.GetTime() is None
