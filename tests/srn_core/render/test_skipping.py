"""srn_core.render.skipping: distance maps, ray-box clipping and DDA leaps against hand-worked cases; skipping
keeps the image and evaluates fewer samples."""

from __future__ import annotations

import torch

from srn_core.geometry import ImageGeometry
from srn_core.render import Camera, RenderSettings, RenderVolume, TransferFunction, render
from srn_core.render.image import rms_difference
from srn_core.render.skipping import CellSkipper, empty_distance, ray_box
from scenes import blob_values, tissue_tf


def test_empty_distance_is_the_chebyshev_distance_to_the_nearest_visible_cell():
    occupied = torch.zeros(5, 6, 7, dtype=torch.bool)
    occupied[2, 1, 5] = True
    z, y, x = torch.meshgrid(torch.arange(5), torch.arange(6), torch.arange(7), indexing="ij")
    chebyshev = torch.maximum(torch.maximum((z - 2).abs(), (y - 1).abs()), (x - 5).abs())
    assert torch.equal(empty_distance(occupied), chebyshev)


def test_with_nothing_visible_every_cell_leaps_out_of_the_volume():
    dist = empty_distance(torch.zeros(2, 3, 4, dtype=torch.bool))
    assert dist.unique().tolist() == [5]  # more than the grid's largest size


def test_ray_box():
    origins = torch.tensor([[-1.0, 0.5, 0.5], [0.5, 0.5, 0.5], [-1.0, 2.0, 0.5]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    t_in, t_out = ray_box(origins, dirs, torch.zeros(3), torch.ones(3))
    assert t_in[:2].tolist() == [1.0, -0.5] and t_out[:2].tolist() == [2.0, 0.5]
    assert t_in[2] > t_out[2]  # passes above the box: a miss


class Rays:
    """The ray state the marcher keeps, for one ray along +x in a row of cells."""

    def __init__(self, step, k=0.0):
        self.co, self.cd = torch.tensor([[0.0, 0.5, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]])
        self.base, self.k, self.step = torch.tensor([0.0]), torch.tensor([k]), torch.tensor([step])
        self.t_end, self.exit = torch.tensor([6.0]), torch.tensor([float("inf")])

    def select(self, index, fields):
        out = Rays(0.0)
        for name in fields:
            setattr(out, name, getattr(self, name).index_select(0, index))
        return out


def row_of_cells(*visible):
    """Cell opacity of 6 cells along x (one along y and z) with the given cells visible."""
    opacity = torch.zeros(1, 1, 6)
    for i in visible:
        opacity[0, 0, i] = 0.5
    return opacity


def test_a_ray_leaps_to_the_first_lattice_sample_of_the_first_visible_cell():
    skipper = CellSkipper(row_of_cells(4), torch.tensor([6.0, 1.0, 1.0]), dt=0.25, adaptive_step=False)
    rays = Rays(step=0.25)
    skipper.skip(rays)
    assert rays.k.tolist() == [16.0]  # t = 4.0: the near face of cell 4, on the lattice of step 0.25
    skipper.skip(rays)
    assert rays.k.tolist() == [16.0]  # already visible: no move
    rays.k[:] = 21.0  # t = 5.25, in the transparent cell 5: leaps past the volume's end
    skipper.skip(rays)
    assert float(rays.base + rays.k * rays.step) > 6.0


def test_a_leap_keeps_the_lattice():
    skipper = CellSkipper(row_of_cells(3), torch.tensor([6.0, 1.0, 1.0]), dt=0.4, adaptive_step=False)
    rays = Rays(step=0.4)
    skipper.skip(rays)
    assert rays.k.tolist() == [8.0]  # the first multiple of 0.4 at or past t = 3 is 3.2


def test_adaptive_steps_stretch_in_faint_cells():
    opacity = row_of_cells(2)
    opacity[0, 0, 2] = 0.1  # faint: the step grows to dt (1 + 15 (1 - 0.1)^2)
    skipper = CellSkipper(opacity, torch.tensor([6.0, 1.0, 1.0]), dt=0.25, adaptive_step=True)
    rays = Rays(step=0.25)
    skipper.skip(rays)
    assert float(rays.base) == float(torch.tensor(2.0 + 1e-4 * 0.25))  # restarted just inside cell 2
    assert rays.k.tolist() == [0.0] and float(rays.step) == float(torch.tensor(0.25 * (1 + 15 * 0.9 ** 2)))
    assert float(rays.exit) == 3.0  # the step holds inside this cell only


# ---- skipping in whole renders --------------------------------------------------------------------------
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
