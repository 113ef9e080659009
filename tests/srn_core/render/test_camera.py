"""srn_core.render.camera: rays and camera motions follow VTK's conventions."""

from __future__ import annotations

import numpy as np
import pytest

from srn_core.render import Camera


def test_camera_rays_follow_vtk_conventions():
    cam = Camera((0, 0, 10), (0, 0, 0), (0, 1, 0), view_angle=90)
    origins, dirs = cam.rays(2, 2)
    # pixel (row 0, col 0) is top-left: direction (-x, +y, -z); half the view angle is 45 degrees vertically
    assert dirs[0].tolist() == pytest.approx(np.array([-0.5, 0.5, -1]) / np.linalg.norm([-0.5, 0.5, -1]))
    assert origins[3].tolist() == [0, 0, 10]
    ortho = Camera((0, 0, 10), (0, 0, 0), (0, 1, 0), parallel_projection=True, parallel_scale=2.0)
    o, d = ortho.rays(4, 2)  # aspect 2: half width 4, half height 2
    assert o[0].tolist() == pytest.approx([-3.0, 1.0, 10.0]) and d[0].tolist() == [0, 0, -1]
    moved = Camera.reset((0, 2, 0, 2, 0, 2)).azimuth(90)
    assert moved.position == pytest.approx((1 + moved.distance, 1, 1))
    assert Camera.reset((0, 2, 0, 2, 0, 2)).zoom(2).view_angle == 15
