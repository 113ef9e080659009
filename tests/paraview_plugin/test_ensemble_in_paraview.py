"""Ensembles in Debian's real pvpython / pvbatch: Train Neural Volume with ``EnsembleGrid`` trains the bricks
``srn_core.ensemble_training.train_ensemble`` trains (bit for bit), each from a request for its own box only;
under ``mpirun -np 2 pvbatch`` each rank trains and reads its own brick; Neural Volume Source on two pieces loads
only the bricks its piece touches.

The scripts run in subprocesses (``pv_scripts``); the references are trained here, in the test process, with the
torch thread count the filter trained with (float sums depend on it). Skipped without ParaView.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import paraview_env
from paraview_plugin.vtk_image import image_from_array, write_vti
from pv_scripts import MPI_RANK, read_image, run_ok, script, values_of
from srn_core.compression import Compression
from srn_core.data import Volume
from srn_core.ensemble_training import DEFAULT_GHOST, plan_bricks, train_ensemble
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from srn_core.series import series_psnr
from srn_core.training import TrainConfig

pytestmark = [pytest.mark.paraview,
              pytest.mark.skipif(paraview_env.missing_reason() is not None,
                                 reason=str(paraview_env.missing_reason()))]

GEOMETRY = ImageGeometry((24, 16, 16), (0.0, -1.0, 0.5), (0.5, 0.25, 0.25))
"""Longest along x, so ParaView's two pieces split x, as the 2 x 1 x 1 bricks do."""
GRID = (2, 1, 1)
STEPS, BATCH, BUDGET, SEED = 120, 2048, 8000, 3
SETTINGS = f"Steps={STEPS}, BatchSize={BATCH}, ParameterBudget={BUDGET}, Seed={SEED}, Device='cpu'"


@pytest.fixture(scope="module")
def volume():
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in GEOMETRY.shape), indexing="ij")
    values = np.sin(3 * x) * np.cos(2 * y) + 0.5 * z * z + 0.3 * np.sin(7 * x * z)
    return Volume(values.astype(np.float32), GEOMETRY, "density")


@pytest.fixture(scope="module")
def vti(volume, tmp_path_factory):
    """The volume as an uncompressed VTI (its reader reads just the extent asked for)."""
    path = tmp_path_factory.mktemp("ensemble-input") / "input.vti"
    write_vti(path, image_from_array(volume.values, volume.geometry, "density"), compress=False)
    return path


def serial_ensemble(volume, threads: int, work_dir):
    """What ``train_ensemble`` trains on the whole volume with the filter's settings, on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train_ensemble(volume, GRID, "apmgsrn", BUDGET,
                              TrainConfig(steps=STEPS, batch_size=BATCH, seed=SEED, device="cpu"),
                              work_dir=work_dir)
    finally:
        torch.set_num_threads(before)


def assert_same_tensors(a, b):
    a, b = a.field.state_dict(), b.field.state_dict()
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


SERIAL_BODY = """
    from paraview import servermanager
    reader = XMLImageDataReader(FileName=[sys.argv[1]])
    trainer = TrainNeuralVolume(Input=reader, ModelFileName=os.path.join(OUT, "serial.srn"), Compress=0,
                                EnsembleGrid=[{grid}], {settings})
    trainer.Scalars = ["POINTS", "density"]
    trainer.UpdatePipeline()
    algorithm = trainer.GetClientSideObject()
    first = algorithm.trainings
    trainer.UpdatePipeline()  # nothing changed: nothing trains again
    trainer.GetClientSideObject().Modified()
    trainer.UpdatePipeline()
    data = servermanager.Fetch(trainer)
    json.dump({{"error": algorithm.last_error, "inputs": algorithm.brick_inputs, "threads": algorithm.brick_threads,
               "trainings": [first, algorithm.trainings], "extent": list(data.GetExtent()),
               "psnr": data.GetFieldData().GetArray("PSNR").GetValue(0),
               "parts_left": os.path.exists(os.path.join(OUT, "serial.srn.parts"))}},
              open(os.path.join(OUT, "serial.json"), "w"))
