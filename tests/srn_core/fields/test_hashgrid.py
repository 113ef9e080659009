"""The hash-grid encoding against tiny-cuda-nn's formulas, worked out by hand in plain Python integers.

Test grid: 2 levels, base resolution 3, per-level scale 2, log2 table size 6 (T <= 64).
  level 0: scale = 2^0 * 3 - 1 = 2, res = ceil(2) + 1 = 3, 3^3 = 27 -> next multiple of 8 = 32 <= 64: dense, T = 32
  level 1: scale = 2^1 * 3 - 1 = 5, res = 6, 6^3 = 216 -> min(216, 64) = 64 < 216: hashed, T = 64, offset 32
Points are multiples of 1/8, so ``scale * x + 0.5`` and every trilinear weight are exact in float32.
"""

from __future__ import annotations

import math

import pytest
import torch

from srn_core.fields.hashgrid import HashGridEncoding, hash_grid_levels

PRIMES = (1, 2654435761, 805459861)
TINY = dict(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=3, per_level_scale=2.0)
POINTS = [
    (0.375, 0.625, 0.125),
    (0.0, 0.0, 0.0),
    (1.0, 1.0, 1.0),  # upper corners at res: the dense index wraps modulo T, as in tcnn
    (0.875, 0.25, 0.5),
    (-0.5, 0.75, 1.25),  # outside [0, 1]: negative cells wrap as uint32
]


def known_params(n: int) -> torch.Tensor:
    """Scrambled, exactly representable values: entry i holds (37 i mod 101) / 16 - 3."""
    return torch.tensor([(37 * i % 101) / 16.0 - 3.0 for i in range(n)], dtype=torch.float32)


