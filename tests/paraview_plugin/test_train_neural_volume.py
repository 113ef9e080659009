"""TrainNeuralVolume with the PyPI vtk wheel: results, field data, progress, abort, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkImageData

from paraview_plugin import TrainNeuralVolume
from paraview_plugin.vtk_image import image_from_array
from srn_core import metrics
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from srn_core.modelfile import load_tensors

from privileges import without_root_override
from vtk_events import Events, field_value, no_unobserved_vtk_errors  # noqa: F401 (autouse fixture)


def make_trainer(image, path, steps=60, array=("density", vtkDataObject.FIELD_ASSOCIATION_POINTS)):
    trainer = TrainNeuralVolume()
    trainer.SetInputDataObject(0, image)
    if array is not None:
        trainer.SetInputArrayToProcess(0, 0, 0, array[1], array[0])
    trainer.SetModelFileName(str(path))
    trainer.SetSteps(steps)
    trainer.SetBatchSize(1024)
    trainer.SetParameterBudget(20_000)
    trainer.SetDevice("cpu")
    return trainer, Events(trainer)


def test_training_writes_the_model_and_outputs_its_reconstruction(small_image, analytic_volume, tmp_path):
    path = tmp_path / "trained.srn"
    trainer, events = make_trainer(small_image, path, steps=100)
    progress = []
    trainer.AddObserver("ProgressEvent", lambda o, e: progress.append(o.GetProgress()))
    trainer.Update()
    assert events.errors == [] and events.warnings == []
    out = trainer.GetOutputDataObject(0)
    assert out.GetExtent() == small_image.GetExtent()
    assert out.GetOrigin() == small_image.GetOrigin() and out.GetSpacing() == small_image.GetSpacing()
    recon = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(analytic_volume.values.shape)
    assert out.GetPointData().GetScalars().GetName() == "density"
    model = load_model(path)
    assert model.array_name == "density" and model.geometry == analytic_volume.geometry
    np.testing.assert_array_equal(recon, model.resample())
    psnr = field_value(out, "PSNR")
    assert psnr == pytest.approx(metrics.psnr(analytic_volume.values, recon), abs=1e-6)
    assert psnr > 28.0  # 100 steps on a smooth 32x28x24 field
    size = path.stat().st_size  # the ratio counts the file's bytes (compressed by default)
    assert field_value(out, "CompressionRatio") == pytest.approx(analytic_volume.geometry.num_points * 4 / size)
    assert field_value(out, "FileBytes") == size
    assert field_value(out, "NumberOfParameters") == model.num_parameters <= 20_000
    assert field_value(out, "TrainingSteps") == 100
    assert field_value(out, "ModelFileName") == str(path)
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress) and len(progress) > 5
    # Unchanged: no retraining; the same settings re-set are not a modification.
    before = path.stat()
    trainer.SetSteps(100)
    trainer.Update()
    after = path.stat()  # a rewrite is atomic, so it would show as a new inode even within one mtime tick
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_cell_data_is_learned_on_cell_centres(small_image, tmp_path):
    cells = vtkImageData()
    cells.CopyStructure(small_image)
    g = ImageGeometry(tuple(d - 1 for d in small_image.GetDimensions()))
    values = np.arange(g.num_points, dtype=np.float32).reshape(g.shape) % 7
    cells.GetCellData().SetScalars(image_from_array(values, g, "label").GetPointData().GetScalars())
    trainer, events = make_trainer(cells, tmp_path / "cells.srn", steps=5,
                                   array=("label", vtkDataObject.FIELD_ASSOCIATION_CELLS))
    trainer.Update()
    assert events.errors == []
    out = trainer.GetOutputDataObject(0)
    assert out.GetCellData().GetArray("label").GetNumberOfTuples() == g.num_points
    assert out.GetPointData().GetNumberOfArrays() == 0
    model = load_model(tmp_path / "cells.srn")
    origin = np.array(small_image.GetOrigin()) + 0.5 * np.array(small_image.GetSpacing())
    np.testing.assert_allclose(model.geometry.origin, origin)


def test_abort_stops_training_and_writes_nothing(small_image, tmp_path):
    path = tmp_path / "aborted.srn"
    trainer, events = make_trainer(small_image, path, steps=10_000)
    tag = trainer.AddObserver("ProgressEvent", lambda o, e: o.SetAbortExecute(1) if o.GetProgress() > 0 else None)
    trainer.Update()
    assert not path.exists()
    assert events.errors == []
    assert len(events.warnings) == 1 and "aborted" in events.warnings[0] and "No model was written" in events.warnings[0]
    assert trainer.GetOutputDataObject(0).GetNumberOfPoints() == 0
    # The next execution trains normally.
    trainer.RemoveObserver(tag)
    trainer.SetSteps(3)
    trainer.Update()
    assert path.exists() and trainer.GetOutputDataObject(0).GetNumberOfPoints() > 0 and len(events.warnings) == 1


@pytest.mark.parametrize("setting, value, expected", [
    ("ModelFileName", "", "ModelFileName is empty"),
    ("ModelFileName", "/no/such/folder/m.srn", "the folder '/no/such/folder' does not exist"),
    ("Steps", 0, "steps must be a positive integer, got 0"),
    ("ParameterBudget", 10, "ParameterBudget must be at least 1000, got 10"),
    ("Architecture", "nonsense", "unknown model architecture 'nonsense'"),
    ("TimeLimit", -5, "TimeLimit must be 0 (no limit) or a positive number of seconds, got -5.0."),
    ("LearningRate", -0.1, "LearningRate must be 0 (the architecture's default) or positive, got -0.1."),
    ("Device", "bogus", "Device 'bogus' is not a torch device; use auto, cpu, cuda or cuda:N."),
    ("ChunkSize", 0, "ChunkSize must be a positive integer, got 0."),
    ("ParameterBudget", 2_000_000_000, "ParameterBudget 2000000000 needs 32 GB of memory but only 1 GB is "
                                       "available; ask for less."),
    ("Bits", 0, "Bits must be an integer from 4 to 16, got 0."),
    ("Bits", 40, "Bits must be an integer from 4 to 16, got 40."),
    ("DecoderBits", 3, "DecoderBits must be an integer from 4 to 16, got 3."),
    ("Codec", "gzip", "Codec must be one of lzma, zstd, none, sz3, got 'gzip'."),
    ("TargetRatio", -2, "TargetRatio must be 0 (use ParameterBudget) or a positive number, got -2.0."),
    ("TargetRatio", 50, "TargetRatio 50 (a file of 1.72 kB): a apmgsrn model file cannot be as small as 1,720 "
                        "bytes"),
    ("TargetSize", "lots", "TargetSize must look like 500KB, 1MB or 2.5GiB, got 'lots'."),
    ("TargetSize", "20GB", "TargetSize 20GB (25,395,200,000 parameters) needs 406 GB of memory but only 1 GB is "
                           "available; ask for less."),
])
def test_bad_training_settings_fail_cleanly(small_image, tmp_path, monkeypatch, setting, value, expected):
    monkeypatch.setenv("SRN_MEMORY_LIMIT", "1GB")
    trainer, events = make_trainer(small_image, tmp_path / "m.srn")
    getattr(trainer, f"Set{setting}")(value)
    assert trainer.Update() == 1
    assert len(events.errors) == 1 and expected in events.errors[0], events.errors
    assert events.errors[0].startswith("TrainNeuralVolume: ")
    assert trainer.GetOutputDataObject(0).GetNumberOfPoints() == 0
    assert not (tmp_path / "m.srn").exists()


def test_target_ratio_and_target_size_are_the_files_and_compress_off_writes_float32(small_image, tmp_path):
    """32 x 28 x 24 float32 points are 86,016 bytes: TargetRatio 3 asks for a file of 28,672 bytes."""
    trainer, events = make_trainer(small_image, tmp_path / "r.srn", steps=60)
    trainer.SetTargetRatio(3)
    trainer.Update()
    assert events.errors == [] and events.warnings == []
    size = (tmp_path / "r.srn").stat().st_size
    assert 86_016 / size == pytest.approx(3, rel=0.10)
    out = trainer.GetOutputDataObject(0)
    assert field_value(out, "CompressionRatio") == pytest.approx(86_016 / size)
    storage = load_tensors(tmp_path / "r.srn")[1]["storage"]
    assert {e["bits"] for e in storage.values() if e["role"] == "grid"} == {8}
    compressed_params = field_value(out, "NumberOfParameters")
    # The same target with Compress off: a float32 file of at most that size, with far fewer parameters.
    trainer.SetCompress(0)
    trainer.SetModelFileName(str(tmp_path / "f.srn"))
    trainer.Update()
    assert events.errors == []
    assert 0.9 * 28_672 <= (tmp_path / "f.srn").stat().st_size <= 28_672
    assert "storage" not in load_tensors(tmp_path / "f.srn")[1]
    assert field_value(trainer.GetOutputDataObject(0), "NumberOfParameters") < compressed_params / 3
    # TargetSize, with other bits
    trainer.SetCompress(1)
    trainer.SetBits(6)
    trainer.SetTargetRatio(0)
    trainer.SetTargetSize("20kB")
    trainer.SetModelFileName(str(tmp_path / "s.srn"))
    trainer.Update()
    assert events.errors == []
    size = (tmp_path / "s.srn").stat().st_size  # 6-bit codes: measured 22,367 bytes (LZMA saves less than assumed)
    assert size == pytest.approx(20_000, rel=0.15)
    assert len(events.warnings) == (abs(size / 20_000 - 1) > 0.10)  # said once when it misses by more than 10 %
    storage = load_tensors(tmp_path / "s.srn")[1]["storage"]
    assert {e["bits"] for e in storage.values() if e["role"] == "grid"} == {6}
    trainer.SetTargetRatio(4)
    trainer.Update()
    assert events.errors[-1] == "TrainNeuralVolume: set TargetRatio (4) or TargetSize ('20kB'), not both."


def test_a_file_far_from_its_target_is_one_warning(small_image, tmp_path):
    # After one step the grids are still their smooth initial values, which LZMA shrinks far below the estimate.
    trainer, events = make_trainer(small_image, tmp_path / "w.srn", steps=1)
    trainer.SetTargetRatio(4)
    trainer.Update()
    size = (tmp_path / "w.srn").stat().st_size
    assert events.errors == [] and len(events.warnings) == 1, events.warnings
    assert (f"the model file '{tmp_path}/w.srn' is {size:,} bytes, {size / 21_504 - 1:+.0%} off the 21,504-byte "
            f"target (ratio {86_016 / size:.1f}x;") in events.warnings[0]


def test_non_finite_input_names_the_mask_non_finite_property(small_image, analytic_volume, tmp_path):
    """The core's message names the command line's --mask-nonfinite; in ParaView the setting is MaskNonFinite."""
    values = analytic_volume.values.copy()
    values[0, 0, :3] = np.nan
    image = image_from_array(values, analytic_volume.geometry, "density")
    trainer, events = make_trainer(image, tmp_path / "m.srn", steps=3)
    trainer.Update()
    assert events.errors == ["TrainNeuralVolume: array 'density' holds 3 non-finite values (NaN/Inf); turn on "
                             "MaskNonFinite to exclude them from training and metrics."]
    assert not (tmp_path / "m.srn").exists()
    trainer.SetMaskNonFinite(1)
    trainer.Update()
    assert len(events.errors) == 1 and (tmp_path / "m.srn").exists()


def test_the_same_seed_trains_the_same_model_bit_for_bit(small_image, tmp_path):
    """Two filters with Seed=0, the global random state moved in between: identical tensors in the files."""
    from safetensors.torch import load_file

    files = []
    for run in range(2):
        torch.manual_seed(1234 + run)  # what any other code may have done to the global generator
        torch.rand(1000)
        trainer, events = make_trainer(small_image, tmp_path / f"run{run}.srn", steps=20)
        trainer.SetSeed(0)
        trainer.Update()
        assert events.errors == []
        files.append(load_file(tmp_path / f"run{run}.srn"))
    assert files[0].keys() == files[1].keys() and files[0]
    for name in files[0]:
        assert torch.equal(files[0][name], files[1][name]), name
    trainer.SetSeed(1)  # and the seed matters
    trainer.Update()
    other = load_file(tmp_path / "run1.srn")
    assert any(not torch.equal(files[0][name], other[name]) for name in files[0])


@pytest.mark.parametrize("architecture, lr", [("apmgsrn", 0.01), ("siren", 1e-3)])
def test_learning_rate_zero_means_the_architecture_default(small_image, tmp_path, architecture, lr):
    trainer, events = make_trainer(small_image, tmp_path / "m.srn", steps=2)
    assert trainer.config.learning_rate == 0.0
    trainer.SetArchitecture(architecture)
    trainer.Update()
    assert events.errors == []
    assert load_model(tmp_path / "m.srn").training["lr"] == lr
    trainer.SetLearningRate(0.005)
    trainer.Update()
    assert load_model(tmp_path / "m.srn").training["lr"] == 0.005


def test_unknown_array_fails_cleanly(small_image, tmp_path):
    trainer, events = make_trainer(small_image, tmp_path / "m.srn", array=("nope", 0))
    trainer.Update()
    assert len(events.errors) == 1 and "array 'nope'" in events.errors[0]


# ---- NeuralVolumeError ----------------------------------------------------------------------------


READ_ONLY_SCRIPT = """
import sys, time
import numpy as np
from vtkmodules.vtkCommonCore import vtkCommand
from paraview_plugin import TrainNeuralVolume
from paraview_plugin.vtk_image import image_from_array
from srn_core.geometry import ImageGeometry

