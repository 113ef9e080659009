"""Core: geometry and index order, chunked evaluation, the model file, training (determinism, resume, PSNR)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from srn_core.data import Volume
from srn_core.evaluate import evaluate, evaluate_image
from srn_core.fields import APMGSRN, APMGSRNConfig, field_for_budget
from srn_core.geometry import ImageGeometry, extent_points, world_to_model
from srn_core.model import NeuralVolume, load_model
from srn_core.modelfile import ModelFileError
from srn_core.training import TrainConfig, TrainingInterrupted, train


def analytic_volume(dims=(20, 16, 12), origin=(1.0, -2.0, 0.5), spacing=(0.5, 1.0, 2.0)) -> Volume:
    """A smooth field with an exact value at every point, on a non-cubic, non-unit image."""
    g = ImageGeometry(dims, origin, spacing)
    b = g.bounds
    z, y, x = np.meshgrid(*[np.linspace(b[2 * a], b[2 * a + 1], g.dims[a]) for a in (2, 1, 0)], indexing="ij")
    u = [(c - b[2 * a]) / (b[2 * a + 1] - b[2 * a]) for a, c in enumerate((x, y, z))]
    values = np.sin(2.5 * u[0]) * np.cos(1.5 * u[1]) + 0.5 * u[2]
    return Volume(values.astype(np.float32), g, "wave")


def small_model(seed=0) -> NeuralVolume:
    torch.manual_seed(seed)
    field = APMGSRN(APMGSRNConfig(n_grids=4, n_features=2, grid_shape=(5, 6, 7), width=16), value_range=(-1.0, 3.0))
    with torch.no_grad():
        field.feature_grids.normal_(0, 1.0)
    return NeuralVolume(field.eval(), ImageGeometry((20, 16, 12), (1.0, -2.0, 0.5), (0.5, 1.0, 2.0)), "wave")


# ---- geometry -----------------------------------------------------------------------------------

def test_extent_points_follow_vtk_order_and_world_coordinates():
    g = ImageGeometry((3, 2, 2), (10.0, 20.0, 30.0), (1.0, 2.0, 4.0))
    pts = extent_points(g)
    assert pts.shape == (12, 3)
    assert pts[0].tolist() == [10, 20, 30]
    assert pts[1].tolist() == [11, 20, 30]       # x fastest
    assert pts[3].tolist() == [10, 22, 30]       # then y
    assert pts[6].tolist() == [10, 20, 34]       # then z
    assert pts[-1].tolist() == [12, 22, 34]
    cube = extent_points(g, model_bounds=g.bounds)
    assert cube.min().item() == -1.0 and cube.max().item() == 1.0
    assert torch.allclose(world_to_model(pts, g.bounds), cube)
    rows = extent_points(g, (1, 2, 0, 1, 1, 1), start=1, stop=3)
    assert rows.tolist() == [[12, 20, 34], [11, 22, 34]]


def test_from_bounds_and_bad_geometry_messages():
    g = ImageGeometry.from_bounds((0, 10, -1, 1, 5, 5), (11, 3, 1))
    assert g.spacing == (1.0, 1.0, 1.0) and g.origin == (0.0, -1.0, 5.0) and g.bounds == (0, 10, -1, 1, 5, 5)
    with pytest.raises(ValueError, match=r"dims must be three positive integers, got \(0, 3, 3\)"):
        ImageGeometry.from_bounds((0, 1, 0, 1, 0, 1), (0, 3, 3))
    with pytest.raises(ValueError, match=r"-4"):
        ImageGeometry.from_bounds((0, 1, 0, 1, 0, 1), (2, -4, 3))
    with pytest.raises(ValueError, match="inverted on y: ymin=2.0 > ymax=1.0"):
        ImageGeometry.from_bounds((0, 1, 2, 1, 0, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="spacing"):
        ImageGeometry((2, 2, 2), spacing=(1, 0, 1))


# ---- evaluation ----------------------------------------------------------------------------------

def test_chunked_evaluation_equals_unchunked():
    model = small_model()
    pts = torch.rand(5000, 3) * 2 - 1
    with torch.inference_mode():
        whole = model.field(pts)
    # Equal up to float32 rounding: BLAS blocks a matrix product differently for different batch sizes.
    for chunk in (1, 7, 999, 4096, 10_000):
        assert (evaluate(model.field, pts, chunk) - whole).abs().max() < 1e-5  # range 4: 2.5e-6 relative
    image = model.resample(chunk_size=1 << 20)
    for chunk in (1000, 333):
        assert np.abs(model.resample(chunk_size=chunk) - image).max() < 1e-5


def test_resampled_sub_extents_equal_crops_of_the_whole():
    model = small_model()
    g = model.geometry
    whole = model.resample(g)
    assert whole.shape == (12, 16, 20) and whole.dtype == np.float32
    for e in [(0, 19, 0, 15, 0, 11), (3, 9, 0, 15, 2, 2), (19, 19, 5, 6, 0, 11), (0, 9, 8, 15, 6, 11)]:
        piece = model.resample(g, extent=e, chunk_size=97)
        assert piece.shape == (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
        assert np.abs(piece - whole[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1]).max() < 1e-5, e
    # The same points asked for through a different geometry (a sub-box at the same spacing) agree too.
    sub = g.sub_geometry((3, 9, 0, 15, 2, 2))
    assert np.allclose(model.resample(sub), whole[2:3, :, 3:10], atol=1e-6)


def test_resample_any_resolution_and_outside_policies():
    model = small_model()
    b = model.bounds
    # A finer grid over the same box: its corner points are the model's corner points.
    fine = model.resample(ImageGeometry.from_bounds(b, (39, 31, 23)))
    coarse = model.resample()
    assert np.allclose(fine[::2, ::2, ::2], coarse, atol=1e-5)
    # A box twice as wide as the model: outside points follow the policy.
    wide = (b[0] - 10, b[1], b[2], b[3], b[4], b[5])
    geo = ImageGeometry.from_bounds(wide, (41, 16, 12))
    inside = geo.dims[0] - 20  # points with x >= b[0]
    nan = model.resample(geo, outside="nan")
    assert np.isnan(nan[:, :, :inside - 1]).all() and np.isfinite(nan[:, :, inside:]).all()
    fill = model.resample(geo, outside="fill", fill_value=-7.0)
    assert (fill[:, :, :inside - 1] == -7.0).all()
    clamp = model.resample(geo)
    assert np.allclose(clamp[:, :, 0], coarse[:, :, 0], atol=1e-6)  # border extension
    with pytest.raises(ValueError, match="outside must be one of"):
        model.resample(geo, outside="wrap")
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        model.resample(chunk_size=0)


def test_evaluate_image_peak_memory_is_bounded_by_the_chunk_size():
    # The chunked path never materialises all points: a 200^3 image with chunk 4096 allocates only the
    # output array plus small chunks (tracked by the points generated per call).
    calls = []
    def field(p):
        calls.append(p.shape[0])
        return p[:, 0]
    g = ImageGeometry((200, 200, 200))
    out = evaluate_image(field, g, g.bounds, chunk_size=4096)
    assert max(calls) == 4096 and sum(calls) == 200 ** 3
    assert out[0, 0, 199] == 1.0 and out[5, 7, 0] == -1.0


# ---- the model file -------------------------------------------------------------------------------

def test_model_file_round_trip_is_bit_exact(tmp_path):
    model = small_model()
    model.training = {"steps": 3, "psnr": 12.5}
    path = tmp_path / "m.srn"
    model.save(path)
    loaded = load_model(path)
    pts = torch.rand(3000, 3) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(loaded.field(pts), model.field(pts))
    assert loaded.geometry == model.geometry and loaded.array_name == "wave"
    assert loaded.value_range == (-1.0, 3.0) and loaded.training == {"steps": 3, "psnr": 12.5}
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["neural_volume"])
    assert meta["format"] == "neural-volume" and meta["architecture"] == "apmgsrn"
    assert meta["config"]["grid_shape"] == [5, 6, 7] and meta["geometry"]["spacing"] == [0.5, 1.0, 2.0]
    assert [f for f in os.listdir(tmp_path)] == ["m.srn"]  # no temporary file left behind


def test_bad_model_files_give_one_clear_error(tmp_path):
    model = small_model()
    good = tmp_path / "good.srn"
    model.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.srn").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.srn").write_bytes(b"\x00" * 64)
    for name, pattern in [("missing.srn", "does not exist"), ("trunc.srn", "truncated or not a safetensors"),
                          ("junk.srn", "truncated or not a safetensors")]:
        with pytest.raises((ModelFileError, FileNotFoundError), match=pattern):
            load_model(tmp_path / name)
    from safetensors.torch import save_file
    save_file({"x": torch.ones(2)}, str(tmp_path / "foreign.srn"))
    with pytest.raises(ModelFileError, match="without neural-volume metadata"):
        load_model(tmp_path / "foreign.srn")


def test_failed_write_leaves_no_partial_file(tmp_path):
    model = small_model()
    target = tmp_path / "m.srn"
    model.save(target)
    before = target.read_bytes()
    bad = NeuralVolume(model.field, model.geometry, "wave", training={"not_json": object()})
    with pytest.raises(TypeError):
        bad.save(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["m.srn"]


# ---- training --------------------------------------------------------------------------------------

def _fit(seed=0, steps=150, **kw):
    vol = analytic_volume()
    torch.manual_seed(seed)
    field = APMGSRN(APMGSRNConfig(n_grids=4, n_features=2, grid_shape=(6, 6, 6), width=32))
    cfg = TrainConfig(steps=steps, batch_size=4096, seed=seed, device="cpu", density_start=20, **kw)
    return vol, field, cfg


def test_training_is_deterministic_and_reaches_a_psnr_floor():
    vol, field, cfg = _fit()
    a = train(vol, field, cfg)
    vol, field, cfg = _fit()
    b = train(vol, field, cfg)
    assert a.psnr == b.psnr
    for (ka, va), (kb, vb) in zip(a.model.field.state_dict().items(), b.model.field.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert a.psnr > 30.0, a.psnr  # measured 33-35 dB at 150 steps on this analytic field
    assert a.model.training["data_sha256"] == vol.checksum() and a.model.training["steps"] == 150
    # The transforms moved (density loss on) and the value range is the data's.
    assert not torch.allclose(a.model.field.transforms, _fit()[1].transforms)
    assert a.model.value_range == pytest.approx(vol.value_range)


def test_interrupted_training_resumes_to_the_same_model(tmp_path):
    vol, field, cfg = _fit(steps=120)
    straight = train(vol, field, cfg)
    ck = tmp_path / "run.checkpoint"
    vol, field, cfg = _fit(steps=120)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 50"):
        train(vol, field, cfg, checkpoint=ck, callback=lambda p: p.step >= 50, callback_every=50)
    assert ck.exists()
    vol, fresh, cfg = _fit(steps=120, )
    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    resumed = train(vol, APMGSRN(fresh.config), cfg, checkpoint=ck, resume=True)
    assert resumed.steps == 120 and resumed.psnr == straight.psnr
    for k, v in straight.model.field.state_dict().items():
        assert torch.equal(v, resumed.model.field.state_dict()[k]), k
    assert not ck.exists()  # the finished model supersedes the checkpoint


def test_masked_nonfinite_voxels_are_excluded():
    vol = analytic_volume()
    values = vol.values.copy()
    values[0, :4, :4] = np.nan
    values[3, 3, 3] = np.inf
    with pytest.raises(ValueError, match="17 non-finite values"):
        Volume(values, vol.geometry, "wave")
    masked = Volume(values, vol.geometry, "wave", mask_nonfinite=True)
    assert masked.finite_mask.sum() == values.size - 17
    torch.manual_seed(0)
    field = APMGSRN(APMGSRNConfig(n_grids=4, n_features=2, grid_shape=(6, 6, 6), width=32))
    r = train(masked, field, TrainConfig(steps=120, batch_size=4096, device="cpu"))
    assert np.isfinite(r.psnr) and r.psnr > 25


@pytest.mark.parametrize("architecture", ["apmgsrn", "fvsrn", "ngp", "siren"])
def test_budget_derives_a_configuration_close_to_the_target(architecture):
    field = field_for_budget(architecture, 44_000, (128, 206, 168))
    assert 0.8 * 44_000 <= field.num_parameters() <= 1.02 * 44_000


def test_srn_core_never_imports_vtk_or_paraview():
    code = ("import sys, srn_core.model, srn_core.training, srn_core.data, srn_core.evaluate, srn_core.metrics, "
            "srn_core.peers\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('vtk', 'vtkmodules', 'paraview')]\n"
            "assert not bad, bad\nprint('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr
