"""NeuralVolumeMapper's cache mode (the default) in an ordinary VTK scene (PyPI VTK wheel, headless through EGL).

The cache mode decodes the model into a brick cache and VTK's own ``vtkFixedPointVolumeRayCastMapper`` draws it,
so its image must equal VTK drawing the model's fully decoded grid (bricks the transfer function cannot see are
filled, not decoded, and must not show); frames of an unchanged model and transfer function decode nothing;
interactive frames never wait for the network; the memory bound holds.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
pytest.importorskip("vtkmodules.vtkRenderingCore")

from vtkmodules.vtkFiltersSources import vtkCubeSource  # noqa: E402
from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper  # noqa: E402
from vtkmodules.vtkRenderingUI import vtkGenericRenderWindowInteractor  # noqa: E402

from paraview_plugin.neural_volume_mapper import (NeuralVolumeMapper, camera_from_vtk,  # noqa: E402
                                                  volume_property_from_tf)
from srn_core.evaluate import evaluate_image  # noqa: E402
from srn_core.render import TransferFunction  # noqa: E402
from srn_core.render.image import image_psnr  # noqa: E402
from vtk_reference import grab, vtk_render, window  # noqa: E402

W, H = 160, 128


def partial_tf(model, threshold=0.55):
    """Transparent below ``threshold`` of the value range: part of the volume is invisible (bricks to skip)."""
    lo, hi = model.value_range
    t = lo + threshold * (hi - lo)
    return TransferFunction.from_points([(lo, 0.1, 0.2, 0.9), (hi, 1.0, 0.8, 0.1)],
                                        [(lo, 0.0), (t, 0.0), (hi, 0.8)])


def scene(model, tf, brick_size=8, interactor=False, geometry=None):
    ren, win = window(W, H)
    if geometry is not None:
        ren.AddActor(geometry)
    mapper = NeuralVolumeMapper()
    mapper.SetModel(model)
    mapper.SetBrickSize(brick_size)  # the 32 x 28 x 24 fixture model: 4 x 4 x 3 bricks of 8
    mapper.SetMacroCellSize(8)       # (cells of 16 would make every brick touch a visible cell)
    mapper.SetVolumeProperty(volume_property_from_tf(tf, unit_distance=1.0))
    iren = None
    if interactor:
        iren = vtkGenericRenderWindowInteractor()
        iren.SetRenderWindow(win)
        iren.Initialize()
        mapper.SetProgressive(True)
    mapper.AddToRenderer(ren)
    ren.ResetCamera(*model.bounds)
    cam = ren.GetActiveCamera()
    cam.Azimuth(30)
    cam.Elevation(20)
    cam.OrthogonalizeViewUp()
    ren.ResetCameraClippingRange()
    return ren, win, mapper, iren


def decoded_grid(model):
    return evaluate_image(model.field, model.geometry, model.bounds)


def cube_actor(model):
    b = model.bounds
    source = vtkCubeSource()
    source.SetBounds(b[0] + 0.4 * (b[1] - b[0]), b[0] + 0.6 * (b[1] - b[0]), b[2] - 1, b[3] + 1, b[4], b[5])
    mapper = vtkPolyDataMapper()
    mapper.SetInputConnection(source.GetOutputPort())
    actor = vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(0.2, 0.8, 0.3)
    return actor


def test_cache_mode_is_the_default_and_draws_what_vtk_draws_of_the_decoded_grid(trained_model):
    _, model = trained_model
    tf = partial_tf(model)
    ren, win, mapper, _ = scene(model, tf)
    assert mapper.GetRenderMode() == "cache"
    win.Render()
    frame = mapper.last_cache_frame
    cache = mapper.GetCache()
    assert frame.lod == 0 and frame.complete and frame.wanted_lod == 0
    level = cache.level(0)
    assert level.dims == model.geometry.dims
    # some bricks are invisible under this transfer function: they were filled, not decoded
    assert 0 < frame.points_decoded < level.values.size
    reference = vtk_render(decoded_grid(model), model.geometry, tf, camera_from_vtk(ren.GetActiveCamera()), W, H,
                           "cpu")
    mine = grab(win, W, H)
    assert (mine != mine[0, 0]).any(axis=2).mean() > 0.1  # the volume shows
    assert image_psnr(mine, reference) > 50  # the fills do not show


def test_unchanged_and_orbit_frames_decode_nothing(trained_model):
    _, model = trained_model
    ren, win, mapper, _ = scene(model, partial_tf(model))
    win.Render()
    first = grab(win, W, H)
    decoded = mapper.GetCache().points_decoded
    assert decoded > 0
    win.Render()
    assert mapper.last_cache_frame.points_decoded == 0
    for _ in range(3):
        ren.GetActiveCamera().Azimuth(10)
        win.Render()
        assert mapper.last_cache_frame.points_decoded == 0 and mapper.last_cache_frame.lod == 0
    assert mapper.GetCache().points_decoded == decoded
    assert image_psnr(grab(win, W, H), first) < 35  # the view did move


def test_a_transfer_function_edit_decodes_only_the_bricks_that_became_visible(trained_model):
    _, model = trained_model
    ren, win, mapper, _ = scene(model, partial_tf(model, 0.75))
    win.Render()
    cache = mapper.GetCache()
    level = cache.level(0)
    narrow_bricks, decoded = level.decoded_bricks, cache.bricks_decoded
    assert 0 < narrow_bricks == level.visible_bricks < level.bricks
    opacity = mapper.GetVolumeProperty().GetScalarOpacity(0)
    opacity.RemoveAllPoints()
    for x, a in partial_tf(model, 0.4).opacity_points[:, :2]:
        opacity.AddPoint(float(x), float(a))
    win.Render()
    # the bricks decoded now are exactly those that became visible (a shared face may be evaluated again)
    assert mapper.last_cache_frame.points_decoded > 0
    assert cache.bricks_decoded - decoded == level.visible_bricks - narrow_bricks > 0
    opacity.RemoveAllPoints()
    for x, a in partial_tf(model, 0.9).opacity_points[:, :2]:  # fewer bricks visible: nothing new to decode
        opacity.AddPoint(float(x), float(a))
    win.Render()
    assert mapper.last_cache_frame.points_decoded == 0


def test_interactive_frames_draw_a_preview_and_the_still_frame_refines(trained_model):
    _, model = trained_model
    ren, win, mapper, _ = scene(model, partial_tf(model), brick_size=4)
    win.SetDesiredUpdateRate(1000.0)  # what VTK's interactor asks for while the mouse moves
    win.Render()
    preview = mapper.last_cache_frame
    cache = mapper.GetCache()
    assert preview.wanted_lod == 0 and preview.lod == 2 and preview.complete
    assert preview.points_decoded <= cache.level(2).values.size < np.prod(cache.level_dims(0)) / 8
    win.SetDesiredUpdateRate(0.0001)  # the still frame when the motion ends
    win.Render()
    assert mapper.last_cache_frame.lod == 0 and mapper.last_cache_frame.complete
    win.SetDesiredUpdateRate(1000.0)  # interacting again: the complete full level is drawn, nothing decoded
    ren.GetActiveCamera().Azimuth(15)
    win.Render()
    assert mapper.last_cache_frame.lod == 0 and mapper.last_cache_frame.points_decoded == 0


def test_progressive_first_frame_is_a_preview_and_the_interactor_timer_refines_it(trained_model):
    _, model = trained_model
    tf = partial_tf(model)
    ren, win, mapper, iren = scene(model, tf, brick_size=4, interactor=True)
    win.Render()
    assert mapper.last_cache_frame.lod == 2
    iren.TimerEvent()  # what the event loop does when the one-shot timer fires
    assert mapper.last_cache_frame.lod == 0 and mapper.last_cache_frame.complete
    # a script that renders again before the timer fires (a loop, a screenshot) gets full detail, not a preview
    mapper.SetModel(model)  # a fresh cache
    win.Render()
    assert mapper.last_cache_frame.lod == 2
    win.Render()
    assert mapper.last_cache_frame.lod == 0 and mapper.last_cache_frame.complete
    reference = vtk_render(decoded_grid(model), model.geometry, tf, camera_from_vtk(ren.GetActiveCamera()), W, H,
                           "cpu")
    assert image_psnr(grab(win, W, H), reference) > 50


def test_the_memory_bound_draws_a_coarser_level(trained_model):
    _, model = trained_model
    ren, win, mapper, _ = scene(model, partial_tf(model))
    full_bytes = 4 * int(np.prod(model.geometry.dims))
    mapper.SetCacheMemory(full_bytes / 2 / (1 << 20))
    win.Render()
    assert mapper.last_cache_frame.lod == 1
    assert 0 < mapper.GetCache().nbytes <= full_bytes / 2


def test_cache_mode_composites_with_opaque_geometry_like_vtk(trained_model):
    _, model = trained_model
    tf = TransferFunction.from_preset("Cool to Warm", model.value_range)
    ren, win, mapper, _ = scene(model, tf, geometry=cube_actor(model))
    win.Render()
    reference = vtk_render(decoded_grid(model), model.geometry, tf, camera_from_vtk(ren.GetActiveCamera()), W, H,
                           "cpu", geometry_actor=cube_actor(model))
    assert image_psnr(grab(win, W, H), reference) > 50


def test_switching_modes_swaps_the_prop_and_bad_settings_are_refused(trained_model):
    _, model = trained_model
    ren, win, mapper, _ = scene(model, partial_tf(model))
    win.Render()
    assert ren.HasViewProp(mapper.GetProp()) and mapper.GetProp().IsA("vtkVolume")
    mapper.SetRenderModeToDirect()
    assert ren.HasViewProp(mapper.GetProp()) and mapper.GetProp().IsA("vtkActor2D")
    assert ren.GetVolumes().GetNumberOfItems() == 0
    win.Render()
    assert mapper.last_stats.samples > 0
    with pytest.raises(ValueError, match="RenderMode must be one of cache, direct, got 'fast'"):
        mapper.SetRenderMode("fast")
    with pytest.raises(ValueError, match="CacheMemory must be a positive number of MiB, got 0.0"):
        mapper.SetCacheMemory(0)
    with pytest.raises(ValueError, match="cache sampler must be one of fixed-point, gpu, got 'cuda'"):
        mapper.SetCacheSampler("cuda")
    assert mapper.GetRenderMode() == "direct"
    assert mapper.GetDevice() == "auto"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda'"):
            mapper.SetDevice("cuda")
        assert mapper.GetDevice() == "auto"
