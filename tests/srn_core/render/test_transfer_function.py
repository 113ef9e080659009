"""srn_core.render.transfer_function: shipped presets, preset files, point lists, conservative range maxima."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from srn_core.render import TransferFunction, TransferTable, preset_names


def test_shipped_presets_load_and_rescale():
    names = preset_names()
    assert {"Grayscale", "Cool to Warm", "Viridis", "Black-Body Radiation", "Tissue"} <= set(names)
    tf = TransferFunction.from_preset("cool-to-warm", value_range=(10.0, 30.0))
    assert tf.range == (10.0, 30.0)
    mid = tf.colors(np.array([20.0]))[0]
    assert mid == pytest.approx([0.865, 0.865, 0.865], abs=0.01)  # the diverging map's white-ish centre
    gray = TransferFunction.from_preset("Grayscale", (0.0, 4.0)).table(5)
    assert gray.rgba[:, 3].tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_preset_files_and_point_lists(tmp_path):
    preset = [{"Name": "mine", "ColorSpace": "RGB", "RGBPoints": [0, 0, 0, 0, 10, 1, 0.5, 0],
               "Points": [0, 0, 0.5, 0, 5, 0.2, 0.5, 0, 10, 1, 0.5, 0]}]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(preset))
    tf = TransferFunction.from_preset(str(path))
    assert tf.opacities(np.array([2.5, 7.5])) == pytest.approx([0.1, 0.6])
    assert tf.colors(np.array([-5.0, 5.0, 50.0])) == pytest.approx(np.array([[0, 0, 0], [0.5, 0.25, 0], [1, 0.5, 0]]))
    no_opacity = TransferFunction.from_preset({"RGBPoints": [0, 0, 0, 0, 1, 1, 1, 1]}, value_range=(0, 2))
    assert no_opacity.opacities(np.array([0.0, 1.0, 2.0])) == pytest.approx([0, 0.5, 1])  # linear ramp
    assert TransferFunction.from_preset(tf.to_preset()).opacity_points.tolist() == tf.opacity_points.tolist()


def test_table_max_opacity_is_a_conservative_range_maximum():
    rng = np.random.default_rng(3)
    rgba = rng.random((257, 4)).astype(np.float32)
    table = TransferTable(-1.0, 1.0, rgba)
    lo = torch.tensor(rng.uniform(-1.2, 1.2, 200))
    hi = lo + torch.tensor(rng.uniform(0, 0.8, 200))
    got = table.max_opacity(lo, hi)
    for a, b, m in zip(lo.tolist(), hi.tolist(), got.tolist()):
        vals = torch.linspace(a, b, 400)
        assert float(table.lookup(vals)[:, 3].max()) <= m + 1e-7
