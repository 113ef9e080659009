"""NeuralVolumeError with the PyPI vtk wheel: error arrays, metrics, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkDataObject

from paraview_plugin import NeuralVolumeError, NeuralVolumeSource
from srn_core import metrics

from vtk_events import Events, field_value, no_unobserved_vtk_errors  # noqa: F401 (autouse fixture)




def check_error_output(out, reference, recon):
    signed = vtk_to_numpy(out.GetPointData().GetArray("SignedError")).reshape(reference.shape)
    absolute = vtk_to_numpy(out.GetPointData().GetArray("AbsoluteError")).reshape(reference.shape)
    assert out.GetPointData().GetScalars().GetName() == "AbsoluteError"
    np.testing.assert_allclose(signed, recon - reference, atol=1e-6)
    np.testing.assert_allclose(absolute, np.abs(recon - reference), atol=1e-6)
    assert field_value(out, "PSNR") == pytest.approx(metrics.psnr(reference, recon), abs=1e-9)
    assert field_value(out, "MaxError") == pytest.approx(metrics.max_abs_error(reference, recon), rel=1e-6)
    assert field_value(out, "SSIM") == pytest.approx(metrics.ssim(reference, recon), abs=1e-9)
    assert field_value(out, "MSE") == pytest.approx(metrics.mse(reference, recon), rel=1e-9)
    assert field_value(out, "DataRange") == pytest.approx(metrics.data_range(reference), rel=1e-9)


def test_error_against_a_model_file(small_image, analytic_volume, trained_model):
    path, model = trained_model
    error = NeuralVolumeError()
    error.SetInputDataObject(0, small_image)
    error.SetInputArrayToProcess(0, 0, 0, vtkDataObject.FIELD_ASSOCIATION_POINTS, "density")
    error.SetModelFileName(str(path))
    events = Events(error)
    error.Update()
    assert events.errors == [] and events.warnings == []
    out = error.GetOutputDataObject(0)
    assert out.GetExtent() == small_image.GetExtent()
    check_error_output(out, analytic_volume.values, model.resample())
    assert 30 < error.metrics["PSNR"] < 60 and 0 < error.metrics["SSIM"] <= 1
    size = path.stat().st_size  # the trained_model fixture is a float32 file
    assert field_value(out, "CompressionRatio") == pytest.approx(analytic_volume.geometry.num_points * 4 / size)
    assert field_value(out, "FileBytes") == size
    assert field_value(out, "NumberOfParameters") == model.num_parameters
    assert field_value(out, "ModelFileStorage") == "float32"


def test_error_reports_a_compressed_files_ratio(small_image, analytic_volume, trained_model, tmp_path):
    from srn_core.compression import Compression
    from srn_core.loading import load_model

    path, model = trained_model
    load_model(path).save(tmp_path / "small.srn", Compression(bits=6))
    compressed = load_model(tmp_path / "small.srn")
    error = NeuralVolumeError()
    error.SetInputDataObject(0, small_image)
    error.SetModelFileName(str(tmp_path / "small.srn"))
    events = Events(error)
    error.Update()
    assert events.errors == []
    out = error.GetOutputDataObject(0)
    size = (tmp_path / "small.srn").stat().st_size
    assert size < path.stat().st_size / 3
    assert field_value(out, "CompressionRatio") == pytest.approx(analytic_volume.geometry.num_points * 4 / size)
    assert field_value(out, "FileBytes") == size
    assert field_value(out, "ModelFileStorage") == "grids 6-bit + lzma, decoder 12-bit"
    check_error_output(out, analytic_volume.values, compressed.resample())  # the quantized model is compared


def test_error_against_a_second_input(small_image, analytic_volume, trained_model):
    path, model = trained_model
    source = NeuralVolumeSource()
    source.SetFileName(str(path))
    source.SetSamplingDimensions(*analytic_volume.geometry.dims)
    error = NeuralVolumeError()
    error.SetInputDataObject(0, small_image)
    error.SetInputConnection(1, source.GetOutputPort())
    events = Events(error)
    error.Update()  # reference array defaults to the active scalars ("density")
    assert events.errors == []
    check_error_output(error.GetOutputDataObject(0), analytic_volume.values, model.resample())


def test_error_needs_something_to_compare_and_matching_grids(small_image, trained_model):
    path, _ = trained_model
    error = NeuralVolumeError()
    error.SetInputDataObject(0, small_image)
    events = Events(error)
    error.Update()
    assert len(events.errors) == 1 and "connect a reconstruction to input 1 or set ModelFileName" in events.errors[0]
    source = NeuralVolumeSource()
    source.SetFileName(str(path))
    source.SetSamplingDimensions(10, 10, 10)
    error.SetInputConnection(1, source.GetOutputPort())
    error.Update()
    assert len(events.errors) == 2 and "is not on the reference's grid" in events.errors[1]
    assert error.GetOutputDataObject(0).GetNumberOfPoints() == 0


def test_identical_inputs_give_infinite_psnr(small_image):
    error = NeuralVolumeError()
    error.SetInputDataObject(0, small_image)
    error.SetInputDataObject(1, small_image)
    error.Update()
    assert error.metrics["PSNR"] == math.inf and error.metrics["MaxError"] == 0.0
    assert error.metrics["SSIM"] == pytest.approx(1.0)


@pytest.mark.parametrize("setting, value, expected", [
    ("Device", "bogus", "NeuralVolumeError: Device 'bogus' is not a torch device; use auto, cpu, cuda or cuda:N."),
    ("ChunkSize", 0, "NeuralVolumeError: ChunkSize must be a positive integer, got 0."),
])
def test_bad_evaluation_settings_fail_cleanly(small_image, trained_model, setting, value, expected):
    path, _ = trained_model
    error = NeuralVolumeError()
    error.SetInputDataObject(0, small_image)
    error.SetModelFileName(str(path))
    getattr(error, f"Set{setting}")(value)
    events = Events(error)
    assert error.Update() == 1
    assert events.errors == [expected]
    assert error.GetOutputDataObject(0).GetNumberOfPoints() == 0
