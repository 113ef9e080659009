"""Loading AMGSRN++ folders (skywolf829/AMGSRN): fixtures are written here in the peer's two formats (options.json
with model.ckpt, or compressed_model.zip of .npy files and SZ3 grids), and expected values come from a float64
reference written from the formulas: the quaternion rotation applied as q v q*, trilinear interpolation with
zero outside, the ReLU decoder, and the peer's output scaling."""

from __future__ import annotations

import io
import json
import sys
import zipfile

import numpy as np
import pytest
import torch

from srn_core.fields import APMGSRN
from srn_core.loading import load_model, model_path
from srn_core.modelfile import ModelFileError

pysz = pytest.importorskip("pysz")

G, F, GRID = 3, 2, (4, 5, 6)  # grids, features, (D, H, W)
WIDTH, LAYERS = 16, 2
LO, HI = -0.75, 1.25
SZ_BOUND = 1e-3


# ---- fixture writers -----------------------------------------------------------------------------
def options(**overrides):
    """options.json as AMGSRN++'s train.py leaves it (the keys the model reads, after match_aspect_ratio)."""
    opt = {"model": "AMGSRN", "n_dims": 3, "n_outputs": 1, "feature_grid_shape": ",".join(map(str, GRID)),
           "n_features": F, "n_grids": G, "use_bias": False, "data": "tornado.nc", "grid_initialization": "default",
           "ensemble": False, "save_name": "tornado", "full_shape": [5, 7, 9], "align_corners": True,
           "requires_padded_feats": False, "match_aspect_ratio": False, "use_tcnn_if_available": True,
           "n_layers": LAYERS, "nodes_per_layer": WIDTH, "iterations": 30000, "data_min": LO, "data_max": HI,
           "error_volume": False, "save_with_compression": True, "compressor_used": "sz3",
           "save_with_compression_level": SZ_BOUND}
    opt.update(overrides)
    return opt


def random_state(seed=0, bias=False, tcnn=False, grid=GRID):
    gen = torch.Generator().manual_seed(seed)
    state = {
        "_scales": torch.empty(G, 3).uniform_(-0.4, 0.4, generator=gen),  # log-scales
        "_rotations": 2 * torch.randn(G, 4, generator=gen),  # not unit: the peer normalises them
        "translations": 0.3 * torch.randn(G, 3, generator=gen),
        "feature_grids": torch.randn(G, F, *grid, generator=gen),
    }
    widths = [G * F] + [WIDTH] * LAYERS + [1]
    if tcnn:  # tiny-cuda-nn: one flat vector, input padded to 16, output padded to 16 rows
        shapes = [(WIDTH, 16)] + [(WIDTH, WIDTH)] * (LAYERS - 1) + [(16, WIDTH)]
        state["decoder.params"] = torch.cat([torch.randn(r * c, generator=gen) / c ** 0.5 for r, c in shapes])
        return state
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        name = f"decoder.{i}.linear" if i < LAYERS else f"decoder.{i}"
        state[name + ".weight"] = torch.randn(b, a, generator=gen) / a ** 0.5
        if bias:
            state[name + ".bias"] = 0.1 * torch.randn(b, generator=gen)
    return state


def write_checkpoint(folder, opt, state):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "options.json").write_text(json.dumps(opt, sort_keys=True, indent=4))
    torch.save({"state_dict": dict(state)}, folder / "model.ckpt")
    return folder


def compressed_zip_bytes(state, bound=SZ_BOUND):
    """compressed_model.zip's bytes and the grids as SZ3 decodes them: one .npy per other entry, one SZ3
    stream per channel of the C-order [G, D, H, W] array feature_grids[:, c]."""
    buf = io.BytesIO()
    decoded = np.empty(tuple(state["feature_grids"].shape), dtype=np.float32)
    with zipfile.ZipFile(buf, "w") as zf:
        for key, t in state.items():
            if key == "feature_grids":
                continue
            npy = io.BytesIO()
            np.save(npy, t.numpy())
            zf.writestr(f"{key}.npy", npy.getvalue())
        grids = state["feature_grids"].numpy().astype(np.float32)
        for c in range(grids.shape[1]):
            channel = np.ascontiguousarray(grids[:, c])
            cfg = pysz.szConfig()
            cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
            cfg.absErrorBound = bound
            stream, _ = pysz.sz.compress(channel, cfg)
            stream = np.asarray(stream, dtype=np.uint8)
            zf.writestr(f"feature_grid_{c}.sz", stream.tobytes())
            decoded[:, c] = pysz.sz.decompress(stream, np.float32, channel.shape)[0]
    return buf.getvalue(), torch.from_numpy(decoded)


