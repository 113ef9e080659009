"""The field interface: outputs in data units, clamped to the stored value range unless ``clamp_output`` is off."""

from __future__ import annotations

import json

import pytest
import torch

from srn_core.fields import build_field, field_for_budget
from srn_core.fields.ensemble import EnsembleConfig, EnsembleField

LO, HI = 2.0, 6.0


def overshooting_field(arch="apmgsrn", value_range=(LO, HI)):
    """A field whose raw output leaves ``value_range`` on both sides (large random decoder weights)."""
    torch.manual_seed(0)
    field = field_for_budget(arch, 20_000, (24, 28, 32), value_range=value_range).eval()
    with torch.no_grad():
        for p in field.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return field


def points(n=4000, seed=0):
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("arch", ["apmgsrn", "fvsrn", "ngp", "siren"])
def test_outputs_are_clamped_to_the_value_range_by_default(arch):
    field = overshooting_field(arch)
    pts = points()
    with torch.no_grad():
        raw = field.normalized(pts) * (HI - LO) + LO
        assert raw.min() < LO - 0.5 and raw.max() > HI + 0.5  # the decoder really overshoots
        assert field.clamp_output
        clamped = field(pts)
        field.clamp_output = False
        unclamped = field(pts)
    assert clamped.min().item() == LO and clamped.max().item() == HI
    torch.testing.assert_close(clamped, raw.clamp(LO, HI), rtol=0, atol=1e-6)
    torch.testing.assert_close(unclamped, raw, rtol=0, atol=1e-6)


def test_clamping_never_increases_the_error_against_data_in_range():
    field = overshooting_field()
    pts = points(seed=1)
    data = LO + (HI - LO) * torch.rand(pts.shape[0], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        clamped_error = (field(pts) - data).abs()
        field.clamp_output = False
        raw_error = (field(pts) - data).abs()
    assert bool((clamped_error <= raw_error).all())
    assert clamped_error.sum() < 0.9 * raw_error.sum()  # and here it removes a real part of it


def test_training_path_and_model_file_are_unaffected():
    field = overshooting_field()
    field.clamp_output = False
    pts = points(100)
    # ``normalized`` (what training fits) is never clamped: outside [0, 1] here.
    with torch.no_grad():
        out = field.normalized(pts)
    assert out.min() < 0 and out.max() > 1
    # The switch is not part of the model file: neither in the config nor in the state dict.
    assert "clamp_output" not in json.dumps(field.config_dict())
    assert not any("clamp" in key for key in field.state_dict())
    rebuilt = build_field("apmgsrn", json.loads(json.dumps(field.config_dict())), (LO, HI))
    assert rebuilt.clamp_output


def test_ensemble_clamps_each_brick_to_its_own_range_under_its_own_switch():
    bricks = [overshooting_field(value_range=(0.0, 1.0)), overshooting_field(value_range=(10.0, 20.0))]
    config = EnsembleConfig(grid=(2, 1, 1), brick_configs=[b.config_dict() for b in bricks],
                            brick_bounds=[[-1, 0.1, -1, 1, -1, 1], [-0.1, 1, -1, 1, -1, 1]])
    ensemble = EnsembleField(config, bricks=bricks).eval()
    assert tuple(ensemble.value_range.tolist()) == (0.0, 20.0)
    pts = points()
    left = pts[:, 0] < 0
    with torch.no_grad():
        values = ensemble(pts)
        ensemble.clamp_output = False
        raw = ensemble(pts)
    assert values[left].min() == 0.0 and values[left].max() == 1.0
    assert values[~left].min() == 10.0 and values[~left].max() == 20.0
    assert raw[left].min() < 0.0 and raw[~left].max() > 20.0
