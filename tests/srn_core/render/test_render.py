"""srn_core.render: compositing against closed forms, skipping that does not change the image, presets, cameras."""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from srn_core.geometry import ImageGeometry
from srn_core.render import (Camera, Renderer, RenderSettings, RenderVolume, TransferFunction, TransferTable,
                             find_preset, grid_field, preset_names, progressive_render, render)
from srn_core.render.image import image_psnr, over_background, rms_difference, to_uint8, write_png
from srn_core.render.macrocells import build_macrocells
from scenes import blob_values, tissue_tf

BOX = ImageGeometry((11, 11, 11), (0.0, 0.0, 0.0), (0.1, 0.1, 0.1))  # the unit cube, 0.1 per voxel


def constant_volume(value=1.0, geometry=BOX):
    return RenderVolume.from_grid(np.full(geometry.shape, value, np.float32), geometry)


def white(alpha):
    return TransferFunction.from_points([(0, 1, 1, 1), (2, 1, 1, 1)], [(0, alpha), (2, alpha)])


def looking_down_z(parallel=True):
    """A camera above the unit cube looking down -z: every ray crosses exactly 1 world unit of it."""
    return Camera((0.5, 0.5, 5.0), (0.5, 0.5, 0.5), (0, 1, 0), parallel_projection=parallel, parallel_scale=0.2)


# ---- compositing -----------------------------------------------------------------------------------
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


# ---- macro-cells ------------------------------------------------------------------------------------
def test_macrocell_skipping_keeps_the_image_and_evaluates_fewer_samples_raw():
    geometry = ImageGeometry((48, 40, 36), (0, 0, 0), (1.0, 1.0, 1.5))
    vol = RenderVolume.from_grid(blob_values(geometry), geometry)
    cam = Camera.reset(geometry.bounds).azimuth(25).elevation(15)
    plain = render(vol, cam, tissue_tf(), 64, 64, RenderSettings(macrocells=False, cell_size=8))
    skip = render(vol, cam, tissue_tf(), 64, 64, RenderSettings(macrocells=True, cell_size=8))
    assert rms_difference(plain.image.numpy() * 255, skip.image.numpy() * 255) < 0.5
    assert skip.stats.samples < 0.5 * plain.stats.samples


def test_macrocell_skipping_on_a_neural_field(trained_model):
    _, model = trained_model
    vol = RenderVolume.from_model(model)
    lo, hi = model.value_range
    # opacity only in the upper part of the range: most cells are transparent and skipped
    tf = TransferFunction.from_points([(lo, 0, 0, 1), (hi, 1, 0.6, 0)],
                                      [(lo, 0), (lo + 0.55 * (hi - lo), 0), (hi, 0.8)])
    cam = Camera.reset(model.bounds).azimuth(30).elevation(20)
    plain = render(vol, cam, tf, 48, 48, RenderSettings(macrocells=False, cell_size=4))
    skip = render(vol, cam, tf, 48, 48, RenderSettings(macrocells=True, cell_size=4))
    assert rms_difference(plain.image.numpy() * 255, skip.image.numpy() * 255) < 0.5
    assert skip.stats.samples < 0.8 * plain.stats.samples


def test_macrocell_ranges_bound_the_raw_grid_exactly():
    geometry = ImageGeometry((20, 17, 9))
    values = np.random.default_rng(1).random(geometry.shape).astype(np.float32)
    cells = build_macrocells(RenderVolume.from_grid(values, geometry), cell_size=4)
    assert cells.shape == (2, 4, 5)  # ceil((9-1)/4), ceil((17-1)/4), ceil((20-1)/4) as (z, y, x)
    # cell (k, j, i) covers voxels 4k..4k+4 (inclusive) along each axis
    block = values[4:9, 8:13, 12:17]
    assert float(cells.vmin[1, 2, 3]) == pytest.approx(float(block.min()))
    assert float(cells.vmax[1, 2, 3]) == pytest.approx(float(block.max()))


