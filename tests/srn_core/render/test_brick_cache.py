"""srn_core.render.brick_cache: level geometry, exact decoded values, reuse, decoding only what a transfer function
uncovers, fills that leave the image unchanged, the memory bound, the level for a view, model changes, partial
levels and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srn_core.evaluate import evaluate_image
from srn_core.loading import load_model
from srn_core.render import Camera, Renderer, RenderSettings, RenderVolume, TransferFunction
from srn_core.render.brick_cache import BrickCache, BrickCacheSettings, CachedLevel
from srn_core.render.image import rms_difference

# ---- a field with known values: f = the model-cube x coordinate, on 65 x 33 x 17 points --------------------------
RAMP_DIMS = (65, 33, 17)
RAMP_POINTS = 65 * 33 * 17


def ramp_field(points: torch.Tensor) -> torch.Tensor:
    return points[:, 0].clone()


def ramp_volume() -> RenderVolume:
    return RenderVolume(ramp_field, (0.0, 64.0, 0.0, 32.0, 0.0, 16.0), RAMP_DIMS)


def ramp_cache(**settings) -> BrickCache:
    """Bricks of 16 voxels: 4 x 2 x 1 bricks at LOD 0, their x faces on the 16-voxel macro-cells' faces."""
    return BrickCache(ramp_volume(), BrickCacheSettings(brick_size=16, **settings))


def visible_above(x: float):
    """Opaque above ``x`` (model-cube x), transparent below ``x - 0.05``."""
    return TransferFunction.from_points([(-1, 1, 1, 1), (1, 1, 1, 1)],
                                        [(-1, 0), (x - 0.05, 0), (x, 1), (1, 1)]).table()


# ---- a smooth analytic field on the trained model's box (the function it was trained on) ------------------------
def analytic_field(points: torch.Tensor) -> torch.Tensor:
    u, v, w = points[:, 0], points[:, 1], points[:, 2]
    return torch.sin(2.5 * u + 0.5) * torch.cos(2.0 * v) + 0.8 * w * w + 0.3 * u * v


def upper_part_tf(value_range):
    """Transparent below 60 % of the range, then a sharp step to 0.3: hides part of the volume."""
    lo, hi = value_range
    t = lo + 0.6 * (hi - lo)
    return TransferFunction.from_points([(lo, 0.2, 0.4, 1.0), (hi, 1.0, 0.6, 0.2)],
                                        [(lo, 0.0), (t, 0.0), (t + 0.05 * (hi - lo), 0.3), (hi, 0.8)])


def small_bricks() -> BrickCacheSettings:
    """Bricks and macro-cells of 8 voxels, so the 32 x 28 x 24 test volume has 4 x 4 x 3 of them."""
    return BrickCacheSettings(brick_size=8, cell_size=8)


def render_level(level: CachedLevel, tf, camera, size=96, step=1.0) -> np.ndarray:
    volume = RenderVolume.from_grid(level.values.copy(), level.geometry)
    return Renderer(volume, RenderSettings(step=step)).render(camera, tf, size, size).image.numpy()


def render_direct(volume: RenderVolume, tf, camera, size=96, step=1.0) -> np.ndarray:
    return Renderer(volume, RenderSettings(step=step)).render(camera, tf, size, size).image.numpy()


def view_of(volume: RenderVolume) -> Camera:
    return Camera.reset(volume.bounds).azimuth(30).elevation(20).zoom(1.3)