def write_compressed(folder, opt, state, bound=SZ_BOUND):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "options.json").write_text(json.dumps(opt, sort_keys=True, indent=4))
    data, decoded = compressed_zip_bytes(state, bound)
    (folder / "compressed_model.zip").write_bytes(data)
    return folder, decoded


# ---- the float64 reference ---------------------------------------------------------------------------
def quaternion_rotate(q, v):
    """Rotate vectors ``v [N, 3]`` by the unit quaternion ``q = (x, y, z, w)`` as ``q (v, 0) q*``."""
    def product(a, b):  # Hamilton product of (x, y, z, w) quaternions
        ax, ay, az, aw = a
        bx, by, bz, bw = b
        return (aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz)
    zero = np.zeros(len(v))
    q_conj = (-q[0], -q[1], -q[2], q[3])
    x, y, z, _ = product(product(tuple(q), (v[:, 0], v[:, 1], v[:, 2], zero)), q_conj)
    return np.stack([x, y, z], axis=1)


def trilinear_zero_outside(grid, local):
    """``grid [C, D, H, W]`` at local coordinates ``[N, 3]`` (x along W, corners at -1 and 1), zero outside."""
    c, d, h, w = grid.shape
    fx, fy, fz = ((local + 1) / 2 * (np.array([w, h, d]) - 1)).T
    x0, y0, z0 = np.floor(fx).astype(int), np.floor(fy).astype(int), np.floor(fz).astype(int)
    out = np.zeros((len(local), c))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                xi, yi, zi = x0 + dx, y0 + dy, z0 + dz
                weight = ((fx - x0) if dx else (1 - (fx - x0))) * ((fy - y0) if dy else (1 - (fy - y0))) \
                    * ((fz - z0) if dz else (1 - (fz - z0)))
                inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & (zi >= 0) & (zi < d)
                values = grid[:, np.clip(zi, 0, d - 1), np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)].T
                out += np.where(inside[:, None], weight[:, None] * values, 0.0)
    return out


def reference(points, state, grids=None, error_volume=False, lo=LO, hi=HI):
    """AMGSRN++'s forward pass in float64 NumPy: per grid local = R(q) (exp(s) * x) + t, features grid-major,
    ReLU decoder (tiny-cuda-nn: inputs padded with ones, output row 0), then the peer's output scaling."""
    p = points.double().numpy()
    grids = (state["feature_grids"] if grids is None else grids).double().numpy()
    s = np.exp(state["_scales"].double().numpy())
    q = state["_rotations"].double().numpy()
    q = q / np.sqrt((q ** 2).sum(axis=1, keepdims=True))
    t = state["translations"].double().numpy()
    feats = np.concatenate([trilinear_zero_outside(grids[g], quaternion_rotate(q[g], p * s[g]) + t[g])
                            for g in range(G)], axis=1)
    if "decoder.params" in state:
        flat = state["decoder.params"].double().numpy()
        shapes = [(WIDTH, 16)] + [(WIDTH, WIDTH)] * (LAYERS - 1) + [(16, WIDTH)]
        weights, start = [], 0
        for r, c in shapes:
            weights.append(flat[start:start + r * c].reshape(r, c))
            start += r * c
        weights[-1] = weights[-1][:1]
        biases = [0.0] * len(weights)
        feats = np.concatenate([feats, np.ones((len(p), 16 - G * F))], axis=1)
    else:
        names = [f"decoder.{i}.linear" for i in range(LAYERS)] + [f"decoder.{LAYERS}"]
        weights = [state[n + ".weight"].double().numpy() for n in names]
        biases = [state[n + ".bias"].double().numpy() if n + ".bias" in state else 0.0 for n in names]
    h = feats
    for w, b in zip(weights[:-1], biases[:-1]):
        h = np.maximum(h @ w.T + b, 0.0)
    y = (h @ weights[-1].T + biases[-1])[:, 0]
    return y * max(abs(lo), abs(hi)) if error_volume else y * (hi - lo) + lo


def random_points(n=3000, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=gen) * 2.2 - 1.1  # a little outside the cube too: zero features there


