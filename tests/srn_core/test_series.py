"""srn_core.series and time-varying training: a series is checked step against step, a time-varying model learns an
analytic field that is known at every time (stored steps and between them), resumes exactly and keeps its time
steps through the model file (float32 and compressed)."""

import math

import numpy as np
import pytest
import torch

from srn_core.compression import Compression
from srn_core.data import Volume
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from srn_core.metrics import psnr
from srn_core.modelfile import ModelFileError, load_tensors, save_tensors
from srn_core.series import TimeSeries, parse_time_selection, series_psnr
from srn_core.training import TrainConfig, TrainingInterrupted, fit, key_times_for

GEOMETRY = ImageGeometry((20, 16, 12), (1.0, -2.0, 0.5), (0.5, 1.0, 2.0))
TIMES = [0.0, 1.0, 2.5, 4.0]


def field_at(t: float) -> np.ndarray:
    """An analytic field linear in time: the key frames' linear interpolation can be exact between steps."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in GEOMETRY.shape], indexing="ij")
    return (np.sin(2.5 * x) * np.cos(2 * y) + 0.5 * z + t * (0.3 * x * y + 0.2 * np.cos(3 * z))).astype(np.float32)


def series(times=TIMES) -> TimeSeries:
    return TimeSeries([Volume(field_at(t), GEOMETRY, "v") for t in times], times, "hours")


def train_series(steps=400, **kw):
    config = TrainConfig(steps=steps, batch_size=8192, seed=3, device="cpu", density_start=50, **kw)
    return fit(series(), "apmgsrn", 12_000, config)


@pytest.fixture(scope="module")
def trained():
    return train_series()


# ---- the series ------------------------------------------------------------------------------------

def test_a_series_reports_its_range_over_all_steps_and_selects_steps():
    s = series()
    lo = min(float(field_at(t).min()) for t in TIMES)
    hi = max(float(field_at(t).max()) for t in TIMES)
    assert s.value_range == pytest.approx((lo, hi))
    assert len(s) == 4 and s.geometry == GEOMETRY and s.name == "v"
    picked = s.select([0, 2])
    assert picked.times == [0.0, 2.5] and picked.steps[1] is s.steps[2]
    assert s.checksum() != picked.checksum() and s.checksum() == series().checksum()


@pytest.mark.parametrize("change, message", [
    (lambda v: Volume(v.values[:, :, :-1], ImageGeometry((19, 16, 12), GEOMETRY.origin, GEOMETRY.spacing), "v"),
     r"time step 2 \(t=2.5\) has dims \(19, 16, 12\) but step 0 has \(20, 16, 12\)"),
    (lambda v: Volume(v.values, ImageGeometry(GEOMETRY.dims, GEOMETRY.origin, (0.5, 1.0, 3.0)), "v"),
     r"time step 2 \(t=2.5\) has spacing"),
    (lambda v: Volume(v.values, GEOMETRY, "w"), r"time step 2 \(t=2.5\) holds array 'w' but step 0 holds 'v'"),
])
def test_a_step_unlike_the_first_is_one_error_naming_it(change, message):
    steps = series().steps
    steps[2] = change(steps[2])
    with pytest.raises(ValueError, match=message):
        TimeSeries(steps, TIMES)


def test_times_must_increase_and_match_the_steps():
    with pytest.raises(ValueError, match=r"time step 2 has time 1, not after step 1's 1"):
        TimeSeries(series().steps, [0.0, 1.0, 1.0, 4.0])
    with pytest.raises(ValueError, match="4 steps needs as many times, got 3"):
        TimeSeries(series().steps, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="time step 1 has time nan"):
        TimeSeries(series().steps, [0.0, math.nan, 2.0, 3.0])


@pytest.mark.parametrize("text, expected", [("all", [0, 1, 2, 3, 4]), ("3", [3]), ("0,2,4", [0, 2, 4]),
                                            ("0:5:2", [0, 2, 4]), ("1:", [1, 2, 3, 4]), (":2", [0, 1])])
def test_time_selections(text, expected):
    assert parse_time_selection(text, 5) == expected


@pytest.mark.parametrize("text, message", [("7", r"selects steps \[7\]; the series has steps 0 to 4"),
                                           ("a", "is not 'all', an index"), ("5:", "selects steps none")])
def test_bad_time_selections_say_why(text, message):
    with pytest.raises(ValueError, match=message):
        parse_time_selection(text, 5)


def test_key_frames_spread_evenly_or_follow_the_steps():
    assert key_times_for(TIMES, None) == TIMES and key_times_for(TIMES, 4) == TIMES
    assert key_times_for(TIMES, 3) == [0.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="key_frames must be from 2 to the series' 4 steps, got 5"):
        key_times_for(TIMES, 5)


# ---- training a time-varying model ----------------------------------------------------------------

def test_a_time_varying_model_learns_stored_and_intermediate_times(trained):
    model = trained.model
    assert model.is_time_varying and model.time_steps == TIMES and model.time_unit == "hours"
    assert model.field.config.key_times == TIMES
    s = series()
    lo, hi = s.value_range
    per_step = model.training["psnr_per_step"]
    assert len(per_step) == 4 and min(per_step) > 36.0, per_step  # measured 41.0-41.9 dB
    assert trained.psnr == pytest.approx(series_psnr(model, s)["psnr"])
    # Between two stored steps the field is known exactly (linear in t): the model answers there too.
    for t in (0.5, 1.75, 3.2):
        between = psnr(field_at(t), model.resample(time=t), data_range=hi - lo)
        assert between > min(per_step) - 3.0, (t, between, per_step)  # measured 39.7-41.0 dB
    # The model at a time is a plain static field: the one the renderers and the fused kernel take.
    snapshot = model.at_time(1.75)
    assert not snapshot.is_time_varying and snapshot.field.architecture == "apmgsrn"
    np.testing.assert_array_equal(snapshot.resample(), model.resample(time=1.75))


def test_time_varying_training_is_reproducible_and_resumes_exactly(tmp_path, trained):
    again = train_series()
    for k, v in trained.model.field.state_dict().items():
        assert torch.equal(v, again.model.field.state_dict()[k]), k
    ck = tmp_path / "run.checkpoint"
    config = TrainConfig(steps=400, batch_size=8192, seed=3, device="cpu", density_start=50)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 150"):
        fit(series(), "apmgsrn", 12_000, config, checkpoint=ck, callback=lambda p: p.step >= 150, callback_every=150)
    resumed = fit(series(), "apmgsrn", 12_000, config, checkpoint=ck, resume=True)
    assert resumed.psnr == trained.psnr
    for k, v in trained.model.field.state_dict().items():
        assert torch.equal(v, resumed.model.field.state_dict()[k]), k


def test_the_budget_covers_the_whole_series(trained):
    n = trained.model.num_parameters
    assert 0.85 * 12_000 <= n <= 12_000, n
    assert trained.model.data_points == GEOMETRY.num_points * 4
    assert trained.model.parameter_ratio == pytest.approx(GEOMETRY.num_points * 4 / n)


def test_time_steps_travel_through_float32_and_compressed_files(tmp_path, trained):
    model = trained.model
    model.save(tmp_path / "tv.srn")
    back = load_model(tmp_path / "tv.srn")
    assert back.time_steps == TIMES and back.time_unit == "hours"
    np.testing.assert_array_equal(back.resample(time=3.3), model.resample(time=3.3))
    assert "time steps    4 (hours): 0, 1, 2.5, 4" in back.describe()
    assert back.file_ratio == pytest.approx(GEOMETRY.num_points * 4 * 4 / back.file_bytes)
    compressed = tmp_path / "tv8.srn"
    model.save(compressed, compression=Compression(bits=8), reference=series())
    small = load_model(compressed)
    measured = series_psnr(small, series())
    assert small.training["psnr"] == pytest.approx(measured["psnr"])
    assert measured["psnr"] > model.training["psnr"] - 1.0, (measured, model.training["psnr"])
    assert small.file_bytes < 0.4 * back.file_bytes
    # One offset and scale per key frame, grid and feature: the frames are quantized independently.
    grids = small.storage["field.frames.feature_grids"]
    k, m, c = 4, *model.field.frames["feature_grids"].shape[1:3]
    assert grids["channels"] == k * m * c


def test_a_time_varying_model_needs_a_time_and_refuses_one_outside_its_range(trained):
    model = trained.model
    with pytest.raises(ValueError, match=r"is time-varying \(4 steps from 0 to 4\); give a time"):
        model.resample()
    with pytest.raises(ValueError, match=r"time 4.5 is outside the model's time range \[0, 4\]"):
        model.check_time(4.5)
    assert model.check_time(4.0) == 4.0
    # Outside the range the model answers with its nearest end, as VTK's readers do.
    np.testing.assert_array_equal(model.at_time(9.0).resample(), model.resample(time=4.0))


def test_time_steps_that_do_not_increase_are_a_damaged_file(tmp_path, trained):
    trained.model.save(tmp_path / "tv.srn")
    tensors, meta = load_tensors(tmp_path / "tv.srn")
    meta["time_steps"] = [0.0, 2.0, 1.0, 4.0]
    save_tensors(tmp_path / "bad.srn", tensors, meta)
    with pytest.raises(ModelFileError, match=r"time_steps must be increasing numbers"):
        load_model(tmp_path / "bad.srn")


def test_a_single_volume_has_no_key_frames():
    with pytest.raises(ValueError, match="key_frames=3 needs a time series"):
        fit(series().steps[0], "apmgsrn", 5000, TrainConfig(steps=1), key_frames=3)
