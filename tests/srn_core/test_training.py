"""srn_core.training: determinism, PSNR floors, exact resume (also from signals mid-step), masked voxels."""

import math
import os
import signal

import numpy as np
import pytest
import torch

from core_samples import analytic_volume
from srn_core.data import Volume
from srn_core.fields import APMGSRN, APMGSRNConfig
from srn_core.modelfile import load_tensors
from srn_core.model import NeuralVolume
from srn_core.training import TrainConfig, TrainingInterrupted, fit, train


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
    # The finished state stays in the checkpoint until the caller has written the model: a failed write is
    # redone by resuming, without a single step.
    assert load_tensors(ck)[1]["checkpoint"]["step"] == 120
    again = train(vol, APMGSRN(fresh.config), cfg, checkpoint=ck, resume=True)
    assert again.steps == 120 and again.psnr == straight.psnr
    for k, v in straight.model.field.state_dict().items():
        assert torch.equal(v, again.model.field.state_dict()[k]), k


def _assert_same_tensors(a, b):
    sa, sb = a.model.field.state_dict(), b.model.field.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_fit_seeds_the_initial_weights_alone_and_leaves_the_global_rng_alone():
    vol = analytic_volume()
    cfg = TrainConfig(steps=3, batch_size=256, seed=7, device="cpu")
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    a = fit(vol, "apmgsrn", 2000, cfg)
    assert torch.equal(torch.random.get_rng_state(), before)  # neither read nor advanced
    torch.rand(1000)  # a caller that used the global generator in between (ParaView, another filter)
    b = fit(vol, "apmgsrn", 2000, cfg)
    _assert_same_tensors(a, b)
    c = fit(vol, "apmgsrn", 2000, TrainConfig(steps=3, batch_size=256, seed=8, device="cpu"))
    assert not torch.equal(a.model.field.transforms, c.model.field.transforms)
    # lr=None means the architecture's own default: SIREN's 1e-3, not the grid models' 0.01.
    assert fit(vol, "siren", 2000, cfg).model.training["lr"] == 1e-3
    assert a.model.training["lr"] == 0.01 and a.model.num_parameters <= 2000


def _signal_inside_step(field, at_steps, signum):
    """Send ``signum`` to this process from inside the forward pass of the given steps (mid-step, in the decoder,
    which every training path runs)."""
    calls = {"n": 0}
    forward = field.decode

    def decode(feats):
        out = forward(feats)
        calls["n"] += 1
        if calls["n"] in at_steps:
            os.kill(os.getpid(), signum)  # Python runs the handler at the next bytecode: inside this step
        return out
    field.decode = decode
    return field


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_a_step_stops_after_that_step_and_resumes_exactly(tmp_path, signum):
    vol, field, cfg = _fit(steps=90)
    straight = train(vol, field, cfg)
    ck = tmp_path / "run.checkpoint"
    previous = signal.getsignal(signum)
    vol, field, cfg = _fit(steps=90)
    with pytest.raises(TrainingInterrupted) as stop:
        train(vol, _signal_inside_step(field, {31}, signum), cfg, checkpoint=ck)
    assert (stop.value.step, stop.value.signal) == (31, signum)  # the 31st step completed, no half step
    assert signal.getsignal(signum) is previous  # the handlers are the caller's again
    assert load_tensors(ck)[1]["checkpoint"]["step"] == 31
    vol, fresh, cfg = _fit(steps=90)
    with pytest.raises(TrainingInterrupted) as stop:  # again, this time past density_start (the aux optimizer)
        train(vol, _signal_inside_step(APMGSRN(fresh.config), {30}, signum), cfg, checkpoint=ck, resume=True)
    assert stop.value.step == 61
    resumed = train(vol, APMGSRN(fresh.config), cfg, checkpoint=ck, resume=True)
    assert resumed.steps == 90 and resumed.psnr == straight.psnr
    _assert_same_tensors(straight, resumed)