# =================================================================================================
# Geometry and values
# =================================================================================================
def test_level_dims_spacing_and_bounds():
    bounds = (1.0, 16.5, -2.0, 4.75, 0.5, 23.5)
    cache = BrickCache(RenderVolume(analytic_field, bounds, (32, 28, 24)), small_bricks())
    assert cache.level_dims(0) == (32, 28, 24)
    assert cache.level_dims(1) == (17, 15, 13)  # ceil((d - 1) / 2) + 1
    assert cache.level_dims(2) == (9, 8, 7)
    assert cache.level_dims(4) == (3, 3, 3)
    assert cache.max_lod == 5 and cache.level_dims(5) == (2, 2, 2)  # 31 voxels: 2^5 >= 31
    assert cache.level_nbytes(1) == 17 * 15 * 13 * 4
    for lod in (0, 1, 2, 5):
        level = cache.request(lod)
        nx, ny, nz = level.dims
        assert level.values.shape == (nz, ny, nx) and level.values.dtype == np.float32
        assert level.values.flags.c_contiguous
        assert level.origin == (1.0, -2.0, 0.5)
        assert level.spacing == pytest.approx((15.5 / (nx - 1), 6.75 / (ny - 1), 23.0 / (nz - 1)), rel=1e-15)
        assert level.geometry.bounds == pytest.approx(bounds, abs=1e-12)  # the bounds stay exact at every level
        assert level.nbytes == cache.level_nbytes(lod)
    assert cache.level(1).spacing == pytest.approx((15.5 / 16, 6.75 / 14, 23.0 / 12))
    with pytest.raises(ValueError, match="lod must be an integer level from 0 to 5, got 6"):
        cache.request(6)


def test_decoded_levels_are_the_fields_values_at_their_points(trained_model):
    _, model = trained_model
    volume = RenderVolume.from_model(model)
    cache = BrickCache(volume, small_bricks())
    for lod in (0, 1, 2):
        level = cache.request(lod)
        expected = evaluate_image(model.field, level.geometry, model.bounds)
        assert level.complete and level.missing_bricks == 0
        np.testing.assert_allclose(level.values, expected, rtol=0, atol=1e-6)
    assert cache.level_dims(0) == model.geometry.dims
    assert cache.level(0).spacing == pytest.approx(model.geometry.spacing, rel=1e-12)  # LOD 0 is the training grid


# =================================================================================================
# Reuse and transfer-function changes
# =================================================================================================
def test_a_second_request_decodes_nothing():
    cache = ramp_cache()
    first = cache.request(0, visible_above(0.3))
    assert cache.last_points_decoded > 0
    version = first.version
    again = cache.request(0, visible_above(0.3))
    assert again is first and again.version == version
    assert cache.last_points_decoded == 0
    assert cache.bricks_reused == 4 == first.visible_bricks


def test_a_transfer_function_change_decodes_only_the_bricks_it_uncovers():
    cache = ramp_cache()
    x = np.linspace(-1, 1, 65, dtype=np.float32)
    # Opaque above x = 0.3: the two upper x-bricks (cells [0, 0.5] and [0.5, 1] widened by 1 % of the range).
    level = cache.request(0, visible_above(0.3))
    assert (level.bricks, level.visible_bricks, level.decoded_bricks) == (8, 4, 4) and level.complete
    assert cache.last_points_decoded == 33 * 33 * 17  # x points 32..64, each point once
    np.testing.assert_array_equal(level.values[:, :, 32:], np.broadcast_to(x[32:], (17, 33, 33)))
    # Opaque above -0.2 uncovers the x-brick [-0.5, 0] only: its points 16..31 (32 belongs to its decoded neighbour).
    cache.request(0, visible_above(-0.2))
    assert cache.last_points_decoded == 16 * 33 * 17
    assert cache.bricks_decoded == 6 and cache.bricks_reused == 4
    # Fewer visible bricks than decoded: nothing to do.
    version = level.version
    cache.request(0, visible_above(0.8))
    assert cache.last_points_decoded == 0 and level.version == version and level.complete
    assert cache.points_decoded == 49 * 33 * 17
    np.testing.assert_array_equal(level.values[:, :, 16:], np.broadcast_to(x[16:], (17, 33, 16 + 33)))
    # The still invisible x-brick holds its fill: the smallest vmin of its cells (x = -1, less 1 % of the range 2).
    np.testing.assert_allclose(level.values[:, :, :16], -1.02, atol=1e-6)
    # Everything: the last brick's 16 x-points; every point of the level was evaluated exactly once.
    cache.request(0, None)
    assert cache.points_decoded == RAMP_POINTS
    np.testing.assert_array_equal(level.values, np.broadcast_to(x, (17, 33, 65)))


