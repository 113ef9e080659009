"""fV-SRN: one dense feature grid plus Fourier features of the point, decoded by a bias-free ReLU MLP.

After Weiss et al., "fV-SRN: GPU-accelerated volumetric scene representation networks" (2022), in the form
APMGSRN uses as its baseline: a single grid ``[1, C, D, H, W]`` read trilinearly with corner alignment
(``grid_sample(..., align_corners=True)``, so grid vertex ``i`` of ``W`` sits at ``-1 + 2 i / (W - 1)`` like our
voxels), concatenated with tiny-cuda-nn's ``Frequency`` encoding of ``x01 = (x + 1) / 2``: per axis ``d`` and
frequency ``k = 0..L-1`` the pair ``sin(2^k pi x01_d), cos(2^k pi x01_d)`` (axis-major, then frequency,
then sin/cos). Decoder input order is ``[grid features, Fourier features]`` (the order of APMGSRN's
``fVSRN_NGP`` composite encoding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Field, checked_budget, checked_grid_shape, require_at_least_one
from .grid_shape import fit_grid_shape
from .mlp import MLP


@dataclass
class FVSRNConfig:
    n_features: int = 4
    """Channels C of the feature grid."""
    grid_shape: tuple[int, int, int] = (32, 32, 32)
    """Feature grid resolution ``(D, H, W)``: D along z, H along y, W along x (``grid_sample`` order)."""
    n_frequencies: int = 6
    """Fourier frequencies L per axis (APMGSRN's ``num_positional_encoding_terms``); 6 L decoder inputs."""
    width: int = 64
    """Neurons per hidden decoder layer."""
    n_hidden_layers: int = 2
    """Hidden decoder layers (tiny-cuda-nn's ``n_hidden_layers``)."""

    def __post_init__(self):
        require_at_least_one(self, ("n_features", "width", "n_hidden_layers"), "fV-SRN")
        if int(self.n_frequencies) < 0:
            raise ValueError(f"fV-SRN n_frequencies must be at least 0, got {self.n_frequencies}.")
        self.grid_shape = checked_grid_shape(self.grid_shape, "fV-SRN")

    @property
    def n_decoder_inputs(self) -> int:
        return self.n_features + 6 * self.n_frequencies


class FVSRN(Field):
    """One dense feature grid and Fourier features of the point, decoded by a bias-free ReLU MLP."""

    architecture = "fvsrn"
    Config = FVSRNConfig
    grid_tensors = ("feature_grid",)

    def __init__(self, config: FVSRNConfig = FVSRNConfig(), value_range=(0.0, 1.0)):
        super().__init__(config, value_range)
        c = config
        # Small uniform init (as APMGSRN's grids): the Fourier features carry the signal at the start.
        self.feature_grid = nn.Parameter(torch.empty(1, c.n_features, *c.grid_shape).uniform_(-1e-4, 1e-4))
        self.decoder = MLP(c.n_decoder_inputs, 1, c.width, c.n_hidden_layers, bias=False)
        # 2^k pi per frequency; a non-persistent buffer because it follows from the config.
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(c.n_frequencies, dtype=torch.float32),
                             persistent=False)

    def grid_features(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear grid features ``(N, C)`` of model-cube points ``(N, 3)`` (border values outside the cube)."""
        n = points.shape[0]
        feats = F.grid_sample(self.feature_grid, points.view(1, 1, 1, n, 3), mode="bilinear",
                              padding_mode="border", align_corners=True)  # (1, C, 1, 1, N)
        return feats.view(self.config.n_features, n).t()

    def fourier_features(self, points: torch.Tensor) -> torch.Tensor:
        """tiny-cuda-nn ``Frequency`` features ``(N, 6 L)`` of ``(x + 1) / 2``: axis-major, then frequency, sin/cos."""
        x01 = (points + 1.0) * 0.5
        phase = x01.unsqueeze(-1) * self.frequencies  # (N, 3, L)
        return torch.stack([torch.sin(phase), torch.cos(phase)], dim=-1).reshape(points.shape[0], 6 * phase.shape[-1])

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([self.grid_features(points), self.fourier_features(points)], dim=1)
        return self.decoder(feats)[:, 0]

    @staticmethod
    def count(config: FVSRNConfig) -> int:
        """Parameter count of ``config`` without building the model."""
        d, h, w = config.grid_shape
        return config.n_features * d * h * w + MLP.count(config.n_decoder_inputs, 1, config.width,
                                                         config.n_hidden_layers)

    @classmethod
    def config_for_budget(cls, num_params: int, data_shape_zyx) -> FVSRNConfig:
        """The paper's family (6 frequencies, 2-layer decoder; 2/4/8 channels as the budget grows) scaled to
        ``num_params``, the grid shaped like the data and sized so the count lands within 2 % of the budget."""
        num_params = checked_budget(num_params)
        n_features = 2 if num_params < 400_000 else 4 if num_params < 4_000_000 else 8
        width = 32 if num_params < 100_000 else 64
        n_frequencies = 6
        decoder = MLP.count(n_features + 6 * n_frequencies, 1, width, 2)
        shape = fit_grid_shape((num_params - decoder) // n_features, data_shape_zyx)
        return FVSRNConfig(n_features, shape, n_frequencies, width, 2)


