"""srn.figures: the comparison picture of `srn eval --figure` (orientation, proportions, colour scales)."""

import numpy as np
import pytest

from srn import figures
from srn_core.geometry import ImageGeometry


def test_mid_slices_show_the_world_axes_right_and_up_with_true_proportions():
    g = ImageGeometry((20, 30, 10), (5.0, 0.0, -1.0), (1.0, 0.5, 2.0))
    z, y, x = np.meshgrid(np.arange(10), np.arange(30), np.arange(20), indexing="ij")
    values = 10000 * z + 100 * y + x  # every point says where it is
    (lz, sz, wz), (ly, sy, wy), (lx, sx, wx) = figures.mid_slices(values, g)
    assert (lz, ly, lx) == ("Z = 5", "Y = 15", "X = 10")
    # Across z: x to the right, y upwards (row 0 is the largest y).
    assert sz.shape == (30, 20) and sz[0, 0] == 50000 + 2900 and sz[-1, -1] == 50000 + 19
    # Across y: x to the right, z upwards; across x: y to the right, z upwards.
    assert sy.shape == (10, 20) and sy[0, 0] == 90000 + 1500 and sy[-1, -1] == 1500 + 19
    assert sx.shape == (10, 30) and sx[0, 0] == 90000 + 10 and sx[-1, -1] == 2900 + 10
    assert (wz, wy, wx) == ((20.0, 15.0), (20.0, 20.0), (15.0, 20.0))  # world width, height


def test_colour_scales():
    assert np.allclose(figures.diverging(np.array([-2.0, 0.0, 2.0, 5.0]), 2.0),
                       [[0.23, 0.30, 0.75], [1, 1, 1], [0.71, 0.02, 0.15], [0.71, 0.02, 0.15]])  # clipped
    grey = figures.grey(np.array([0.0, 5.0, 10.0, 20.0, np.nan]), 0.0, 10.0)
    assert np.allclose(grey[:4, 0], [0, 0.5, 1, 1]) and tuple(grey[4]) == figures.NO_DATA


def test_comparison_figure_panels_keep_proportions_and_the_error_its_own_scale():
    g = ImageGeometry((40, 20, 10), spacing=(1.0, 1.0, 4.0))  # world 40 x 20 x 40: anisotropic voxels
    rng = np.random.default_rng(0)
    ref = rng.random(g.shape).astype(np.float32) * 100
    rec = ref + 0.5  # a small error everywhere: on the grey scale invisible, on its own scale saturated red
    image = figures.comparison_figure(ref, rec, g, title="test")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    red = np.all(image == (181, 5, 38), axis=2)  # diverging(+scale) in 8 bits
    # Three error panels of 256 x 128 (z), 256 x 256 (y) and 128 x 256 (x) pixels, plus the right end of the bar.
    assert red.sum() == 256 * 128 + 256 * 256 + 128 * 256 + 12
    with pytest.raises(ValueError, match="no finite value"):
        figures.comparison_figure(np.full(g.shape, np.nan), rec, g)