g = ImageGeometry((12, 10, 8), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
image = image_from_array(np.random.default_rng(0).random(g.shape, dtype=np.float32), g, "density")
trainer = TrainNeuralVolume()
trainer.SetInputDataObject(0, image)
trainer.SetModelFileName(sys.argv[1])
trainer.SetSteps(100000)
errors = []
trainer.AddObserver(vtkCommand.ErrorEvent, lambda o, e: errors.append(o.last_error))
start = time.perf_counter()
trainer.Update()
print(f"{time.perf_counter() - start:.3f}")
print(errors[0] if errors else "no error")
"""


def test_a_read_only_model_folder_fails_before_training(tmp_path):
    """Before, 100000 steps would train and the write would fail at the end: now one error and no training."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT, str(folder / "m.srn")], capture_output=True,
                             text=True, timeout=300, env=env,
                             preexec_fn=without_root_override if os.geteuid() == 0 else None)
    finally:
        os.chmod(folder, 0o755)
    assert out.returncode == 0, out.stderr
    seconds, message = out.stdout.strip().splitlines()[-2:]
    assert message == (f"TrainNeuralVolume: ModelFileName '{folder}/m.srn': the folder '{folder}' is not writable "
                       f"(Permission denied); no training was started."), out.stdout
    assert float(seconds) < 5.0 and os.listdir(folder) == []
