"""Fixtures shared by the VTK-wheel tests of the algorithms."""

from __future__ import annotations

import pytest

from paraview_plugin.vtk_image import image_from_array


@pytest.fixture(scope="module")
def small_image(analytic_volume):
    """The analytic volume as a vtkImageData (point data ``density``) plus a second point array."""
    image = image_from_array(analytic_volume.values, analytic_volume.geometry, "density")
    other = image_from_array(analytic_volume.values * 2, analytic_volume.geometry, "double")
    image.GetPointData().AddArray(other.GetPointData().GetArray("double"))
    return image
