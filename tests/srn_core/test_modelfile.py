"""srn_core.modelfile and the model file: bit-exact round trips, bad files, atomic writes."""

import json
import os
import stat

import numpy as np
import pytest
import torch

from core_samples import small_model
from srn_core.loading import load_model
from srn_core.model import NeuralVolume
from srn_core.modelfile import ModelFileError


# ---- the model file -------------------------------------------------------------------------------

def test_model_file_round_trip_is_bit_exact(tmp_path):
    model = small_model()
    model.training = {"steps": 3, "psnr": 12.5}
    path = tmp_path / "m.srn"
    model.save(path)
    loaded = load_model(path)
    pts = torch.rand(3000, 3) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(loaded.field(pts), model.field(pts))
    assert loaded.geometry == model.geometry and loaded.array_name == "wave"
    assert loaded.value_range == (-1.0, 3.0) and loaded.training == {"steps": 3, "psnr": 12.5}
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["neural_volume"])
    assert meta["format"] == "neural-volume" and meta["architecture"] == "apmgsrn"
    assert meta["config"]["grid_shape"] == [5, 6, 7] and meta["geometry"]["spacing"] == [0.5, 1.0, 2.0]
    assert [f for f in os.listdir(tmp_path)] == ["m.srn"]  # no temporary file left behind


def test_bad_model_files_give_one_clear_error(tmp_path):
    model = small_model()
    good = tmp_path / "good.srn"
    model.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.srn").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.srn").write_bytes(b"\x00" * 64)
    for name, pattern in [("missing.srn", "does not exist"), ("trunc.srn", "truncated or not a safetensors"),
                          ("junk.srn", "truncated or not a safetensors")]:
        with pytest.raises((ModelFileError, FileNotFoundError), match=pattern):
            load_model(tmp_path / name)
    from safetensors.torch import save_file
    save_file({"x": torch.ones(2)}, str(tmp_path / "foreign.srn"))
    with pytest.raises(ModelFileError, match="without neural-volume metadata"):
        load_model(tmp_path / "foreign.srn")


def test_failed_write_leaves_no_partial_file(tmp_path):
    model = small_model()
    target = tmp_path / "m.srn"
    model.save(target)
    before = target.read_bytes()
    bad = NeuralVolume(model.field, model.geometry, "wave", training={"not_json": object()})
    with pytest.raises(TypeError):
        bad.save(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["m.srn"]


# ---- permissions of what every writer creates ------------------------------------------------------------
def _write_model(path):
    small_model().save(path)


def _write_checkpoint(path):
    from core_samples import analytic_volume
    from srn_core.training import TrainConfig, train

    train(analytic_volume(), small_model().field, TrainConfig(steps=2, batch_size=256, device="cpu"), checkpoint=path)


def _write_vti(path):
    from paraview_plugin.vtk_image import image_from_array, write_vti
    from srn_core.geometry import ImageGeometry

    write_vti(path, image_from_array(np.zeros((2, 3, 4), np.float32), ImageGeometry((4, 3, 2)), "v"))


def _write_png(path):
    from srn_core.render.image import write_png

    write_png(path, np.zeros((2, 3, 3), np.uint8))


def _write_npy(path):
    from srn.io import write_volume
    from srn_core.geometry import ImageGeometry

    write_volume(path, np.zeros((2, 3, 4), np.float32), ImageGeometry((4, 3, 2)), "v")


WRITERS = {"model.srn": _write_model, "run.checkpoint": _write_checkpoint, "out.vti": _write_vti,
           "image.png": _write_png, "out.npy": _write_npy}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
@pytest.mark.parametrize("name", WRITERS)
def test_written_files_follow_the_umask(tmp_path, name, umask, mode):
    path = tmp_path / name
    old = os.umask(umask)
    try:
        WRITERS[name](path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.listdir(tmp_path) == [name]  # and no temporary file left behind