def test_adaptive_step_takes_fewer_samples_and_stays_close():
    geometry = ImageGeometry((48, 40, 36))
    vol = RenderVolume.from_grid(blob_values(geometry), geometry)
    cam = Camera.reset(geometry.bounds).azimuth(25)
    tf = TransferFunction.from_points([(0, 0, 0, 0), (1.3, 1, 1, 1)], [(0, 0), (0.05, 0), (1.3, 0.05)])
    fixed = render(vol, cam, tf, 48, 48, RenderSettings(cell_size=8))
    adaptive = render(vol, cam, tf, 48, 48, RenderSettings(cell_size=8, adaptive_step=True))
    assert adaptive.stats.samples < 0.6 * fixed.stats.samples
    assert image_psnr(to_uint8(over_background(fixed.image)), to_uint8(over_background(adaptive.image))) > 30


# ---- progressive ------------------------------------------------------------------------------------
def test_progressive_refinement_ends_with_the_full_image():
    geometry = ImageGeometry((40, 40, 40))
    vol = RenderVolume.from_grid(blob_values(geometry), geometry)
    cam = Camera.reset(geometry.bounds).azimuth(40).zoom(1.4)
    renderer = Renderer(vol)
    full = renderer.render(cam, tissue_tf(), 64, 48)
    frames = list(progressive_render(renderer, cam, tissue_tf(), 64, 48, start_stride=8))
    assert [f.stride for f in frames] == [8, 4, 2, 1]
    assert frames[0].stats.rays == 8 * 6  # every 8th pixel of every 8th row
    assert frames[-1].stats.rays == 64 * 48  # each pixel cast exactly once over all levels
    assert torch.equal(frames[-1].image, full.image)
    psnrs = [image_psnr(to_uint8(over_background(f.image)), to_uint8(over_background(full.image))) for f in frames[:-1]]
    assert psnrs == sorted(psnrs) and psnrs[0] > 15  # each level is closer to the final image


# ---- transfer functions --------------------------------------------------------------------------------
def test_shipped_presets_load_and_rescale():
    names = preset_names()
    assert {"Grayscale", "Cool to Warm", "Viridis", "Black-Body Radiation", "Tissue"} <= set(names)
    tf = TransferFunction.from_preset("cool-to-warm", value_range=(10.0, 30.0))
    assert tf.range == (10.0, 30.0)
    mid = tf.colors(np.array([20.0]))[0]
    assert mid == pytest.approx([0.865, 0.865, 0.865], abs=0.01)  # the diverging map's white-ish centre
    gray = TransferFunction.from_preset("Grayscale", (0.0, 4.0)).table(5)
    assert gray.rgba[:, 3].tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_preset_files_and_point_lists(tmp_path):
    preset = [{"Name": "mine", "ColorSpace": "RGB", "RGBPoints": [0, 0, 0, 0, 10, 1, 0.5, 0],
               "Points": [0, 0, 0.5, 0, 5, 0.2, 0.5, 0, 10, 1, 0.5, 0]}]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(preset))
    tf = TransferFunction.from_preset(str(path))
    assert tf.opacities(np.array([2.5, 7.5])) == pytest.approx([0.1, 0.6])
    assert tf.colors(np.array([-5.0, 5.0, 50.0])) == pytest.approx(np.array([[0, 0, 0], [0.5, 0.25, 0], [1, 0.5, 0]]))
    no_opacity = TransferFunction.from_preset({"RGBPoints": [0, 0, 0, 0, 1, 1, 1, 1]}, value_range=(0, 2))
    assert no_opacity.opacities(np.array([0.0, 1.0, 2.0])) == pytest.approx([0, 0.5, 1])  # linear ramp
    assert TransferFunction.from_preset(tf.to_preset()).opacity_points.tolist() == tf.opacity_points.tolist()