def assert_matches(model, state, grids=None, error_volume=False):
    """The model's raw values (unclamped) match the reference to 1e-5 relative (of the largest value), and the
    default clamped values are the reference clipped to the value range."""
    points = random_points()
    expected = reference(points, state, grids, error_volume)
    assert np.abs(expected).max() > 0.1  # the fixture exercises the decoder, not zeros
    field = model.field
    with torch.no_grad():
        field.clamp_output = False
        try:
            raw = field(points).double().numpy()
        finally:
            del field.clamp_output
        clamped = field(points).double().numpy()
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(clamped, np.clip(expected, LO, HI), rtol=1e-5, atol=1e-5 * np.abs(expected).max())


# ---- values -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_a_model_ckpt_folder_matches_the_float64_reference(tmp_path, bias):
    state = random_state(bias=bias)
    folder = write_checkpoint(tmp_path / "run", options(use_bias=bias), state)
    model = load_model(folder)
    assert isinstance(model.field, APMGSRN)
    assert model.field.config.input_padding == 0 and model.field.config.use_bias is bias
    assert model.value_range == (LO, HI)
    assert_matches(model, state)


def test_a_tiny_cuda_nn_decoder_pads_its_inputs_with_ones(tmp_path):
    state = random_state(tcnn=True)
    model = load_model(write_checkpoint(tmp_path / "run", options(), state))
    assert model.field.config.input_padding == 16 - G * F
    assert_matches(model, state)


def test_an_error_volume_is_scaled_by_the_largest_magnitude(tmp_path):
    state = random_state(seed=3)
    model = load_model(write_checkpoint(tmp_path / "run", options(error_volume=True), state))
    assert model.value_range == (LO, HI)
    assert_matches(model, state, error_volume=True)


def test_a_compressed_model_zip_matches_the_reference_on_the_decoded_grids(tmp_path):
    state = random_state(seed=5)
    folder, decoded = write_compressed(tmp_path / "run", options(), state)
    assert not (folder / "model.ckpt").exists()
    # SZ3 kept its error bound, and did change the grids (so the reference really uses the decoded ones).
    error = (decoded - state["feature_grids"]).abs().max().item()
    assert 0 < error <= SZ_BOUND * (1 + 1e-6)
    model = load_model(folder)
    torch.testing.assert_close(model.field.feature_grids.detach(), decoded, rtol=0, atol=0)
    assert_matches(model, state, grids=decoded)
    assert model.file_bytes == sum(p.stat().st_size for p in folder.iterdir())
    assert model.training["peer_format"] == "AMGSRN++"
    assert model.training["peer_file"] == "compressed_model.zip"


def test_options_still_asking_to_match_the_aspect_ratio_get_the_peers_shape(tmp_path):
    """Requested 4x5x6 = 120 cells for data of 5x7x9: ratio (120/315)^(1/3) = 0.7249, so ceil(3.62, 5.07, 6.52)."""
    state = random_state(seed=4, grid=(4, 6, 7))
    folder, decoded = write_compressed(tmp_path / "run", options(match_aspect_ratio=True), state)
    model = load_model(folder)
    assert model.field.config.grid_shape == (4, 6, 7)
    assert_matches(model, state, grids=decoded)


def test_geometry_comes_from_full_shape_like_apmgsrn(tmp_path):
    model = load_model(write_checkpoint(tmp_path / "run", options(full_shape=[5, 7, 9]), random_state()))
    assert tuple(model.geometry.dims) == (9, 7, 5)
    assert model.array_name == "tornado"
    assert model.resample().shape == (5, 7, 9)


def test_picking_a_file_inside_the_folder_means_the_folder(tmp_path):
    folder, _ = write_compressed(tmp_path / "run", options(), random_state())
    write_checkpoint(folder, options(), random_state())
    for name in ("options.json", "model.ckpt", "compressed_model.zip"):
        assert model_path(folder / name) == folder
    # Both files present: options' save_with_compression picks the one the peer itself would read.
    assert load_model(folder / "model.ckpt").training["peer_file"] == "compressed_model.zip"
    (folder / "options.json").write_text(json.dumps(options(save_with_compression=False)))
    assert load_model(folder / "compressed_model.zip").training["peer_file"] == "model.ckpt"