"""


def test_pvpython_trains_the_bricks_train_ensemble_trains(pv_env, volume, vti, tmp_path):
    """EnsembleGrid 2 1 1 in pvpython: each brick asked for its own box (ghosts included), the file holds exactly
    the serial ensemble's tensors, the PSNR is the whole volume's, and an unchanged pipeline trains nothing."""
    body = SERIAL_BODY.format(grid=", ".join(map(str, GRID)), settings=SETTINGS)
    run_ok([paraview_env.find("pvpython"), script(tmp_path, body), str(vti)],
           pv_env, timeout=300)
    report = json.loads((tmp_path / "serial.json").read_text())
    assert report["error"] is None and report["trainings"] == [2, 2] and not report["parts_left"]
    plan = plan_bricks(GEOMETRY, GRID, DEFAULT_GHOST)
    assert [tuple(extent) for _, extent in report["inputs"]] == [plan.extent(0), plan.extent(1)]
    assert [k for k, _ in report["inputs"]] == [0, 1]
    assert report["extent"] == list(GEOMETRY.whole_extent)
    reference = serial_ensemble(volume, report["threads"], tmp_path / "reference.parts")
    trained = load_model(tmp_path / "serial.srn")
    assert trained.geometry == GEOMETRY and trained.training["ensemble_grid"] == list(GRID)
    assert_same_tensors(reference.model, trained)
    assert report["psnr"] == pytest.approx(reference.psnr, abs=1e-6)


MPI_BODY = MPI_RANK + """
    reader = XMLImageDataReader(FileName=[sys.argv[1]])
    trainer = TrainNeuralVolume(Input=reader, ModelFileName=os.path.join(OUT, "mpi.srn"),
                                EnsembleGrid=[{grid}], {settings})
    trainer.Scalars = ["POINTS", "density"]
    trainer.UpdatePipeline()
    algorithm = trainer.GetClientSideObject()  # this rank's own VTK object (pvbatch --symmetric)
    local = algorithm.GetOutputDataObject(0)
    report = {{"ranks": ranks, "error": algorithm.last_error, "inputs": algorithm.brick_inputs,
              "threads": algorithm.brick_threads, "trainings": algorithm.trainings,
              "loaded": algorithm.loaded_bricks, "piece": list(local.GetExtent()),
              "psnr": local.GetFieldData().GetArray("PSNR").GetValue(0)}}
    CreateWriter(os.path.join(OUT, "trained.pvti"), trainer).UpdatePipeline()
    source = NeuralVolumeSource(FileName=os.path.join(OUT, "mpi.srn"), SamplingDimensions=[{dims}], Device="cpu")
    source.UpdatePipeline()
    sampled = source.GetClientSideObject()
    report["source_loaded"] = sampled.loaded_bricks
    report["source_piece"] = list(sampled.GetOutputDataObject(0).GetExtent())
    CreateWriter(os.path.join(OUT, "sampled.pvti"), source).UpdatePipeline()
    json.dump(report, open(os.path.join(OUT, "rank%d.json" % rank), "w"))
