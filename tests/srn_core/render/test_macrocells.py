"""srn_core.render.macrocells: the cells' value ranges bound the raw-data interpolant exactly."""

from __future__ import annotations

import numpy as np
import pytest

from srn_core.geometry import ImageGeometry
from srn_core.render import RenderVolume
from srn_core.render.macrocells import build_macrocells


def test_macrocell_ranges_bound_the_raw_grid_exactly():
    geometry = ImageGeometry((20, 17, 9))
    values = np.random.default_rng(1).random(geometry.shape).astype(np.float32)
    cells = build_macrocells(RenderVolume.from_grid(values, geometry), cell_size=4)
    assert cells.shape == (2, 4, 5)  # ceil((9-1)/4), ceil((17-1)/4), ceil((20-1)/4) as (z, y, x)
    # cell (k, j, i) covers voxels 4k..4k+4 (inclusive) along each axis
    block = values[4:9, 8:13, 12:17]
    assert float(cells.vmin[1, 2, 3]) == pytest.approx(float(block.min()))
    assert float(cells.vmax[1, 2, 3]) == pytest.approx(float(block.max()))
