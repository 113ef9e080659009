"""Ray marching a field: box clipping, sampling, front-to-back compositing, macro-cell skipping, wavefront batching.

Conventions are VTK's, so images compare with ``vtkGPUVolumeRayCastMapper`` / ``vtkFixedPointVolumeRayCastMapper``:

* samples lie at ``t_entry + k * dt`` along each ray from where it enters the volume's box (``dt`` in world
  units = ``step`` voxels of the smallest spacing), up to where it leaves it (or hits opaque geometry);
* a sample's opacity is corrected for the step, ``1 - (1 - a) ** (dt / unit_distance)``, with VTK's scalar
  opacity unit distance (default 1 world unit);
* compositing is front to back with premultiplied colour: ``C += (1 - A) a c``, ``A += (1 - A) a``; a ray
  stops once ``A`` reaches ``early_termination``.

Work is organised as a *wavefront*: all live rays advance together by ``segment`` samples per iteration, the
samples of all of them are evaluated in one (chunked) field call, finished rays are compacted away. With
macro-cells, a ray whose next sample lies in a cell that the transfer function makes fully transparent leaps
to the first lattice sample past the block of transparent cells around it (a 3-D DDA over a distance map),
and samples in such cells are never evaluated; the lattice is the same as without skipping, so the image only
changes where a cell's range was not conservative. ``adaptive_step`` additionally stretches the step in faint
cells (Instant-VNR's rule).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field as dataclass_field

import torch
import torch.nn.functional as F

from ..evaluate import DEFAULT_CHUNK_SIZE, check_chunk_size, evaluate
from .camera import Camera, check_size
from .macrocells import DEFAULT_CELL_SIZE, MacroCells, cell_counts, macrocells_for
from .transfer_function import TransferFunction, TransferTable
from .volume import RenderVolume, as_render_volume


@dataclass
class RenderSettings:
    """How to sample and composite (every length in world units unless it says voxels)."""

    step: float = 1.0
    """Distance between samples in voxels (of the smallest spacing)."""
    opacity_unit_distance: float = 1.0
    """VTK's ``ScalarOpacityUnitDistance``: the distance over which a sample's opacity is the table's."""
    early_termination: float = 0.99
    """A ray stops once its accumulated opacity reaches this (1.0 disables early termination)."""
    macrocells: bool = True
    """Skip cells the transfer function makes transparent."""
    cell_size: int = DEFAULT_CELL_SIZE
    """Voxels per macro-cell edge."""
    macrocell_margin: float | None = None
    """Widening of neural cells' value ranges (fraction of the range); ``None``: 0 for raw grids, 1 % otherwise."""
    adaptive_step: bool = False
    """Stretch the step up to 16x in cells whose maximum opacity is low (changes the image slightly)."""
    segment: int = 8
    """Samples each live ray takes per wavefront iteration."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Points per field call (bounds the field's working memory)."""
    max_samples: int = 1 << 18
    """Samples in flight per wavefront (bounds the renderer's memory: rays per batch = max_samples / segment).
    A few MB per block keeps the bookkeeping in cache; larger blocks were slower here, smaller ones pay per-call
    overhead."""
    table_size: int = 4096
    """Entries of the transfer-function lookup table."""
    shade: bool = False
    """Phong shading with the gradient (central differences, six extra field evaluations per sample)."""
    ambient: float = 0.0
    diffuse: float = 0.7
    specular: float = 0.2
    specular_power: float = 10.0

    def __post_init__(self):
        checks = {"step": self.step > 0, "opacity_unit_distance": self.opacity_unit_distance > 0,
                  "early_termination": 0 < self.early_termination <= 1, "segment": int(self.segment) >= 1,
                  "cell_size": int(self.cell_size) >= 1, "max_samples": int(self.max_samples) >= 1,
                  "table_size": int(self.table_size) >= 2}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"render setting {name} is out of range: {getattr(self, name)!r}.")
        check_chunk_size(self.chunk_size)


