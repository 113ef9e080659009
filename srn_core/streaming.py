"""Training points drawn from a volume that stays on disk: a bounded set of resident bricks, swapped over time.

Instant-VNR's out-of-core scheme, made exact and reproducible:

* The grid's cells are cut into bricks of ``brick_size`` cells per axis. Brick ``(i, j, k)`` stores the voxels
  ``k*B .. (k+1)*B`` per axis (one extra voxel on its + faces, clamped at the volume's end), so the trilinear
  interpolation anywhere inside its cells needs no neighbour.
* At most ``data_memory`` bytes of bricks are resident. Every step's points are uniform over the union of the
  resident cells: a brick drawn with probability proportional to its cells' volume in model coordinates, then a
  uniform point inside it. The target is the trilinear interpolation of the brick's 8 corner voxels by index
  arithmetic, equal to ``F.grid_sample(align_corners=True)`` of the whole volume to float32 rounding.
* Every ``refresh_steps`` steps the oldest ``swap_fraction`` of the resident bricks make room for the next ones of
  a random permutation of all bricks drawn at the start: the resident set is a window sliding around that
  permutation, so every brick stays resident for the same number of steps per cycle and the points of whole
  cycles are uniform over the volume (a swap of random resident bricks for random others, tried first, left
  brick counts 100-350 % off uniform after 10 turnovers: residence times then vary like a random walk). The
  bricks of a swap are read in file order (ascending brick index, z slowest: as sequential as the file allows).
* All randomness comes from the training's ``torch.Generator``: the same seed gives the same points from any
  source holding the same data (in memory, memory map, HDF5). :meth:`BrickSampler.state` (the resident bricks
  and the step counter) goes into checkpoints, so a resumed run is the uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .volume_source import VolumeSource


class BrickSampler:
    """Random training points and their normalised trilinear targets from the resident bricks of ``source``.

    ``lo``/``scale`` normalise values to ``[0, 1]`` as in-memory training does (``(v - lo) / scale`` in float32).
    """

    def __init__(self, source: VolumeSource, lo: float, scale: float, brick_size: int, data_memory: int,
                 refresh_steps: int, swap_fraction: float, generator: torch.Generator,
                 device: torch.device | str = "cpu"):
        if int(brick_size) < 1:
            raise ValueError(f"brick_size must be a positive number of cells, got {brick_size!r}.")
        if int(refresh_steps) < 1:
            raise ValueError(f"refresh_steps must be a positive integer, got {refresh_steps!r}.")
        if not 0 < float(swap_fraction) <= 1:
            raise ValueError(f"swap_fraction must be in (0, 1], got {swap_fraction!r}.")
        self.source, self.lo, self.scale = source, lo, scale
        self.B, self.refresh_steps, self.swap_fraction = int(brick_size), int(refresh_steps), float(swap_fraction)
        self.generator, self.device = generator, torch.device(device)
        self.shape = tuple(source.shape)  # (nz, ny, nx)
        # Bricks per axis over the cells (a single-point axis: one brick of one voxel).
        self.grid = tuple(max(1, math.ceil((n - 1) / self.B)) for n in self.shape)
        self.count = int(np.prod(self.grid))
        # Stored voxels per axis of a full brick (zyx; no more than the volume has).
        self.side = tuple(min(self.B + 1, n) for n in self.shape)
        self.brick_bytes = 4 * int(np.prod(self.side))
        self.capacity = max(1, min(self.count, int(data_memory) // self.brick_bytes))
        if int(data_memory) < self.brick_bytes:
            raise ValueError(f"data_memory={int(data_memory)} bytes cannot hold one brick of {self.side} float32 "
                             f"voxels ({self.brick_bytes} bytes); raise it or lower brick_size.")
        # Per brick: first voxel (z, y, x), stored voxels, and its cells' bounds in model coordinates (x, y, z).
        ids = torch.arange(self.count)
        bz, by, bx = ids // (self.grid[1] * self.grid[2]), (ids // self.grid[2]) % self.grid[1], ids % self.grid[2]
        self.first = torch.stack([bz, by, bx], 1) * self.B  # (count, 3) zyx
        n = torch.tensor(self.shape)
        self.size = torch.minimum(self.first + self.B + 1, n) - self.first  # stored voxels (zyx)
        denom = (n - 1).clamp(min=1).double()
        lo_m = torch.where(n > 1, -1 + 2 * self.first.double() / denom, torch.full((3,), -1.0, dtype=torch.float64))
        hi_m = torch.where(n > 1, -1 + 2 * (self.first + self.size - 1).double() / denom,
                           torch.full((3,), 1.0, dtype=torch.float64))
        self.cell_lo = lo_m.flip(1).float()   # (count, 3) xyz
        self.cell_len = (hi_m - lo_m).flip(1).float()
        self.weight = (hi_m - lo_m).prod(1)   # model-space volume of each brick's cells (float64)
        self.n_minus_1 = (n - 1).flip(0).float()  # xyz
        self.resident = torch.empty(0, dtype=torch.long)
        self.cache = torch.empty(0)
        self.order = torch.arange(self.count)
        self.position = 0  # bricks of ``order`` (cyclically) loaded so far: the window is the last ``capacity``
        self.steps = 0
        self.bytes_read = 0
        self.read_seconds = 0.0

    # ---- resident set -------------------------------------------------------------------------------
    def start(self) -> None:
        """The first resident set: the first ``capacity`` bricks of a random order (all of them when they fit)."""
        if self.capacity < self.count:
            self.order = torch.randperm(self.count, generator=self.generator)
        self.position = self.capacity
        self._load(self.order[:self.capacity])

    def _load(self, resident: torch.Tensor) -> None:
        self.cache = torch.full((len(resident),) + self.side, math.nan, device=self.device)
        self.resident = torch.empty(0, dtype=torch.long)
        self._fill(torch.arange(len(resident)), resident)

    def _fill(self, slots: torch.Tensor, bricks: torch.Tensor) -> None:
        """Read ``bricks`` into cache ``slots``, in ascending brick (file) order."""
        t0 = time.perf_counter()
        order = torch.argsort(bricks)
        for s, b in zip(slots[order].tolist(), bricks[order].tolist()):
            z, y, x = self.first[b].tolist()
            dz, dy, dx = self.size[b].tolist()
            values = self.source.read(np.s_[z:z + dz, y:y + dy, x:x + dx])
            self.bytes_read += values.nbytes
            self.cache[s, :dz, :dy, :dx] = torch.from_numpy((values - self.lo) / self.scale).to(self.device)
        resident = self.resident.clone() if len(self.resident) == len(self.cache) else \
            torch.full((len(self.cache),), -1, dtype=torch.long)
        resident[slots] = bricks
        self.resident = resident
        self.read_seconds += time.perf_counter() - t0

    @property
    def swap_count(self) -> int:
        """Bricks replaced at each refresh."""
        return max(1, round(self.swap_fraction * self.capacity))

    @property
    def cycle_steps(self) -> float:
        """Steps for every brick to have been resident once: a whole run of cycles samples uniformly."""
        return math.inf if self.capacity >= self.count else self.count / self.swap_count * self.refresh_steps

    def refresh(self) -> None:
        """Slide the window: the oldest ``swap_count`` resident bricks make room for the next ones of ``order``."""
        if self.capacity >= self.count:
            return
        stream = torch.arange(self.position, self.position + self.swap_count)
        self.position += self.swap_count
        self._fill(stream % self.capacity, self.order[stream % self.count])

    # ---- points --------------------------------------------------------------------------------------
    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points (n, 3) in the model cube, normalised targets (n,))`` of one training step."""
        if len(self.resident) == 0:
            self.start()
        elif self.steps % self.refresh_steps == 0:
            self.refresh()
        self.steps += 1
        g = self.generator
        pick = torch.multinomial(self.weight[self.resident], n, replacement=True, generator=g)
        bricks = self.resident[pick]
        u = torch.rand(n, 3, generator=g)
        points = self.cell_lo[bricks] + u * self.cell_len[bricks]
        return points.to(self.device), self.interpolate(points.to(self.device), pick.to(self.device),
                                                        bricks.to(self.device))

    def interpolate(self, points: torch.Tensor, slots: torch.Tensor, bricks: torch.Tensor) -> torch.Tensor:
        """Trilinear values at ``points`` (xyz, model cube) of the cached bricks in ``slots``: the arithmetic of
        ``grid_sample(align_corners=True)`` (index ``(p + 1) / 2 * (N - 1)``) on the brick's own voxels."""
        dev = points.device
        index = (points + 1) / 2 * self.n_minus_1.to(dev)  # continuous voxel index, xyz
        first = self.first.to(dev)[bricks].flip(1)           # xyz
        size = self.size.to(dev)[bricks].flip(1)
        i0 = torch.minimum(torch.clamp(index.floor().long() - first, min=0), (size - 2).clamp(min=0))
        frac = index - (first + i0).float()
        frac = torch.where(size > 1, frac, torch.zeros_like(frac))
        i1 = torch.minimum(i0 + 1, size - 1)
        sz, sy, sx = self.side
        base = slots * (sz * sy * sx)
        flat = self.cache.view(-1)
        fx, fy, fz = frac.unbind(1)
        x0, y0, z0 = i0.unbind(1)
        x1, y1, z1 = i1.unbind(1)

        def at(z, y, x):
            return flat[base + (z * sy + y) * sx + x]

        c00 = at(z0, y0, x0) * (1 - fx) + at(z0, y0, x1) * fx
        c01 = at(z0, y1, x0) * (1 - fx) + at(z0, y1, x1) * fx
        c10 = at(z1, y0, x0) * (1 - fx) + at(z1, y0, x1) * fx
        c11 = at(z1, y1, x0) * (1 - fx) + at(z1, y1, x1) * fx
        c0 = c00 * (1 - fy) + c01 * fy
        c1 = c10 * (1 - fy) + c11 * fy
        return c0 * (1 - fz) + c1 * fz

    # ---- checkpoints ----------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, meta)``: the brick order, the resident bricks by slot and the counters; what a checkpoint
        needs to resume exactly."""
        return ({"order": self.order.clone(), "resident": self.resident.clone()},
                {"steps": self.steps, "position": self.position, "brick_size": self.B, "capacity": self.capacity})

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if int(meta["brick_size"]) != self.B or int(meta["capacity"]) != self.capacity:
            raise ValueError(f"the checkpoint streamed bricks of {meta['brick_size']} cells, {meta['capacity']} "
                             f"resident; this run has {self.B} and room for {self.capacity}: resume with the same "
                             f"brick_size and data_memory.")
        self.steps, self.position = int(meta["steps"]), int(meta["position"])
        self.order = tensors["order"].long().clone()
        if len(tensors["resident"]):
            self._load(tensors["resident"].long())


__all__ = ["BrickSampler"]
