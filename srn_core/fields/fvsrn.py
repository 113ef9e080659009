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

from .base import Field
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
        self.grid_shape = tuple(int(v) for v in self.grid_shape)
        for name in ("n_features", "width", "n_hidden_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"fV-SRN {name} must be at least 1, got {getattr(self, name)}.")
        if int(self.n_frequencies) < 0:
            raise ValueError(f"fV-SRN n_frequencies must be at least 0, got {self.n_frequencies}.")
        if len(self.grid_shape) != 3 or min(self.grid_shape) < 2:
            raise ValueError(f"fV-SRN grid_shape must be three sizes of at least 2, got {self.grid_shape}.")

    @property
    def n_decoder_inputs(self) -> int:
        return self.n_features + 6 * self.n_frequencies


class FVSRN(Field):
    """One dense feature grid and Fourier features of the point, decoded by a bias-free ReLU MLP."""

    architecture = "fvsrn"
    Config = FVSRNConfig

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
        num_params = int(num_params)
        if num_params < 1000:
            raise ValueError(f"parameter budget must be at least 1000, got {num_params}.")
        n_features = 2 if num_params < 400_000 else 4 if num_params < 4_000_000 else 8
        width = 32 if num_params < 100_000 else 64
        n_frequencies = 6
        decoder = MLP.count(n_features + 6 * n_frequencies, 1, width, 2)
        shape = fit_grid_shape((num_params - decoder) // n_features, data_shape_zyx)
        return FVSRNConfig(n_features, shape, n_frequencies, width, 2)


def fit_grid_shape(voxels: int, data_shape_zyx, slack: int = 3) -> tuple[int, int, int]:
    """A grid shape ``(D, H, W)`` with about ``voxels`` cells (never more) and the data's aspect ratio.

    Tries every pair of axes within ``slack`` cells of the ideal real-valued shape with the third axis filling
    the budget, so the product lands within about 1 % of ``voxels`` even for small grids, where changing one
    axis by one cell moves the count by several percent (:func:`~srn_core.fields.apmgsrn.aspect_shape` only
    shrinks the largest axis and can land 10 % short).
    """
    voxels = max(8, int(voxels))
    dims = [max(1, int(s)) for s in data_shape_zyx]
    # The real-valued shape with the data's proportions and ``voxels`` cells; an axis that would get fewer
    # than 2 cells (a thin slab) is pinned at 2 and the others share the rest.
    ideal: list[float] = [0.0, 0.0, 0.0]
    pinned: set[int] = set()
    while True:
        free = [a for a in range(3) if a not in pinned]
        scale = (voxels / 2 ** len(pinned) / math.prod(dims[a] for a in free)) ** (1 / len(free))
        ideal = [2.0 if a in pinned else dims[a] * scale for a in range(3)]
        small = [a for a in free if ideal[a] < 2]
        if not small or len(pinned) + len(small) == 3:
            ideal = [max(2.0, v) for v in ideal]
            break
        pinned.update(small)
    ranges = [range(max(2, math.floor(v) - slack), max(2, math.ceil(v) + slack) + 1) for v in ideal]
    # Two axes near their ideal sizes, the third as large as the budget allows (each axis in turn).
    shapes = set()
    for solved in range(3):
        a, b = (x for x in range(3) if x != solved)
        for na in ranges[a]:
            for nb in ranges[b]:
                n = voxels // (na * nb)
                if n >= 2:
                    shape = [0, 0, 0]
                    shape[a], shape[b], shape[solved] = na, nb, n
                    shapes.add(tuple(shape))
    if not shapes:
        return (2, 2, 2)
    def shortfall(shape):
        return 1.0 - shape[0] * shape[1] * shape[2] / voxels

    def distortion(shape):  # log distance from the data's proportions
        return sum(abs(math.log(n / v)) for n, v in zip(shape, ideal))

    # Trade cells against proportions (1 % fewer cells ~ 0.2 of log distortion), within 1.5 % of the budget.
    limit = max(0.015, min(shortfall(s) for s in shapes))
    return min((s for s in shapes if shortfall(s) <= limit), key=lambda s: (100 * shortfall(s) + 5 * distortion(s), s))
