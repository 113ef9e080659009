"""The renderer against VTK's own volume rendering (PyPI VTK wheel, headless through EGL), and NeuralVolumeMapper.

Images are compared as 8-bit RGB over the same background; PSNR floors are set a few dB under what was
measured here (our raw-grid render vs vtkGPUVolumeRayCastMapper about 60 dB on inia19, 43 dB on the scene
with geometry; vs the fixed-point CPU mapper 44-49 dB).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
vtk_core = pytest.importorskip("vtkmodules.vtkRenderingCore")

import vtkmodules.vtkRenderingOpenGL2  # noqa: E402,F401  (registers the OpenGL factories)
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: E402,F401
from vtkmodules.util import numpy_support  # noqa: E402
from vtkmodules.vtkFiltersSources import vtkCubeSource  # noqa: E402
from vtkmodules.vtkRenderingCore import (vtkActor, vtkPolyDataMapper, vtkRenderer, vtkRenderWindow,  # noqa: E402
                                         vtkVolume, vtkWindowToImageFilter)
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper  # noqa: E402
from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkOpenGLGPUVolumeRayCastMapper  # noqa: E402

from paraview_plugin.neural_volume_mapper import (NeuralVolumeMapper, camera_from_vtk,  # noqa: E402
                                                  transfer_table_from_vtk, volume_property_from_tf)
from paraview_plugin.vtk_image import image_from_array  # noqa: E402
from srn_core.geometry import ImageGeometry  # noqa: E402
from srn_core.render import Camera, Renderer, RenderSettings, RenderVolume, TransferFunction  # noqa: E402
from srn_core.render.image import image_psnr, over_background, to_uint8  # noqa: E402
from scenes import blob_values, tissue_tf  # noqa: E402
from vtk_reference import BACKGROUND, grab, set_vtk_camera, vtk_render, window  # noqa: E402

def ours(values, geometry, tf, camera, width, height, **settings):
    result = Renderer(RenderVolume.from_grid(values, geometry), RenderSettings(**settings)).render(
        camera, tf, width, height)
    return to_uint8(over_background(result.image, BACKGROUND))


def cube_actor(center, lengths, color=(0.2, 0.8, 0.3)):
    source = vtkCubeSource()
    source.SetCenter(*center)
    source.SetXLength(lengths[0])
    source.SetYLength(lengths[1])
    source.SetZLength(lengths[2])
    mapper = vtkPolyDataMapper()
    mapper.SetInputConnection(source.GetOutputPort())
    actor = vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    return actor


GEOMETRY = ImageGeometry((48, 40, 36), (0.0, 0.0, 0.0), (1.0, 1.0, 1.5))


@pytest.fixture(scope="module")
def blob():
    return blob_values(GEOMETRY)


# ---- the core renderer vs VTK ------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", [False, True])
def test_raw_grid_render_matches_vtk(blob, parallel):
    cam = Camera.reset(GEOMETRY.bounds, parallel_projection=parallel).azimuth(35).elevation(25).zoom(1.6)
    mine = ours(blob, GEOMETRY, tissue_tf(), cam, 120, 96, early_termination=0.999)
    gpu = vtk_render(blob, GEOMETRY, tissue_tf(), cam, 120, 96, "gpu")
    fixed = vtk_render(blob, GEOMETRY, tissue_tf(), cam, 120, 96, "fixed")
    assert image_psnr(mine, gpu) > 40
    assert image_psnr(mine, fixed) > 33
    assert (mine != to_uint8(np.array(BACKGROUND))).any(axis=2).mean() > 0.1  # the blob is really in view


def test_opacity_unit_distance_and_step_follow_vtk(blob):
    tf = tissue_tf()
    cam = Camera.reset(GEOMETRY.bounds).azimuth(-20).elevation(10).zoom(1.5)
    prop_unit = 4.0
    mine = ours(blob, GEOMETRY, tf, cam, 96, 96, step=2.0, opacity_unit_distance=prop_unit, early_termination=0.999)
    ren, win = window(96, 96)
    m = vtkOpenGLGPUVolumeRayCastMapper()
    m.SetInputData(image_from_array(blob, GEOMETRY, "values"))
    m.SetAutoAdjustSampleDistances(0)
    m.SetSampleDistance(2.0)
    volume = vtkVolume()
    volume.SetMapper(m)
    volume.SetProperty(volume_property_from_tf(tf, unit_distance=prop_unit))
    ren.AddVolume(volume)
    set_vtk_camera(ren.GetActiveCamera(), cam)
    ren.ResetCameraClippingRange()
    win.Render()
    assert image_psnr(mine, grab(win, 96, 96)) > 38


def test_camera_motions_match_vtk():
    bounds = (1.0, 5.0, -2.0, 4.0, 0.5, 3.5)
    ren, _ = window(10, 10)
    ren.ResetCamera(*bounds)
    cam = ren.GetActiveCamera()
    cam.Azimuth(30)
    cam.Elevation(40)
    cam.OrthogonalizeViewUp()
    cam.Zoom(1.7)
    mine = Camera.reset(bounds).azimuth(30).elevation(40).zoom(1.7)
    theirs = camera_from_vtk(cam)
    for name in ("position", "focal_point", "view_up"):
        assert getattr(mine, name) == pytest.approx(getattr(theirs, name), abs=1e-9)
    assert mine.view_angle == pytest.approx(theirs.view_angle)


@pytest.mark.parametrize("space", ["RGB", "Lab", "Diverging", "HSV", "Step"])
def test_transfer_functions_match_vtk_tables(space):
    for preset in ("Cool to Warm", "Viridis", "Black-Body Radiation"):
        tf = TransferFunction.from_preset(preset, (-3.0, 7.0))
        tf.color_space = space.upper()
        prop = volume_property_from_tf(tf)
        vtk_table = transfer_table_from_vtk(prop.GetRGBTransferFunction(0), prop.GetScalarOpacity(0), 777)
        assert np.abs(vtk_table.rgba.numpy() - tf.table(777).rgba.numpy()).max() < 1e-4, preset


def test_opacity_midpoint_and_sharpness_match_vtk():
    tf = TransferFunction.from_points([(0, 0, 0, 0), (1, 1, 1, 1)],
                                      [(0, 0, 0.3, 0.0), (0.4, 0.8, 0.7, 0.5), (0.7, 0.2, 0.5, 0.995), (1, 1, 0.5, 0)])
    prop = volume_property_from_tf(tf)
    vtk_table = transfer_table_from_vtk(prop.GetRGBTransferFunction(0), prop.GetScalarOpacity(0), 1001)
    assert np.abs(vtk_table.rgba.numpy()[:, 3] - tf.table(1001).rgba.numpy()[:, 3]).max() < 1e-6


# ---- NeuralVolumeMapper in an ordinary VTK scene -----------------------------------------------------
def mapper_scene(blob, width=160, height=128):
    ren, win = window(width, height)
    ren.AddActor(cube_actor((30, 22, 25), (12, 40, 10)))
    mapper = NeuralVolumeMapper()
    mapper.SetRenderModeToDirect()  # these tests are about the direct marcher (the cache mode: test_cached_volume.py)
    mapper.SetRenderVolume(RenderVolume.from_grid(blob, GEOMETRY))
    mapper.SetVolumeProperty(volume_property_from_tf(tissue_tf()))
    mapper.AddToRenderer(ren)
    ren.ResetCamera(*GEOMETRY.bounds)
    cam = ren.GetActiveCamera()
    cam.Azimuth(35)
    cam.Elevation(25)
    cam.OrthogonalizeViewUp()
    cam.Zoom(1.4)
    ren.ResetCameraClippingRange()
    return ren, win, mapper


def test_mapper_composites_with_opaque_geometry_like_vtk(blob):
    ren, win, mapper = mapper_scene(blob)
    win.Render()
    mine = grab(win, 160, 128)
    reference = vtk_render(blob, GEOMETRY, tissue_tf(), camera_from_vtk(ren.GetActiveCamera()), 160, 128, "gpu",
                           geometry_actor=cube_actor((30, 22, 25), (12, 40, 10)))
    assert image_psnr(mine, reference) > 38
    # Where the cube hides part of the volume, the mapper's rays stopped at the cube: the pixels are the cube's
    # own, unlike the same volume drawn without the cube.
    volume_only = vtk_render(blob, GEOMETRY, tissue_tf(), camera_from_vtk(ren.GetActiveCamera()), 160, 128, "gpu")
    ren2, win2 = window(160, 128)
    ren2.AddActor(cube_actor((30, 22, 25), (12, 40, 10)))
    set_vtk_camera(ren2.GetActiveCamera(), camera_from_vtk(ren.GetActiveCamera()))
    ren2.ResetCameraClippingRange()
    win2.Render()
    cube_only = grab(win2, 160, 128)
    bg = to_uint8(np.array(BACKGROUND))
    hidden = (cube_only != bg).any(axis=2) & (np.abs(reference.astype(int) - cube_only).max(axis=2) <= 2) & \
        (np.abs(volume_only.astype(int) - bg).max(axis=2) > 20)
    assert hidden.sum() > 50
    assert np.abs(mine[hidden].astype(int) - cube_only[hidden]).max() <= 3


def test_mapper_rerenders_only_when_view_or_transfer_function_changes(blob):
    ren, win, mapper = mapper_scene(blob)
    win.Render()
    assert mapper.render_count == 1
    first = grab(win, 160, 128)
    win.Render()
    assert mapper.render_count == 1  # same frame: the image is reused
    ren.GetActiveCamera().Azimuth(20)
    win.Render()
    assert mapper.render_count == 2 and image_psnr(grab(win, 160, 128), first) < 35
    mapper.GetVolumeProperty().GetScalarOpacity(0).AddPoint(0.2, 0.9)
    win.Render()
    assert mapper.render_count == 3
    mapper.GetVolumeProperty().GetRGBTransferFunction(0).AddRGBPoint(0.5, 0.0, 0.0, 1.0)
    win.Render()
    assert mapper.render_count == 4


def test_mapper_casts_fewer_rays_while_interacting(blob):
    ren, win, mapper = mapper_scene(blob)
    win.Render()
    full = grab(win, 160, 128)
    win.SetDesiredUpdateRate(1000.0)  # what an interactor asks for while the mouse moves
    ren.GetActiveCamera().Azimuth(1e-3)
    win.Render()
    assert mapper.last_stride > 1 and mapper.last_stats.rays < 160 * 128 / 3
    assert image_psnr(grab(win, 160, 128), full) > 20  # a coarse but faithful preview
    win.SetDesiredUpdateRate(0.0001)  # still render: exact again
    win.Render()
    assert mapper.last_stride == 1 and image_psnr(grab(win, 160, 128), full) > 45


def test_mapper_renders_a_trained_model_file(trained_model):
    path, model = trained_model
    ren, win = window(64, 64)
    lo, hi = model.value_range
    tf = TransferFunction.from_preset("Viridis", (lo, hi))
    mapper = NeuralVolumeMapper()
    mapper.SetRenderModeToDirect()
    mapper.SetFileName(str(path))
    mapper.SetVolumeProperty(volume_property_from_tf(tf, unit_distance=2.0))
    mapper.AddToRenderer(ren)
    ren.ResetCamera(*model.bounds)
    win.Render()
    px = grab(win, 64, 64)
    assert mapper.render_count == 1 and mapper.last_stats.samples > 1000
    assert (px != to_uint8(np.array(BACKGROUND))).any(axis=2).mean() > 0.1


def test_mapper_refuses_a_sample_distance_that_needs_too_many_samples(blob):
    """A tiny SampleDistance used to start a frame that never ended; it is refused and changes nothing."""
    mapper = NeuralVolumeMapper()
    mapper.SetRenderVolume(RenderVolume.from_grid(blob, GEOMETRY))
    mtime = mapper.GetMTime()
    with pytest.raises(ValueError) as info:
        mapper.SetSampleDistance(1e-9)
    # the box is 47 x 39 x 52.5 world units of 1-unit voxels: a diagonal of 80.54 voxels
    assert str(info.value) == ("SampleDistance 1e-09 voxels needs up to 80,537,258,459 samples per ray through this "
                               "volume, more than the cap of 100,000; use a step of at least 0.000806 voxels.")
    with pytest.raises(ValueError, match="SampleDistance must be a positive number of voxels, got 0.0"):
        mapper.SetSampleDistance(0)
    assert mapper.GetSampleDistance() == 1.0 and mapper.GetMTime() == mtime
    mapper.SetSampleDistance(0.001)
    assert mapper.GetSampleDistance() == 0.001
