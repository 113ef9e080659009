"""Loading APMGSRN checkpoint folders: fixtures are written here exactly as APMGSRN writes them
(options.json + torch.save({'state_dict': ...}) as model.ckpt.tar), and expected values are computed
independently with plain torch ops following the published APMGSRN forward pass."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from srn_core.fields import FIELDS, APMGSRN
from srn_core.fields.ensemble import EnsembleField
from srn_core.geometry import voxel_grid_points
from srn_core.loading import load_model
from srn_core.modelfile import ModelFileError
from srn_core.peers import load_peer_checkpoint

TOL = 1e-6


# ---- fixture writers -----------------------------------------------------------------------------
def apmgsrn_options(**overrides):
    """An options.json as APMGSRN's train.py leaves it (defaults + data_min/data_max/full_shape)."""
    opt = {"model": "APMGSRN", "n_dims": 3, "n_outputs": 1, "feature_grid_shape": "4,5,6", "n_features": 3,
           "n_grids": 3, "use_bias": False, "data": "tornado.nc", "grid_initialization": "default",
           "ensemble": False, "ensemble_grid": "1,1,1", "ensemble_ghost_cells": 0, "grid_index": "1,1,1",
           "save_name": "tornado", "full_shape": [5, 7, 9], "align_corners": True, "requires_padded_feats": False,
           "use_tcnn_if_available": True, "n_layers": 2, "nodes_per_layer": 16, "device": "cuda:0",
           "data_device": "cuda:0", "iterations": 10000, "points_per_iteration": 100000, "lr": 0.01,
           "data_min": -0.75, "data_max": 1.25}
    opt.update(overrides)
    return opt