def test_table_max_opacity_is_a_conservative_range_maximum():
    rng = np.random.default_rng(3)
    rgba = rng.random((257, 4)).astype(np.float32)
    table = TransferTable(-1.0, 1.0, rgba)
    lo = torch.tensor(rng.uniform(-1.2, 1.2, 200))
    hi = lo + torch.tensor(rng.uniform(0, 0.8, 200))
    got = table.max_opacity(lo, hi)
    for a, b, m in zip(lo.tolist(), hi.tolist(), got.tolist()):
        vals = torch.linspace(a, b, 400)
        assert float(table.lookup(vals)[:, 3].max()) <= m + 1e-7


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


# ---- cameras, fields, images ----------------------------------------------------------------------
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


def test_grid_field_interpolates_voxels_corner_aligned():
    values = np.arange(4 * 3 * 2, dtype=np.float32).reshape(2, 3, 4)  # (nz, ny, nx)
    f = grid_field(values)
    pts = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [-1 + 2 / 3, 0.0, 1.0], [-1 + 1 / 3, -1.0, -1.0]])
    assert f(pts).tolist() == pytest.approx([0.0, 23.0, values[1, 1, 1], 0.5])


def test_png_writer_round_trip(tmp_path):
    px = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    write_png(path, px)
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", blob[16:24])
    start = blob.index(b"IDAT") + 4
    (n,) = struct.unpack(">I", blob[start - 8:start - 4])
    raw = np.frombuffer(zlib.decompress(blob[start:start + n]), np.uint8).reshape(h, 1 + 3 * w)
    assert (w, h) == (7, 5) and not raw[:, 0].any()
    assert np.array_equal(raw[:, 1:].reshape(5, 7, 3), px)


def test_shading_changes_the_image_but_not_its_opacity():
    geometry = ImageGeometry((32, 32, 32))
    vol = RenderVolume.from_grid(blob_values(geometry), geometry)
    cam = Camera.reset(geometry.bounds).azimuth(30)
    flat = render(vol, cam, tissue_tf(), 32, 32, RenderSettings())
    lit = render(vol, cam, tissue_tf(), 32, 32, RenderSettings(shade=True, ambient=0.1))
    assert torch.allclose(flat.image[..., 3], lit.image[..., 3])
    assert float((flat.image[..., :3] - lit.image[..., :3]).abs().max()) > 0.05


# ---- the CLI ---------------------------------------------------------------------------------------------
def test_srn_render_writes_the_png_the_core_renders(trained_model, tmp_path, capsys):
    from srn.cli import main
    from srn_core.render.image import over_background

    path, model = trained_model
    out = tmp_path / "image.png"
    assert main(["render", str(path), "-o", str(out), "--size", "40", "30", "--preset", "Viridis",
                 "--azimuth", "30", "--elevation", "20", "--zoom", "1.2", "--step", "0.5"]) == 0
    blob = out.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", blob[16:24]) == (40, 30)
    start = blob.index(b"IDAT") + 4
    (n,) = struct.unpack(">I", blob[start - 8:start - 4])
    png = np.frombuffer(zlib.decompress(blob[start:start + n]), np.uint8).reshape(30, 1 + 40 * 3)[:, 1:]
    camera = Camera.reset(model.bounds).azimuth(30).elevation(20).zoom(1.2)
    tf = TransferFunction.from_preset("Viridis", model.value_range)
    settings = RenderSettings(step=0.5, opacity_unit_distance=min(model.geometry.spacing))
    expected = to_uint8(over_background(Renderer(model, settings).render(camera, tf, 40, 30).image))
    assert np.array_equal(png.reshape(30, 40, 3), expected)
    assert "samples evaluated" in capsys.readouterr().err
    assert main(["render", str(path), "-o", str(tmp_path / "x.png"), "--preset", "no such map"]) == 1
    assert "unknown preset 'no such map'" in capsys.readouterr().err
