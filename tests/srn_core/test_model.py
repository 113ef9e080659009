"""srn_core.model: NeuralVolume, what its file holds, and building it from a file's tensors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from core_samples import small_model
from srn_core.fields import FIELDS, field_for_budget
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from srn_core.model import NeuralVolume
from srn_core.modelfile import ModelFileError


def test_the_model_file_holds_exactly_the_documented_metadata(tmp_path):
    path = tmp_path / "m.srn"
    small_model().save(path)
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["neural_volume"])
    # What README's "The model file" promises; nothing it does not (time steps only in time-varying models).
    assert sorted(meta) == ["architecture", "array_name", "config", "format", "format_version", "geometry",
                            "num_parameters", "training", "value_range"]


@pytest.mark.parametrize("architecture", sorted(set(FIELDS) - {"ensemble", "time_varying"}))  # composites: own tests
def test_every_architecture_is_rebuilt_exactly_from_its_file(tmp_path, architecture):
    # The field is first built on torch's meta device to compare shapes; that must work for every architecture.
    torch.manual_seed(0)
    field = field_for_budget(architecture, 4000, (8, 9, 10), (-2.0, 5.0)).eval()
    model = NeuralVolume(field, ImageGeometry((10, 9, 8)), "v")
    model.save(tmp_path / "m.srn")
    loaded = load_model(tmp_path / "m.srn")
    assert type(loaded.field) is type(field) and loaded.num_parameters == model.num_parameters
    pts = torch.rand(500, 3) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(loaded.field(pts), field(pts))


def test_from_tensors_refuses_a_shape_the_config_does_not_declare():
    model = small_model()
    tensors = {f"field.{k}": v for k, v in model.field.state_dict().items()}
    tensors["field.transforms"] = torch.zeros(5, 4, 4)
    meta = model.metadata()
    with pytest.raises(ModelFileError) as info:
        NeuralVolume.from_tensors(tensors, meta, "x.srn")
    assert str(info.value) == ("model file 'x.srn' declares field.transforms of shape [4, 4, 4] but holds [5, 4, 4] "
                               "(a damaged file; the declared tensor alone would need 256 B).")
    good = {f"field.{k}": v for k, v in model.field.state_dict().items()}
    assert NeuralVolume.from_tensors(good, meta, "x.srn").num_parameters == model.num_parameters
