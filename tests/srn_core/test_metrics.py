"""srn_core.metrics: hand-computed values and agreement with scikit-image's own metrics."""

import math

import numpy as np
import pytest
import torch

from srn_core import metrics


def test_psnr_hand_computed():
    ref = np.zeros((2, 2, 2), np.float32)
    ref[0, 0, 0] = 10.0  # range 10
    rec = ref + 0.5  # MSE 0.25
    expected = 20 * math.log10(10.0) - 10 * math.log10(0.25)
    assert metrics.psnr(ref, rec) == pytest.approx(expected, abs=1e-9)
    assert metrics.psnr(ref, rec, data_range=1.0) == pytest.approx(-10 * math.log10(0.25), abs=1e-9)
    assert metrics.mse(ref, rec) == pytest.approx(0.25)
    assert metrics.max_abs_error(ref, rec) == pytest.approx(0.5)
    assert metrics.psnr(ref, ref) == math.inf


def test_psnr_matches_skimage_and_accepts_tensors():
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(0)
    ref = rng.random((9, 10, 11)).astype(np.float32) * 7 - 2
    rec = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    rng_ = float(ref.max() - ref.min())
    expected = peak_signal_noise_ratio(ref.astype(np.float64), rec.astype(np.float64), data_range=rng_)
    assert metrics.psnr(ref, rec) == pytest.approx(expected, abs=1e-6)
    assert metrics.psnr(torch.from_numpy(ref), torch.from_numpy(rec)) == pytest.approx(expected, abs=1e-6)


def test_mask_and_nonfinite_reference_points_are_excluded():
    ref = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    rec = ref.copy()
    rec[1, 1, 1] += 100.0
    ref_nan = ref.copy()
    ref_nan[1, 1, 1] = np.nan
    assert metrics.psnr(ref_nan, rec) == math.inf
    mask = np.ones_like(ref, bool)
    mask[1, 1, 1] = False
    assert metrics.max_abs_error(ref, rec, mask=mask) == 0.0
    assert metrics.max_abs_error(ref, rec) == pytest.approx(100.0)


def test_ssim_matches_skimage_and_small_windows():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    ref = rng.random((12, 12, 12))
    rec = ref + rng.normal(0, 0.1, ref.shape)
    expected = structural_similarity(ref, rec, data_range=float(ref.max() - ref.min()))
    assert metrics.ssim(ref, rec) == pytest.approx(expected, abs=1e-9)
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    thin = metrics.ssim(ref[:4], rec[:4])  # window shrinks to 3
    assert 0.0 < thin < 1.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="data_range"):
        metrics.psnr(np.zeros((2, 2, 2)), np.ones((2, 2, 2)), data_range=-1)
    with pytest.raises(ValueError, match="at least 3 points"):
        metrics.ssim(np.zeros((2, 5, 5)), np.zeros((2, 5, 5)))


def test_error_sums_of_pieces_equal_the_whole_volume_metrics():
    """Pieces (as MPI ranks hold them) combined through sums and maxima give the whole volume's numbers."""
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(9, 8, 7)) * 40.0 + 100.0
    ref[2, 3, 4] = np.nan  # a masked point of the reference
    rec = ref + rng.normal(size=ref.shape) * 0.7
    pieces = [metrics.ErrorSums.of(ref[:4], rec[:4]), metrics.ErrorSums.of(ref[4:], rec[4:]), metrics.ErrorSums()]
    combined = pieces[0] + pieces[1] + pieces[2]
    sums = np.sum([p.sums() for p in pieces], axis=0)
    maxima = np.max([p.maxima() for p in pieces], axis=0)
    reduced = metrics.ErrorSums.from_reduced(sums, maxima)
    for total in (combined, reduced):
        assert total.count == ref.size - 1
        assert total.psnr == pytest.approx(metrics.psnr(ref, rec), abs=1e-9)
        assert total.mse == pytest.approx(metrics.mse(ref, rec), rel=1e-12)
        assert total.max_abs == metrics.max_abs_error(ref, rec)
        assert total.data_range == metrics.data_range(ref)
    with pytest.raises(ValueError, match="nothing to compare"):
        metrics.ErrorSums().psnr


def test_ssim_with_no_counted_point_is_an_error_not_a_mean_of_nothing():
    """An all-false mask, or one whose points all lie in the border half-window (where SSIM is not computed),
    leaves nothing to average: one clear error, never the mean of the filled-in background."""
    rng = np.random.default_rng(2)
    ref = rng.random((10, 10, 10))
    rec = ref + 0.1
    with pytest.raises(ValueError, match="nothing to compare"):
        metrics.ssim(ref, rec, mask=np.zeros(ref.shape, bool))
    border = np.zeros(ref.shape, bool)
    border[0] = True  # only the first slice: inside the 3-point half-window of a 7-point window
    with pytest.raises(ValueError, match=r"SSIM: every counted point lies within 3 points of the border"):
        metrics.ssim(ref, rec, mask=border)
    inner = np.zeros(ref.shape, bool)
    inner[3:7, 3:7, 3:7] = True
    assert 0.0 < metrics.ssim(ref, rec, mask=inner) < 1.0