def test_invisible_bricks_leave_the_image_unchanged(trained_model):
    _, model = trained_model
    volume = RenderVolume.from_model(model)
    tf = upper_part_tf(model.value_range)
    cache = BrickCache(volume, small_bricks())
    level = cache.request(0, tf.table())
    assert level.complete and 0 < level.visible_bricks < level.bricks
    assert 0 < cache.last_points_decoded < int(np.prod(level.dims))  # measured: 19,885 of 21,504
    full = BrickCache(volume, small_bricks()).request(0, None)
    camera = view_of(volume)
    cached = render_level(level, tf, camera)
    decoded = render_level(full, tf, camera)
    assert decoded[..., 3].mean() > 0.1  # something is seen
    assert rms_difference(cached, decoded) < 1e-6  # measured: 0


def test_full_detail_matches_direct_neural_rendering(trained_model):
    """The cached grid is the field's trilinear interpolant: equal to direct rendering where the field is smooth
    at voxel scale. The tiny test model is not (it has detail at its training voxels): it needs twice its training
    resolution to be within 1/255."""
    _, model = trained_model
    tf = upper_part_tf(model.value_range)
    neural = RenderVolume.from_model(model)
    smooth = RenderVolume(analytic_field, neural.bounds, neural.dims, model.value_range)
    camera = view_of(neural)

    def cached_image(volume, factor=1):
        """LOD 0 of ``volume`` (``factor`` times finer than the training grid), marched at one training voxel."""
        settings = BrickCacheSettings(brick_size=8 * factor, cell_size=8 * factor)
        level = BrickCache(volume, settings).request(0, tf.table())
        return render_level(level, tf, camera, size=64, step=float(factor))

    direct_smooth = render_direct(smooth, tf, camera, size=64)
    direct_neural = render_direct(neural, tf, camera, size=64)
    assert direct_smooth[..., 3].mean() > 0.1 and direct_neural[..., 3].mean() > 0.1
    assert rms_difference(cached_image(smooth), direct_smooth) * 255 < 0.5  # measured 0.2/255
    assert rms_difference(cached_image(neural), direct_neural) * 255 < 3.0  # 1.9/255: not smooth at voxel scale
    finer = RenderVolume(model.field, neural.bounds, tuple(2 * (d - 1) + 1 for d in neural.dims))
    assert rms_difference(cached_image(finer, factor=2), direct_neural) * 255 < 1.0  # measured 0.45/255


# =================================================================================================
# Memory
# =================================================================================================
def test_the_memory_bound_picks_coarser_levels_and_refuses_what_cannot_fit():
    lod0, lod1 = 65 * 33 * 17 * 4, 33 * 17 * 9 * 4
    cache = ramp_cache(memory_bytes=100_000)
    assert cache.level_nbytes(0) == lod0 > 100_000 >= cache.level_nbytes(1) == lod1
    close = Camera((32.0, 16.0, 200.0), (32.0, 16.0, 8.0), parallel_projection=True, parallel_scale=16.0)
    assert cache.lod_for_view(close, 64, 64) == 1  # LOD 0 would do (half a voxel per pixel) but does not fit
    assert ramp_cache().lod_for_view(close, 64, 64) == 0
    with pytest.raises(ValueError, match=r"LOD 0 \(65 x 33 x 17 points, 145,860 bytes\) does not fit in the brick "
                                         r"cache's memory_bytes 100,000"):
        cache.request(0)
    assert cache.nbytes == 0
    assert cache.request(1).nbytes == lod1


