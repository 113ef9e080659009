"""srn_core.render.compositing: each pure function against its closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srn_core.render.compositing import composite_front_to_back, opacity_correction, over, premultiply


@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0, 2.0, 7.5])
def test_opacity_correction_is_one_minus_transparency_to_the_ratio(ratio):
    alpha = torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=torch.float64)
    assert opacity_correction(alpha, ratio).tolist() == pytest.approx((1 - (1 - alpha) ** ratio).tolist(), abs=1e-15)


def test_opacity_correction_keeps_faint_samples_and_bounds_opaque_ones():
    faint = torch.tensor([1e-9], dtype=torch.float32)
    # the naive float32 form 1 - (1 - a) ** r rounds this to 0; -expm1(r log1p(-a)) keeps it
    assert float(opacity_correction(faint, 0.5)) == pytest.approx(5e-10, rel=1e-6)
    assert float(1 - (1 - faint) ** 0.5) == 0.0
    opaque = opacity_correction(torch.tensor([1.0], dtype=torch.float64), 0.5)
    assert torch.isfinite(opaque).all() and float(opaque) == pytest.approx(1 - 1e-7 ** 0.5, rel=1e-6)


def test_per_sample_ratios_broadcast():
    alpha = torch.full((2, 3), 0.5, dtype=torch.float64)
    ratio = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.5]], dtype=torch.float64)
    expected = np.array([[0.5, 0.75, 0.875], [0.0, 0.5, 1 - 0.5 ** 0.5]])
    assert opacity_correction(alpha, ratio).numpy() == pytest.approx(expected, abs=1e-15)


def test_premultiply():
    out = premultiply(torch.tensor([[1.0, 0.5, 0.25]]), torch.tensor([0.5]))
    assert out.tolist() == [[0.5, 0.25, 0.125, 0.5]]


@pytest.mark.parametrize("samples", [1, 3, 10])
def test_constant_samples_composite_to_the_slab_formula(samples):
    a, color = 0.2, torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    alpha = torch.full((2, samples), a, dtype=torch.float64)
    rgb = (color * a).expand(2, samples, 3)
    out_rgb, out_alpha = composite_front_to_back(rgb, alpha)
    opacity = 1 - (1 - a) ** samples
    assert out_alpha.tolist() == pytest.approx([opacity, opacity])
    # c a sum (1 - a)^j = c (1 - (1 - a)^S)
    assert out_rgb.numpy() == pytest.approx(np.tile((color * opacity).numpy(), (2, 1)), abs=1e-15)


def test_front_to_back_order():
    """Red (alpha 0.6) in front of blue (alpha 0.5): a1 red + (1 - a1) a2 blue."""
    rgb = torch.tensor([[[0.6, 0.0, 0.0], [0.0, 0.0, 0.5]]])
    alpha = torch.tensor([[0.6, 0.5]])
    out_rgb, out_alpha = composite_front_to_back(rgb, alpha)
    assert out_rgb.tolist()[0] == pytest.approx([0.6, 0.0, 0.4 * 0.5])
    assert out_alpha.tolist() == pytest.approx([1 - 0.4 * 0.5])
    back_first = composite_front_to_back(rgb.flip(1), alpha.flip(1))[0]
    assert back_first.tolist()[0] == pytest.approx([0.5 * 0.6, 0.0, 0.5])


def test_over_chains_segments_like_one_long_segment():
    gen = torch.Generator().manual_seed(0)
    alpha = torch.rand(4, 12, generator=gen, dtype=torch.float64)
    rgb = torch.rand(4, 12, 3, generator=gen, dtype=torch.float64) * alpha[..., None]
    whole = over(torch.zeros(4, 4, dtype=torch.float64), *composite_front_to_back(rgb, alpha))
    acc = torch.zeros(4, 4, dtype=torch.float64)
    for part in range(3):
        acc = over(acc, *composite_front_to_back(rgb[:, 4 * part:4 * part + 4], alpha[:, 4 * part:4 * part + 4]))
    assert torch.allclose(acc, whole, atol=1e-14)


def test_nothing_shows_behind_an_opaque_front():
    front = torch.tensor([[0.2, 0.3, 0.4, 1.0]])
    assert over(front, torch.tensor([[0.9, 0.9, 0.9]]), torch.tensor([0.9])).tolist() == front.tolist()