def hand_level_table(n_levels, log2_size, base, pls):
    """(scale, res, T, offset, hashed) per level, from the formulas (no float32 subtleties at these sizes)."""
    rows, offset = [], 0
    for level in range(n_levels):
        scale = 2.0 ** (level * math.log2(pls)) * base - 1.0
        res = math.ceil(scale) + 1
        size = min((res ** 3 + 7) // 8 * 8, 2 ** log2_size)
        rows.append((scale, res, size, offset, res ** 3 > size))
        offset += size
    return rows


def hand_corners(x, n_levels=2, log2_size=6, base=3, pls=2.0):
    """Per level: the 8 (flat entry index, weight) pairs of point x, corner 4k + 2j + i at offset (i, j, k)."""
    out = []
    for scale, res, size, offset, hashed in hand_level_table(n_levels, log2_size, base, pls):
        pos = [scale * v + 0.5 for v in x]
        cell = [math.floor(p) for p in pos]
        frac = [p - c for p, c in zip(pos, cell)]
        corners = []
        for corner in range(8):
            c = [cell[d] + ((corner >> d) & 1) for d in range(3)]
            weight = 1.0
            for d in range(3):
                weight *= frac[d] if (corner >> d) & 1 else 1.0 - frac[d]
            if hashed:
                index = 0
                for d in range(3):
                    index ^= (c[d] * PRIMES[d]) & 0xFFFFFFFF
            else:
                index = (c[0] + c[1] * res + c[2] * res * res) & 0xFFFFFFFF
            corners.append((offset + index % size, weight))
        out.append(corners)
    return out


def hand_encode(x, params, n_features=2, **kw):
    values = []
    for corners in hand_corners(x, **kw):
        for f in range(n_features):
            values.append(sum(w * float(params[i * n_features + f]) for i, w in corners))
    return values


def tiny_encoding(**overrides) -> HashGridEncoding:
    enc = HashGridEncoding(**{**TINY, **overrides})
    with torch.no_grad():
        enc.params.copy_(known_params(enc.params.numel()))
    return enc


def test_level_table_and_flat_layout():
    enc = HashGridEncoding(**TINY)
    got = [(lv.resolution, lv.size, lv.offset, lv.hashed) for lv in enc.levels]
    assert got == [(3, 32, 0, False), (6, 64, 32, True)]
    assert [lv.scale for lv in enc.levels] == [2.0, 5.0]
    assert enc.params.numel() == (32 + 64) * 2
    assert list(dict(enc.named_parameters())) == ["params"]  # ONE flat tensor, like tcnn
    assert list(enc.state_dict()) == ["params"]
    assert enc.n_output_dims == 4
    # The rounding of res^3 up to a multiple of 8: base 2 -> 8, base 4 -> 64, base 5 (125) -> 128.
    for base, size in ((2, 8), (4, 64), (5, 128)):
        assert hash_grid_levels(1, 19, base, 2.0)[0].size == size


def test_level_table_matches_formula_for_larger_grids():
    # APMGSRN's NGP baselines (17 levels, base 8, max 256, log2 11) hold 64,464 grid parameters by the formula.
    pls = math.exp((math.log(256) - math.log(8)) / 16)
    levels = hash_grid_levels(17, 11, 8, pls)
    assert (levels[-1].offset + levels[-1].size) * 2 == 64464
    for lv, (scale, res, size, offset, hashed) in zip(levels, hand_level_table(17, 11, 8, pls)):
        assert (lv.resolution, lv.size, lv.offset, lv.hashed) == (res, size, offset, hashed)
        assert lv.scale == pytest.approx(scale, rel=1e-6)


def test_corner_indices_and_weights_by_hand():
    enc = tiny_encoding()
    index, weight = enc.corners(torch.tensor(POINTS))
    assert index.shape == (len(POINTS), 2, 8) and weight.shape == (len(POINTS), 2, 8)
    for n, x in enumerate(POINTS):
        for level, corners in enumerate(hand_corners(x)):
            assert index[n, level].tolist() == [i for i, _ in corners]
            assert weight[n, level].tolist() == pytest.approx([w for _, w in corners], abs=1e-7)


def test_encoding_values_by_hand():
    enc = tiny_encoding()
    params = enc.params.detach().tolist()
    with torch.no_grad():
        got = enc(torch.tensor(POINTS))
    assert got.shape == (len(POINTS), 4) and got.dtype == torch.float32
    for n, x in enumerate(POINTS):
        assert got[n].tolist() == pytest.approx(hand_encode(x, params), abs=1e-6)
    # One worked example spelled out: x = 0, level 0 -> pos 0.5 per axis, all 8 weights 1/8, dense indices
    # c_x + 3 c_y + 9 c_z for c in {0, 1}^3 = 0, 1, 3, 4, 9, 10, 12, 13.
    expected = sum(params[i * 2] for i in (0, 1, 3, 4, 9, 10, 12, 13)) / 8
    assert got[1, 0].item() == pytest.approx(expected, abs=1e-6)


def test_one_feature_per_level_and_hashed_coarse_levels():
    # F = 1, and a table so small (log2 3 = 8 entries) that even the 3^3 level is hashed.
    enc = tiny_encoding(n_features_per_level=1, log2_hashmap_size=3)
    assert [lv.hashed for lv in enc.levels] == [True, True]
    params = enc.params.detach().tolist()
    with torch.no_grad():
        got = enc(torch.tensor(POINTS))
    for n, x in enumerate(POINTS):
        assert got[n].tolist() == pytest.approx(hand_encode(x, params, 1, log2_size=3), abs=1e-6)


def test_feature_fastest_layout():
    # Only entry 5 of level 1 (flat parameters (32 + 5) * 2 + 1) is set: it shows up in column level1/f1 only.
    enc = HashGridEncoding(**TINY)
    with torch.no_grad():
        enc.params.zero_()
        enc.params[(32 + 5) * 2 + 1] = 1.0
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = enc(x)
    index, weight = enc.corners(x)
    expected = (weight[:, 1] * (index[:, 1] == 32 + 5)).sum(1)
    assert got[:, :3].abs().max().item() == 0.0
    assert torch.allclose(got[:, 3], expected, atol=1e-7)
    assert expected.abs().max().item() > 0  # the entry is actually hit


def test_chunking_does_not_change_values():
    enc = tiny_encoding()
    x = torch.rand(1000, 3, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    with torch.no_grad():
        whole = enc(x)
        enc.chunk_size = 7
        chunked = enc(x)
    # Equal up to summation order (vectorised reductions group differently at other lengths).
    assert torch.allclose(whole, chunked, rtol=0, atol=1e-6)


def test_gradients_match_hand_formula():
    enc = tiny_encoding()
    params = enc.params.detach().tolist()
    # Away from cell borders of both levels (2 x + 0.5 and 5 x + 0.5 not integers): no kinks in the differences.
    x = torch.tensor([(0.37, 0.62, 0.13), (0.71, 0.22, 0.86)], requires_grad=True)
    upstream = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.25, 1.5, -1.0, 2.0]])
    out = enc(x)
    grad_x, grad_p = torch.autograd.grad(out, (x, enc.params), upstream)
    # Parameters: d out / d entry = sum of the weights with which that entry enters, times the upstream gradient.
    expected_p = [0.0] * len(params)
    for n, point in enumerate(x.tolist()):
        for level, corners in enumerate(hand_corners(point)):
            for i, w in corners:
                for f in range(2):
                    expected_p[i * 2 + f] += w * upstream[n, level * 2 + f].item()
    assert grad_p.tolist() == pytest.approx(expected_p, abs=1e-5)
    # Points: central differences of the hand encoding in double precision (piecewise trilinear -> exact).
    eps = 1e-6
    for n, point in enumerate(x.tolist()):
        for d in range(3):
            hi, lo = list(point), list(point)
            hi[d] += eps
            lo[d] -= eps
            diff = [(a - b) / (2 * eps) for a, b in zip(hand_encode(hi, params), hand_encode(lo, params))]
            expected = sum(g * u for g, u in zip(diff, upstream[n].tolist()))
            assert grad_x[n, d].item() == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_default_initialisation_matches_tcnn():
    enc = HashGridEncoding(**TINY)
    assert enc.params.dtype == torch.float32
    assert enc.params.abs().max().item() <= 1e-4
