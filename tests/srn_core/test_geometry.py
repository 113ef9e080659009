"""srn_core.geometry: VTK index order, world coordinates, bounds and their errors."""


import pytest
import torch

from srn_core.geometry import ImageGeometry, extent_points, world_to_model


# ---- geometry -----------------------------------------------------------------------------------

def test_extent_points_follow_vtk_order_and_world_coordinates():
    g = ImageGeometry((3, 2, 2), (10.0, 20.0, 30.0), (1.0, 2.0, 4.0))
    pts = extent_points(g)
    assert pts.shape == (12, 3)
    assert pts[0].tolist() == [10, 20, 30]
    assert pts[1].tolist() == [11, 20, 30]       # x fastest
    assert pts[3].tolist() == [10, 22, 30]       # then y
    assert pts[6].tolist() == [10, 20, 34]       # then z
    assert pts[-1].tolist() == [12, 22, 34]
    cube = extent_points(g, model_bounds=g.bounds)
    assert cube.min().item() == -1.0 and cube.max().item() == 1.0
    assert torch.allclose(world_to_model(pts, g.bounds), cube)
    rows = extent_points(g, (1, 2, 0, 1, 1, 1), start=1, stop=3)
    assert rows.tolist() == [[12, 20, 34], [11, 22, 34]]


def test_from_bounds_and_bad_geometry_messages():
    g = ImageGeometry.from_bounds((0, 10, -1, 1, 5, 5), (11, 3, 1))
    assert g.spacing == (1.0, 1.0, 1.0) and g.origin == (0.0, -1.0, 5.0) and g.bounds == (0, 10, -1, 1, 5, 5)
    with pytest.raises(ValueError, match=r"dims must be three positive integers, got \(0, 3, 3\)"):
        ImageGeometry.from_bounds((0, 1, 0, 1, 0, 1), (0, 3, 3))
    with pytest.raises(ValueError, match=r"-4"):
        ImageGeometry.from_bounds((0, 1, 0, 1, 0, 1), (2, -4, 3))
    with pytest.raises(ValueError, match="inverted on y: ymin=2.0 > ymax=1.0"):
        ImageGeometry.from_bounds((0, 1, 2, 1, 0, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="spacing"):
        ImageGeometry((2, 2, 2), spacing=(1, 0, 1))