def test_checkpoints_by_steps_as_well_as_by_time(tmp_path):
    ck = tmp_path / "run.checkpoint"
    vol, field, cfg = _fit(steps=40, checkpoint_every_steps=15)
    seen = {}

    def look(p):
        seen[p.step] = load_tensors(ck)[1]["checkpoint"]["step"] if ck.exists() else None
    train(vol, field, cfg, checkpoint=ck, callback=look, callback_every=10)
    # A SIGKILL after step 10 would leave nothing to resume, after step 20 or 30 step 15's state, after 40
    # step 30's (the callback runs just before a step's checkpoint); the end of training writes its own.
    assert seen == {10: None, 20: 15, 30: 15, 40: 30}
    assert load_tensors(ck)[1]["checkpoint"]["step"] == 40
    with pytest.raises(ValueError, match="checkpoint_every_steps must be a positive integer, got 0"):
        TrainConfig(checkpoint_every_steps=0)


def test_an_interrupt_during_the_final_evaluation_keeps_the_model(monkeypatch):
    vol, field, cfg = _fit(steps=20)
    resample = NeuralVolume.resample

    def interrupted_resample(self, *args, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the full volume is evaluated
        return resample(self, *args, **kw)
    monkeypatch.setattr(NeuralVolume, "resample", interrupted_resample)
    r = train(vol, field, cfg)
    assert r.steps == 20 and math.isnan(r.psnr)
    assert "psnr" not in r.model.training and r.model.training["stopped_because"] == (
        "steps; PSNR not measured (interrupted)")


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


# ---- compression-aware training --------------------------------------------------------------------

def test_compression_aware_training_is_reproducible_and_resumes_exactly(tmp_path):
    from srn_core.compression import Compression
    comp = Compression(bits=5, decoder_bits=6)
    options = dict(steps=60, grid_tv_weight=1e-3, grid_l1_weight=1e-3, qat_fraction=0.25)
    vol, field, cfg = _fit(**options)
    a = train(vol, field, cfg, compression=comp)
    vol, field, cfg = _fit(**options)
    b = train(vol, field, cfg, compression=comp)
    _assert_same_tensors(a, b)
    assert a.psnr == b.psnr
    assert a.model.training["quantization_aware_from"] == 45  # the last quarter of 60 steps
    assert (a.model.training["grid_tv_weight"], a.model.training["grid_l1_weight"]) == (1e-3, 1e-3)
    # Interrupted inside the quantization-aware phase, then resumed: the same model, bit for bit.
    ck = tmp_path / "run.checkpoint"
    vol, field, cfg = _fit(**options)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 50"):
        train(vol, field, cfg, checkpoint=ck, callback=lambda p: p.step >= 50, callback_every=50, compression=comp)
    vol, fresh, cfg = _fit(**options)
    resumed = train(vol, APMGSRN(fresh.config), cfg, checkpoint=ck, resume=True, compression=comp)
    _assert_same_tensors(a, resumed)
    assert resumed.model.training["quantization_aware_from"] == 45
    # Each option changes the result; without a compression there is nothing to be aware of.
    vol, field, cfg = _fit(steps=60)
    plain = train(vol, field, cfg, compression=comp)
    assert "quantization_aware_from" not in plain.model.training and "grid_tv_weight" not in plain.model.training
    assert not torch.equal(plain.model.field.feature_grids, a.model.field.feature_grids)
    vol, field, cfg = _fit(steps=60, qat_fraction=0.25)
    no_compression = train(vol, field, cfg)
    _assert_same_tensors(plain, no_compression)


@pytest.mark.parametrize("kwargs, message", [
    ({"qat_fraction": 1.5}, "qat_fraction must be a fraction from 0 to 1, got 1.5."),
    ({"grid_tv_weight": -1e-4}, "grid_tv_weight must be a non-negative number, got -0.0001."),
    ({"grid_l1_weight": float("nan")}, "grid_l1_weight must be a non-negative number, got nan."),
])
def test_bad_compression_aware_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError) as err:
        TrainConfig(**kwargs)
    assert str(err.value) == message
