"""srn_core.modelfile and the model file: bit-exact round trips, bad files, atomic writes."""

import json
import os

import pytest
import torch

from core_samples import small_model
from srn_core.model import NeuralVolume, load_model
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
