"""NeuralVolumeSource with the PyPI vtk wheel: geometry, extents, pieces, caching, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as SDDP

from paraview_plugin import NeuralVolumeSource, model_cache
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from vtk_events import Events, no_unobserved_vtk_errors  # noqa: F401 (autouse fixture)


def make_source(path, dims=(20, 16, 12), **settings):
    source = NeuralVolumeSource()
    source.SetFileName(str(path))
    source.SetSamplingDimensions(*dims)
    for name, value in settings.items():
        getattr(source, f"Set{name}")(value)
    return source, Events(source)


def point_values(image) -> np.ndarray:
    e = image.GetExtent()
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def test_whole_image_matches_core(trained_model):
    path, model = trained_model
    source, events = make_source(path, (20, 16, 12))
    source.Update()
    image = source.GetOutputDataObject(0)
    expected_geometry = ImageGeometry.from_bounds(model.bounds, (20, 16, 12))
    assert image.GetExtent() == (0, 19, 0, 15, 0, 11)
    np.testing.assert_allclose(image.GetOrigin(), expected_geometry.origin, rtol=0, atol=1e-12)
    np.testing.assert_allclose(image.GetSpacing(), expected_geometry.spacing, rtol=1e-12)
    np.testing.assert_allclose(image.GetBounds(), model.bounds, rtol=0, atol=1e-9)
    scalars = image.GetPointData().GetScalars()
    assert scalars.GetName() == model.array_name == "density"
    assert scalars.GetDataTypeAsString() == "float"
    np.testing.assert_array_equal(point_values(image), model.resample(expected_geometry))
    field = image.GetFieldData()
    # The ratio of the file the source loaded: data float32 bytes over the file's bytes.
    assert field.GetArray("CompressionRatio").GetValue(0) == pytest.approx(
        model.geometry.num_points * 4 / path.stat().st_size)
    assert field.GetArray("TrainingPSNR").GetValue(0) == pytest.approx(model.training["psnr"])
    assert events.errors == [] and events.warnings == []


def test_information_pass_publishes_geometry_without_evaluating(trained_model):
    path, model = trained_model
    source, events = make_source(path, (9, 8, 7))
    source.UpdateInformation()
    info = source.GetOutputInformation(0)
    assert tuple(info.Get(SDDP.WHOLE_EXTENT())) == (0, 8, 0, 7, 0, 6)
    g = ImageGeometry.from_bounds(model.bounds, (9, 8, 7))
    np.testing.assert_allclose(info.Get(source.GetOutputDataObject(0).ORIGIN()), g.origin)
    np.testing.assert_allclose(info.Get(source.GetOutputDataObject(0).SPACING()), g.spacing)
    assert info.Get(source.CAN_PRODUCE_SUB_EXTENT()) == 1
    assert source.evaluations == 0 and events.errors == []


@pytest.mark.parametrize("pieces", [2, 3, 5])
def test_pieces_evaluate_only_their_extent_and_stitch_to_the_whole(trained_model, pieces):
    path, model = trained_model
    dims = (21, 13, 11)
    whole = model.resample(ImageGeometry.from_bounds(model.bounds, dims))
    stitched = np.full(whole.shape, np.nan, np.float32)
    total = 0
    for piece in range(pieces):
        source, events = make_source(path, dims)
        source.UpdatePiece(piece, pieces, 0)
        image = source.GetOutputDataObject(0)
        e = image.GetExtent()
        n = (e[1] - e[0] + 1) * (e[3] - e[2] + 1) * (e[5] - e[4] + 1)
        assert source.evaluated_points == n < whole.size  # only this piece was evaluated
        assert image.GetOrigin() == source_origin(model, dims)  # pieces keep the whole image's origin
        stitched[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1] = point_values(image)
        total += n
        assert events.errors == []
    assert total >= whole.size
    # Up to float32 rounding: pieces send differently sized batches through the network.
    np.testing.assert_allclose(stitched, whole, rtol=0, atol=1e-5)


def source_origin(model, dims):
    return ImageGeometry.from_bounds(model.bounds, dims).origin


def test_update_extent_request_is_honoured(trained_model):
    path, model = trained_model
    dims = (16, 16, 16)
    source, events = make_source(path, dims)
    source.UpdateInformation()
    source.UpdateExtent((3, 9, 0, 4, 10, 15))
    image = source.GetOutputDataObject(0)
    assert image.GetExtent() == (3, 9, 0, 4, 10, 15)
    assert source.evaluated_points == 7 * 5 * 6
    whole = model.resample(ImageGeometry.from_bounds(model.bounds, dims))
    np.testing.assert_allclose(point_values(image), whole[10:16, 0:5, 3:10], rtol=0, atol=1e-5)


def test_custom_bounds_and_box_setters(trained_model):
    path, model = trained_model
    bounds = (2.0, 10.0, -1.5, 3.0, 1.0, 20.0)
    source, events = make_source(path, (17, 10, 5), UseModelBounds=0, SamplingBounds=bounds)
    source.Update()
    image = source.GetOutputDataObject(0)
    g = ImageGeometry.from_bounds(bounds, (17, 10, 5))
    np.testing.assert_allclose(image.GetBounds(), bounds, atol=1e-9)
    np.testing.assert_array_equal(point_values(image), model.resample(g))
    # The box widget's origin/size setters describe the same box.
    assert source.GetSamplingOrigin() == (2.0, -1.5, 1.0)
    assert source.GetSamplingSize() == (8.0, 4.5, 19.0)
    source.SetSamplingOrigin(0.0, 0.0, 0.0)
    source.SetSamplingSize(4.0, 2.0, 1.0)
    assert source.GetSamplingBounds() == (0.0, 4.0, 0.0, 2.0, 0.0, 1.0)
    assert events.errors == []


def test_unchanged_pipeline_does_not_reevaluate_and_changes_do(trained_model):
    path, model = trained_model
    source, events = make_source(path, (10, 10, 10))
    source.Update()
    mtime = source.GetMTime()
    source.Update()
    source.SetSamplingDimensions(10, 10, 10)  # same value: not a modification
    source.SetFileName(str(path))
    source.SetDevice("auto")
    source.Update()
    assert source.GetMTime() == mtime and source.evaluations == 1
    source.SetSamplingDimensions(11, 10, 10)
    source.Update()
    assert source.evaluations == 2
    assert source.GetOutputDataObject(0).GetExtent() == (0, 10, 0, 9, 0, 9)
    source.SetChunkSize(100)  # a different chunk size gives the same values
    source.Update()
    np.testing.assert_array_equal(point_values(source.GetOutputDataObject(0)),
                                  model.resample(ImageGeometry.from_bounds(model.bounds, (11, 10, 10))))
    assert events.errors == []


def test_model_is_cached_by_path_and_reloaded_when_the_file_changes(trained_model, tmp_path):
    path, model = trained_model
    copy = tmp_path / "copy.srn"
    copy.write_bytes(path.read_bytes())
    model_cache.clear()
    a, _ = model_cache.load_cached(str(copy), "cpu")
    b, _ = model_cache.load_cached(str(copy), "cpu")
    assert a is b
    source, events = make_source(copy, (6, 6, 6))
    source.Update()
    before = point_values(source.GetOutputDataObject(0)).copy()
    # Rewrite the file with different weights: the next execution must use them.
    changed = load_model(path)
    with torch.no_grad():
        for p in changed.field.parameters():
            p.add_(0.01)
    changed.save(copy)
    source.Modified()
    source.Update()
    after = point_values(source.GetOutputDataObject(0))
    assert not np.array_equal(before, after)
    assert events.errors == []


def test_peer_folder_is_chosen_through_its_files(tmp_path):
    folder = tmp_path / "apmgsrn_run"
    folder.mkdir()
    (folder / "options.json").write_text("{}")
    (folder / "model.ckpt.tar").write_bytes(b"")
    assert model_cache.model_path(str(folder / "options.json")) == folder
    assert model_cache.model_path(str(folder / "model.ckpt.tar")) == folder
    assert model_cache.model_path(str(folder)) == folder


@pytest.mark.parametrize("case, expected", [
    ("missing", "model file '{missing}' does not exist"),
    ("corrupt", "truncated or not a safetensors file"),
    ("empty_name", "FileName is empty"),
    ("zero_dims", "SamplingDimensions must be three integers >= 1, got (0, 8, 8)"),
    ("inverted", "SamplingBounds (0.0, 1.0, 5.0, 2.0, 0.0, 1.0) are invalid: bounds are inverted on y"),
    ("chunk", "ChunkSize must be a positive integer, got 0."),
    ("device", "Device 'bogus' is not a torch device; use auto, cpu, cuda or cuda:N."),
    ("dims_int32", "SamplingDimensions (3000000000, 2, 2) exceed 2147483647 points per axis, the most a VTK image "
                   "holds."),
    ("dims_memory", "SamplingDimensions (100000, 100000, 100000) needs 8e+03 TB of memory but only "),
])
def test_bad_input_gives_one_clear_error_and_an_empty_output(trained_model, tmp_path, case, expected):
    path, _ = trained_model
    missing = tmp_path / "nothing.srn"
    corrupt = tmp_path / "corrupt.srn"
    corrupt.write_bytes(path.read_bytes()[:200])
    settings = {
        "missing": dict(FileName=str(missing)),
        "corrupt": dict(FileName=str(corrupt)),
        "empty_name": dict(FileName=""),
        "zero_dims": dict(SamplingDimensions=(0, 8, 8)),
        "inverted": dict(UseModelBounds=0, SamplingBounds=(0, 1, 5, 2, 0, 1)),
        "chunk": dict(ChunkSize=0),
        "device": dict(Device="bogus"),
        "dims_int32": dict(SamplingDimensions=(3_000_000_000, 2, 2)),
        "dims_memory": dict(SamplingDimensions=(100_000, 100_000, 100_000)),
    }[case]
    source = NeuralVolumeSource()
    source.SetFileName(str(path))
    source.SetSamplingDimensions(8, 8, 8)
    for name, value in settings.items():
        getattr(source, f"Set{name}")(value)
    events = Events(source)
    assert source.Update() == 1
    assert len(events.errors) == 1, events.errors
    message = events.errors[0]
    assert message.startswith("NeuralVolumeSource: ")
    assert expected.format(missing=missing) in message
    assert "Traceback" not in message and "\n" not in message and message.endswith(".")
    assert source.GetOutputDataObject(0).GetNumberOfPoints() == 0
    # Fixing the setting recovers without a new object.
    source.SetFileName(str(path))
    source.SetSamplingDimensions(8, 8, 8)
    source.SetUseModelBounds(1)
    source.SetChunkSize(4096)
    source.SetDevice("auto")
    source.Update()
    assert source.GetOutputDataObject(0).GetNumberOfPoints() == 512 and len(events.errors) == 1


def test_clamp_to_data_range_is_set_for_each_evaluation_only(trained_model, tmp_path):
    """Outputs stay in the training data's range by default; off shows the raw network, and the cached model,
    shared with other sources, keeps its own setting."""
    path, model = trained_model
    wild = load_model(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights far from the trained ones answer well outside the data's range
        for p in wild.field.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    wild.save(tmp_path / "wild.srn")
    low, high = wild.value_range
    geometry = ImageGeometry.from_bounds(wild.bounds, (12, 10, 8))
    source, events = make_source(tmp_path / "wild.srn", (12, 10, 8))
    assert source.GetClampToDataRange() == 1
    source.Update()
    clamped = point_values(source.GetOutputDataObject(0)).copy()
    source.SetClampToDataRange(0)
    source.Update()
    raw = point_values(source.GetOutputDataObject(0)).copy()
    assert source.evaluations == 2
    assert raw.min() < low and raw.max() > high  # the test means something: the raw answers leave the range
    assert clamped.min() >= low and clamped.max() <= high
    np.testing.assert_array_equal(clamped, np.clip(raw, low, high))
    cached, _ = model_cache.load_cached(str(tmp_path / "wild.srn"), "auto")
    assert cached.field.clamp_output is True  # restored after the unclamped evaluation
    np.testing.assert_array_equal(clamped, cached.resample(geometry))
    assert events.errors == []


def test_every_getter_and_setter_is_a_property_of_the_proxy():
    """No accessor outside the ParaView proxy: ``GetModelBounds`` hid every loading error behind empty bounds."""
    import xml.etree.ElementTree as ET

    import paraview_env

    proxy = ET.parse(paraview_env.XML_DIR / "NeuralVolumeSource.xml").getroot().find("ProxyGroup/SourceProxy")
    properties = {p.get("name") for p in proxy if p.tag.endswith("Property")}
    ours = {name for cls in NeuralVolumeSource.__mro__ if cls.__module__.startswith("paraview_plugin")
            for name in vars(cls) if name[:3] in ("Get", "Set")}
    assert {name[3:] for name in ours} == properties
