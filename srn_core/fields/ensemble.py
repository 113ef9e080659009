"""A domain-decomposed field: the model cube is split into a regular grid of bricks, one field per brick.

This is how APMGSRN scales to large volumes (its "ensemble" models): each brick is trained on its own
sub-volume (plus ghost cells) with its own value range, and a query point is routed to the brick of the
uniform partition it falls in, then re-mapped into that brick's own ``[-1, 1]^3``.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field

import torch
from torch import nn

from .base import Field, to_data_units


@dataclass
class EnsembleConfig:
    grid: tuple[int, int, int] = (1, 1, 1)
    """Bricks along model x, y, z. Brick ``(i, j, k)`` has index ``i + j * gx + k * gx * gy`` (x fastest)."""
    brick_architecture: str = "apmgsrn"
    """Architecture of every brick (a name of the field registry)."""
    brick_configs: list = dataclass_field(default_factory=list)
    """One config dict per brick, in brick-index order."""
    brick_bounds: list = dataclass_field(default_factory=list)
    """Per brick, the box ``(xmin, xmax, ymin, ymax, zmin, zmax)`` of the ensemble's model cube that maps to the
    brick's own ``[-1, 1]^3`` (the brick's training sub-volume, ghost cells included, so it covers its routing cell)."""

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(f"ensemble grid must be three brick counts of at least 1, got {self.grid}.")
        n = self.grid[0] * self.grid[1] * self.grid[2]
        if len(self.brick_configs) != n or len(self.brick_bounds) != n:
            raise ValueError(f"ensemble grid {self.grid} needs {n} brick configs and bounds, got "
                             f"{len(self.brick_configs)} configs and {len(self.brick_bounds)} bounds.")
        self.brick_bounds = [[float(v) for v in b] for b in self.brick_bounds]
        for k, b in enumerate(self.brick_bounds):
            if len(b) != 6 or any(not (b[2 * a + 1] > b[2 * a]) for a in range(3)):
                raise ValueError(f"ensemble brick {k} bounds must be six numbers with min < max per axis, got {b}.")


class EnsembleField(Field):
    """Routes each point to one brick field and returns that brick's value (in data units).

    Routing follows APMGSRN's ensembles: along each model axis the cube is cut into ``g`` equal cells,
    ``cell = floor((p + 1) / 2 * g)`` (clamped to ``[0, g - 1]``); ghost-cell overlaps are ignored at query time.
    The ensemble's ``value_range`` is the union of the bricks' ranges.
    """

    architecture = "ensemble"
    Config = EnsembleConfig

    def __init__(self, config: EnsembleConfig, value_range=None, bricks: list[Field] | None = None):
        if bricks is None:
            # Built from a model file: the bricks' weights and value ranges arrive with the state dict.
            from . import build_field
            bricks = [build_field(config.brick_architecture, c) for c in config.brick_configs]
        if len(bricks) != len(config.brick_configs):
            raise ValueError(f"ensemble config describes {len(config.brick_configs)} bricks, got {len(bricks)}.")
        if value_range is None:
            ranges = torch.stack([b.value_range for b in bricks])
            value_range = (float(ranges[:, 0].min()), float(ranges[:, 1].max()))
        super().__init__(config, value_range)
        self.bricks = nn.ModuleList(bricks)
        b = torch.tensor(config.brick_bounds, dtype=torch.float32).reshape(-1, 3, 2)
        # Derived from the config, so not persistent: the state dict holds only the bricks and the range.
        self.register_buffer("brick_min", b[:, :, 0].contiguous(), persistent=False)
        self.register_buffer("brick_max", b[:, :, 1].contiguous(), persistent=False)
        self.register_buffer("grid", torch.tensor(config.grid, dtype=torch.int64), persistent=False)

    def brick_index(self, points: torch.Tensor) -> torch.Tensor:
        """Index ``(N,)`` of the brick that answers for each point."""
        cell = (((points + 1) / 2.0).clamp(0.0, 1.0) * self.grid).long()
        cell = torch.minimum(cell, self.grid - 1)
        gx, gy = self.grid[0], self.grid[1]
        return cell[:, 0] + cell[:, 1] * gx + cell[:, 2] * (gx * gy)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Values ``(N,)`` in data units; every brick's output is rescaled (and, while the ensemble's
        :attr:`clamp_output` is on, clamped) with that brick's own range."""
        index = self.brick_index(points)
        out = torch.zeros(points.shape[0], dtype=torch.float32, device=points.device)
        for k, brick in enumerate(self.bricks):
            mask = index == k
            if not bool(mask.any()):
                continue
            lo, hi = self.brick_min[k], self.brick_max[k]
            local = -1 + 2 * ((points[mask] - lo) / (hi - lo))
            out[mask] = to_data_units(brick.normalized(local), brick.value_range, self.clamp_output)
        return out

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        """The ensemble's values scaled by its own (union) range, for consumers that want ``[0, 1]``."""
        lo, hi = self.value_range[0], self.value_range[1]
        values = self.forward(points)
        return (values - lo) / (hi - lo) if float(hi) > float(lo) else values - lo

    def parameter_groups(self, lr: float):
        raise NotImplementedError("ensemble fields are assembled from separately trained bricks; train each brick.")
