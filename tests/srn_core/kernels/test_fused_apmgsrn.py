"""srn_core.kernels: the fused APMGSRN kernel gives what the PyTorch field gives, for every configuration, and
steps aside (None) where it cannot; evaluate() uses it on the CPU unless told not to."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import paraview_env
from srn_core.evaluate import evaluate, evaluate_image
from srn_core.fields import APMGSRN, APMGSRNConfig, EnsembleField, build_field
from srn_core.fields.ensemble import EnsembleConfig
from srn_core.kernels import fused_apmgsrn, fused_evaluator

pytest.importorskip("numba")

TOLERANCE = 1e-5
"""Largest allowed difference from the reference, relative to the value range."""


def random_apmgsrn(seed=0, value_range=(-2.0, 5.0), **config) -> APMGSRN:
    """An APMGSRN whose grids and decoder are random enough that every part of the computation shows."""
    torch.manual_seed(seed)
    config = {"n_grids": 16, "n_features": 1, "grid_shape": (11, 17, 14), "width": 32, **config}
    field = APMGSRN(APMGSRNConfig(**config), value_range)
    with torch.no_grad():
        field.feature_grids.uniform_(-1.0, 1.0)
        for layer in field.decoder.linears:
            layer.weight.mul_(1.5)
            if layer.bias is not None:
                layer.bias.uniform_(-0.3, 0.3)
        if field.decoder.linears[-1].bias is not None:
            field.decoder.linears[-1].bias.fill_(0.4)
    return field.eval()


def sample_points(n=20_000, seed=1) -> torch.Tensor:
    """Random points in and around the cube, plus its corners, faces, centre, far points and NaN."""
    g = torch.Generator().manual_seed(seed)
    pts = [torch.rand(n, 3, generator=g) * 3.0 - 1.5]
    corners = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    special = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.3, -0.2], [-1.0000001, 0.5, 0.5], [1e30, 0.0, 0.0],
                            [-1e30, 5.0, 0.0], [float("inf"), 0.0, 0.0], [float("nan"), 0.2, 0.1]])
    return torch.cat(pts + [corners, special]).contiguous()


def reference(field, points) -> torch.Tensor:
    with torch.inference_mode():
        return field(points)


def assert_agrees(field, points=None):
    points = sample_points() if points is None else points
    fast = fused_evaluator(field)
    assert fast is not None
    expected, got = reference(field, points), fast(points)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    span = float(field.value_range[1] - field.value_range[0])
    difference = (got - expected).abs().max().item() / span
    assert difference < TOLERANCE, difference
    return expected, got


CONFIGS = {
    "inia19-like": {},
    "two features": {"n_features": 2, "grid_shape": (9, 12, 10)},
    "four features, tiny grids": {"n_features": 4, "n_grids": 8, "grid_shape": (2, 3, 2), "width": 16},
    "input padding": {"input_padding": 16},
    "biases": {"use_bias": True},
    "wide, three hidden layers": {"width": 64, "n_hidden_layers": 3, "grid_shape": (32, 32, 32)},
    "one hidden layer": {"n_hidden_layers": 1, "grid_shape": (5, 40, 3)},
    "width not a multiple of 16": {"width": 24, "use_bias": True, "n_features": 2},
    "three vectors wide": {"width": 48, "n_grids": 5},
    "small scattered grids": {"grid_initialization": "small", "n_grids": 7, "width": 8},
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_fused_equals_the_reference(config):
    field = random_apmgsrn(**config)
    assert_agrees(field)
    field.clamp_output = False
    expected, _ = assert_agrees(field)
    assert expected.std() > 0.01 * float(field.value_range[1] - field.value_range[0])  # the test can tell


def test_without_clamping_values_outside_the_range_agree_too():
    field = random_apmgsrn(value_range=(0.0, 0.1), use_bias=True)
    field.clamp_output = False
    expected, got = assert_agrees(field)
    assert (expected > 0.1).any() and (expected < 0.0).any()
    field.clamp_output = True  # read at every call
    expected, got = assert_agrees(field)
    assert float(got.min()) == 0.0 and float(got.max()) == pytest.approx(0.1)


def test_the_trained_model_agrees_and_evaluate_uses_the_kernel(trained_model):
    _, model = trained_model
    field = model.field
    points = sample_points()
    expected, got = assert_agrees(field, points)
    assert torch.equal(evaluate(field, points, chunk_size=4096), got)  # chunking changes nothing
    assert torch.equal(evaluate(field, points, fused=False), expected)
    image = evaluate_image(field, model.geometry, model.bounds)
    reference_image = evaluate_image(field, model.geometry, model.bounds, fused=False)
    span = float(field.value_range[1] - field.value_range[0])
    assert np.abs(image - reference_image).max() / span < TOLERANCE
    assert not np.array_equal(image, reference_image)  # it did take the other path


def test_an_ensemble_of_apmgsrn_bricks_agrees():
    bricks = [random_apmgsrn(seed=k, value_range=(k, 2.0 + k), grid_shape=(5 + k, 6, 7)) for k in range(4)]
    bounds = [[-1.0, 0.1, -1.0, 1.0, -1.0, 0.1], [-0.1, 1.0, -1.0, 1.0, -1.0, 0.1],
              [-1.0, 0.1, -1.0, 1.0, -0.1, 1.0], [-0.1, 1.0, -1.0, 1.0, -0.1, 1.0]]
    config = EnsembleConfig(grid=(2, 1, 2), brick_architecture="apmgsrn",
                            brick_configs=[b.config_dict() for b in bricks], brick_bounds=bounds)
    field = EnsembleField(config, bricks=bricks).eval()
    assert isinstance(fused_evaluator(field), fused_apmgsrn.FusedEnsemble)
    assert_agrees(field)
    field.clamp_output = False
    assert_agrees(field)


def test_weights_are_repacked_after_any_parameter_change():
    field = random_apmgsrn()
    fast = fused_evaluator(field)
    points = sample_points(2000)
    before = fast(points)
    with torch.no_grad():
        field.feature_grids.mul_(-1.0)  # an in-place change, as an optimiser step makes
    after = fast(points)
    assert (after - before).abs().max() > 0.1
    assert_agrees(field, points)
    with torch.no_grad():
        field.decoder.linears[1].weight.add_(0.2)
        field.transforms[:, :3, 3] += 0.1
    assert_agrees(field, points)
    field.feature_grids = torch.nn.Parameter(field.feature_grids.detach() * 0.5)  # a new parameter object
    assert_agrees(field, points)
    field.decoder.linears[0].weight.data = field.decoder.linears[0].weight.data * 2.0  # new storage, same object
    assert_agrees(field, points)
    other = random_apmgsrn(seed=5)
    field.load_state_dict(other.state_dict())  # weights and value range of another model
    assert torch.allclose(fast(points), reference(other, points), atol=TOLERANCE * 7)
    assert fused_evaluator(field) is fast  # one evaluator per field, kept while the field lives


def test_srn_fused_0_turns_the_kernel_off_everywhere(monkeypatch):
    field = random_apmgsrn()
    points = sample_points(3000)
    assert not torch.equal(evaluate(field, points), reference(field, points))
    monkeypatch.setenv("SRN_FUSED", "0")
    assert fused_evaluator(field) is None
    assert torch.equal(evaluate(field, points), reference(field, points))


def test_unsupported_fields_get_none():
    from srn_core.render.volume import grid_field

    assert fused_evaluator(build_field("siren", {"width": 16, "n_layers": 2})) is None
    assert fused_evaluator(build_field("fvsrn")) is None
    assert fused_evaluator(grid_field(torch.zeros(3, 4, 5))) is None
    assert fused_evaluator(lambda p: p[:, 0]) is None
    assert fused_evaluator(random_apmgsrn(width=128)) is None  # wider than the register tile
    assert fused_evaluator(random_apmgsrn().double()) is None


def test_bad_points_are_refused_with_one_sentence():
    field = random_apmgsrn()  # the evaluator holds its field weakly: keep it alive
    fast = fused_evaluator(field)
    with pytest.raises(ValueError, match="points must be a tensor of shape"):
        fast(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="points must be float32 on the CPU"):
        fast(torch.zeros(5, 3, dtype=torch.float64))
    assert fast(torch.zeros(0, 3)).shape == (0,)


def test_a_missing_numba_is_reported_once_and_pytorch_runs(monkeypatch):
    monkeypatch.setattr(fused_apmgsrn, "_KERNEL", None)
    monkeypatch.setattr(fused_apmgsrn, "_KERNEL_ERROR", ModuleNotFoundError("No module named 'numba'", name="numba"))
    monkeypatch.setattr(fused_apmgsrn, "_WARNED", False)
    field = random_apmgsrn()
    with pytest.warns(RuntimeWarning, match=r"pip install numba"):
        assert fused_evaluator(field) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused_evaluator(field) is None  # said once per process
        points = sample_points(100)
        assert torch.equal(evaluate(field, points), reference(field, points))


def test_a_kernel_that_fails_to_compile_is_reported_once_and_pytorch_runs(monkeypatch):
    field = random_apmgsrn(width=8)
    fast = fused_evaluator(field)
    module = fused_apmgsrn._kernel()
    for name in ("_KERNEL", "_KERNEL_ERROR", "_WARNED"):  # restored after the test
        monkeypatch.setattr(fused_apmgsrn, name, getattr(fused_apmgsrn, name))
    monkeypatch.setattr(fused_apmgsrn, "_COMPILED_WIDTHS", set())

    def broken(width):
        raise RuntimeError("LLVM ERROR: cannot select")

    monkeypatch.setattr(module, "kernel_for_width", broken)
    points = sample_points(500)
    with pytest.warns(RuntimeWarning, match="LLVM ERROR: cannot select"):
        values = fast(points)
    assert torch.equal(values, reference(field, points))
    assert fused_evaluator(field) is None
    assert torch.equal(evaluate(field, points), reference(field, points))


def test_importing_the_core_does_not_import_numba():
    code = "import sys, srn_core.evaluate, srn_core.kernels, srn_core.render; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(paraview_env.REPO))
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


PV_SCRIPT = textwrap.dedent("""\
    import json, sys, warnings
    import numpy, torch
    from srn_core.fields import APMGSRN, APMGSRNConfig
    from srn_core.kernels import fused_evaluator
    torch.manual_seed(0)
    field = APMGSRN(APMGSRNConfig(n_grids=16, n_features=2, grid_shape=(9, 12, 10), width=32), (-2.0, 5.0))
    with torch.no_grad():
        field.feature_grids.uniform_(-1.0, 1.0)
    points = torch.rand(50000, 3, generator=torch.Generator().manual_seed(1)) * 3 - 1.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = fused_evaluator(field)
    with torch.inference_mode():
        expected = field(points)
    import numba
    print(json.dumps({"numpy": numpy.__version__, "numba": numba.__version__, "fused": fast is not None,
                      "difference": float((fast(points) - expected).abs().max()) if fast else None,
                      "layer": numba.threading_layer(), "warnings": [str(w.message) for w in caught]}))
""")


@pytest.mark.paraview
def test_the_kernel_works_in_pvpython_next_to_debians_numpy(tmp_path, pv_env):
    script = tmp_path / "fused.py"
    script.write_text(PV_SCRIPT)
    result = paraview_env.run([paraview_env.find("pvpython"), str(script)], pv_env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["numpy"].startswith("1."), report  # Debian's numpy, not the venv's
    assert report["fused"] and report["difference"] < TOLERANCE * 7, report
    assert report["warnings"] == [], report


def test_signals_during_compilation_are_held_and_delivered_after():
    """A Ctrl-C inside LLVM's callbacks would be swallowed by ctypes (and the interrupt lost): it is held instead."""
    import os
    import signal

    from srn_core.kernels.fused_apmgsrn import _signals_held

    received = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        with _signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # give the interpreter bytecode boundaries at which a handler would run
                pass
            assert received == []
        assert received == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
