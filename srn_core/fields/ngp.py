"""NGP: the multi-resolution hash-grid encoding (:mod:`.hashgrid`) followed by a bias-free ReLU MLP.

The architecture of APMGSRN's ``NGP_TCNN`` baseline, sized for a parameter budget by :meth:`NGP.config_for_budget`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Field, checked_budget, require_at_least_one
from .hashgrid import HashGridEncoding, hash_grid_levels
from .mlp import MLP


@dataclass
class NGPConfig:
    n_levels: int = 16
    """Resolution levels L of the hash grid."""
    n_features_per_level: int = 2
    """Features F per level (tcnn supports 1, 2, 4, 8)."""
    log2_hashmap_size: int = 19
    """log2 of the largest table size T per level."""
    base_resolution: int = 16
    """Vertices per axis of the coarsest level (tcnn's ``base_resolution``)."""
    per_level_scale: float = 1.3819128799
    """Growth of the resolution from one level to the next; ``(max_res / base_res)^(1 / (L - 1))``."""
    width: int = 64
    """Neurons per hidden decoder layer."""
    n_hidden_layers: int = 2
    """Hidden decoder layers (tiny-cuda-nn's ``n_hidden_layers``)."""

    def __post_init__(self):
        require_at_least_one(self, ("n_levels", "n_features_per_level", "base_resolution", "width",
                                    "n_hidden_layers"), "NGP")
        if not 3 <= int(self.log2_hashmap_size) <= 30:
            raise ValueError(f"NGP log2_hashmap_size must be between 3 and 30, got {self.log2_hashmap_size}.")
        if not (math.isfinite(float(self.per_level_scale)) and float(self.per_level_scale) > 0):
            raise ValueError(f"NGP per_level_scale must be a positive number, got {self.per_level_scale}.")


class NGP(Field):
    """Hash-grid encoding of ``(x + 1) / 2`` followed by a bias-free ReLU MLP (APMGSRN's ``NGP_TCNN``)."""

    architecture = "ngp"
    Config = NGPConfig
    grid_tensors = ("encoding.params",)

    def __init__(self, config: NGPConfig = NGPConfig(), value_range=(0.0, 1.0)):
        super().__init__(config, value_range)
        c = config
        self.encoding = HashGridEncoding(c.n_levels, c.n_features_per_level, c.log2_hashmap_size,
                                         c.base_resolution, c.per_level_scale)
        self.decoder = MLP(self.encoding.n_output_dims, 1, c.width, c.n_hidden_layers, bias=False)

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoding((points + 1.0) * 0.5))[:, 0]

    @staticmethod
    def count(config: NGPConfig) -> int:
        """Parameter count of ``config`` without building the model."""
        levels = hash_grid_levels(config.n_levels, config.log2_hashmap_size, config.base_resolution,
                                  config.per_level_scale)
        table = (levels[-1].offset + levels[-1].size) * config.n_features_per_level
        return table + MLP.count(config.n_levels * config.n_features_per_level, 1, config.width,
                                 config.n_hidden_layers)

    @classmethod
    def config_for_budget(cls, num_params: int, data_shape_zyx) -> NGPConfig:
        """2 features per level, the finest level at the data's largest dimension, levels and table size fitted.

        Searches levels (2..24), ``log2_hashmap_size`` (6..24) and the base resolution for a count near
        ``num_params`` (never more than 2 % above): the most usual NGP shape (about 16 levels, a dense coarsest
        level, base 16 when the table allows), traded against closeness, within 2 % of the budget, else the closest.
        When the data is too small to hold the budget densely the finest resolution is allowed to grow.
        """
        num_params = checked_budget(num_params)
        max_dim = max(2, max(int(s) for s in data_shape_zyx))
        width = 32 if num_params < 100_000 else 64
        f = 2
        candidates = []  # (relative error, style penalty, config)
        for max_res in sorted({max(2, round(max_dim * f)) for f in (0.75, 1, 1.25, 1.5, 2, 4, 8)}):
            for base in (4, 6, 8, 10, 12, 16, 20, 24, 32):
                if base > max_res:
                    continue
                for n_levels in range(2, 25):
                    pls = math.exp((math.log(max_res) - math.log(base)) / (n_levels - 1))
                    # Dense table sizes once per level layout; each hashmap size then just caps them.
                    dense = [lv.size for lv in hash_grid_levels(n_levels, 62, base, pls)]
                    mlp = MLP.count(n_levels * f, 1, width, 2)
                    for log2_size in range(6, 25):
                        cap = 1 << log2_size
                        count = sum(min(d, cap) for d in dense) * f + mlp
                        if count > 1.02 * num_params:
                            continue
                        # The usual shape: about 16 levels, the coarsest level dense (a hashed coarse level
                        # collides everywhere: 24 dB instead of 42 dB on a smooth 32^3 field at 20k parameters),
                        # base 16 for large tables, the finest level at the data's resolution.
                        preferred_base = min(16, 2 ** (log2_size // 3))
                        style = (abs(n_levels - 16) + 2 * abs(math.log2(base / preferred_base))
                                 + (8 if base ** 3 > cap else 0) + 8 * abs(math.log2(max_res / max_dim))
                                 + 0.01 * log2_size)
                        candidates.append((abs(count - num_params) / num_params, style,
                                           (n_levels, log2_size, base, pls)))
        best = None
        if candidates:
            # Within 2 % of the budget: the usual shape, 1 % of error weighing like 10 levels away from 16.
            near = [c for c in candidates if c[0] <= 0.02]
            if near:
                best = min(near, key=lambda c: (c[1] + 1000 * c[0], c[0]))[2]
            else:
                best = min(candidates, key=lambda c: (c[0], c[1]))[2]
        if best is None:
            raise ValueError(f"no NGP configuration fits a budget of {num_params} parameters.")
        n_levels, log2_size, base, pls = best
        return NGPConfig(n_levels, f, log2_size, base, pls, width, 2)