@dataclass
class RenderStats:
    """What a render cost: counts let benchmarks compare work independently of the machine."""

    rays: int = 0
    rays_hit: int = 0
    """Rays that cross the volume's box."""
    samples: int = 0
    """Samples composited: the field evaluations that matter (shading adds six per sample on top; on a raw
    grid whole blocks are evaluated and masked, which is cheaper than gathering)."""
    samples_skipped: int = 0
    """Lattice samples inside the box that were never evaluated (transparent cells or after termination)."""
    iterations: int = 0
    seconds: float = 0.0
    field_seconds: float = 0.0
    """Time inside the field callable."""
    macrocell_seconds: float = 0.0
    """Time building macro-cells in this call (0 when they were cached)."""
    extra: dict = dataclass_field(default_factory=dict)
    """Room for callers' own figures (benchmarks)."""

    def add(self, other: "RenderStats") -> None:
        for name in ("rays", "rays_hit", "samples", "samples_skipped", "iterations", "seconds", "field_seconds",
                     "macrocell_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RenderResult:
    image: torch.Tensor
    """``(height, width, 4)`` float32, premultiplied RGBA, row 0 at the top."""
    stats: RenderStats


class Renderer:
    """Renders one volume; keeps its macro-cells and the per-transfer-function tables between frames."""

    def __init__(self, volume, settings: RenderSettings | None = None, macrocells: MacroCells | None = None):
        self.volume: RenderVolume = as_render_volume(volume)
        self.settings = settings or RenderSettings()
        self._cells = macrocells
        self._table_key = None
        self._table: TransferTable | None = None
        self._cell_opacity: torch.Tensor | None = None

    # ---- state ---------------------------------------------------------------------------------
    @property
    def dt(self) -> float:
        """Sample spacing in world units."""
        return self.settings.step * min(self.volume.spacing)

    def macrocells(self) -> tuple[MacroCells, float]:
        """The macro-cells (built on first use, cached per field) and the seconds spent building them now."""
        if self._cells is None or self._cells.cell_size != self.settings.cell_size:
            t = time.perf_counter()
            self._cells = macrocells_for(self.volume, self.settings.cell_size, self.settings.macrocell_margin,
                                         self.settings.chunk_size)
            return self._cells, time.perf_counter() - t
        return self._cells, 0.0

    def table(self, tf) -> TransferTable:
        """``tf`` (a TransferFunction or TransferTable) as a table; cached while the same object is passed."""
        if isinstance(tf, TransferTable):
            return tf
        if isinstance(tf, TransferFunction):
            key = (id(tf), tf.color_points.tobytes(), tf.opacity_points.tobytes(), tf.color_space,
                   self.settings.table_size)
            if key != self._table_key:
                self._table_key, self._table = key, tf.table(self.settings.table_size)
            return self._table
        raise ValueError(f"transfer function must be a TransferFunction or TransferTable, got {type(tf).__name__}.")

    # ---- rendering -----------------------------------------------------------------------------
    def render(self, camera: Camera, tf, width: int, height: int, depth: torch.Tensor | None = None,
               pixels: torch.Tensor | None = None) -> RenderResult:
        """An image ``(height, width, 4)`` (premultiplied RGBA, transparent background).

        ``depth`` (``(height, width)`` world distances along each pixel's ray, ``inf`` for none) stops rays at
        opaque geometry. ``pixels`` (flat indices) renders only those pixels; the others stay transparent.
        """
        width, height = check_size(width, height)
        start = time.perf_counter()
        if pixels is None:
            pixels = torch.arange(width * height, dtype=torch.int64)
        origins, dirs = camera.rays(width, height, pixels)
        t_max = None
        if depth is not None:
            depth = torch.as_tensor(depth, dtype=torch.float32)
            if tuple(depth.shape) != (height, width):
                raise ValueError(f"depth must be shaped (height, width) = {(height, width)}, got {tuple(depth.shape)}.")
            t_max = depth.reshape(-1)[pixels]
        rgba, stats = self.render_rays(origins, dirs, tf, t_max)
        image = torch.zeros(height * width, 4)
        image[pixels] = rgba
        stats.seconds = time.perf_counter() - start
        return RenderResult(image.reshape(height, width, 4), stats)

    def render_rays(self, origins: torch.Tensor, dirs: torch.Tensor, tf,
                    t_max: torch.Tensor | None = None) -> tuple[torch.Tensor, RenderStats]:
        """Premultiplied RGBA ``(N, 4)`` of world rays (unit ``dirs``), each stopped at ``t_max`` if given."""
        s = self.settings
        stats = RenderStats(rays=int(origins.shape[0]))
        table = self.table(tf)
        out = torch.zeros(origins.shape[0], 4)
        if origins.shape[0] == 0 or table.is_empty:
            return out, stats
        cell_opacity = None
        if s.macrocells or s.adaptive_step:
            cells, built = self.macrocells()
            stats.macrocell_seconds = built
            cell_opacity = cells.max_opacity(table)
        march = _March(self.volume, table, s, self.dt, cell_opacity)
        per_batch = max(1, int(s.max_samples) // int(s.segment))
        with torch.inference_mode():
            for start in range(0, origins.shape[0], per_batch):
                stop = min(start + per_batch, origins.shape[0])
                tm = None if t_max is None else t_max[start:stop]
                out[start:stop] = march.run(origins[start:stop], dirs[start:stop], tm, stats)
        return out, stats


def render(volume, camera: Camera, tf, width: int, height: int, settings: RenderSettings | None = None,
           depth: torch.Tensor | None = None) -> RenderResult:
    """One-shot convenience: ``Renderer(volume, settings).render(camera, tf, width, height, depth)``."""
    return Renderer(volume, settings).render(camera, tf, width, height, depth)


# =================================================================================================
# The wavefront march
# =================================================================================================
class _March:
    """One render's constants (coordinate maps, tables, cells) and the wavefront loop.

    Rays are kept in *cell coordinates* (one unit per macro-cell edge, the volume spanning ``[0, (dims-1)/C]``),
    where the DDA needs them; model-cube points are made only for the samples that are evaluated. Ray state is
    float32 (a few hundred samples per ray leave it far more precise than a voxel) and is compacted with index
    gathers, because on a CPU the bookkeeping of a million-sample wavefront costs as much as a fast field.
    """

    def __init__(self, volume: RenderVolume, table: TransferTable, settings: RenderSettings, dt: float,
                 cell_opacity: torch.Tensor | None):
        self.volume, self.table, self.s, self.dt = volume, table, settings, dt
        self.field_seconds = 0.0
        b = torch.tensor(volume.bounds, dtype=torch.float64).reshape(3, 2)
        self.lo = b[:, 0]
        self.dims = torch.tensor(volume.dims, dtype=torch.float64)
        # world -> cell coordinates: (x - lo) / spacing / C ; cell -> model cube: c * 2C / (dims - 1) - 1
        self.world_to_cell = ((self.dims - 1) / (b[:, 1] - b[:, 0]) / settings.cell_size)
        self.cell_to_model = (2.0 * settings.cell_size / (self.dims - 1)).float()
        self.extent = ((self.dims - 1) / settings.cell_size).float()  # the volume's far corner in cell coordinates
        self.cells_xyz = torch.tensor(cell_counts(volume.dims, settings.cell_size), dtype=torch.int64)
        self.cell_max = (self.cells_xyz - 1).float()
        self.strides = torch.tensor([1.0, float(self.cells_xyz[0]), float(self.cells_xyz[0] * self.cells_xyz[1])])
        self.cell_opacity = cell_opacity
        if cell_opacity is not None:
            self.cell_flat = cell_opacity.reshape(-1).contiguous()
            self.occupied_flat = self.cell_flat > 0
            self.distance_flat = empty_distance(cell_opacity > 0).reshape(-1).contiguous()
        # Per-sample occupancy tests pay off only when a field evaluation costs more than the test (not for grids).
        self.sample_mask = cell_opacity is not None and getattr(volume.field, "volume", None) is None
        # Step-corrected, premultiplied table for the fixed step: one gather gives a sample's contribution.
        rgba = table.rgba
        self.log_transparency = torch.log1p(-rgba[:, 3].clamp(max=1 - 1e-7))
        alpha = -torch.expm1(self.log_transparency * (dt / settings.opacity_unit_distance))
        self.fixed_table = torch.cat([rgba[:, :3] * alpha[:, None], alpha[:, None]], dim=1).contiguous()

    # ---- geometry ------------------------------------------------------------------------------
    @staticmethod
    def _box(co, cd, lo, hi):
        """Entry and exit parameters of rays ``co + t cd`` through the axis-aligned boxes [lo, hi]."""
        safe = torch.where(cd.abs() < 1e-30, torch.full_like(cd, 1e-30), cd)
        t1 = (lo - co) / safe
        t2 = (hi - co) / safe
        return torch.minimum(t1, t2).amax(dim=-1), torch.maximum(t1, t2).amin(dim=-1)

    def _cells(self, cpos):
        """Per-axis cell coordinates (float, clamped to the grid) and flat int64 cell index of cell-space points."""
        c = torch.clamp(cpos.floor(), min=torch.zeros(3), max=self.cell_max)
        return c, (c @ self.strides).long()

    def _block_exit(self, co, cd, c, radius):
        """Exit parameter from the block of cells within ``radius - 1`` (Chebyshev) of cells ``c``."""
        r = (radius - 1).clamp(min=0)[:, None].float()
        lo = (c - r).clamp(min=0.0)
        hi = torch.minimum(c + r + 1.0, self.extent)
        return self._box(co, cd, lo, hi)[1]

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, origins, dirs, t_max, stats: RenderStats) -> torch.Tensor:
        s, dt = self.s, self.dt
        out = torch.zeros(origins.shape[0], 4)
        co = ((origins.double() - self.lo) * self.world_to_cell).float()
        cd = (dirs.double() * self.world_to_cell).float()
        t_in, t_out = self._box(co, cd, torch.zeros(3), self.extent)
        t_in = t_in.clamp(min=0.0)  # a camera inside the box starts at the eye
        if t_max is not None:
            t_out = torch.minimum(t_out, t_max.float())
        live = torch.nonzero(t_out >= t_in).reshape(-1)
        n = live.numel()
        stats.rays_hit += int(n)
        if not n:
            return out
        # Per live ray: pixel, cell-space ray, lattice (sample j at base + (k + j) * step), end, the exit of the
        # current cell (adaptive steps stay inside one cell), accumulated premultiplied colour.
        st = _Rays(ray=live, co=co[live], cd=cd[live], base=t_in[live], t_end=t_out[live],
                   step=torch.full((n,), dt), k=torch.zeros(n), exit=torch.full((n,), math.inf),
                   acc=torch.zeros(n, 4))
        total_lattice = float(((st.t_end - st.base) / dt).floor().add(1).sum())
        evaluated = 0
        seg = torch.arange(s.segment, dtype=torch.float32)
        while st.ray.numel():
            stats.iterations += 1
            if self.cell_opacity is not None:
                self._skip(st)
                ahead = torch.addcmul(st.base, st.k, st.step) <= st.t_end
                if not bool(ahead.all()):
                    gone = torch.nonzero(~ahead).reshape(-1)
                    out[st.ray[gone]] = st.acc[gone]
                    st = st.select(torch.nonzero(ahead).reshape(-1))
                    if not st.ray.numel():
                        break
            # The next `segment` lattice samples of every live ray: a (rays, segment) block.
            t = torch.addcmul(st.base[:, None], st.k[:, None] + seg, st.step[:, None])
            valid = t <= st.t_end[:, None]
            if self.sample_mask:
                cpos = torch.addcmul(st.co[:, None, :], t[..., None], st.cd[:, None, :])
                valid &= self.occupied_flat[self._cells(cpos)[1]]
                if s.adaptive_step:  # the stretched step was chosen for the current cell alone
                    valid &= (t < st.exit[:, None]) | (seg == 0)
            elif s.adaptive_step and self.cell_opacity is not None:
                valid &= (t < st.exit[:, None]) | (seg == 0)
            contrib, n_eval = self._contributions(t, valid, st)
            evaluated += n_eval
            st.acc = _composite(st.acc, contrib)
            if s.adaptive_step and self.cell_opacity is not None:
                st.k = st.k + torch.clamp(((st.exit - st.base) / st.step - st.k).ceil(), min=1, max=s.segment)
            else:
                st.k = st.k + s.segment
            done = (torch.addcmul(st.base, st.k, st.step) > st.t_end) | (st.acc[:, 3] >= s.early_termination)
            if bool(done.any()):
                finished = torch.nonzero(done).reshape(-1)
                out[st.ray[finished]] = st.acc[finished]
                st = st.select(torch.nonzero(~done).reshape(-1))
        stats.samples += evaluated
        stats.samples_skipped += max(0, int(total_lattice) - evaluated)
        stats.field_seconds = self.field_seconds
        return out

    def _skip(self, st: "_Rays") -> None:
        """Move every ray whose next sample lies in a transparent cell to the first lattice sample past the block
        of transparent cells around it (a 3-D DDA that leaps by the cells' distance to the nearest visible cell).
        With adaptive steps, also give each ray the step of the visible cell it is in.
        """
        s = self.s
        todo = None  # all rays
        for _ in range(int(self.cells_xyz.sum()) + 4):  # each leap crosses at least one cell
            sub = st if todo is None else st.select(todo, ("co", "cd", "base", "k", "step", "t_end"))
            t = torch.addcmul(sub.base, sub.k, sub.step)
            c, idx = self._cells(torch.addcmul(sub.co, t[:, None], sub.cd))
            dist = self.distance_flat[idx]
            inside = t <= sub.t_end
            empty = (dist > 0) & inside
            if s.adaptive_step:
                occ = torch.nonzero(~empty & inside).reshape(-1)
                if occ.numel():
                    o = occ if todo is None else todo[occ]
                    op = self.cell_flat[idx[occ]].clamp(0.1, 1.0)
                    st.base[o], st.k[o] = t[occ], 0.0
                    st.step[o] = self.dt * (1.0 + 15.0 * (1.0 - op) ** 2)
                    st.exit[o] = self._block_exit(sub.co[occ], sub.cd[occ], c[occ], torch.ones_like(occ))
            e_local = torch.nonzero(empty).reshape(-1)
            if not e_local.numel():
                break
            e = e_local if todo is None else todo[e_local]
            t_exit = self._block_exit(sub.co[e_local], sub.cd[e_local], c[e_local], dist[e_local])
            if s.adaptive_step:
                st.base[e], st.k[e], st.step[e] = t_exit + 1e-4 * self.dt, 0.0, self.dt  # no lattice to keep
            else:
                st.k[e] = torch.maximum(st.k[e] + 1, ((t_exit - st.base[e]) / st.step[e]).ceil())
            todo = e

    def _contributions(self, t, valid, st: "_Rays"):
        """Premultiplied contributions ``(rays, segment, 4)`` of the valid samples; the rest contribute nothing.

        Sample ``j`` stands for the interval ``[t_j, t_j + step)``; the last one of a ray is cut at the ray's end,
        so a homogeneous slab of any thickness gets exactly the transmittance ``(1 - a) ** (length / unit)``.
        """
        s = self.s
        k = valid.shape[1]
        if not self.sample_mask and not s.adaptive_step and not s.shade:
            return self._dense_contributions(t, valid, st)
        sel = torch.nonzero(valid.reshape(-1)).reshape(-1)
        contrib = torch.zeros(valid.numel(), 4)
        if not sel.numel():
            return contrib.reshape(*valid.shape, 4), 0
        rows = torch.div(sel, k, rounding_mode="floor")
        ts = t.reshape(-1).index_select(0, sel)
        cpos = torch.addcmul(st.co.index_select(0, rows), ts[:, None], st.cd.index_select(0, rows))
        pts = cpos.mul_(self.cell_to_model).sub_(1.0).clamp_(-1.0, 1.0)  # model cube
        t0 = time.perf_counter()
        values = evaluate(self.volume.field, pts, s.chunk_size)
        self.field_seconds += time.perf_counter() - t0
        idx = self.table.indices(values)
        ray_step = st.step.index_select(0, rows)
        length = torch.minimum(ray_step, st.t_end.index_select(0, rows) - ts)
        if s.adaptive_step:
            c = self._corrected(idx, length)
        else:
            c = self.fixed_table.index_select(0, idx)
            cut = torch.nonzero(length < ray_step).reshape(-1)
            if cut.numel():
                c[cut] = self._corrected(idx[cut], length[cut])
        if s.shade:
            world_dir = (st.cd.double() / self.world_to_cell).float()
            world_dir = world_dir / world_dir.norm(dim=1, keepdim=True)
            c = self._phong(pts, c, world_dir.index_select(0, rows))
        contrib.index_copy_(0, sel, c)
        return contrib.reshape(*valid.shape, 4), int(sel.numel())

    def _dense_contributions(self, t, valid, st: "_Rays"):
        """The same for a cheap field (a raw grid): evaluate the whole block and mask it, which costs less than
        gathering the valid samples and scattering them back."""
        cpos = torch.addcmul(st.co[:, None, :], t[..., None], st.cd[:, None, :])
        pts = cpos.mul_(self.cell_to_model).sub_(1.0).clamp_(-1.0, 1.0).reshape(-1, 3)
        t0 = time.perf_counter()
        values = evaluate(self.volume.field, pts, max(self.s.chunk_size, pts.shape[0]))
        self.field_seconds += time.perf_counter() - t0
        idx = self.table.indices(values)
        contrib = self.fixed_table.index_select(0, idx).reshape(*valid.shape, 4)
        # the last sample of a ray stands for the part of its interval before the ray's end
        length = st.t_end[:, None] - t
        cut = torch.nonzero((length < st.step[:, None]).reshape(-1) & valid.reshape(-1)).reshape(-1)
        if cut.numel():
            flat = contrib.view(-1, 4)
            flat[cut] = self._corrected(idx[cut], length.reshape(-1)[cut])
        contrib.mul_(valid[..., None])
        return contrib, int(valid.sum())

    def _corrected(self, idx, length):
        """Premultiplied colour of table entries ``idx`` for samples standing for ``length`` world units each."""
        alpha = -torch.expm1(self.log_transparency[idx] * (length.clamp(min=0) / self.s.opacity_unit_distance))
        return torch.cat([self.table.rgba[idx, :3] * alpha[:, None], alpha[:, None]], dim=1)

    def _phong(self, pts, c, ray_dir):
        """Headlight Phong shading with central-difference gradients (one voxel apart)."""
        s = self.s
        h = (2.0 / (self.dims - 1)).float()  # one voxel in model units, per axis
        offsets = torch.diag(h)
        probes = torch.cat([pts + offsets[a] for a in range(3)] + [pts - offsets[a] for a in range(3)])
        t0 = time.perf_counter()
        v = evaluate(self.volume.field, probes.clamp(-1.0, 1.0), s.chunk_size).reshape(6, -1)
        self.field_seconds += time.perf_counter() - t0
        spacing = torch.tensor(self.volume.spacing, dtype=torch.float32)  # one voxel in world units
        grad = ((v[:3] - v[3:]) / (2 * spacing[:, None])).t()
        norm = grad.norm(dim=1, keepdim=True)
        normal = torch.where(norm > 1e-12, grad / norm.clamp(min=1e-30), torch.zeros_like(grad))
        # Headlight (light along the view ray, so the half vector is the light itself); two-sided lighting.
        ndotl = (normal * ray_dir).sum(dim=1).abs()
        spec = ndotl.pow(s.specular_power)
        alpha = c[:, 3:4]
        rgb = torch.where(alpha > 0, c[:, :3] / alpha.clamp(min=1e-30), torch.zeros_like(c[:, :3]))
        lit = rgb * (s.ambient + s.diffuse * ndotl[:, None]) + s.specular * spec[:, None]
        return torch.cat([lit.clamp(0, 1) * alpha, alpha], dim=1)


def empty_distance(occupied: torch.Tensor) -> torch.Tensor:
    """Chebyshev distance (in cells) from every cell to the nearest occupied one; 0 on occupied cells.

    A ray in a cell at distance ``d`` can leap to the far side of the ``(2d - 1)^3`` block centred on its cell:
    every cell of that block is transparent.
    """
    occ = occupied.float()[None, None]
    dist = torch.zeros(occupied.shape, dtype=torch.int64)
    reach = occ
    limit = max(occupied.shape) + 1
    dist[~occupied] = limit  # nothing visible anywhere: leap out of the volume
    for r in range(1, limit):
        if bool(reach.all()):
            break
        grown = F.max_pool3d(reach, kernel_size=3, stride=1, padding=1)
        newly = (grown > 0) & ~(reach > 0)
        dist[newly[0, 0]] = r
        reach = grown
    return dist


class _Rays:
    """The live rays' state, compacted together with index gathers."""

    FIELDS = ("ray", "co", "cd", "base", "t_end", "step", "k", "exit", "acc")

    def __init__(self, **tensors):
        for name, value in tensors.items():
            setattr(self, name, value)

    def select(self, index: torch.Tensor, fields=FIELDS) -> "_Rays":
        return _Rays(**{name: getattr(self, name).index_select(0, index) for name in fields})


def _composite(acc: torch.Tensor, contrib: torch.Tensor) -> torch.Tensor:
    """Front-to-back: add a ``(rays, segment, 4)`` block of premultiplied samples behind ``acc`` ``(rays, 4)``."""
    alpha = contrib[..., 3]
    trans = torch.cumprod(1.0 - alpha, dim=1)
    before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)  # transparency in front of each
    seg_rgb = (contrib[..., :3] * before[..., None]).sum(dim=1)
    seg_alpha = 1.0 - trans[:, -1]
    remaining = 1.0 - acc[:, 3:4]
    return torch.cat([acc[:, :3] + remaining * seg_rgb, acc[:, 3:4] + remaining * seg_alpha[:, None]], dim=1)