def write_folder(path, options, state, protocol=4):
    """APMGSRN's save_model: pickle protocol 4 (which torch's weights-only unpickler cannot parse)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "options.json").write_text(json.dumps(options, sort_keys=True, indent=4))
    torch.save({"state_dict": state}, path / "model.ckpt.tar", pickle_protocol=protocol)
    return path


def random_encoder(gen, n_grids, n_features, grid_shape):
    """Transforms near identity (rotated, scaled, shifted) with bottom row (0, 0, 0, 1), and feature grids."""
    t = torch.eye(4).repeat(n_grids, 1, 1)
    t[:, :3, :] += 0.3 * torch.randn(n_grids, 3, 4, generator=gen)
    grids = torch.randn(n_grids, n_features, *grid_shape, generator=gen)
    return t, grids


def reference(points, transforms, grids, weights, biases, padding, lo, hi):
    """APMGSRN's forward pass in float64 plain torch: A_g @ [x; 1], per-grid grid_sample, grid-major concat,
    ones padding, ReLU MLP, then output * (max - min) + min."""
    p = points.double()
    n = p.shape[0]
    homo = torch.cat([p, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    feats = []
    for g in range(grids.shape[0]):
        local = (transforms[g].double() @ homo.T).T[:, :3]
        s = F.grid_sample(grids[g:g + 1].double(), local.reshape(1, 1, 1, n, 3), mode="bilinear",
                          padding_mode="zeros", align_corners=True)
        feats.append(s.reshape(grids.shape[1], n).T)
    x = torch.cat(feats + [torch.ones(n, padding, dtype=torch.float64)], dim=1)
    for i, w in enumerate(weights):
        x = x @ w.double().T
        if biases is not None:
            x = x + biases[i].double()
        if i < len(weights) - 1:
            x = torch.relu(x)
    return x[:, 0] * (hi - lo) + lo


def query_points(gen, n=200):
    pts = torch.rand(n, 3, generator=gen) * 2.2 - 1.1  # a few outside the cube: zero-padded features
    corners = torch.tensor([[-1.0, -1, -1], [1, 1, 1], [1, -1, 0.5], [0, 0, 0]])
    return torch.cat([pts, corners])


def tcnn_fixture(tmp_path, seed=0, n_grids=3, n_features=3, grid_shape=(4, 5, 6), width=16, protocol=4,
                 **overrides):
    """A tcnn-trained APMGSRN: flat decoder.params, G*F = 9 -> 7 padding inputs fed 1.0, 16 output rows."""
    gen = torch.Generator().manual_seed(seed)
    t, grids = random_encoder(gen, n_grids, n_features, grid_shape)
    n_in = n_grids * n_features
    pad_in = 16 * max(1, -(-n_in // 16))
    w0 = torch.randn(width, pad_in, generator=gen) / pad_in ** 0.5
    w1 = torch.randn(width, width, generator=gen) / width ** 0.5
    w2 = torch.randn(16, width, generator=gen) / width ** 0.5
    w2[1:] = 1e3  # padded output rows: must be ignored
    params = torch.cat([w0.reshape(-1), w1.reshape(-1), w2.reshape(-1)])
    opt = apmgsrn_options(**{"n_grids": n_grids, "n_features": n_features, "nodes_per_layer": width,
                             "feature_grid_shape": ",".join(map(str, grid_shape)), **overrides})
    state = {"encoder.transformation_matrices": t, "encoder.feature_grids": grids, "decoder.params": params}
    folder = write_folder(tmp_path / "tcnn_model", opt, state, protocol)
    expected = dict(transforms=t, grids=grids, weights=[w0, w1, w2[:1]], biases=None, padding=pad_in - n_in,
                    lo=opt["data_min"], hi=opt["data_max"])
    return folder, expected


def torch_fixture(tmp_path, seed=1, n_grids=2, n_features=4, n_layers=3, width=8, padded=True, bias=False):
    """A PyTorch-trained APMGSRN (decoder.{i}.linear.weight ... decoder.{n_layers}.weight)."""
    gen = torch.Generator().manual_seed(seed)
    t, grids = random_encoder(gen, n_grids, n_features, (3, 4, 5))
    n_in = n_grids * n_features
    padding = 16 * max(1, -(-n_in // 16)) - n_in if padded else 0
    widths = [n_in + padding] + [width] * n_layers + [1]
    weights = [torch.randn(b, a, generator=gen) / a ** 0.5 for a, b in zip(widths[:-1], widths[1:])]
    biases = [0.1 * torch.randn(b, generator=gen) for b in widths[1:]] if bias else None
    state = {"encoder.transformation_matrices": t, "encoder.feature_grids": grids}
    for i, w in enumerate(weights):
        name = f"decoder.{i}" if i == n_layers else f"decoder.{i}.linear"
        state[name + ".weight"] = w
        if bias:
            state[name + ".bias"] = biases[i]
    opt = apmgsrn_options(model="AMGSRN", n_grids=n_grids, n_features=n_features, n_layers=n_layers,
                          nodes_per_layer=width, feature_grid_shape="3,4,5", requires_padded_feats=padded,
                          use_tcnn_if_available=False, use_bias=bias, data_min=10.0, data_max=250.0,
                          full_shape=[4, 6, 3], data="plume/Plume.nc")
    folder = write_folder(tmp_path / f"torch_model_{padded}_{bias}", opt, state)
    expected = dict(transforms=t, grids=grids, weights=weights, biases=biases, padding=padding,
                    lo=opt["data_min"], hi=opt["data_max"])
    return folder, expected


def values(volume, points):
    volume.field.clamp_output = False  # the peer's forward pass does not clamp to the data range
    with torch.no_grad():
        return volume.field(points).double()


# ---- decoders ------------------------------------------------------------------------------------
def test_tcnn_flat_decoder_with_input_padding_matches_reference(tmp_path):
    folder, exp = tcnn_fixture(tmp_path)
    vol = load_peer_checkpoint(folder)
    assert isinstance(vol.field, APMGSRN)
    assert vol.field.config.input_padding == 7 and vol.field.config.width == 16
    assert vol.field.config.n_hidden_layers == 2 and vol.field.config.grid_shape == (4, 5, 6)
    pts = query_points(torch.Generator().manual_seed(5))
    ref = reference(pts, **exp)
    assert ref.std() > 0.05  # the fixture is not trivially constant
    torch.testing.assert_close(values(vol, pts), ref, atol=TOL, rtol=0)


def test_tcnn_decoder_without_padding_when_inputs_fill_16(tmp_path):
    folder, exp = tcnn_fixture(tmp_path, n_grids=4, n_features=4, width=32)
    vol = load_peer_checkpoint(folder)
    assert vol.field.config.input_padding == 0
    pts = query_points(torch.Generator().manual_seed(6))
    # 1e-6 relative to the data range (2): float32 rounding of a 16-wide first layer, as in the other tests.
    torch.testing.assert_close(values(vol, pts), reference(pts, **exp), atol=2 * TOL, rtol=0)


@pytest.mark.parametrize("padded", [True, False])
def test_torch_layout_decoder_matches_reference(tmp_path, padded):
    folder, exp = torch_fixture(tmp_path, padded=padded)
    vol = load_peer_checkpoint(folder)
    assert vol.field.config.input_padding == (8 if padded else 0)
    assert vol.field.config.n_hidden_layers == 3
    pts = query_points(torch.Generator().manual_seed(7))
    ref = reference(pts, **exp)
    # Data range 240: 1e-6 relative to the range.
    torch.testing.assert_close(values(vol, pts), ref, atol=240 * TOL, rtol=0)


def test_biased_torch_decoder_loads_exactly_and_counts_only_its_parameters(tmp_path):
    folder, exp = torch_fixture(tmp_path, padded=False, bias=True, n_layers=2)
    vol = load_peer_checkpoint(folder)
    assert vol.field.config.use_bias and vol.field.config.input_padding == 0 and vol.field.config.width == 8
    # What the peer stores and trains: 2 x 4 x (3 x 4 x 5) grid values, 2 4x4 transforms, and a 8-8-8-1
    # decoder with biases (8*8+8 + 8*8+8 + 8+1 = 153); nothing added to carry a bias.
    assert vol.num_parameters == 2 * 4 * 60 + 2 * 16 + 153
    pts = query_points(torch.Generator().manual_seed(8))
    torch.testing.assert_close(values(vol, pts), reference(pts, **exp), atol=240 * TOL, rtol=0)


@pytest.mark.parametrize("option, expected", [("small", "small"), ("large", "large"), ("default", "default"),
                                              ("small_grids", "small"), ("anything", "default")])
def test_grid_initialization_is_read_from_the_options(tmp_path, option, expected):
    folder, _ = torch_fixture(tmp_path)
    options = json.loads((folder / "options.json").read_text())
    (folder / "options.json").write_text(json.dumps({**options, "grid_initialization": option}))
    # The peer's own rule: the first of "default", "small", "large" found in the text, else "default".
    assert load_peer_checkpoint(folder).field.config.grid_initialization == expected


# ---- geometry, metadata, dispatch, round trip --------------------------------------------------------
def test_geometry_maps_full_shape_to_vtk_dims_and_model_x_to_last_axis(tmp_path):
    folder, exp = tcnn_fixture(tmp_path)  # full_shape [5, 7, 9]
    vol = load_peer_checkpoint(folder)
    assert vol.geometry.dims == (9, 7, 5)
    assert vol.geometry.origin == (0.0, 0.0, 0.0) and vol.geometry.spacing == (1.0, 1.0, 1.0)
    assert vol.bounds == (0.0, 8.0, 0.0, 6.0, 0.0, 4.0)
    assert vol.value_range == (-0.75, 1.25)
    assert vol.array_name == "tornado"
    assert vol.training["steps"] == 10000 and vol.training["peer_model"] == "APMGSRN"
    # Resampling on its own grid gives an array shaped like APMGSRN's file array [D0, D1, D2], and file
    # voxel (a0, a1, a2) is the model point (x, y, z) = (a2, a1, a0) mapped corner-aligned to [-1, 1].
    vol.field.clamp_output = False  # compared with the peer's unclamped forward pass
    grid = vol.resample()
    assert grid.shape == (5, 7, 9)
    a0, a1, a2 = torch.meshgrid(torch.arange(5), torch.arange(7), torch.arange(9), indexing="ij")
    pts = torch.stack([-1 + 2 * a2 / 8, -1 + 2 * a1 / 6, -1 + 2 * a0 / 4], dim=-1).reshape(-1, 3).float()
    # Data range 2: resampling runs the fused kernel (float32 sums in another order), 1e-6 of the range.
    torch.testing.assert_close(torch.from_numpy(grid).double().reshape(-1), reference(pts, **exp), atol=2 * TOL, rtol=0)


def test_neural_volume_load_dispatches_folders_and_round_trips_through_our_format(tmp_path):
    folder, exp = torch_fixture(tmp_path)
    vol = load_model(folder)
    assert vol.geometry.dims == (3, 6, 4) and vol.array_name == "Plume" and vol.source == str(folder)
    path = tmp_path / "converted.nv"
    vol.save(path)
    again = load_model(path)
    pts = query_points(torch.Generator().manual_seed(9))
    assert torch.equal(values(again, pts), values(vol, pts))
    assert again.geometry == vol.geometry and again.value_range == vol.value_range


# ---- refusals ----------------------------------------------------------------------------------------
class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, protocol):
    folder = tmp_path / "evil"
    marker = tmp_path / "pwned"
    write_folder(folder, apmgsrn_options(), {"encoder.feature_grids": RunsCode(marker)}, protocol=protocol)
    with pytest.raises(ModelFileError, match=r"model\.ckpt\.tar.*import \w+\.system.*run code"):
        load_peer_checkpoint(folder)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_not_loaded(tmp_path):
    folder, _ = tcnn_fixture(tmp_path)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), folder / "model.ckpt.tar")
    with pytest.raises(ModelFileError, match=r"model\.ckpt\.tar.*TorchScript"):
        load_peer_checkpoint(folder)


def test_checkpoint_in_torch_default_pickle_protocol_loads_too(tmp_path):
    folder, exp = tcnn_fixture(tmp_path, protocol=2)  # torch.save's default: torch's weights_only path
    pts = query_points(torch.Generator().manual_seed(10))
    torch.testing.assert_close(values(load_peer_checkpoint(folder), pts), reference(pts, **exp), atol=TOL, rtol=0)


def test_truncated_checkpoint_is_a_model_file_error(tmp_path):
    folder, _ = tcnn_fixture(tmp_path)
    ckpt = folder / "model.ckpt.tar"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"model\.ckpt\.tar.*truncated"):
        load_peer_checkpoint(folder)
    ckpt.write_bytes(b"")
    with pytest.raises(ModelFileError, match="truncated"):
        load_peer_checkpoint(folder)


@pytest.mark.parametrize("model", ["fVSRN", "NGP_TCNN"])
def test_other_peer_models_are_named_as_not_supported(tmp_path, model):
    folder = write_folder(tmp_path / model, apmgsrn_options(model=model), {"model.params": torch.zeros(10)})
    with pytest.raises(ModelFileError, match=f"'{model}'.*not supported yet"):
        load_peer_checkpoint(folder)


def test_the_apmgsrn_reader_sends_amgsrn_plus_plus_folders_to_their_reader(tmp_path):
    folder = tmp_path / "amgsrnpp"
    folder.mkdir()
    (folder / "options.json").write_text(json.dumps(apmgsrn_options(model="AMGSRN")))
    torch.save({"state_dict": {"encoder._scales": torch.zeros(2, 3)}}, folder / "model.ckpt")
    with pytest.raises(ModelFileError, match=r"AMGSRN\+\+.*srn_core.peers_amgsrnpp"):
        load_peer_checkpoint(folder)


def test_wrong_decoder_params_length_names_both_counts(tmp_path):
    folder, _ = tcnn_fixture(tmp_path, nodes_per_layer=32)  # options say 32 neurons, params hold 16
    with pytest.raises(ModelFileError, match=r"decoder\.params has 768 values .* needs 2048"):
        load_peer_checkpoint(folder)


def test_missing_options_and_missing_range_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="no options.json"):
        load_peer_checkpoint(empty)
    opt = apmgsrn_options()
    del opt["data_max"]
    folder, _ = tcnn_fixture(tmp_path)
    (folder / "options.json").write_text(json.dumps(opt))
    with pytest.raises(ModelFileError, match="data_max"):
        load_peer_checkpoint(folder)
    with pytest.raises(FileNotFoundError):
        load_peer_checkpoint(tmp_path / "nowhere")


# ---- options are read strictly -----------------------------------------------------------------------
def rewrite_options(folder, **changes):
    options = json.loads((folder / "options.json").read_text())
    (folder / "options.json").write_text(json.dumps({**options, **changes}))


@pytest.mark.parametrize("false", ["false", "False", 0, "0"])
def test_false_written_as_a_string_or_a_number_means_false(tmp_path, false):
    # bool("false") is True: read leniently, this unpadded model was taken for a padded ensemble.
    folder, exp = torch_fixture(tmp_path, padded=False)
    rewrite_options(folder, requires_padded_feats=false, use_bias=false, ensemble=false)
    vol = load_peer_checkpoint(folder)
    assert vol.field.config.input_padding == 0
    pts = query_points(torch.Generator().manual_seed(13))
    torch.testing.assert_close(values(vol, pts), reference(pts, **exp), atol=240 * TOL, rtol=0)


@pytest.mark.parametrize("true", ["true", "TRUE", 1, "1"])
def test_true_written_as_a_string_or_a_number_means_true(tmp_path, true):
    folder, _ = torch_fixture(tmp_path, padded=True)
    rewrite_options(folder, requires_padded_feats=true)
    assert load_peer_checkpoint(folder).field.config.input_padding == 8


@pytest.mark.parametrize("key, value", [("requires_padded_feats", "no"), ("use_bias", "yes"), ("ensemble", 2),
                                        ("use_bias", None), ("requires_padded_feats", [])])
def test_a_boolean_option_that_is_neither_true_nor_false_is_named(tmp_path, key, value):
    folder, _ = torch_fixture(tmp_path)
    rewrite_options(folder, **{key: value})
    with pytest.raises(ModelFileError) as info:
        load_peer_checkpoint(folder)
    assert str(info.value) == (f"options file {str(folder / 'options.json')!r} has {key}={value!r}; "
                               f"expected true or false.")


@pytest.mark.parametrize("three", ["3", 3.0, " 3"])
def test_a_whole_number_written_as_a_string_or_a_float_is_read(tmp_path, three):
    folder, _ = torch_fixture(tmp_path, n_layers=3)
    rewrite_options(folder, n_layers=three)
    assert load_peer_checkpoint(folder).field.config.n_hidden_layers == 3


@pytest.mark.parametrize("key, value", [("n_layers", 2.5), ("n_layers", "three"), ("n_layers", True),
                                        ("nodes_per_layer", 0), ("n_dims", None), ("n_outputs", "-1")])
def test_an_integer_option_that_is_no_whole_number_is_named(tmp_path, key, value):
    folder, _ = torch_fixture(tmp_path)
    rewrite_options(folder, **{key: value})
    with pytest.raises(ModelFileError) as info:
        load_peer_checkpoint(folder)
    assert str(info.value) == (f"options file {str(folder / 'options.json')!r} has {key}={value!r}; "
                               f"expected a whole number of at least 1.")


def test_an_absurd_layer_count_is_refused_before_any_layer_list_is_built(tmp_path):
    folder, _ = tcnn_fixture(tmp_path)
    rewrite_options(folder, n_layers=10 ** 12)
    with pytest.raises(ModelFileError, match=r"decoder\.params has 768 values but a FullyFusedMLP with 9 inputs, "
                                             r"1000000000000 hidden layers"):
        load_peer_checkpoint(folder)
    folder, _ = torch_fixture(tmp_path)
    rewrite_options(folder, n_layers=10 ** 12)
    with pytest.raises(ModelFileError, match=r"n_layers is 1000000000000 but the state dict has no output layer "
                                             r"decoder\.1000000000000\.weight"):
        load_peer_checkpoint(folder)


# ---- ensembles -----------------------------------------------------------------------------------------
def brick_ranges(n, g, ghost):
    """APMGSRN start_jobs.py brick extents along one file axis: [start, end) with ghost + 1 overlap."""
    step = n / g
    out = []
    for i in range(g):
        start = max(0, int(i * step) - (ghost + 1))
        end = n if i == g - 1 else int((i + 1) * step)
        out.append((start, min(n, end + ghost + 1)))
    return out


def write_ensemble(tmp_path, full_shape=(6, 5, 9), grid=(2, 1, 2), ghost=0):
    top = tmp_path / "ens"
    top.mkdir()
    opt = apmgsrn_options(ensemble=True, ensemble_grid=",".join(map(str, grid)), ensemble_ghost_cells=ghost,
                          full_shape=list(full_shape), save_name="ens")
    del opt["data_min"], opt["data_max"]  # start_jobs writes the top options before any training
    (top / "options.json").write_text(json.dumps(opt, indent=4))
    bricks = {}
    gen = torch.Generator().manual_seed(11)
    ranges = [brick_ranges(full_shape[a], grid[a], ghost) for a in range(3)]
    for i, (x0, x1) in enumerate(ranges[0]):
        for j, (y0, y1) in enumerate(ranges[1]):
            for k, (z0, z1) in enumerate(ranges[2]):
                extents = f"{x0},{x1},{y0},{y1},{z0},{z1}"
                t, grids = random_encoder(gen, 2, 2, (3, 3, 3))
                w = [torch.randn(8, 16, generator=gen) / 4, torch.randn(8, 8, generator=gen) / 3,
                     torch.randn(16, 8, generator=gen) / 3]
                lo = float(torch.rand(1, generator=gen)) - 1
                hi = lo + 1 + float(torch.rand(1, generator=gen))
                sub = apmgsrn_options(n_grids=2, n_features=2, nodes_per_layer=8, feature_grid_shape="3,3,3",
                                      extents=extents, grid_index=f"{i},{j},{k}", data_min=lo, data_max=hi,
                                      full_shape=[x1 - x0, y1 - y0, z1 - z0], save_name=f"ens/{extents}")
                state = {"encoder.transformation_matrices": t, "encoder.feature_grids": grids,
                         "decoder.params": torch.cat([m.reshape(-1) for m in w])}
                write_folder(top / extents, sub, state)
                # Ensemble_SRN: extents -> [-1, 1] per file axis, then flipped to model (x, y, z).
                e = [x0, x1, y0, y1, z0, z1]
                box = [(2 * e[2 * a] / (full_shape[a] - 1) - 1, 2 * (e[2 * a + 1] - 1) / (full_shape[a] - 1) - 1)
                       for a in range(3)]
                bricks[k + j * grid[2] + i * grid[2] * grid[1]] = dict(
                    lo_xyz=torch.tensor([box[2][0], box[1][0], box[0][0]], dtype=torch.float64),
                    hi_xyz=torch.tensor([box[2][1], box[1][1], box[0][1]], dtype=torch.float64),
                    exp=dict(transforms=t, grids=grids, weights=[w[0], w[1], w[2][:1]], biases=None, padding=12,
                             lo=lo, hi=hi))
    return top, bricks


def ensemble_reference(points, bricks, grid):
    g = torch.tensor(grid[::-1], dtype=torch.float64)  # model (x, y, z) = file axes (2, 1, 0)
    cell = (((points.double() + 1) / 2).clamp(0, 0.99) * g).long()
    index = cell[:, 0] + cell[:, 1] * int(g[0]) + cell[:, 2] * int(g[0] * g[1])
    out = torch.empty(points.shape[0], dtype=torch.float64)
    for n, b in bricks.items():
        m = index == n
        local = -1 + 2 * (points[m].double() - b["lo_xyz"]) / (b["hi_xyz"] - b["lo_xyz"])
        out[m] = reference(local.float(), **b["exp"])
    return out


def test_ensemble_routes_points_to_bricks_like_apmgsrn(tmp_path, monkeypatch):
    top, bricks = write_ensemble(tmp_path)
    vol = load_peer_checkpoint(top)
    assert isinstance(vol.field, EnsembleField) and len(vol.field.bricks) == 4
    assert vol.geometry.dims == (9, 5, 6)
    los = [b["exp"]["lo"] for b in bricks.values()]
    his = [b["exp"]["hi"] for b in bricks.values()]
    assert vol.value_range == pytest.approx((min(los), max(his)), abs=1e-6)
    pts = torch.rand(400, 3, generator=torch.Generator().manual_seed(12)) * 2 - 1
    index = vol.field.brick_index(pts)
    assert set(index.tolist()) == {0, 1, 2, 3}
    expected = ensemble_reference(pts, bricks, (2, 1, 2))
    torch.testing.assert_close(values(vol, pts), expected, atol=TOL, rtol=0)
    # Every voxel of the full grid too (includes faces between bricks).
    voxels = voxel_grid_points(vol.geometry.shape)
    torch.testing.assert_close(torch.from_numpy(vol.resample()).double().reshape(-1),
                               ensemble_reference(voxels, bricks, (2, 1, 2)), atol=TOL, rtol=0)
    # Our single-file format keeps all bricks with their extents.
    monkeypatch.setitem(FIELDS, EnsembleField.architecture, EnsembleField)
    vol.save(tmp_path / "ens.nv")
    again = load_model(tmp_path / "ens.nv")
    assert torch.equal(values(again, pts), values(vol, pts))


def test_ensemble_with_a_missing_brick_is_a_clear_error(tmp_path):
    top, _ = write_ensemble(tmp_path, grid=(1, 1, 2))
    sub = sorted(p for p in top.iterdir() if p.is_dir())[0]
    (sub / "options.json").unlink()
    with pytest.raises(ModelFileError, match="lacks 1 of its 2 brick folders"):
        load_peer_checkpoint(top)