def test_levels_are_evicted_least_recently_used_first():
    sizes = {1: 33 * 17 * 9 * 4, 2: 17 * 9 * 5 * 4, 3: 9 * 5 * 3 * 4}
    cache = ramp_cache(memory_bytes=23_500)
    two = cache.request(2)
    three = cache.request(3)
    cache.request(2)  # LOD 2 used after LOD 3
    one = cache.request(1)  # 20,196 + 3,060 + 540 > 23,500: drops LOD 3, the least recently used
    assert cache.evictions == 1 and three.evicted and not two.evicted
    assert cache.level(3) is None and cache.level(2) is two and cache.level(1) is one
    assert cache.nbytes == sizes[1] + sizes[2] <= 23_500
    cache.request(3)  # fits beside the others now? 23,796 > 23,500: drops LOD 2 this time
    assert cache.evictions == 2 and two.evicted and cache.nbytes == sizes[1] + sizes[3]
    for lod in (0, 1, 2, 3, 4, 5, 6):
        if cache.level_nbytes(lod) <= 23_500:
            cache.request(lod)
            assert cache.nbytes <= 23_500


# =================================================================================================
# The level for a view
# =================================================================================================
def test_lod_for_view_follows_the_pixel_footprint():
    cube = RenderVolume(ramp_field, (0.0, 128.0) * 3, (129, 129, 129))  # one world unit per voxel
    cache = BrickCache(cube)
    assert cache.max_lod == 6
    # Parallel: a pixel is 2 * parallel_scale / height world units.
    parallel = Camera((64.0, 64.0, 300.0), (64.0, 64.0, 64.0), parallel_projection=True, parallel_scale=64.0)
    assert [cache.lod_for_view(parallel, 128, h) for h in (128, 64, 40, 32, 8, 1)] == [0, 1, 1, 2, 4, 6]
    # Perspective, 90 degrees: a pixel at depth t is 2 t / height; the box's nearest face is 100 units away.
    def eye_at(z):
        return Camera((64.0, 64.0, z), (64.0, 64.0, 64.0), view_angle=90.0)

    assert cache.lod_for_view(eye_at(228.0), 50, 200) == 0  # 1 unit per pixel
    assert cache.lod_for_view(eye_at(228.0), 50, 50) == 2  # 4
    assert cache.lod_for_view(eye_at(1128.0), 50, 50) == 5  # 40: farther is coarser
    assert cache.lod_for_view(eye_at(10128.0), 50, 50) == 6  # 400, clamped to max_lod
    inside = Camera((64.0, 64.0, 64.0), (64.0, 64.0, 0.0))
    assert cache.lod_for_view(inside, 50, 50) == 0
    # A ray step of 4 voxels needs no finer level than 4-voxel voxels, however close.
    assert cache.lod_for_view(eye_at(228.0), 50, 200, step=4.0) == 2
    assert cache.lod_for_view(eye_at(228.0), 50, 200, step=0.5) == 0
    # The memory bound wins.
    bounded = BrickCache(cube, BrickCacheSettings(memory_bytes=cache.level_nbytes(2)))
    assert bounded.lod_for_view(eye_at(228.0), 50, 200) == 2
    with pytest.raises(ValueError, match="step must be a positive number"):
        cache.lod_for_view(parallel, 64, 64, step=0.0)


# =================================================================================================
# Model changes, partial levels
# =================================================================================================
def test_a_parameter_change_redecodes_in_place(trained_model):
    path, _ = trained_model
    model = load_model(path)  # a private copy: the session's model must not change
    cache = BrickCache(RenderVolume.from_model(model), small_bricks())
    level = cache.request(0)
    buffer, version = level.values.ctypes.data, level.version
    with torch.no_grad():
        model.field.decoder[0].weight.mul_(2)
    assert cache.level(0) is level  # level() notices the change: refilled in place, nothing decoded
    assert not level.complete and level.decoded_bricks == 0 and level.version > version
    again = cache.request(0)
    assert again is level and level.values.ctypes.data == buffer and level.version > version
    assert cache.last_points_decoded == 32 * 28 * 24
    expected = evaluate_image(model.field, level.geometry, model.bounds)
    np.testing.assert_allclose(level.values, expected, rtol=0, atol=1e-6)
    cache.invalidate()
    assert level.evicted and cache.level(0) is None and cache.nbytes == 0


