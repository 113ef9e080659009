"""APMGSRN's forward pass and feature density against values worked out by hand.

The 2x2x2 test grid holds f(tx, ty, tz) = tx + 2 ty + 4 tz + 8 tx ty tz - 3 at its corners
(t = (p + 1) / 2 per axis, so grid index w <-> x, h <-> y, d <-> z); trilinear interpolation reproduces f
exactly inside the grid, and the product term checks that it is trilinear, not just linear.
"""

from __future__ import annotations

import math

import pytest
import torch

from srn_core.fields.apmgsrn import APMGSRN, APMGSRNConfig

LO, HI = 10.0, 14.0  # output = decoder * (HI - LO) + LO = 4 * decoder + 10


def hand_field(input_padding=0, transform=None):
    cfg = APMGSRNConfig(n_grids=1, n_features=1, grid_shape=(2, 2, 2), width=2, n_hidden_layers=1,
                        input_padding=input_padding)
    field = APMGSRN(cfg, value_range=(LO, HI))
    field.clamp_output = False  # these tests check the network's own arithmetic, far outside (LO, HI)
    grid = torch.empty(2, 2, 2)
    for d in range(2):
        for h in range(2):
            for w in range(2):
                grid[d, h, w] = w + 2 * h + 4 * d + 8 * w * h * d - 3
    # Decoder: hidden = ReLU([f + pad terms, -f]); out = 2 * hidden0 + 3 * hidden1.
    w0 = torch.zeros(2, 1 + input_padding)
    w0[0, 0], w0[1, 0] = 1.0, -1.0
    if input_padding:
        w0[0, 1:] = torch.tensor([0.5, 0.25][:input_padding])
    with torch.no_grad():
        field.feature_grids.copy_(grid.reshape(1, 1, 2, 2, 2))
        field.transforms.copy_(torch.eye(4) if transform is None else transform)
        field.decoder.linears[0].weight.copy_(w0)
        field.decoder.linears[1].weight.copy_(torch.tensor([[2.0, 3.0]]))
    return field.eval()


def run(field, points):
    with torch.no_grad():
        return field(torch.tensor(points, dtype=torch.float32)).tolist()


def test_forward_matches_hand_computation():
    points = [(0, 0, 0), (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, 1), (0.5, -0.5, 0), (3, 0, 0)]
    # f:        1.5        -2          -1           1           12         1.0            outside -> 0
    # decoder:  2f if f >= 0 else -3f
    expected = [10 + 4 * 3.0, 10 + 4 * 6.0, 10 + 4 * 3.0, 10 + 4 * 2.0, 10 + 4 * 24.0, 10 + 4 * 2.0, 10.0]
    assert run(hand_field(), points) == pytest.approx(expected, abs=1e-5)


def test_zero_padding_outside_the_grid():
    # x = 1.5 is a quarter cell past the grid's last W sample: 3/4 of the face value, 1/4 of a zero.
    # Face x = 1 at (y, z) = (0, 0): f = 1 + 1 + 2 + 8 * 0.25 - 3 = 3, so the feature is 0.75 * 3 = 2.25.
    assert run(hand_field(), [(1.5, 0, 0)]) == pytest.approx([10 + 4 * 2 * 2.25], abs=1e-5)


def test_input_padding_feeds_ones():
    # Padding inputs are 1.0 with weights 0.5 and 0.25 into hidden neuron 0: hidden0 = ReLU(f + 0.75).
    field = hand_field(input_padding=2)
    assert run(field, [(0, 0, 0), (1, -1, -1)]) == pytest.approx([10 + 4 * 2 * 2.25, 10 + 4 * 3 * 2.0], abs=1e-5)


def test_transform_maps_global_points_into_the_grid_frame():
    # local = 2 * p + (1, 0, 0): the grid covers x in [-1, 0], y and z in [-0.5, 0.5].
    a = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    a[0, 3] = 1.0
    field = hand_field(transform=a)
    # p = (-0.5, 0, 0) -> local 0 -> f = 1.5; p = (0, 0.25, -0.25) -> local (1, 0.5, -0.5) -> t = (1, 0.75, 0.25)
    # -> f = 1 + 1.5 + 1 + 1.5 - 3 = 2.
    assert run(field, [(-0.5, 0, 0), (0, 0.25, -0.25)]) == pytest.approx([10 + 4 * 3.0, 10 + 4 * 4.0], abs=1e-5)


