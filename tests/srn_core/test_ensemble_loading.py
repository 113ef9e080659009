"""Ensembles in files: vectorised routing, partial loading for an extent (float32 and compressed files, PyTorch and
fused evaluation) and lossless conversion of APMGSRN ensemble folders to our file."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from srn_core.compression import Compression
from srn_core.evaluate import evaluate, evaluate_image
from srn_core.fields import build_field
from srn_core.fields.base import to_data_units
from srn_core.fields.ensemble import AbsentBrick, EnsembleField, cells_meeting_extent
from srn_core.geometry import ImageGeometry, voxel_grid_points
from srn_core.kernels import fused_evaluator
from srn_core.kernels.fused_apmgsrn import FusedEnsemble
from srn_core.loading import load_model
from srn_core.model import NeuralVolume
from srn_core.modelfile import ModelFileError, load_tensors, save_tensors
from srn_core.peers import load_peer_checkpoint
from test_peers import write_ensemble  # the fake APMGSRN ensemble folders of the peer-format tests

GEOMETRY = ImageGeometry((19, 14, 11), (1.0, -2.0, 0.5), (0.5, 0.25, 1.0))
GRID = (3, 2, 2)


def random_ensemble(grid=GRID, seed=0) -> EnsembleField:
    """An ensemble of small APMGSRN bricks with random grids and ranges, bounds overlapping their cells."""
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    configs, bounds = [], []
    for k in range(n):
        cell = (k % grid[0], (k // grid[0]) % grid[1], k // (grid[0] * grid[1]))
        configs.append({"n_grids": 2, "n_features": 2, "grid_shape": [4, 5, 3 + k % 3], "width": 8})
        bounds.append([v for a in range(3) for v in (max(-1.0, -1 + 2 * cell[a] / grid[a] - 0.1),
                                                      min(1.0, -1 + 2 * (cell[a] + 1) / grid[a] + 0.1))])
    field = build_field("ensemble", {"grid": list(grid), "brick_configs": configs, "brick_bounds": bounds})
    with torch.no_grad():
        for k, brick in enumerate(field.bricks):
            brick.feature_grids.normal_(0, 1, generator=gen)
            lo = float(torch.rand(1, generator=gen)) * 2 - 1
            brick.value_range.copy_(torch.tensor([lo, lo + 1 + k]))
    return EnsembleField(field.config, bricks=list(field.bricks)).eval()  # the union range of the bricks


def per_mask_forward(field: EnsembleField, points: torch.Tensor) -> torch.Tensor:
    """The ensemble's routing as it was before it was vectorised: one boolean mask per brick."""
    index = field.brick_index(points)
    out = torch.zeros(points.shape[0], dtype=torch.float32)
    for k, brick in enumerate(field.bricks):
        mask = index == k
        if not bool(mask.any()):
            continue
        lo, hi = field.brick_min[k], field.brick_max[k]
        local = -1 + 2 * ((points[mask] - lo) / (hi - lo))
        out[mask] = to_data_units(brick.normalized(local), brick.value_range, field.clamp_output)
    return out


def test_vectorised_routing_equals_the_per_brick_masks():
    field = random_ensemble()
    gen = torch.Generator().manual_seed(1)
    points = torch.cat([
        torch.rand(20000, 3, generator=gen) * 2.2 - 1.1,  # inside and just outside the cube
        voxel_grid_points((9, 5, 13)),  # every face between cells (faces at thirds and halves)
        torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 0.0, float("nan")]]),  # routed nowhere: 0, as before
    ])
    with torch.inference_mode():
        for clamp in (True, False):
            field.clamp_output = clamp
            expected, got = per_mask_forward(field, points), field(points)
            assert torch.equal(got, expected)
    assert len({k for k, _ in field.segments(points[:20000])}) == 12
    assert float(expected[:20000].std()) > 0.5  # bricks that differ: agreement means something


@pytest.fixture(scope="module", params=["float32", "compressed"])
def saved(request, tmp_path_factory):
    """``(path, full model)`` of a random ensemble saved as our file, float32 or compressed."""
    path = tmp_path_factory.mktemp("ens") / f"{request.param}.srn"
    NeuralVolume(random_ensemble(), GEOMETRY, "density").save(
        path, None if request.param == "float32" else Compression())
    return path, load_model(path)