def test_max_points_gives_partial_levels_that_later_requests_complete():
    evaluated = []

    def recording_ramp(points):
        evaluated.append(points.clone())
        return ramp_field(points)

    cache = BrickCache(RenderVolume(recording_ramp, ramp_volume().bounds, RAMP_DIMS), BrickCacheSettings(brick_size=16))
    cache.request(1)  # a complete coarser level to fall back on (decoded whole: no fills, no macro-cells)
    assert cache.finest_complete_level(None).lod == 1
    assert cache.request(0, None, max_points=0).decoded_bricks == 0  # allocated and filled: macro-cells built
    evaluated.clear()
    level = cache.request(0, None, max_points=10_000)  # bricks of 17 x 17 x 17 (at most): two per call
    assert (level.complete, level.decoded_bricks, level.missing_bricks) == (False, 2, 6)
    assert 0 < cache.last_points_decoded <= 10_000
    assert cache.finest_complete_level(None).lod == 1
    assert cache.finest_complete_level(visible_above(0.3)).lod == 1  # the decoded bricks are the lower x ones
    calls = 1
    while not level.complete:
        cache.request(0, None, max_points=10_000)
        calls += 1
    assert calls == 4
    assert cache.finest_complete_level(None) is level
    assert cache.finest_complete_level(None, at_least=1).lod == 1
    assert cache.request(0, None, max_points=0) is level and cache.last_points_decoded == 0
    x = np.linspace(-1, 1, 65, dtype=np.float32)
    np.testing.assert_array_equal(level.values, np.broadcast_to(x, (17, 33, 65)))
    # Every point evaluated; twice or more only on the shared faces x = 32 and y = 16, which a brick decoded in an
    # earlier call evaluated for a neighbour that was decoded later (measured: 1,717 extra points, 4.7 %).
    idx = ((torch.cat(evaluated) + 1) * torch.tensor([32.0, 16.0, 8.0])).round().long().numpy()
    counts = np.zeros((17, 33, 65), dtype=np.int64)
    np.add.at(counts, (idx[:, 2], idx[:, 1], idx[:, 0]), 1)
    assert counts.min() == 1 and counts.sum() == cache.points_decoded - 33 * 17 * 9 == RAMP_POINTS + 1717
    repeated = counts > 1
    repeated[:, 16, :] = repeated[:, :, 32] = False
    assert not repeated.any()


# =================================================================================================
# Bad input
# =================================================================================================
@pytest.mark.parametrize("name, value", [("brick_size", 0), ("memory_bytes", -1), ("chunk_size", 1.5),
                                         ("cell_size", 0), ("brick_size", True)])
def test_bad_settings_name_the_setting(name, value):
    with pytest.raises(ValueError, match=f"brick cache setting {name} must be a positive integer, got {value!r}"):
        BrickCacheSettings(**{name: value})


def test_bad_requests_are_refused():
    cache = ramp_cache()
    with pytest.raises(ValueError, match="max_points must be a non-negative integer or None, got -1"):
        cache.request(0, None, max_points=-1)
    with pytest.raises(ValueError, match="pass tf.table"):
        cache.request(0, TransferFunction.from_preset("Grayscale", (-1, 1)))
    with pytest.raises(ValueError, match="at_least must be an integer level from 0 to 6, got -1"):
        cache.finest_complete_level(None, at_least=-1)
    with pytest.raises(ValueError, match="device"):
        BrickCache(ramp_volume(), device="no-such-device")