"""


def test_mpi_ranks_each_train_and_read_their_own_brick_and_load_only_touched_bricks(pv_env, volume, vti, tmp_path):
    """``mpirun -np 2 pvbatch``: rank r trains brick r from a request for that brick's box alone; rank 0 writes
    the file the serial ensemble would be (compressed alike); each rank outputs its piece from the bricks it
    touches, the PSNR summed over the pieces is the whole volume's; Neural Volume Source on two pieces loads
    only the bricks of its piece."""
    body = MPI_BODY.format(grid=", ".join(map(str, GRID)), settings=SETTINGS,
                           dims=", ".join(map(str, GEOMETRY.dims)))
    cmd = paraview_env.mpirun_command(2, "pvbatch", pv_env) + ["--symmetric", script(tmp_path, body), str(vti)]
    run_ok(cmd, pv_env, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    plan = plan_bricks(GEOMETRY, GRID, DEFAULT_GHOST)
    for r, report in enumerate(ranks):
        assert report["ranks"] == 2 and report["error"] is None and report["trainings"] == 1
        assert report["inputs"] == [[r, list(plan.extent(r))]]  # its brick's box, and nothing else
    # ParaView's two pieces share the plane x = 11, which lies in brick 0 (routing cell 0 ends at 11.5): the
    # piece [11, 23] needs both bricks, the piece [0, 11] brick 0 only.
    assert [report["piece"] for report in ranks] == [[0, 11, 0, 15, 0, 15], [11, 23, 0, 15, 0, 15]]
    assert [report["loaded"] for report in ranks] == [[0], [0, 1]]
    assert [report["source_piece"] for report in ranks] == [[0, 11, 0, 15, 0, 15], [11, 23, 0, 15, 0, 15]]
    assert [report["source_loaded"] for report in ranks] == [[0], [0, 1]]
    trained = load_model(tmp_path / "mpi.srn")
    reference = serial_ensemble(volume, ranks[0]["threads"], tmp_path / "reference.parts")
    assert {r["threads"] for r in ranks} == {ranks[0]["threads"]}
    reference.model.save(tmp_path / "reference.srn", Compression())
    assert_same_tensors(load_model(tmp_path / "reference.srn"), trained)
    assert not (tmp_path / "mpi.srn.parts").exists()
    whole = series_psnr(trained, volume)["psnr"]
    for report in ranks:
        assert report["psnr"] == pytest.approx(whole, abs=1e-6)
    for name in ("trained.pvti", "sampled.pvti"):
        stitched = read_image(tmp_path / name)
        assert stitched.GetExtent() == GEOMETRY.whole_extent
        np.testing.assert_allclose(values_of(stitched, "density"), trained.resample(), rtol=0, atol=1e-5)


FAILING_BODY = MPI_RANK + """
    reader = XMLImageDataReader(FileName=[sys.argv[1]])
    trainer = TrainNeuralVolume(Input=reader, ModelFileName=os.path.join(OUT, "failed.srn"),
                                EnsembleGrid=[{grid}], {settings})
    trainer.Scalars = ["POINTS", "density"]
    trainer.UpdatePipeline()
    algorithm = trainer.GetClientSideObject()
    json.dump({{"error": algorithm.last_error, "trainings": algorithm.trainings,
               "points": algorithm.GetOutputDataObject(0).GetNumberOfPoints()}},
              open(os.path.join(OUT, "failed%d.json" % rank), "w"))
"""


def test_a_brick_failing_on_one_rank_is_an_error_on_every_rank_and_writes_nothing(pv_env, volume, tmp_path):
    """NaN in brick 1's box only: rank 1 fails, rank 0 stops its brick at the next poll of the failure markers;
    both report an error, and neither the model file nor a brick of rank 1 is written."""
    values = volume.values.copy()
    values[:, :, -3:] = np.nan
    path = tmp_path / "nan.vti"
    write_vti(path, image_from_array(values, GEOMETRY, "density"), compress=False)
    body = FAILING_BODY.format(grid=", ".join(map(str, GRID)), settings=SETTINGS.replace(f"Steps={STEPS}",
                                                                                          "Steps=3000"))
    cmd = paraview_env.mpirun_command(2, "pvbatch", pv_env) + ["--symmetric", script(tmp_path, body), str(path)]
    run_ok(cmd, pv_env, timeout=300)
    ranks = [json.loads((tmp_path / f"failed{r}.json").read_text()) for r in range(2)]
    assert "non-finite values" in ranks[1]["error"] and "MaskNonFinite" in ranks[1]["error"]
    assert ranks[0]["error"] == ("TrainNeuralVolume: another MPI rank failed (see its error), so no ensemble model "
                                 "was written.")
    assert [r["trainings"] for r in ranks] == [0, 0] and [r["points"] for r in ranks] == [0, 0]
    assert not (tmp_path / "failed.srn").exists()
    parts = tmp_path / "failed.srn.parts"
    assert sorted(p.name for p in parts.glob("*.txt")) == ["failed-rank-00001.txt"]
    assert not list(parts.glob("brick-*.safetensors"))  # rank 0 stopped early too (keeping its checkpoint)
