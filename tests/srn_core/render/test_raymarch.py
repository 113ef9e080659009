"""srn_core.render.raymarch: compositing against closed forms, early termination, adaptive steps, shading,
the cap on samples per ray, progress reports and bad settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srn_core.geometry import ImageGeometry
from srn_core.render import Camera, Renderer, RenderSettings, RenderVolume, TransferFunction, find_preset, render
from srn_core.render.image import image_psnr, over_background, to_uint8
from srn_core.render.raymarch import samples_per_ray
from scenes import blob_values, tissue_tf

BOX = ImageGeometry((11, 11, 11), (0.0, 0.0, 0.0), (0.1, 0.1, 0.1))  # the unit cube, 0.1 per voxel


def constant_volume(value=1.0, geometry=BOX):
    return RenderVolume.from_grid(np.full(geometry.shape, value, np.float32), geometry)


def white(alpha):
    return TransferFunction.from_points([(0, 1, 1, 1), (2, 1, 1, 1)], [(0, alpha), (2, alpha)])


def looking_down_z(parallel=True):
    """A camera above the unit cube looking down -z: every ray crosses exactly 1 world unit of it."""
    return Camera((0.5, 0.5, 5.0), (0.5, 0.5, 0.5), (0, 1, 0), parallel_projection=parallel, parallel_scale=0.2)


@pytest.mark.parametrize("step", [1.0, 0.37, 0.1])
@pytest.mark.parametrize("unit", [1.0, 0.25])
def test_constant_slab_matches_analytic_transmittance(step, unit):
    alpha = 0.3
    settings = RenderSettings(step=step, opacity_unit_distance=unit, early_termination=1.0)
    result = render(constant_volume(), looking_down_z(), white(alpha), 4, 4, settings)
    expected = 1.0 - (1.0 - alpha) ** (1.0 / unit)  # length 1 through the cube
    assert result.image[..., 3].numpy() == pytest.approx(np.full((4, 4), expected), abs=2e-6)
    assert result.image[..., 0].numpy() == pytest.approx(np.full((4, 4), expected), abs=2e-6)  # premultiplied white


def test_one_perspective_ray_and_depth_stop():
    """A single ray along the diagonal of the cube, then the same ray stopped half way by a depth value."""
    cam = Camera((-1.0, -1.0, -1.0), (0.5, 0.5, 0.5), (0, 0, 1), view_angle=10)
    renderer = Renderer(constant_volume(), RenderSettings(step=0.25, early_termination=1.0))
    origins, dirs = cam.rays(1, 1)
    length = math.sqrt(3.0)
    rgba, stats = renderer.render_rays(origins, dirs, white(0.2))
    assert float(rgba[0, 3]) == pytest.approx(1 - 0.8 ** length, abs=2e-6)
    entry = math.sqrt(3.0)  # from (-1,-1,-1) to the corner (0,0,0)
    rgba, _ = renderer.render_rays(origins, dirs, white(0.2), t_max=torch.tensor([entry + length / 2]))
    assert float(rgba[0, 3]) == pytest.approx(1 - 0.8 ** (length / 2), abs=2e-6)
    assert stats.rays_hit == 1


def test_front_to_back_order_of_two_slabs():
    """A red slab in front of a blue one: colour = a1 red + (1 - a1) a2 blue (premultiplied)."""
    values = np.zeros(BOX.shape, np.float32)
    values[6:] = 1.0  # upper half (z >= 0.6) has value 1, seen first by a camera above
    tf = TransferFunction.from_points([(0, 0, 0, 1), (1, 1, 0, 0)], [(0, 0.5), (1, 0.5)])
    # the transition voxel layer (z in 0.5..0.6) interpolates; sample densely so it is resolved
    img = render(RenderVolume.from_grid(values, BOX), looking_down_z(), tf, 2, 2,
                 RenderSettings(step=0.01, early_termination=1.0)).image[0, 0].numpy()
    assert img[0] > 0.25 and img[2] > 0.1 and img[0] > img[2]  # red in front dominates
    assert img[3] == pytest.approx(1 - 0.5 ** 1.0, abs=1e-4)   # total opacity: one unit at 0.5 per unit


def test_empty_transfer_function_gives_the_background():
    vol = constant_volume()
    tf = TransferFunction.from_points([(0, 1, 0, 0), (2, 0, 1, 0)], [(0, 0.0), (2, 0.0)])
    result = render(vol, looking_down_z(parallel=False), tf, 8, 6)
    assert result.stats.samples == 0
    assert torch.count_nonzero(result.image) == 0
    bg = (0.0, 0.2, 1.0)
    assert np.array_equal(to_uint8(over_background(result.image, bg)), np.tile([0, 51, 255], (6, 8, 1)))


def test_rays_that_miss_the_volume_are_transparent():
    cam = Camera((10.0, 10.0, 10.0), (20.0, 20.0, 20.0), (0, 0, 1))  # looking away
    result = render(constant_volume(), cam, white(0.5), 5, 5)
    assert result.stats.rays_hit == 0 and torch.count_nonzero(result.image) == 0


def test_early_termination_stops_rays_and_bounds_the_error():
    vol = constant_volume()
    full = render(vol, looking_down_z(), white(0.999), 4, 4, RenderSettings(step=0.1, early_termination=1.0))
    early = render(vol, looking_down_z(), white(0.999), 4, 4, RenderSettings(step=0.1, early_termination=0.9))
    assert early.stats.samples < full.stats.samples / 2
    assert float((full.image - early.image).abs().max()) <= 0.1 + 1e-6


def test_adaptive_step_takes_fewer_samples_and_stays_close():
    geometry = ImageGeometry((48, 40, 36))
    vol = RenderVolume.from_grid(blob_values(geometry), geometry)
    cam = Camera.reset(geometry.bounds).azimuth(25)
    tf = TransferFunction.from_points([(0, 0, 0, 0), (1.3, 1, 1, 1)], [(0, 0), (0.05, 0), (1.3, 0.05)])
    fixed = render(vol, cam, tf, 48, 48, RenderSettings(cell_size=8))
    adaptive = render(vol, cam, tf, 48, 48, RenderSettings(cell_size=8, adaptive_step=True))
    assert adaptive.stats.samples < 0.6 * fixed.stats.samples
    assert image_psnr(to_uint8(over_background(fixed.image)), to_uint8(over_background(adaptive.image))) > 30


def test_shading_changes_the_image_but_not_its_opacity():
    geometry = ImageGeometry((32, 32, 32))
    vol = RenderVolume.from_grid(blob_values(geometry), geometry)
    cam = Camera.reset(geometry.bounds).azimuth(30)
    flat = render(vol, cam, tissue_tf(), 32, 32, RenderSettings())
    lit = render(vol, cam, tissue_tf(), 32, 32, RenderSettings(shade=True, ambient=0.1))
    assert torch.allclose(flat.image[..., 3], lit.image[..., 3])
    assert float((flat.image[..., :3] - lit.image[..., :3]).abs().max()) > 0.05


@pytest.mark.parametrize("bad, message", [
    (lambda: find_preset("no such preset"), "unknown preset"),
    (lambda: TransferFunction.from_points([(1, 0, 0, 0), (0, 1, 1, 1)], [(0, 0), (1, 1)]), "non-decreasing"),
    (lambda: TransferFunction.from_points([(0, 0, 0, 2)], [(0, 0)]), "must lie in [0, 1]"),
    (lambda: TransferFunction.from_points([(0, 0, 0, 0)], [(0, 0)], "CMYK"), "color_space"),
    (lambda: TransferFunction.from_preset({"IndexedColors": [1, 0, 0]}), "indexed"),
    (lambda: RenderSettings(step=0), "step"),
    (lambda: Camera((0, 0, 0), (0, 0, 0)), "coincide"),
    (lambda: Camera((0, 0, 1), (0, 0, 0), (0, 0, 1)), "parallel"),
    (lambda: render(constant_volume(), looking_down_z(), white(0.5), 0, 4), "image size"),
])
def test_bad_input_is_one_clear_error(bad, message):
    with pytest.raises((ValueError, FileNotFoundError), match=None) as info:
        bad()
    assert message in str(info.value)


# ---- the cap on samples per ray, progress ------------------------------------------------------------
# 11 x 21 x 6 points at spacing (0.5, 0.5, 2): a 5 x 10 x 10 box, diagonal 15 world units = 30 voxels of 0.5
GEOMETRY = ImageGeometry((11, 21, 6), (0.0, 0.0, 0.0), (0.5, 0.5, 2.0))
VOLUME = RenderVolume.from_grid(np.ones(GEOMETRY.shape, np.float32), GEOMETRY)
TF = TransferFunction.from_points([(0, 1, 1, 1), (2, 1, 1, 1)], [(0, 0.1), (2, 0.1)])


def test_samples_per_ray_is_the_diagonal_over_the_step():
    assert samples_per_ray(VOLUME, 1.0) == 31  # 30 voxels of diagonal: samples at 0, 1, ..., 30
    assert samples_per_ray(VOLUME, 0.7) == math.floor(30 / 0.7) + 1


def test_a_step_past_the_cap_is_refused_with_the_step_that_would_do():
    settings = RenderSettings(step=1e-9)
    with pytest.raises(ValueError) as info:
        Renderer(VOLUME, settings)
    assert str(info.value) == ("step 1e-09 voxels needs up to 30,000,000,001 samples per ray through this volume, "
                               "more than the cap of 100,000; use a step of at least 0.000301 voxels.")
    assert RenderSettings(step=0.000301).check_samples_per_ray(VOLUME) == math.floor(30 / 0.000301) + 1 == 99_668
    small_cap = RenderSettings(step=0.5, max_samples_per_ray=60)
    with pytest.raises(ValueError, match="--step 0.5 voxels needs up to 61 samples per ray .* cap of 60; "
                                         "use a step of at least 0.509 voxels"):
        small_cap.check_samples_per_ray(VOLUME, "--step")


def test_a_step_changed_after_the_renderer_was_made_is_checked_before_marching():
    renderer = Renderer(VOLUME, RenderSettings())
    renderer.settings.step = 1e-9  # the VTK mapper keeps one settings object and changes it between frames
    camera = Camera.reset(GEOMETRY.bounds)
    with pytest.raises(ValueError, match="^step 1e-09 voxels needs up to 30,000,000,001 samples per ray"):
        renderer.render(camera, TF, 4, 4)


@pytest.mark.parametrize("bad", [dict(max_samples_per_ray=0), dict(max_samples_per_ray=-5)])
def test_the_cap_itself_must_be_positive(bad):
    with pytest.raises(ValueError, match="render setting max_samples_per_ray is out of range"):
        RenderSettings(**bad)


def test_progress_is_reported_per_batch_of_rays():
    calls = []
    renderer = Renderer(VOLUME, RenderSettings(max_samples=64, segment=8))  # 8 rays per batch
    result = renderer.render(Camera.reset(GEOMETRY.bounds), TF, 5, 4, progress=calls.append)
    assert calls == [8, 8, 4] and result.stats.rays == 20
    empty = TransferFunction.from_points([(0, 1, 1, 1)], [(0, 0.0)])
    calls.clear()
    renderer.render(Camera.reset(GEOMETRY.bounds), empty, 5, 4, progress=calls.append)
    assert calls == [20]  # nothing to march, but the work is done