def test_features_are_concatenated_grid_major():
    cfg = APMGSRNConfig(n_grids=2, n_features=2, grid_shape=(2, 2, 2), width=1, n_hidden_layers=1)
    field = APMGSRN(cfg, value_range=(0.0, 1.0))
    field.clamp_output = False
    with torch.no_grad():
        field.transforms.copy_(torch.eye(4).repeat(2, 1, 1))
        for g in range(2):
            for c in range(2):
                field.feature_grids[g, c] = 1 + 2 * g + c  # grid 0: 1, 2; grid 1: 3, 4 (constant grids)
        field.decoder.linears[0].weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0]]))
        field.decoder.linears[1].weight.copy_(torch.tensor([[1.0]]))
    # Column g * C + c: 1 * 1 + 10 * 2 + 100 * 3 + 1000 * 4 (feature-major would give 4231).
    assert run(field.eval(), [(0.1, -0.2, 0.3)]) == pytest.approx([4321.0], rel=1e-6)


def test_feature_density_of_an_identity_grid():
    field = hand_field()
    coeff = 1 / (2 * math.pi) ** 1.5  # 0.0634936359...
    with torch.no_grad():
        d = field.feature_density(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.5, 0.5, -0.5], [2.0, 0, 0]]))
    assert d[0].item() == pytest.approx(0.06349363593424097, rel=1e-6)
    assert d[1].item() == pytest.approx(coeff * math.exp(-0.5), rel=1e-6)  # on a face: exp(-0.5 * 1**20)
    assert d[2].item() == pytest.approx(coeff * math.exp(-0.5 * 3 * 0.5 ** 20), rel=1e-6)  # flat top inside
    assert d[3].item() == pytest.approx(0.0, abs=1e-30)  # outside: exp(-0.5 * 2**20)


def test_feature_density_scales_with_the_grid_magnification():
    a = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))  # a grid half as wide holds its features 8x denser
    field = hand_field(transform=a)
    with torch.no_grad():
        d = field.feature_density(torch.zeros(1, 3))
    assert d.item() == pytest.approx(8 / (2 * math.pi) ** 1.5, rel=1e-6)


# ---- configuration -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, scale", [("default", 1.0), ("small", 8.0), ("large", 0.8)])
def test_grid_initialization_places_the_grids(kind, scale):
    torch.manual_seed(0)
    field = APMGSRN(APMGSRNConfig(n_grids=64, n_features=1, grid_shape=(2, 2, 2), grid_initialization=kind))
    t = field.transforms.detach()
    diagonal = t[:, :3, :3].diagonal(dim1=1, dim2=2)
    assert diagonal.mean().item() == pytest.approx(scale, abs=0.03)  # N(0, 0.05) noise on 192 entries
    assert (t[:, :3, :3] - torch.diag_embed(diagonal)).abs().max() < 0.3  # off-diagonal: noise only
    assert torch.equal(t[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(64, 4))
    shift = t[:, :3, 3]
    if kind == "small":
        # Grids an eighth of the volume wide, shifted by up to their own scale: centres -shift/scale spread over
        # the whole cube (uniform in [-1, 1]: mean |centre| about 0.5), never outside it by more than the noise.
        centres = -shift / diagonal
        assert 0.35 < centres.abs().mean() < 0.65 and centres.abs().max() < 1.05
    else:
        assert shift.abs().max() < 0.3


def test_unknown_grid_initialization_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError) as err:
        APMGSRNConfig(grid_initialization="tiny")
    assert str(err.value) == "APMGSRN grid_initialization must be one of 'default', 'small', 'large', got 'tiny'."


def test_a_biased_decoder_counts_its_biases_once():
    cfg = APMGSRNConfig(n_grids=2, n_features=3, grid_shape=(2, 3, 4), width=5, n_hidden_layers=2, use_bias=True)
    field = APMGSRN(cfg)
    # grids 2*3*24, transforms 2*16, decoder 6*5+5 + 5*5+5 + 5*1+1
    assert field.num_parameters() == 144 + 32 + 35 + 30 + 6
    with pytest.raises(ValueError, match="use_bias must be true or false, got 'false'"):
        APMGSRNConfig(use_bias="false")
