"""The multi-resolution hash-grid encoding of Instant-NGP (Mueller et al. 2022), in pure PyTorch.

It reproduces tiny-cuda-nn's ``HashGrid`` exactly (math and the one flat parameter vector), so a
tcnn checkpoint's ``params`` loads unchanged and, where tiny-cuda-nn and CUDA exist, its kernel can run on the
same parameters (see :mod:`srn_core.accel`). For inputs ``x01`` in ``[0, 1]^3`` and level ``l``:

* ``scale_l = 2^(l * log2(per_level_scale)) * base_resolution - 1`` (float32, as tcnn), ``res_l = ceil(scale_l) + 1``;
* table size ``T_l = min(next_multiple(res_l^3, 8), 2^log2_hashmap_size)``; the flat parameters hold the levels
  one after another, each ``[T_l][F]`` with the feature index fastest;
* ``pos = scale_l * x01 + 0.5``, ``cell = floor(pos)``, ``frac = pos - cell``; for each of the 8 corners ``c``:
  index ``c_x + c_y res + c_z res^2`` if ``res^3 <= T_l`` (dense), else ``c_x ^ c_y*2654435761 ^ c_z*805459861``
  (uint32 wrap-around), then ``mod T_l``; trilinear weights; output ``[level0 f0..fF-1, level1 ...]``.

tcnn evaluates ``pos`` with one fused multiply-add; PyTorch rounds twice, which moves a value by ~1 ulp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import accel

PRIMES = (1, 2654435761, 805459861)
"""tiny-cuda-nn's "CoherentPrime" hash factors for x, y, z."""
UINT32 = 0xFFFFFFFF


@dataclass(frozen=True)
class HashLevel:
    """One level of the hash grid: where it lives in the flat parameters and how it indexes."""

    scale: float
    """``scale_l`` (float32 value): a point ``x01`` maps to grid position ``scale_l * x01 + 0.5``."""
    resolution: int
    """Vertices per axis ``res_l = ceil(scale_l) + 1``."""
    size: int
    """Table entries ``T_l`` (each holds ``F`` features)."""
    offset: int
    """First table entry of this level in the flat table (multiply by ``F`` for the flat parameter index)."""
    hashed: bool
    """True when the dense grid ``res_l^3`` does not fit the table and corners are hashed."""


