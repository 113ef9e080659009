"""srn_core.render.volume: raw grids are marked by their constructor, never recognised by their attributes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srn_core.geometry import ImageGeometry
from srn_core.render import RenderVolume, grid_field
from srn_core.render.macrocells import build_macrocells

GEOMETRY = ImageGeometry((9, 9, 9))
VALUES = np.random.default_rng(0).random(GEOMETRY.shape).astype(np.float32)


def test_from_grid_marks_a_raw_grid_and_its_cells_are_exact():
    raw = RenderVolume.from_grid(VALUES, GEOMETRY)
    assert raw.is_raw_grid
    cells = build_macrocells(raw, cell_size=4)
    assert float(cells.vmin.min()) == float(VALUES.min()) and float(cells.vmax.max()) == float(VALUES.max())


def test_any_other_callable_is_a_field_even_one_that_looks_like_a_grid():
    field = grid_field(VALUES)
    field.volume = torch.from_numpy(VALUES)  # what used to make the renderer take a callable for a raw grid
    volume = RenderVolume(field, GEOMETRY.bounds, GEOMETRY.dims)
    assert not volume.is_raw_grid
    cells = build_macrocells(volume, cell_size=4)
    span = float(VALUES.max() - VALUES.min())
    # a field is bounded only where it was sampled: its ranges are widened by the 1 % margin
    assert float(cells.vmin.min()) == pytest.approx(float(VALUES.min()) - 0.01 * span, abs=1e-6)


def test_a_model_is_a_field(trained_model):
    _, model = trained_model
    assert not RenderVolume.from_model(model).is_raw_grid


def test_grid_field_interpolates_voxels_corner_aligned():
    values = np.arange(4 * 3 * 2, dtype=np.float32).reshape(2, 3, 4)  # (nz, ny, nx)
    f = grid_field(values)
    pts = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [-1 + 2 / 3, 0.0, 1.0], [-1 + 1 / 3, -1.0, -1.0]])
    assert f(pts).tolist() == pytest.approx([0.0, 23.0, values[1, 1, 1], 0.5])
