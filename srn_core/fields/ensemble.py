"""A domain-decomposed field: the model cube is split into a regular grid of bricks, one field per brick.

This is how APMGSRN scales to large volumes (its "ensemble" models): each brick is trained on its own
sub-volume (plus ghost cells) with its own value range, and a query point is routed to the brick of the
uniform partition it falls in, then re-mapped into that brick's own ``[-1, 1]^3``. The bricks are trained by
:mod:`srn_core.ensemble_training`.
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

    ``present`` builds a partial ensemble (what ``load_model(path, extent=...)`` loads for one piece of a
    parallel pipeline): only those bricks exist, the others are :class:`AbsentBrick` placeholders without
    tensors, and a point routed to one of them is an error. :attr:`present` lists the loaded bricks (all of
    them for a whole ensemble).
    """

    architecture = "ensemble"
    Config = EnsembleConfig

    def __init__(self, config: EnsembleConfig, value_range=None, bricks: list[Field] | None = None,
                 present=None):
        n = len(config.brick_configs)
        if present is not None:
            # A partial ensemble (srn_core.loading.load_model(..., extent=...)): only the bricks in ``present``
            # are built; the others are placeholders that hold no tensor at all, so they cost no memory.
            present = sorted({int(k) for k in present})
            if any(not 0 <= k < n for k in present):
                raise ValueError(f"present bricks must be indices from 0 to {n - 1}, got {present}.")
            if bricks is not None:
                raise ValueError("give either the bricks or the indices of the present bricks, not both.")
            if value_range is None:
                raise ValueError("a partial ensemble needs the ensemble's value_range (its absent bricks' ranges "
                                 "are unknown).")
        if bricks is None:
            # Built from a model file: the bricks' weights and value ranges arrive with the state dict.
            from . import build_field
            bricks = [build_field(config.brick_architecture, c) if present is None or k in present else AbsentBrick(k)
                      for k, c in enumerate(config.brick_configs)]
        if len(bricks) != n:
            raise ValueError(f"ensemble config describes {n} bricks, got {len(bricks)}.")
        if value_range is None:
            ranges = torch.stack([b.value_range for b in bricks])
            value_range = (float(ranges[:, 0].min()), float(ranges[:, 1].max()))
        super().__init__(config, value_range)
        self.bricks = nn.ModuleList(bricks)
        self.present = list(range(n)) if present is None else present
        b = torch.tensor(config.brick_bounds, dtype=torch.float32).reshape(-1, 3, 2)
        # Derived from the config, so not persistent: the state dict holds only the bricks and the range.
        self.register_buffer("brick_min", b[:, :, 0].contiguous(), persistent=False)
        self.register_buffer("brick_max", b[:, :, 1].contiguous(), persistent=False)
        self.register_buffer("grid", torch.tensor(config.grid, dtype=torch.int64), persistent=False)

    @property
    def is_partial(self) -> bool:
        """Whether some bricks were left out when loading (a point routed to one of them is an error)."""
        return len(self.present) < len(self.bricks)

    def brick_index(self, points: torch.Tensor) -> torch.Tensor:
        """Index ``(N,)`` of the brick that answers for each point."""
        cell = (((points + 1) / 2.0).clamp(0.0, 1.0) * self.grid).long()
        cell = torch.minimum(cell, self.grid - 1)
        gx, gy = self.grid[0], self.grid[1]
        return cell[:, 0] + cell[:, 1] * gx + cell[:, 2] * (gx * gy)

    def segments(self, points: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """``[(brick, rows), ...]``: the rows of ``points`` each brick answers for, in their original order.

        One routing pass and one stable sort split the points into contiguous per-brick runs (one boolean mask
        per brick would scan all points once per brick). A point routed to a brick that was not loaded is an
        error naming the brick and the loaded ones.
        """
        n = len(self.bricks)
        index = self.brick_index(points)
        # A NaN coordinate routes nowhere (its cell is garbage): it keeps the output's 0, as it always did.
        index = torch.where((index >= 0) & (index < n), index, n)
        order = torch.argsort(index, stable=True)
        counts = torch.bincount(index, minlength=n + 1).tolist()[:n]
        out, start = [], 0
        for k, count in enumerate(counts):
            if count:
                if isinstance(self.bricks[k], AbsentBrick):
                    raise ValueError(
                        f"{count:,} point(s) fall in ensemble brick {k}, which was not loaded (this partial "
                        f"ensemble holds bricks {self.present}); load the model with an extent covering them, "
                        f"or whole.")
                out.append((k, order[start:start + count]))
            start += count
        return out

    def local_points(self, k: int, points: torch.Tensor) -> torch.Tensor:
        """``points`` of the ensemble's cube mapped into brick ``k``'s own ``[-1, 1]^3``."""
        lo, hi = self.brick_min[k], self.brick_max[k]
        return -1 + 2 * ((points - lo) / (hi - lo))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Values ``(N,)`` in data units; every brick's output is rescaled (and, while the ensemble's
        :attr:`clamp_output` is on, clamped) with that brick's own range."""
        out = torch.zeros(points.shape[0], dtype=torch.float32, device=points.device)
        for k, rows in self.segments(points):
            brick = self.bricks[k]
            local = self.local_points(k, points[rows])
            out[rows] = to_data_units(brick.normalized(local), brick.value_range, self.clamp_output)
        return out

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        """The ensemble's values scaled by its own (union) range, for consumers that want ``[0, 1]``."""
        lo, hi = self.value_range[0], self.value_range[1]
        values = self.forward(points)
        return (values - lo) / (hi - lo) if float(hi) > float(lo) else values - lo

    def parameter_groups(self, lr: float):
        raise NotImplementedError("ensemble fields are assembled from separately trained bricks; train each brick.")


class AbsentBrick(nn.Module):
    """The place of a brick a partial ensemble did not load: no tensors, and an error if ever evaluated."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"ensemble brick {self.index} was not loaded (a partial ensemble).")


def cells_meeting_extent(grid, dims, extent) -> list[int]:
    """Indices (x fastest) of the uniform routing cells of an ensemble with ``grid`` bricks whose closed boxes
    meet the VTK ``extent`` ``(x0, x1, y0, y1, z0, z1)`` of its training grid of ``dims`` points per axis.

    Exact integer arithmetic: grid point ``i`` of ``N`` sits at ``i / (N - 1)`` of the axis, cell ``c`` of ``g``
    spans ``[c / g, (c + 1) / g]``; a point on a face between two cells counts for both (float32 routing may send
    it either way).
    """
    per_axis = []
    for a in range(3):
        g, n = int(grid[a]), int(dims[a])
        lo, hi = int(extent[2 * a]), int(extent[2 * a + 1])
        if n < 2 or not 0 <= lo <= hi <= n - 1:
            raise ValueError(f"extent {tuple(extent)} does not lie inside the training grid of dims {tuple(dims)}.")
        per_axis.append([c for c in range(g) if c * (n - 1) <= hi * g and (c + 1) * (n - 1) >= lo * g])
    gx, gy = int(grid[0]), int(grid[1])
    return sorted(i + j * gx + k * gx * gy for k in per_axis[2] for j in per_axis[1] for i in per_axis[0])