def hash_grid_levels(n_levels: int, log2_hashmap_size: int, base_resolution: int,
                     per_level_scale: float) -> list[HashLevel]:
    """tiny-cuda-nn's level table (scales in float32 exactly as its kernels compute them)."""
    log2_scale = np.log2(np.float32(per_level_scale))  # float, as tcnn stores it
    cap = 1 << int(log2_hashmap_size)
    levels, offset = [], 0
    for level in range(int(n_levels)):
        scale = np.exp2(np.float32(level) * log2_scale) * np.float32(base_resolution) - np.float32(1.0)
        res = int(math.ceil(float(scale))) + 1
        dense = res ** 3
        size = min(-(-dense // 8) * 8, cap)
        levels.append(HashLevel(float(scale), res, size, offset, dense > size))
        offset += size
    return levels


class HashGridEncoding(nn.Module):
    """tiny-cuda-nn ``HashGrid`` encoding of 3-D points in ``[0, 1]^3``: ``(N, 3) -> (N, n_levels * F)``.

    Holds ONE flat float32 parameter ``params`` (tcnn's layout), initialised U(-1e-4, 1e-4) like tcnn.
    Differentiable in the parameters and in the points (for gradients of the field).
    """

    chunk_size = 4096
    """Points per internal batch on the CPU: keeps the ``(levels, 8 corners, points)`` work in the cache."""
    gpu_chunk_size = 1 << 20
    """Points per internal batch on a GPU, where launches cost more than memory traffic."""

    def __init__(self, n_levels: int = 16, n_features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, per_level_scale: float = 2.0, use_tcnn: bool = True):
        super().__init__()
        self.n_levels = int(n_levels)
        self.n_features_per_level = int(n_features_per_level)
        self.log2_hashmap_size = int(log2_hashmap_size)
        self.base_resolution = int(base_resolution)
        self.per_level_scale = float(per_level_scale)
        self.use_tcnn = bool(use_tcnn)
        self.levels = hash_grid_levels(n_levels, log2_hashmap_size, base_resolution, per_level_scale)
        self.n_entries = self.levels[-1].offset + self.levels[-1].size
        self.params = nn.Parameter(torch.empty(self.n_entries * self.n_features_per_level).uniform_(-1e-4, 1e-4))

        # Per-level constants as tensors so all levels are evaluated in batched ops. Non-persistent: they follow
        # from the config, so the model file holds only ``params`` (as a tcnn checkpoint does).
        lv = self.levels
        self.register_buffer("_scale", torch.tensor([v.scale for v in lv], dtype=torch.float32), persistent=False)
        # Per level and axis, the factor a corner coordinate is multiplied by: res^d (dense) or the hash prime.
        mult = [list(PRIMES) if v.hashed else [1, v.resolution, v.resolution ** 2] for v in lv]
        self.register_buffer("_mult", torch.tensor(mult, dtype=torch.int64), persistent=False)
        # Runs of consecutive levels that index the same way (dense levels first, as resolutions grow):
        # each run is evaluated with one set of ops, its indices relative to its first table entry.
        self._index_dtype = torch.int32 if self.n_entries < 2 ** 31 else torch.int64
        self._runs: list[tuple[int, int, bool, int]] = []  # (first level, end level, hashed, first entry)
        start = 0
        for end in range(1, len(lv) + 1):
            if end == len(lv) or lv[end].hashed != lv[start].hashed:
                self._runs.append((start, end, lv[start].hashed, lv[start].offset))
                start = end
        mask = (1 << self.log2_hashmap_size) - 1
        for k, (l0, l1, hashed, base) in enumerate(self._runs):
            rel = [v.offset - base for v in lv[l0:l1]]
            if hashed:  # offsets or-ed into the hashed x term; per-axis step to the upper corner, both masked
                self.register_buffer(f"_run{k}_offset", torch.tensor(rel, dtype=self._index_dtype), persistent=False)
                step = self._mult[l0:l1] & mask
                self.register_buffer(f"_run{k}_step", step.to(self._index_dtype).view(-1, 3, 1), persistent=False)
            else:  # dense: table sizes, and each corner's index offset i + j res + k res^2 (corner 4k + 2j + i)
                self.register_buffer(f"_run{k}_offset", torch.tensor(rel, dtype=torch.int64), persistent=False)
                size = torch.tensor([v.size for v in lv[l0:l1]], dtype=torch.int64).view(-1, 1, 1)
                self.register_buffer(f"_run{k}_size", size, persistent=False)
                corner = [[(c & 1) + ((c >> 1) & 1) * v.resolution + (c >> 2) * v.resolution ** 2 for c in range(8)]
                          for v in lv[l0:l1]]
                self.register_buffer(f"_run{k}_corner", torch.tensor(corner, dtype=torch.int64).view(-1, 8, 1),
                                     persistent=False)
        self._table_cache: tuple | None = None
        self._tcnn = None  # [tcnn.Encoding or None], built on first CUDA use; a plain attribute, never a submodule

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    def encoding_config(self) -> dict:
        """The tiny-cuda-nn encoding config this module reproduces."""
        return {"otype": "HashGrid", "n_levels": self.n_levels, "n_features_per_level": self.n_features_per_level,
                "log2_hashmap_size": self.log2_hashmap_size, "base_resolution": self.base_resolution,
                "per_level_scale": self.per_level_scale, "interpolation": "Linear"}

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Features ``(N, n_levels * F)`` of points ``(N, 3)`` in ``[0, 1]^3``, level-major."""
        if self.use_tcnn and self.params.is_cuda and accel.tcnn_available():
            if self._tcnn is None:
                self._tcnn = [accel.tcnn_encoding(3, self.encoding_config())]
            if self._tcnn[0] is not None:
                return accel.tcnn_encode(self._tcnn[0], x01, self.params)
        return _HashGridFunction.apply(x01.to(torch.float32), self.params, self)

    # ---- the math, on one chunk of points --------------------------------------------------------
    def _chunk(self, x01: torch.Tensor):
        """Per run of levels: ``(l0, l1, first entry, index (Lr, 8, n), axis weights (Lr, 3, 2, n))``.

        Corner ``c = 4 k + 2 j + i`` is offset ``(i, j, k)`` along ``(x, y, z)`` from the cell's lower corner; the
        trilinear weight of corner ``c`` is ``w[:, 0, i] * w[:, 1, j] * w[:, 2, k]``.
        """
        n_levels = self.n_levels
        # (L, 3, n), points innermost in memory (a transposed view would make every later op strided).
        pos = x01.t().contiguous().unsqueeze(0) * self._scale.view(n_levels, 1, 1) + 0.5
        cell_f = torch.floor(pos)
        frac = pos - cell_f
        w = torch.stack([1.0 - frac, frac], dim=2)
        # Corner coordinates times the level's factor (res^d or the prime), exact in int64; the uint32
        # wrap-around is applied by masking, which commutes with the sums and xors below.
        a0 = cell_f.to(torch.int64) * self._mult.view(n_levels, 3, 1)  # (L, 3, n), lower corner
        out = []
        for k, (l0, l1, hashed, base) in enumerate(self._runs):
            rel = getattr(self, f"_run{k}_offset")
            if hashed:
                # Every hashed level has T = 2^log2_hashmap_size, so "xor, then mod T" equals "mask each axis,
                # then xor"; the upper corner is (c + 1) p = c p + p; a level's offset inside the run is a
                # multiple of T and can be or-ed into one term. The 8-corner work is int32 and division-free.
                mask = (1 << self.log2_hashmap_size) - 1
                h0 = (a0[l0:l1] & mask).to(self._index_dtype)
                h = torch.stack([h0, (h0 + getattr(self, f"_run{k}_step")) & mask], dim=2)  # (Lr, 3, 2, n)
                hx = h[:, 0] | rel.view(-1, 1, 1)
                index = h[:, 2, :, None, None, :] ^ h[:, 1, None, :, None, :] ^ hx[:, None, None, :, :]
            else:
                # Dense: c_x + c_y res + c_z res^2 for the lower corner plus each corner's fixed offset.
                lower = a0[l0:l1].sum(dim=1, keepdim=True)  # (Lr, 1, n)
                index = ((lower + getattr(self, f"_run{k}_corner")) & UINT32) % getattr(self, f"_run{k}_size")
                index = (index + rel.view(-1, 1, 1)).to(self._index_dtype)
            out.append((l0, l1, base, index.reshape(l1 - l0, 8, -1), w[l0:l1]))
        return out

    @staticmethod
    def _corner_weights(w: torch.Tensor, derivative_axis: int | None = None) -> torch.Tensor:
        """Trilinear weights ``(Lr, 8, n)`` from per-axis weights ``(Lr, 3, 2, n)``; with ``derivative_axis`` d,
        their derivative with respect to the fractional position along d."""
        ws = [w[:, d] for d in range(3)]
        if derivative_axis is not None:
            ws[derivative_axis] = torch.tensor([-1.0, 1.0], dtype=w.dtype, device=w.device).view(1, 2, 1).expand_as(
                ws[derivative_axis])
        wx, wy, wz = ws
        return (wz[:, :, None, None, :] * wy[:, None, :, None, :] * wx[:, None, None, :, :]).reshape(w.shape[0], 8, -1)

    def _chunk_size(self, x: torch.Tensor) -> int:
        return self.chunk_size if x.device.type == "cpu" else self.gpu_chunk_size

    def _table_t(self) -> torch.Tensor:
        """The parameters as ``(F, entries)``: one contiguous row per feature makes every gather a 4-byte gather.

        Cached while the parameters are unchanged (inference); the optimizer's in-place step bumps the version.
        """
        p = self.params
        key = (p.data_ptr(), p._version, p.device, p.dtype)
        if self._table_cache is None or self._table_cache[0] != key:
            f = self.n_features_per_level
            table = p.detach().view(-1, f).t().contiguous() if f > 1 else p.detach().view(1, -1)
            self._table_cache = (key, table)
        return self._table_cache[1]

    def corners(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute table entries and trilinear weights of every level's 8 corners, both ``(N, L, 8)`` (tests)."""
        index, weight = [], []
        for l0, l1, base, idx, w in self._chunk(x01.to(torch.float32)):
            index.append(idx.to(torch.int64) + base)
            weight.append(self._corner_weights(w))
        return torch.cat(index).permute(2, 0, 1), torch.cat(weight).permute(2, 0, 1)


class _HashGridFunction(torch.autograd.Function):
    """The encoding as one autograd node: chunked forward, and a backward that recomputes corners chunk by chunk
    and scatters into ONE gradient buffer (what tcnn does), instead of storing every chunk's intermediates."""

    @staticmethod
    def forward(ctx, x01: torch.Tensor, params: torch.Tensor, enc: HashGridEncoding) -> torch.Tensor:
        n, f, n_levels = x01.shape[0], enc.n_features_per_level, enc.n_levels
        table = enc._table_t()
        out = torch.empty(n_levels, f, n, dtype=torch.float32, device=x01.device)
        chunk = enc._chunk_size(x01)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            for l0, l1, base, index, w in enc._chunk(x01[start:stop]):
                flat = index.reshape(-1)
                frac = w[:, :, 1, None, None, :]  # (Lr, 3, 1, 1, n)
                for j in range(f):
                    # Trilinear interpolation as 7 lerps (x, then y, then z): about a third of the arithmetic
                    # of forming the 8 corner weights and a weighted sum.
                    vals = table[j, base:].index_select(0, flat).view(l1 - l0, 2, 2, 2, -1)  # [z][y][x]
                    vx = torch.lerp(vals[:, :, :, 0], vals[:, :, :, 1], frac[:, 0])
                    vy = torch.lerp(vx[:, :, 0], vx[:, :, 1], frac[:, 1, 0])
                    out[l0:l1, j, start:stop] = torch.lerp(vy[:, 0], vy[:, 1], frac[:, 2, 0, 0])
        ctx.save_for_backward(x01)
        ctx.enc = enc
        return out.permute(2, 0, 1).reshape(n, n_levels * f)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (x01,) = ctx.saved_tensors
        enc: HashGridEncoding = ctx.enc
        n, f, n_levels = x01.shape[0], enc.n_features_per_level, enc.n_levels
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = grad_out.to(torch.float32).reshape(n, n_levels, f).permute(1, 2, 0).contiguous()  # (L, F, N)
        grad_table = torch.zeros(f, enc.n_entries, dtype=torch.float32, device=x01.device) if need_params else None
        grad_x = torch.zeros(3, n, dtype=torch.float32, device=x01.device) if need_x else None
        table = enc._table_t() if need_x else None
        chunk = enc._chunk_size(x01)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            for l0, l1, base, index, w in enc._chunk(x01[start:stop]):
                weights = enc._corner_weights(w)
                flat = index.reshape(-1)
                gc = g[l0:l1, :, start:stop]  # (Lr, F, n)
                if need_params:
                    for j in range(f):
                        grad_table[j, base:].index_add_(0, flat, (weights * gc[:, j, None, :]).reshape(-1))
                if need_x:
                    # d out / d x01_d = scale_l * sum_c feature_c * d weight_c / d frac_d
                    gv = sum(table[j, base:].index_select(0, flat).view_as(weights) * gc[:, j, None, :]
                             for j in range(f))
                    scale = enc._scale[l0:l1].view(-1, 1)
                    for d in range(3):
                        dw = enc._corner_weights(w, d)
                        grad_x[d, start:stop] += ((gv * dw).sum(1) * scale).sum(0)
        grad_params = grad_table.t().reshape(-1) if need_params else None
        return (grad_x.t() if need_x else None), grad_params, None