@pytest.mark.parametrize("extent, bricks", [
    ((0, 5, 0, 5, 0, 3), [0]),
    ((0, 5, 0, 5, 0, 5), [0, 6]),  # z = 5 of 11 points lies on the face between the z cells
    ((7, 12, 5, 8, 6, 10), [7, 8, 10, 11]),  # x = 12 of 19 lies on a face between x cells
    ((0, 18, 0, 13, 0, 10), list(range(12))),
])
def test_partial_loading_builds_only_the_bricks_of_an_extent(saved, extent, bricks):
    path, full = saved
    assert cells_meeting_extent(GRID, GEOMETRY.dims, extent) == bricks
    part = load_model(path, extent=extent)
    field = part.field
    assert field.present == bricks and field.is_partial == (len(bricks) < 12)
    for k in range(12):
        if k in bricks:
            assert not isinstance(field.bricks[k], AbsentBrick)
        else:  # nothing allocated for it, not even on the meta device
            assert isinstance(field.bricks[k], AbsentBrick) and not list(field.bricks[k].state_dict())
    assert sum(p.numel() for p in field.parameters()) == sum(
        p.numel() for k in bricks for p in full.field.bricks[k].parameters())
    assert all(t.device.type == "cpu" for t in field.state_dict().values())
    assert part.value_range == full.value_range and part.geometry == full.geometry
    # Every point of the extent evaluates as in the whole model, fused kernel and PyTorch alike.
    if importlib.util.find_spec("numba") is not None:  # the kernel takes a partial ensemble too
        assert isinstance(fused_evaluator(field), FusedEnsemble)
    for fused in (True, False):
        a = evaluate_image(field, part.geometry, part.bounds, extent, fused=fused)
        b = evaluate_image(full.field, full.geometry, full.bounds, extent, fused=fused)
        assert np.array_equal(a, b)
    assert np.array_equal(part.resample(extent=extent), full.resample(extent=extent))


def test_a_point_outside_the_loaded_bricks_is_a_clear_error(saved, tmp_path):
    path, full = saved
    part = load_model(path, extent=(0, 5, 0, 5, 0, 3))
    outside = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.9, 0.9]])
    for fused in (True, False):
        with pytest.raises(ValueError, match=r"1 point\(s\) fall in ensemble brick 10, which was not loaded \(this "
                                             r"partial ensemble holds bricks \[0\]\)"):
            evaluate(part.field, outside, fused=fused)
    with pytest.raises(ValueError, match=r"loaded for an extent \(ensemble bricks \[0\] of 12\); load it whole"):
        part.save(tmp_path / "part.srn")
    with pytest.raises(ValueError, match="does not lie inside the training grid"):
        load_model(path, extent=(0, 19, 0, 5, 0, 3))


def test_an_extent_loads_a_single_model_whole(trained_model):
    path, model = trained_model
    part = load_model(path, extent=(0, 3, 0, 3, 0, 3))
    a, b = part.field.state_dict(), model.field.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_apmgsrn_ensemble_folder_converts_to_our_file_losslessly(tmp_path):
    top, _ = write_ensemble(tmp_path, full_shape=(9, 7, 11), grid=(2, 2, 3), ghost=1)
    peer = load_peer_checkpoint(top)
    assert isinstance(peer.field, EnsembleField) and len(peer.field.bricks) == 12
    peer.save(tmp_path / "ens.srn")
    ours = load_model(tmp_path / "ens.srn")
    assert ours.geometry == peer.geometry and ours.value_range == peer.value_range
    assert ours.field.config.brick_bounds == peer.field.config.brick_bounds
    points = torch.cat([torch.rand(5000, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1,
                        voxel_grid_points(peer.geometry.shape)])
    for fused in (True, False):
        assert torch.equal(evaluate(ours.field, points, fused=fused), evaluate(peer.field, points, fused=fused))
    # Saved again from our file: the same bytes of tensors.
    ours.save(tmp_path / "again.srn")
    a, b = load_model(tmp_path / "again.srn").field.state_dict(), peer.field.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_ensemble_file_is_refused_before_any_brick_is_read(saved, tmp_path):
    path, _ = saved
    tensors, meta = load_tensors(path)
    meta["config"]["grid"] = [1000, 1000, 1000]  # would route a billion cells
    save_tensors(tmp_path / "bad.srn", tensors, meta)
    with pytest.raises(ModelFileError, match="damaged: an ensemble needs its grid, one config per brick"):
        load_model(tmp_path / "bad.srn", extent=(0, 1, 0, 1, 0, 1))
