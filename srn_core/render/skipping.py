"""Empty-space skipping over macro-cells: which samples can be seen, and how far a ray may leap.

Rays live in *cell coordinates* (one unit per macro-cell edge; the volume spans ``[0, (dims - 1) / C]``), so a
point's cell is its floor. Given each cell's largest opacity under the current transfer function
(:meth:`~.macrocells.MacroCells.max_opacity`), :func:`empty_distance` gives every cell its Chebyshev distance to
the nearest visible one, and :meth:`CellSkipper.skip` moves a ray whose next sample lies in a transparent cell to
the first sample past the whole block of transparent cells around it (a 3-D DDA that leaps by that distance).
The ray's sample lattice is kept, so skipping changes the image only where a cell's range was not conservative.
With adaptive steps (Instant-VNR's rule) a ray also gets a longer step in faint cells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit parameters ``(R,)``, ``(R,)`` of rays ``origins + t dirs`` (``(R, 3)`` each) through the
    axis-aligned boxes ``[lo, hi]`` (``(3,)`` or ``(R, 3)``); a ray misses where entry > exit."""
    safe = torch.where(dirs.abs() < 1e-30, torch.full_like(dirs, 1e-30), dirs)
    t1 = (lo - origins) / safe
    t2 = (hi - origins) / safe
    return torch.minimum(t1, t2).amax(dim=-1), torch.maximum(t1, t2).amin(dim=-1)


def empty_distance(occupied: torch.Tensor) -> torch.Tensor:
    """Chebyshev distance (in cells) from every cell to the nearest occupied one; 0 on occupied cells.

    ``occupied`` is a boolean ``(cz, cy, cx)``; the result is int64 of the same shape. A ray in a cell at distance
    ``d`` can leap to the far side of the ``(2d - 1)^3`` block centred on its cell: every cell of that block is
    transparent. With nothing visible anywhere every cell gets more than the grid's size (leap out of the volume).
    """
    occ = occupied.float()[None, None]
    dist = torch.zeros(occupied.shape, dtype=torch.int64)
    reach = occ
    limit = max(occupied.shape) + 1
    dist[~occupied] = limit
    for r in range(1, limit):
        if bool(reach.all()):
            break
        grown = F.max_pool3d(reach, kernel_size=3, stride=1, padding=1)
        newly = (grown > 0) & ~(reach > 0)
        dist[newly[0, 0]] = r
        reach = grown
    return dist


class CellSkipper:
    """The macro-cells of one render as the marcher uses them (opacity bounds, distance map, lattice in cells).

    ``cell_opacity`` ``(cz, cy, cx)`` bounds each cell's opacity; ``extent`` ``(3,)`` is the volume's far corner in
    cell coordinates (x, y, z); ``dt`` the fixed sample spacing along a ray (world units).
    """

    def __init__(self, cell_opacity: torch.Tensor, extent: torch.Tensor, dt: float, adaptive_step: bool):
        self.extent, self.dt, self.adaptive_step = extent, dt, adaptive_step
        cells_xyz = torch.tensor(tuple(cell_opacity.shape)[::-1], dtype=torch.int64)
        self.num_cells = int(cells_xyz.sum())
        self.cell_max = (cells_xyz - 1).float()
        self.strides = torch.tensor([1.0, float(cells_xyz[0]), float(cells_xyz[0] * cells_xyz[1])])
        self.opacity_flat = cell_opacity.reshape(-1).contiguous()
        self.occupied_flat = self.opacity_flat > 0
        self.distance_flat = empty_distance(cell_opacity > 0).reshape(-1).contiguous()

    def cells(self, cpos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells of cell-space points ``(..., 3)``: per-axis cell coordinates (float, clamped to the grid) and the
        flat int64 cell index ``(...)``."""
        c = torch.clamp(cpos.floor(), min=torch.zeros(3), max=self.cell_max)
        return c, (c @ self.strides).long()

    def occupied(self, cpos: torch.Tensor) -> torch.Tensor:
        """Whether the cell of each cell-space point ``(..., 3)`` can be visible: boolean ``(...)``."""
        return self.occupied_flat[self.cells(cpos)[1]]

    def block_exit(self, co: torch.Tensor, cd: torch.Tensor, c: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Exit parameter ``(R,)`` of rays ``co + t cd`` from the block of cells within ``radius - 1`` (Chebyshev)
        of their cells ``c`` (``(R, 3)``), clipped to the volume."""
        r = (radius - 1).clamp(min=0)[:, None].float()
        lo = (c - r).clamp(min=0.0)
        hi = torch.minimum(c + r + 1.0, self.extent)
        return ray_box(co, cd, lo, hi)[1]

    def adaptive_step_in(self, flat_cells: torch.Tensor) -> torch.Tensor:
        """Instant-VNR's step for samples in cells ``flat_cells``: up to 16x ``dt`` where the cell is faint."""
        opacity = self.opacity_flat[flat_cells].clamp(0.1, 1.0)
        return self.dt * (1.0 + 15.0 * (1.0 - opacity) ** 2)

    def skip(self, rays) -> None:
        """Move every ray whose next sample lies in a transparent cell past the transparent block around it.

        ``rays`` holds per-ray tensors ``co``, ``cd`` (cell-space origin and direction), ``base``, ``k``, ``step``
        (sample ``j`` at ``base + (k + j) * step``), ``t_end`` and ``exit``; they are updated in place. Without
        adaptive steps a ray lands on its own lattice (``k`` grows); with them it restarts just past the block
        at the fixed step, and each ray in a visible cell gets that cell's step and the cell's exit.
        """
        todo = None  # all rays
        for _ in range(self.num_cells + 4):  # each leap crosses at least one cell
            sub = rays if todo is None else rays.select(todo, ("co", "cd", "base", "k", "step", "t_end"))
            t = torch.addcmul(sub.base, sub.k, sub.step)
            c, idx = self.cells(torch.addcmul(sub.co, t[:, None], sub.cd))
            dist = self.distance_flat[idx]
            inside = t <= sub.t_end
            empty = (dist > 0) & inside
            if self.adaptive_step:
                occ = torch.nonzero(~empty & inside).reshape(-1)
                if occ.numel():
                    o = occ if todo is None else todo[occ]
                    rays.base[o], rays.k[o] = t[occ], 0.0
                    rays.step[o] = self.adaptive_step_in(idx[occ])
                    rays.exit[o] = self.block_exit(sub.co[occ], sub.cd[occ], c[occ], torch.ones_like(occ))
            e_local = torch.nonzero(empty).reshape(-1)
            if not e_local.numel():
                break
            e = e_local if todo is None else todo[e_local]
            t_exit = self.block_exit(sub.co[e_local], sub.cd[e_local], c[e_local], dist[e_local])
            if self.adaptive_step:
                rays.base[e], rays.k[e], rays.step[e] = t_exit + 1e-4 * self.dt, 0.0, self.dt  # no lattice to keep
            else:
                rays.k[e] = torch.maximum(rays.k[e] + 1, ((t_exit - rays.base[e]) / rays.step[e]).ceil())
            todo = e
