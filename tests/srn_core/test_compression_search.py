"""The loosest compression setting under a PSNR-loss budget, measured on the model's own samples."""

import dataclasses
import math

import pytest

from core_samples import small_model
from srn_core.compression import Compression
from srn_core.compression_search import loosest_setting, loss_db


def trained_small_model(psnr=40.0):
    model = small_model()
    model.training["psnr"] = psnr
    return model


def test_loss_adds_the_quantization_error_to_the_models_own():
    model = trained_small_model(40.0)
    lo, hi = model.value_range
    compressed = model.compressed(Compression(bits=6)).resample()
    mse_change = float(((compressed - model.resample()) ** 2).mean())
    expected = 10 * math.log10(1 + mse_change / ((hi - lo) ** 2 * 10 ** -4))
    assert loss_db(model, Compression(bits=6)) == pytest.approx(expected, rel=1e-4)
    # A less accurate model hides the same quantization error better.
    assert loss_db(trained_small_model(25.0), Compression(bits=6)) < expected


@pytest.mark.parametrize("budget", [0.1, 0.01])
def test_the_fewest_bits_within_the_budget_are_chosen(budget):
    model = trained_small_model(40.0)
    setting, loss = loosest_setting(model, Compression(), max_loss_db=budget)
    assert loss <= budget and loss == pytest.approx(loss_db(model, setting))
    assert setting.decoder_bits == Compression().decoder_bits and setting.codec == "lzma"
    if setting.bits > 4:  # one bit fewer would cost more than the budget
        assert loss_db(model, dataclasses.replace(setting, bits=setting.bits - 1)) > budget


def test_the_loosest_sz3_bound_within_the_budget_is_chosen():
    model = trained_small_model(40.0)
    setting, loss = loosest_setting(model, Compression(codec="sz3"), max_loss_db=0.1)
    assert setting.codec == "sz3" and loss <= 0.1
    assert loss_db(model, dataclasses.replace(setting, error_bound=setting.error_bound * 1.1)) > 0.1 * 0.9


def test_a_model_without_training_psnr_cannot_be_searched():
    with pytest.raises(ValueError, match="records no training PSNR"):
        loosest_setting(small_model(), Compression())
