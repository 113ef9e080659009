"""srn_core.training: determinism, PSNR floors, exact resume, masked voxels."""


import numpy as np
import pytest
import torch

from core_samples import analytic_volume
from srn_core.data import Volume
from srn_core.fields import APMGSRN, APMGSRNConfig
from srn_core.training import TrainConfig, TrainingInterrupted, train


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
