"""srn_core.compression_aware: grid penalties' values, quantized forward = the file's model, straight-through gradient."""

import copy

import pytest
import torch

from core_samples import small_model
from srn_core.compression import Compression
from srn_core.compression_aware import (channel_dims, grid_penalty, l1_sparsity, quantized_forward,
                                        quantized_parameters, total_variation)
from srn_core.fields import APMGSRN, APMGSRNConfig
from srn_core.fields.ngp import NGP


def _ramp():
    # g[z, y, x] = 6z + 3y + x - 6: steps of 1 along x, 3 along y, 6 along z; |values| 6,5,...,0,...,5.
    return (torch.arange(12, dtype=torch.float32) - 6).reshape(1, 1, 2, 2, 3)


def test_total_variation_and_l1_of_a_hand_made_grid():
    g = _ramp()
    assert total_variation(g).item() == 1 + 3 + 6
    assert l1_sparsity(g).item() == 36 / 12
    # A flat axis adds nothing; a constant grid has no variation.
    assert total_variation(g[:, :, :1]).item() == 1 + 3
    assert total_variation(torch.full((2, 1, 3, 3, 3), 5.0)).item() == 0


def test_grid_penalty_weighs_the_fields_grids():
    field = APMGSRN(APMGSRNConfig(n_grids=1, n_features=1, grid_shape=(2, 2, 3), width=8))
    with torch.no_grad():
        field.feature_grids.copy_(_ramp())
    assert grid_penalty(field, tv_weight=0.5, l1_weight=2.0).item() == 0.5 * 10 + 2.0 * 3
    assert grid_penalty(field, 0.0, 0.0) is None  # no penalty, no extra graph
    # Only the grids: the decoder's weights and the transforms are not penalised.
    grad = torch.autograd.grad(grid_penalty(field, 0.0, 1.0), field.feature_grids)[0]
    assert torch.equal(grad, torch.sign(_ramp()) / 12)


def test_a_hash_table_gets_l1_but_no_total_variation():
    torch.manual_seed(0)
    field = NGP(NGP.config_for_budget(3000, (8, 8, 8)))
    table = field.encoding.params
    assert grid_penalty(field, tv_weight=1.0, l1_weight=0.0).item() == 0
    assert grid_penalty(field, tv_weight=1.0, l1_weight=1.0).item() == pytest.approx(table.abs().mean().item())


@pytest.mark.parametrize("bits", [4, 8])
def test_the_quantized_forward_is_the_model_the_file_holds(bits):
    model = small_model()
    comp = Compression(bits=bits, decoder_bits=6)
    points = torch.rand(500, 3) * 2 - 1
    with torch.no_grad():
        stored = model.compressed(comp).field.normalized(points)
        seen = quantized_forward(model.field, points, comp)
        plain = model.field.normalized(points)
    assert torch.allclose(seen, stored, atol=1e-6, rtol=0)
    assert not torch.allclose(seen, plain, atol=1e-3)  # the quantization is visible at these bits
    # Grids per (grid, feature) channel, decoder weights per output row; the transforms stay exact.
    names = set(quantized_parameters(model.field, comp))
    assert "feature_grids" in names and "transforms" not in names
    assert channel_dims((4, 2, 5, 6, 7), "grid") == 2 and channel_dims((16, 8), "weights") == 1
    assert channel_dims((100,), "grid") == 0 and channel_dims((16,), "weights") == 0


def test_quantized_forward_passes_the_gradient_straight_through():
    model = small_model()
    comp = Compression(bits=5, decoder_bits=6)
    points = torch.rand(300, 3) * 2 - 1
    field = model.field.train()
    quantized_forward(field, points, comp).square().sum().backward()
    # Straight through: the float32 parameters get the gradient the quantized model has at its own values.
    twin = copy.deepcopy(model.compressed(comp).field).train()
    twin.normalized(points).square().sum().backward()
    for name, p in field.named_parameters():
        if name == "transforms":  # detached in the encoding; only the density loss moves them
            continue
        assert torch.allclose(p.grad, dict(twin.named_parameters())[name].grad, atol=1e-5, rtol=1e-4), name


def test_sz3_grids_are_left_float32_in_the_quantized_forward():
    model = small_model()
    names = set(quantized_parameters(model.field, Compression(codec="sz3")))
    assert "feature_grids" not in names and names  # the decoder is still quantized in an SZ3 file
