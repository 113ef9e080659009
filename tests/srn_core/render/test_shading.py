"""srn_core.render.shading: gradients of linear fields are exact, lighting follows its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srn_core.render.shading import central_differences, gradient_probes, headlight_phong, unit_normals


def test_probes_are_six_offsets_clamped_to_the_cube():
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]])
    probes = gradient_probes(pts, torch.tensor([0.1, 0.2, 0.4]))
    assert probes.shape == (12, 3)
    assert probes[0].tolist() == pytest.approx([0.1, 0.0, 0.0]) and probes[1].tolist() == [1.0, -1.0, 0.5]  # +x
    assert probes[5].tolist() == pytest.approx([1.0, -1.0, 0.9])  # +z of the second point
    assert probes[6].tolist() == pytest.approx([-0.1, 0.0, 0.0]) and probes[9].tolist() == [1.0, -1.0, 0.5]  # -y
    assert probes[11].tolist() == pytest.approx([1.0, -1.0, 0.1])  # -z of the second point


def test_central_differences_of_a_linear_field_are_exact():
    """f = 2 X + 3 Y - Z in world units, one voxel of spacing (0.5, 0.25, 2) per probe offset."""
    spacing = torch.tensor([0.5, 0.25, 2.0], dtype=torch.float64)
    h = torch.tensor([0.1, 0.05, 0.2], dtype=torch.float64)  # one voxel in model units
    pts = torch.tensor([[0.1, -0.3, 0.2], [-0.5, 0.4, 0.0]], dtype=torch.float64)
    to_world = spacing / h  # world units per model unit

    def field(p):
        world = p * to_world
        return 2 * world[:, 0] + 3 * world[:, 1] - world[:, 2]

    grad = central_differences(field(gradient_probes(pts, h)), spacing)
    assert grad.numpy() == pytest.approx(np.array([[2.0, 3.0, -1.0]] * 2), abs=1e-12)


def test_unit_normals():
    normals = unit_normals(torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -2.0]], dtype=torch.float64))
    assert normals.tolist() == [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1.0]]


def test_headlight_phong_follows_its_formula_and_keeps_opacity():
    alpha = 0.5
    rgba = torch.tensor([[0.4 * alpha, 0.2 * alpha, 0.0, alpha]] * 4)  # straight colour (0.4, 0.2, 0)
    view = torch.tensor([[0.0, 0.0, -1.0]] * 4)
    normal = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.8, 0.6]])
    lit = headlight_phong(rgba, normal, view, ambient=0.1, diffuse=0.7, specular=0.2, specular_power=10.0)
    assert lit[:, 3].tolist() == [alpha] * 4
    facing = [0.4 * 0.8 + 0.2, 0.2 * 0.8 + 0.2, 0.2]  # n.l = 1 (both sides): c (0.1 + 0.7) + 0.2
    assert (lit[0, :3] / alpha).tolist() == pytest.approx(facing)
    assert (lit[1, :3] / alpha).tolist() == pytest.approx(facing)
    assert (lit[2, :3] / alpha).tolist() == pytest.approx([0.04, 0.02, 0.0])  # edge-on: ambient only
    ndotl = 0.6
    expected = [0.4 * (0.1 + 0.7 * ndotl) + 0.2 * ndotl ** 10, 0.2 * (0.1 + 0.7 * ndotl) + 0.2 * ndotl ** 10,
                0.2 * ndotl ** 10]
    assert (lit[3, :3] / alpha).tolist() == pytest.approx(expected, rel=1e-6)


def test_lit_colour_is_clamped_and_transparent_samples_stay_black():
    rgba = torch.tensor([[0.9, 0.9, 0.9, 1.0], [0.0, 0.0, 0.0, 0.0]])
    normal = torch.tensor([[0.0, 0.0, 1.0]] * 2)
    lit = headlight_phong(rgba, normal, normal, ambient=1.0, diffuse=1.0, specular=1.0, specular_power=1.0)
    assert lit.tolist() == [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
