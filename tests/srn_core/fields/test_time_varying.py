"""srn_core.fields.time_varying: key-frame grids interpolated linearly in time around one shared base field."""

import dataclasses

import pytest
import torch

from srn_core.evaluate import evaluate
from srn_core.fields import TimeVaryingField, build_field
from srn_core.fields.time_varying import TimeVaryingConfig

KEY_TIMES = [0.0, 1.0, 3.0]


def field(seed=0) -> TimeVaryingField:
    base = {"n_grids": 4, "n_features": 2, "grid_shape": [5, 6, 7], "width": 16}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        f = TimeVaryingField(TimeVaryingConfig("apmgsrn", base, KEY_TIMES), (-2.0, 3.0))
        with torch.no_grad():  # frames that differ, as after training
            f.frames["feature_grids"].normal_(0, 0.5)
    return f.eval()


def test_state_holds_the_shared_base_once_and_one_grid_per_key_frame():
    f = field()
    shapes = {k: tuple(v.shape) for k, v in f.state_dict().items()}
    assert shapes["frames.feature_grids"] == (3, 4, 2, 5, 6, 7)
    assert "base.feature_grids" not in shapes and shapes["base.transforms"] == (4, 4, 4)
    decoder = sum(v.numel() for k, v in f.state_dict().items() if k.startswith("base.decoder"))
    assert f.num_parameters() == 3 * 4 * 2 * 5 * 6 * 7 + 4 * 16 + decoder


@pytest.mark.parametrize("t, k0, k1, w", [(-1.0, 0, 0, 0.0), (0.0, 0, 0, 0.0), (0.25, 0, 1, 0.25), (1.0, 1, 2, 0.0),
                                          (2.5, 1, 2, 0.75), (3.0, 2, 2, 0.0), (7.0, 2, 2, 0.0)])
def test_a_time_blends_its_two_neighbouring_key_frames(t, k0, k1, w):
    assert field().blend(t) == (k0, k1, pytest.approx(w))


def test_a_frame_is_the_static_base_field_with_interpolated_grids():
    f = field()
    points = torch.rand(500, 3) * 2 - 1
    frames = f.frames["feature_grids"].detach()
    static = f.frame(2.5)
    assert static.architecture == "apmgsrn"
    torch.testing.assert_close(static.feature_grids, 0.25 * frames[1] + 0.75 * frames[2], rtol=0, atol=1e-6)
    with torch.no_grad():
        lo, hi = -2.0, 3.0
        torch.testing.assert_close(static(points), (f.normalized_at(points, 2.5) * (hi - lo) + lo).clamp(lo, hi))
        # At a key frame the frame is that key frame's grids exactly.
        assert torch.equal(f.frame(1.0).feature_grids, frames[1])
    # The fused kernel answers for a frame as for any APMGSRN, to float rounding.
    torch.testing.assert_close(evaluate(static, points, fused=True), evaluate(static, points, fused=False),
                               rtol=0, atol=5e-6 * (hi - lo))


def test_a_frame_is_a_copy_that_training_does_not_change():
    f = field()
    static = f.frame(0.5)
    before = static.feature_grids.clone()
    with torch.no_grad():
        f.frames["feature_grids"].add_(1.0)
    assert torch.equal(static.feature_grids, before) and not static.feature_grids.requires_grad


def test_gradients_reach_only_the_two_key_frames_around_the_time():
    f = field().train()
    f.normalized_at(torch.rand(256, 3) * 2 - 1, 0.25).sum().backward()
    grad = f.frames["feature_grids"].grad
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0 and grad[2].abs().sum() == 0
    # The ratio of the two frames' gradients is the blend weight's: (1 - w) / w = 3.
    torch.testing.assert_close(grad[0], 3 * grad[1], rtol=1e-4, atol=1e-9)


def test_the_model_file_config_builds_the_same_field():
    f = field()
    again = build_field("time_varying", dataclasses.asdict(f.config), (-2.0, 3.0))
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in f.state_dict().items()}


def test_a_field_without_a_time_says_how_to_give_one():
    with pytest.raises(TypeError, match=r"needs a time: use normalized_at\(points, t\) or frame\(t\)"):
        field().normalized(torch.zeros(1, 3))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="key_times must be strictly increasing, got \\[0.0, 2.0, 1.0\\]"):
        TimeVaryingConfig("apmgsrn", {}, [0, 2, 1])
    with pytest.raises(ValueError, match="needs at least one key frame time"):
        TimeVaryingConfig("apmgsrn", {}, [])
    with pytest.raises(ValueError, match="needs a grid architecture as its base .* got 'siren'"):
        TimeVaryingField(TimeVaryingConfig("siren", {}, [0.0, 1.0]))


@pytest.mark.parametrize("budget, frames", [(20_000, 4), (200_000, 15), (5_000, 2)])
def test_budgets_count_the_shared_decoder_once_and_the_grids_per_frame(budget, frames):
    config = TimeVaryingField.config_for("apmgsrn", budget, (5, 144, 192), [float(i) for i in range(frames)])
    n = TimeVaryingField(config).num_parameters()
    assert 0.8 * budget <= n <= budget, (budget, frames, n)
