"""The NGP field: the hash-grid encoding of ``(x + 1) / 2`` decoded by a bias-free MLP."""

from __future__ import annotations

import torch

from srn_core.fields import FIELDS
from srn_core.fields.ngp import NGP, NGPConfig


def test_ngp_field_maps_the_cube_to_unit_inputs_and_counts_parameters():
    cfg = NGPConfig(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=3,
                    per_level_scale=2.0, width=8, n_hidden_layers=1)
    field = NGP(cfg, value_range=(-1.0, 3.0))
    field.clamp_output = False  # a fresh decoder answers near 0, i.e. near the range's minimum
    assert field.num_parameters() == NGP.count(cfg) == 192 + 4 * 8 + 8
    points = torch.tensor([[-1.0, 0.0, 1.0], [0.5, -0.25, 0.75]])
    with torch.no_grad():
        expected = field.decoder(field.encoding((points + 1) / 2))[:, 0] * 4.0 - 1.0
        assert torch.allclose(field(points), expected)
    assert field.encoding.encoding_config() == {
        "otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 6,
        "base_resolution": 3, "per_level_scale": 2.0, "interpolation": "Linear"}


def test_ngp_is_registered_under_its_architecture_name():
    assert FIELDS["ngp"] is NGP
