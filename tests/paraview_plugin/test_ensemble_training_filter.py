"""TrainNeuralVolume's ensembles (``EnsembleGrid``) with the PyPI vtk wheel: cell data, abort and resume,
re-execution without training, errors. The real pvpython / pvbatch runs are in ``test_ensemble_in_paraview``."""

from __future__ import annotations

import torch
from vtkmodules.vtkCommonCore import vtkCommand
from vtkmodules.vtkCommonDataModel import vtkDataObject
from vtkmodules.vtkFiltersCore import vtkPointDataToCellData
from vtkmodules.vtkImagingCore import vtkRTAnalyticSource

from paraview_plugin import TrainNeuralVolume
from paraview_plugin.vtk_image import volume_from_image
from srn_core.ensemble_training import plan_bricks, train_ensemble
from srn_core.loading import load_model
from srn_core.training import TrainConfig

from vtk_events import Events, field_value, no_unobserved_vtk_errors  # noqa: F401 (autouse fixture)

STEPS, BATCH, BUDGET = 60, 1024, 6000


def wavelet():
    source = vtkRTAnalyticSource()  # honours UPDATE_EXTENT: it makes just the box asked for
    source.SetWholeExtent(0, 20, 0, 12, 0, 12)
    return source


def make_trainer(upstream, path, association=vtkDataObject.FIELD_ASSOCIATION_POINTS, ghost=1):
    trainer = TrainNeuralVolume()
    trainer.SetInputConnection(upstream.GetOutputPort())
    trainer.SetInputArrayToProcess(0, 0, 0, association, "RTData")
    trainer.SetModelFileName(str(path))
    trainer.SetSteps(STEPS)
    trainer.SetBatchSize(BATCH)
    trainer.SetParameterBudget(BUDGET)
    trainer.SetDevice("cpu")
    trainer.SetCompress(0)
    trainer.SetEnsembleGrid(2, 1, 1)
    trainer.SetGhostCells(ghost)
    return trainer, Events(trainer)


def reference(volume, threads, work_dir, ghost=1):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train_ensemble(volume, (2, 1, 1), "apmgsrn", BUDGET, TrainConfig(steps=STEPS, batch_size=BATCH,
                              seed=0, device="cpu"), ghost=ghost, work_dir=work_dir)
    finally:
        torch.set_num_threads(before)


def same_tensors(a, b) -> bool:
    a, b = a.field.state_dict(), b.field.state_dict()
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_cell_array_trains_the_ensemble_of_its_cell_centres(tmp_path):
    """Each brick asks for the points around its cells only; the bricks are train_ensemble's on the cell-centre
    volume and the output's PSNR is that ensemble's over the whole volume."""
    source, cells = wavelet(), vtkPointDataToCellData()  # both kept: VTK holds no reference to a port's owner
    cells.SetInputConnection(source.GetOutputPort())
    trainer, events = make_trainer(cells, tmp_path / "cells.srn", vtkDataObject.FIELD_ASSOCIATION_CELLS)
    trainer.Update()
    assert events.errors == [] and trainer.trainings == 2
    cells.Update()
    volume = volume_from_image(cells.GetOutput(), "RTData")  # 20 x 12 x 12 cell centres
    plan = plan_bricks(volume.geometry, (2, 1, 1), 1)
    expected = [(k, tuple(v + (a % 2) for a, v in enumerate(plan.extent(k)))) for k in range(2)]
    assert trainer.brick_inputs == expected == [(0, (0, 12, 0, 12, 0, 12)), (1, (8, 20, 0, 12, 0, 12))]
    output = trainer.GetOutputDataObject(0)
    assert output.GetExtent() == (0, 20, 0, 12, 0, 12) and output.GetCellData().GetArray("RTData") is not None
    serial = reference(volume, trainer.brick_threads, tmp_path / "reference.parts")
    assert same_tensors(serial.model, load_model(tmp_path / "cells.srn"))
    assert abs(field_value(output, "PSNR") - serial.psnr) < 1e-6


def test_abort_keeps_the_finished_bricks_and_applying_again_resumes_bit_for_bit(tmp_path):
    source = wavelet()
    trainer, events = make_trainer(source, tmp_path / "m.srn")
    progress = []

    def on_progress(obj, event):
        progress.append(obj.GetProgress())
        if obj.GetProgress() > 0.7:  # inside brick 1 (brick 0 ends at 0.475)
            obj.SetAbortExecute(1)

    observer = trainer.AddObserver(vtkCommand.ProgressEvent, on_progress)
    trainer.Update()
    parts = tmp_path / "m.srn.parts"
    assert events.errors == [] and len(events.warnings) == 1 and "apply again to resume" in events.warnings[0]
    assert not (tmp_path / "m.srn").exists() and trainer.GetOutputDataObject(0).GetNumberOfPoints() == 0
    assert sorted(p.name for p in parts.iterdir()) == ["brick-00000.safetensors", "brick-00001.checkpoint",
                                                       "ensemble.json"]
    assert progress == sorted(progress) and 0.47 < max(p for p in progress if p < 0.5) <= 0.475
    trainer.RemoveObserver(observer)
    trainer.Modified()
    trainer.Update()
    assert events.errors == [] and trainer.trainings == 2  # brick 0 was not trained again
    assert not parts.exists() and trainer.GetOutputDataObject(0).GetNumberOfPoints() == 21 * 13 * 13
    source.Update()
    serial = reference(volume_from_image(source.GetOutput(), "RTData"), trainer.brick_threads,
                       tmp_path / "reference.parts")
    assert same_tensors(serial.model, load_model(tmp_path / "m.srn"))


def test_unchanged_settings_evaluate_the_written_model_without_training(tmp_path):
    source = wavelet()
    trainer, events = make_trainer(source, tmp_path / "m.srn")
    trainer.SetSteps(20)
    trainer.Update()
    written = (tmp_path / "m.srn").stat().st_mtime_ns
    trainer.Modified()  # re-executes; nothing it depends on changed
    trainer.Update()
    assert trainer.trainings == 2 and (tmp_path / "m.srn").stat().st_mtime_ns == written
    psnr = field_value(trainer.GetOutputDataObject(0), "PSNR")
    trainer.SetSeed(1)
    trainer.Update()
    assert events.errors == [] and trainer.trainings == 4 and field_value(trainer.GetOutputDataObject(0), "PSNR") != psnr


def test_ensemble_settings_fail_with_one_error_naming_them(tmp_path):
    source = wavelet()
    trainer, events = make_trainer(source, tmp_path / "m.srn")
    trainer.SetEnsembleGrid(30, 1, 1)
    trainer.Update()
    assert events.errors[-1].startswith("TrainNeuralVolume: EnsembleGrid 30 1 1 with GhostCells 1: ")
    assert "use at most 20" in events.errors[-1]
    trainer.SetEnsembleGrid((2, 1, 1))
    trainer.SetParameterBudget(1500)  # srn_core.fields.base.MIN_BUDGET is 1000 per brick
    trainer.Update()
    assert events.errors[-1] == ("TrainNeuralVolume: ParameterBudget 1500 leaves 750 parameters to each of the 2 "
                                 "bricks of EnsembleGrid 2 1 1; give at least 2000.")
    stale = tmp_path / "m.srn.parts"
    stale.mkdir()
    (stale / "brick-00000.safetensors").write_bytes(b"")
    trainer.SetParameterBudget(BUDGET)
    trainer.Update()
    assert "holds bricks of an earlier, unfinished ensemble run" in events.errors[-1]
    assert len(events.errors) == 3 and trainer.trainings == 0 and not (tmp_path / "m.srn").exists()
