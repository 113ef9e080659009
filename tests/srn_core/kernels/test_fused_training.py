"""srn_core.kernels.fused_training: the compiled training kernels against the PyTorch reference path (forward and
gradients to 1e-5, float64 gradcheck), and training on them against training on the reference."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import paraview_env
from core_samples import analytic_volume
from srn_core.fields import APMGSRN, APMGSRNConfig
from srn_core.fields.apmgsrn import density_kl
from srn_core.kernels import fused_training
from srn_core.kernels.fused_training import (FusedDensity, FusedLookup, fused_encode, fused_feature_density,
                                             fused_training_supported, trilinear_border)
from srn_core.training import STEP_PHASES, TrainConfig, _TrainState, train


def _field(seed=0, **kw) -> APMGSRN:
    config = dict(n_grids=4, n_features=2, grid_shape=(5, 7, 6), width=16, grid_initialization="small")
    config.update(kw)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        field = APMGSRN(APMGSRNConfig(**config))
        with torch.no_grad():
            field.feature_grids.normal_()
            field.transforms[:, :3, :] += torch.randn(field.config.n_grids, 3, 4) * 0.2  # sheared, rotated
    return field


def _points(n, seed=1, spread=1.3) -> torch.Tensor:
    """Points of the model cube and beyond it (grids' zero padding and edges)."""
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * spread


@pytest.mark.parametrize("n_features,grid_shape", [(1, (4, 4, 4)), (2, (5, 7, 6)), (4, (9, 3, 11))])
def test_lookups_and_their_gradient_equal_the_reference(n_features, grid_shape):
    field = _field(n_features=n_features, grid_shape=grid_shape)
    points = _points(5000)
    expected = field.encode(points)
    fused = fused_encode(field, points)
    assert fused.shape == expected.shape and fused.dtype == torch.float32
    scale = float(expected.detach().abs().max())
    assert float((fused - expected).detach().abs().max()) <= 1e-5 * scale
    upstream = torch.randn_like(expected)
    (g_ref,) = torch.autograd.grad(expected, field.feature_grids, upstream)
    (g_fused,) = torch.autograd.grad(fused, field.feature_grids, upstream)
    assert float((g_fused - g_ref).abs().max()) <= 1e-5 * float(g_ref.abs().max())
    # The transforms get no gradient from the lookups, as in the reference (only the density loss moves them).
    again = fused_encode(field, points)
    assert torch.autograd.grad(again.sum(), field.transforms, allow_unused=True)[0] is None


def test_lookup_gradient_is_the_adjoint_of_the_lookup_in_float64():
    field = _field(grid_shape=(3, 4, 3)).double()
    points = _points(40, spread=1.2).double()
    grids = field.feature_grids.detach().clone().requires_grad_()
    transforms = field.transforms.detach()
    assert torch.autograd.gradcheck(lambda g: FusedLookup.apply(points, transforms, g), (grids,), atol=1e-5)


def test_feature_density_and_its_gradient_equal_the_reference():
    field = _field(grid_initialization="default")
    points = _points(5000, spread=1.0)
    expected = field.feature_density(points)
    fused = fused_feature_density(field, points)
    assert float((fused - expected).detach().abs().max()) <= 1e-5 * float(expected.detach().abs().max())
    err = torch.rand(5000, generator=torch.Generator().manual_seed(3))
    (g_ref,) = torch.autograd.grad(density_kl(expected, err), field.transforms)
    (g_fused,) = torch.autograd.grad(density_kl(fused, err), field.transforms)
    assert float((g_fused - g_ref).abs().max()) <= 1e-5 * float(g_ref.abs().max())
    assert float(g_ref.abs().max()) > 0


def test_feature_density_gradient_in_float64():
    transforms = _field(n_grids=3).transforms.detach().double().clone().requires_grad_()
    points = _points(30, spread=0.6).double()

    def density(t):  # a lower exponent than the default 20 keeps the float64 finite differences well scaled
        weights = torch.linalg.det(t[:, :3, :3]) / (2 * math.pi) ** 1.5
        return FusedDensity.apply(points, t, weights, 4)

    assert torch.autograd.gradcheck(density, (transforms,), atol=1e-5)


def test_ground_truth_equals_grid_sample_with_border_padding():
    values = np.random.default_rng(0).random((9, 12, 7)).astype(np.float32)
    values[4, 5, 3] = np.nan  # NaN voxels poison the values that read them, as in grid_sample
    points = _points(20000, spread=1.2)
    expected = F.grid_sample(torch.from_numpy(values)[None, None], points.view(1, 1, 1, -1, 3), mode="bilinear",
                             padding_mode="border", align_corners=True).view(-1)
    fused = trilinear_border(values, points)
    assert torch.equal(torch.isnan(fused), torch.isnan(expected)) and int(torch.isnan(fused).sum()) > 0
    finite = ~torch.isnan(expected)
    assert float((fused - expected)[finite].abs().max()) <= 1e-6


def test_training_on_the_fused_path_reaches_the_reference_psnr_at_equal_steps():
    volume = analytic_volume()
    results = {}
    for fused in (True, False):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            field = APMGSRN(APMGSRNConfig(n_grids=8, n_features=2, grid_shape=(8, 8, 8), width=32))
        config = TrainConfig(steps=400, batch_size=8192, device="cpu", density_start=100, fused=fused)
        results[fused] = train(volume, field, config)
    fast, reference = results[True], results[False]
    assert fast.steps == reference.steps == 400
    assert reference.psnr > 30, reference.psnr
    assert abs(fast.psnr - reference.psnr) <= 0.1, (fast.psnr, reference.psnr)
    # Both moved the transforms, by nearly the same amount.
    moved = [(r.model.field.transforms - _initial_transforms()).detach().abs().max() for r in (fast, reference)]
    assert float(moved[0]) > 1e-3 and float(moved[1]) > 1e-3
    assert float((fast.model.field.transforms - reference.model.field.transforms).detach().abs().max()) < 0.1 * float(moved[1])


def _initial_transforms() -> torch.Tensor:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return APMGSRN(APMGSRNConfig(n_grids=8, n_features=2, grid_shape=(8, 8, 8), width=32)).transforms.detach()


def test_the_fused_path_is_used_where_it_applies_and_srn_fused_0_turns_it_off(monkeypatch):
    volume = analytic_volume()
    state = _TrainState(volume, _field(), TrainConfig(steps=10, batch_size=256, lr=0.01), torch.device("cpu"))
    assert state.fused_field and state.fused_targets is not None
    assert state.optimizer.param_groups[0]["fused"] is True and state.aux_optimizer.param_groups[0]["fused"] is True
    reference = _TrainState(volume, _field(), TrainConfig(steps=10, batch_size=256, lr=0.01, fused=False), torch.device("cpu"))
    assert not reference.fused_field and reference.fused_targets is None
    assert not reference.optimizer.param_groups[0]["fused"]
    monkeypatch.setenv("SRN_FUSED", "0")
    assert not fused_training_supported(_field())
    off = _TrainState(volume, _field(), TrainConfig(steps=10, batch_size=256, lr=0.01), torch.device("cpu"))
    assert not off.fused_field and off.fused_targets is None


def test_a_float64_or_subclassed_field_trains_on_the_reference_path():
    assert fused_training_supported(_field())
    assert not fused_training_supported(_field().double())

    class Custom(APMGSRN):
        pass

    assert not fused_training_supported(Custom(APMGSRNConfig(n_grids=2, grid_shape=(3, 3, 3), width=8)))


def test_the_profile_adds_up_to_the_training_time():
    volume = analytic_volume()
    result = train(volume, _field(), TrainConfig(steps=60, batch_size=2048, density_start=10))
    assert set(result.profile) == set(STEP_PHASES)
    total = sum(result.profile.values())
    assert total == pytest.approx(result.seconds, rel=0.02)
    for phase in ("points", "ground truth", "feature lookups", "decoder", "backward", "optimizer", "density loss"):
        assert result.profile[phase] > 0, phase


def test_kernels_leave_torchs_thread_count_alone():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        field = _field()
        fused_encode(field, _points(3000)).sum().backward()
        fused_feature_density(field, _points(3000)).sum().backward()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_warm_up_compiles_without_touching_any_state():
    before = torch.random.get_rng_state()
    fused_training.warm_up(20)
    assert torch.equal(before, torch.random.get_rng_state())


def test_kernels_that_cannot_be_cached_fall_back_to_the_reference_path_with_one_warning(tmp_path):
    # A file size limit (or a full disk) makes numba's cache write fail on the first compile: training goes on
    # on the PyTorch path and says so, instead of failing (seen under pvpython with RLIMIT_FSIZE).
    code = textwrap.dedent("""
        import json, resource, signal, warnings
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
        from core_samples import analytic_volume
        from srn_core.training import TrainConfig, fit
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit(analytic_volume(), "apmgsrn", 5000, TrainConfig(steps=5, batch_size=1024, device="cpu"))
        print(json.dumps({"steps": result.steps, "psnr": result.psnr,
                          "warnings": [str(w.message) for w in caught if "training kernels" in str(w.message)]}))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join(
        [str(paraview_env.REPO), str(paraview_env.REPO / "tests")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["steps"] == 5 and report["psnr"] > 0
    assert len(report["warnings"]) == 1 and "File too large" in report["warnings"][0], report["warnings"]