def test_timestep_0_of_a_time_varying_model_loads_with_a_warning(tmp_path):
    state = random_state(seed=7)
    folder = tmp_path / "tv"
    folder.mkdir()
    (folder / "options.json").write_text(json.dumps(options(model="TVAMGSRN", n_timesteps=2)))
    first, decoded = compressed_zip_bytes(state)
    second, _ = compressed_zip_bytes(random_state(seed=8))
    with zipfile.ZipFile(folder / "compressed_models.zip", "w") as zf:
        zf.writestr("compressed_model_0.zip", first)
        zf.writestr("compressed_model_1.zip", second)
    with pytest.warns(UserWarning, match="time-varying AMGSRN\\+\\+ model with 2 timesteps; only timestep 0"):
        model = load_model(folder)
    assert_matches(model, state, grids=decoded)


def test_the_old_layout_names_load_as_apmgsrn(tmp_path):
    """AMGSRN++'s AMGSRN_old class keeps APMGSRN's keys and forward pass: the same state gives the same model
    as that state in an APMGSRN folder."""
    gen = torch.Generator().manual_seed(11)
    transforms = torch.eye(4).repeat(G, 1, 1)
    transforms[:, :3, :] += 0.3 * torch.randn(G, 3, 4, generator=gen)
    state = {"encoder.transformation_matrices": transforms,
             "encoder.feature_grids": torch.randn(G, F, *GRID, generator=gen),
             "decoder.0.linear.weight": torch.randn(WIDTH, G * F, generator=gen) / 3,
             "decoder.1.linear.weight": torch.randn(WIDTH, WIDTH, generator=gen) / 4,
             "decoder.2.weight": torch.randn(1, WIDTH, generator=gen) / 4}
    old = load_model(write_checkpoint(tmp_path / "old", options(model="AMGSRN_old"), state))
    apmgsrn = tmp_path / "apmgsrn"
    apmgsrn.mkdir()
    (apmgsrn / "options.json").write_text(json.dumps(options(model="APMGSRN")))
    torch.save({"state_dict": state}, apmgsrn / "model.ckpt.tar")
    points = random_points()
    with torch.no_grad():
        assert torch.equal(old.field(points), load_model(apmgsrn).field(points))
    assert old.training["peer_format"] == "AMGSRN++"


def test_a_time_varying_model_ckpt_loads_timestep_0(tmp_path):
    state = random_state(seed=9)
    other = random_state(seed=10)
    both = {**{f"models.0.{k}": v for k, v in state.items()}, **{f"models.1.{k}": v for k, v in other.items()}}
    folder = write_checkpoint(tmp_path / "tv", options(model="TVAMGSRN", n_timesteps=2,
                                                       save_with_compression=False), both)
    with pytest.warns(UserWarning, match="only timestep 0 is loaded"):
        model = load_model(folder)
    assert_matches(model, state)


# ---- bad input -------------------------------------------------------------------------------------------
def rewrite_member(zip_path, name, data=None):
    """``zip_path`` with member ``name`` replaced by ``data`` (dropped when ``data`` is None)."""
    with zipfile.ZipFile(zip_path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    if data is None:
        del members[name]
    else:
        members[name] = data
    with zipfile.ZipFile(zip_path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)


@pytest.mark.parametrize("damage", ["zeroed payload", "truncated"])
def test_a_corrupt_sz_stream_is_one_error_naming_the_folder(tmp_path, damage):
    folder, _ = write_compressed(tmp_path / "run", options(), random_state())
    with zipfile.ZipFile(folder / "compressed_model.zip") as zf:
        stream = bytearray(zf.read("feature_grid_1.sz"))
    if damage == "truncated":
        stream = stream[: len(stream) // 2]
    else:
        stream[20:60] = bytes(40)  # inside the payload; the 16-byte header and the stored config stay
    rewrite_member(folder / "compressed_model.zip", "feature_grid_1.sz", bytes(stream))
    with pytest.raises(ModelFileError, match=f"AMGSRN\\+\\+ folder '{folder}': compressed_model.zip/feature_grid_1"
                                             f".sz is not an SZ3 stream of 3x4x5x6 float32 values"):
        load_model(folder)


def test_a_missing_npy_is_named(tmp_path):
    folder, _ = write_compressed(tmp_path / "run", options(), random_state())
    rewrite_member(folder / "compressed_model.zip", "translations.npy")
    with pytest.raises(ModelFileError) as err:
        load_model(folder)
    assert str(err.value) == f"AMGSRN++ folder '{folder}': the state dict lacks ['translations']."


def test_a_grid_shape_that_disagrees_with_the_streams_is_refused(tmp_path):
    folder, _ = write_compressed(tmp_path / "run", options(feature_grid_shape="4,5,7"), random_state())
    with pytest.raises(ModelFileError, match="feature_grid_0.sz is not an SZ3 stream of 3x4x5x7 float32 values"):
        load_model(folder)


def test_a_checkpoint_grid_of_the_wrong_rank_or_count_is_refused(tmp_path):
    state = random_state()
    state["feature_grids"] = state["feature_grids"][:, :, 0]  # [G, F, H, W]: a 2-D grid
    with pytest.raises(ModelFileError, match=r"feature_grids has shape \(3, 2, 5, 6\), not \[G, F, D, H, W\]"):
        load_model(write_checkpoint(tmp_path / "a", options(), state))
    state = random_state()
    state["_scales"] = state["_scales"][:2]
    with pytest.raises(ModelFileError, match=r"_scales has shape \(2, 3\) but 3 grids need \(3, 3\)"):
        load_model(write_checkpoint(tmp_path / "b", options(), state))


def test_options_that_are_not_json_are_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "run", options(), random_state())
    (folder / "options.json").write_text("{'model': 'AMGSRN',")
    with pytest.raises(ModelFileError, match=f"options file '{folder}/options.json' is not readable JSON"):
        load_model(folder)


def test_a_folder_without_options_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "run", options(), random_state())
    (folder / "options.json").unlink()
    with pytest.raises(ModelFileError, match=f"AMGSRN\\+\\+ folder '{folder}' has no options.json"):
        load_model(folder)


def test_an_npy_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    folder, _ = write_compressed(tmp_path / "run", options(), random_state())
    header = np.lib.format.header_data_from_array_1_0(np.zeros((3, 3), dtype=np.float32))
    header["shape"] = (100_000, 100_000, 100_000)
    forged = io.BytesIO()
    np.lib.format.write_array_header_1_0(forged, header)
    rewrite_member(folder / "compressed_model.zip", "_scales.npy", forged.getvalue() + bytes(36))
    with pytest.raises(ModelFileError, match=r"_scales.npy declares shape \(100000, 100000, 100000\) "
                                             r"\(4,000,000,000,000,000 bytes\) but holds 36 bytes"):
        load_model(folder)


def test_huge_declared_grids_are_a_memory_error_before_decoding(tmp_path):
    folder, _ = write_compressed(tmp_path / "run", options(feature_grid_shape="100000,100000,1000"), random_state())
    with pytest.raises(MemoryError, match="the feature grids of compressed_model.zip"):
        load_model(folder)


def test_a_pickled_npy_is_refused(tmp_path):
    folder, _ = write_compressed(tmp_path / "run", options(), random_state())
    npy = io.BytesIO()
    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    rewrite_member(folder / "compressed_model.zip", "_scales.npy", npy.getvalue())
    with pytest.raises(ModelFileError, match="_scales.npy holds object values, not floats"):
        load_model(folder)


def test_without_pysz_sz3_grids_ask_for_it(tmp_path, monkeypatch):
    folder, _ = write_compressed(tmp_path / "run", options(), random_state())
    monkeypatch.setitem(sys.modules, "pysz", None)  # import pysz now raises ImportError
    with pytest.raises(ImportError, match="compressed_model.zip stores its feature grids with SZ3; reading them "
                                          "needs pysz: pip install pysz."):
        load_model(folder)


def test_a_padded_first_layer_is_refused(tmp_path):
    """requires_padded_feats widens the peer's first layer, but its forward never pads, so no such model runs."""
    state = random_state()
    state["decoder.0.linear.weight"] = torch.randn(WIDTH, 16)
    with pytest.raises(ModelFileError, match="decoder.0.linear.weight has 16 inputs but 3 grids x 2 features give 6 "
                                             r"\(AMGSRN\+\+ does not pad its features\)"):
        load_model(write_checkpoint(tmp_path / "run", options(requires_padded_feats=True), state))


def test_an_unsupported_model_name_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "run", options(model="NGP"), random_state())
    with pytest.raises(ModelFileError, match=f"AMGSRN\\+\\+ folder '{folder}' holds a 'NGP' model"):
        load_model(folder)
