"""SIREN in Neurcomp's form: a residual sine network on the coordinates, no feature grid.

After Lu et al., "Compressive neural representations of volumetric scalar fields" (neurcomp, 2021), built on
Sitzmann et al.'s SIREN. Layer 0 is ``sin(omega_0 (W x + b))`` with ``W ~ U(-1/3, 1/3)``; layers
``1..n_layers-1`` are residual blocks ``y = w2 (x + sin(omega_0 L2(sin(omega_0 L1(w1 x)))))`` with ``w1 = 0.5``
from block 2 on and ``w2 = 0.5`` on the last block (Neurcomp's averaging), hidden weights
``~ U(-sqrt(6 / N) / omega_0, +sqrt(6 / N) / omega_0)``; a final linear layer gives the value. Biases are on.
Module names follow Neurcomp's ``FieldNet`` (``net_layers.0.linear``, ``net_layers.i.linear_1/linear_2``,
``net_layers.<n_layers>``) so its state dicts map one to one.

Points are multiplied by ``coordinate_scale`` first: Neurcomp scales each axis by ``(n_d - 1) / max_k (n_k - 1)``
so the network sees the data's true proportions (the sine frequencies are then isotropic in voxel units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import Field, checked_budget, require_at_least_one


@dataclass
class SIRENConfig:
    width: int = 64
    """Neurons N per layer."""
    n_layers: int = 8
    """Sine layers: the first layer plus ``n_layers - 1`` residual blocks (Neurcomp's ``n_layers``)."""
    omega_0: float = 30.0
    """Frequency factor of every sine (SIREN's omega_0; Neurcomp fixes it at 30)."""
    coordinate_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Per-axis factor ``(x, y, z)`` applied to model-cube points before the first layer (data proportions)."""

    def __post_init__(self):
        self.coordinate_scale = tuple(float(v) for v in self.coordinate_scale)
        require_at_least_one(self, ("width", "n_layers"), "SIREN")
        if not (math.isfinite(float(self.omega_0)) and float(self.omega_0) > 0):
            raise ValueError(f"SIREN omega_0 must be a positive number, got {self.omega_0}.")
        if len(self.coordinate_scale) != 3 or not all(math.isfinite(v) and v > 0 for v in self.coordinate_scale):
            raise ValueError(f"SIREN coordinate_scale must be three positive numbers, got {self.coordinate_scale}.")


class SineLayer(nn.Module):
    """``sin(omega_0 (W x + b))``, SIREN's first layer (``W ~ U(-1/n_in, 1/n_in)``)."""

    def __init__(self, n_in: int, n_out: int, omega_0: float):
        super().__init__()
        self.omega_0 = float(omega_0)
        self.linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            self.linear.weight.uniform_(-1.0 / n_in, 1.0 / n_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega_0 * self.linear(x))


class ResidualSineLayer(nn.Module):
    """``w2 (x + sin(omega_0 L2(sin(omega_0 L1(w1 x)))))``, Neurcomp's residual block."""

    def __init__(self, width: int, omega_0: float, scale_in: float = 1.0, scale_out: float = 1.0):
        super().__init__()
        self.omega_0 = float(omega_0)
        self.scale_in = float(scale_in)
        self.scale_out = float(scale_out)
        self.linear_1 = nn.Linear(width, width)
        self.linear_2 = nn.Linear(width, width)
        bound = math.sqrt(6.0 / width) / self.omega_0
        with torch.no_grad():
            self.linear_1.weight.uniform_(-bound, bound)
            self.linear_2.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.omega_0 * self.linear_1(self.scale_in * x))
        return self.scale_out * (x + torch.sin(self.omega_0 * self.linear_2(h)))


class SIREN(Field):
    """Neurcomp's residual SIREN: sine layers on the (scaled) coordinates, a linear output layer, biases on."""

    architecture = "siren"
    Config = SIRENConfig
    default_lr = 1e-3  # sine networks diverge at the grid models' 0.01 (measured: 14 dB vs 35 dB)

    def __init__(self, config: SIRENConfig = SIRENConfig(), value_range=(0.0, 1.0)):
        super().__init__(config, value_range)
        c = config
        layers: list[nn.Module] = [SineLayer(3, c.width, c.omega_0)]
        for i in range(1, c.n_layers):
            layers.append(ResidualSineLayer(c.width, c.omega_0, scale_in=0.5 if i > 1 else 1.0,
                                            scale_out=0.5 if i == c.n_layers - 1 else 1.0))
        last = nn.Linear(c.width, 1)
        bound = math.sqrt(6.0 / c.width) / c.omega_0
        with torch.no_grad():
            last.weight.uniform_(-bound, bound)
        layers.append(last)
        self.net_layers = nn.ModuleList(layers)
        self.register_buffer("coordinate_scale", torch.tensor(c.coordinate_scale, dtype=torch.float32),
                             persistent=False)

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        h = points * self.coordinate_scale
        for layer in self.net_layers:
            h = layer(h)
        return h[:, 0]

    @staticmethod
    def count(config: SIRENConfig) -> int:
        """Parameter count of ``config`` without building the model: ``4N + 2(n_layers - 1)(N^2 + N) + N + 1``."""
        n = config.width
        return 4 * n + 2 * (config.n_layers - 1) * (n * n + n) + n + 1

    @classmethod
    def config_for_budget(cls, num_params: int, data_shape_zyx) -> SIRENConfig:
        """Neurcomp's 8-layer residual network with the width that brings the count closest to ``num_params``
        (never more than 2 % above), coordinates scaled to the data's proportions."""
        num_params = checked_budget(num_params)
        n_layers = 8
        # Solve 2 (L - 1) N^2 + (2 (L - 1) + 5) N + 1 = budget, then check the integers around the root.
        a, b = 2 * (n_layers - 1), 2 * (n_layers - 1) + 5
        root = (-b + math.sqrt(b * b + 4 * a * (num_params - 1))) / (2 * a)
        widths = [w for w in range(max(1, int(root) - 1), int(root) + 3)
                  if cls.count(SIRENConfig(w, n_layers)) <= 1.02 * num_params]
        width = min(widths, key=lambda w: abs(cls.count(SIRENConfig(w, n_layers)) - num_params))
        return SIRENConfig(width=width, n_layers=n_layers, coordinate_scale=proportional_scale(data_shape_zyx))


def proportional_scale(data_shape_zyx) -> tuple[float, float, float]:
    """Neurcomp's per-axis coordinate factors ``(x, y, z)``: ``(n_d - 1) / max_k (n_k - 1)`` (1 for a flat axis)."""
    nz, ny, nx = (max(1, int(s)) for s in data_shape_zyx)
    longest = max(nx, ny, nz) - 1
    if longest == 0:
        return (1.0, 1.0, 1.0)
    return tuple(max(n - 1, 1) / longest for n in (nx, ny, nz))  # type: ignore[return-value]
