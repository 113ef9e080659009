"""The ray marcher: box clipping, the sample lattice, wavefront batching; it wires skipping, shading, compositing.

Conventions are VTK's, so images compare with ``vtkGPUVolumeRayCastMapper`` / ``vtkFixedPointVolumeRayCastMapper``:

* samples lie at ``t_entry + k * dt`` along each ray from where it enters the volume's box (``dt`` in world
  units = ``step`` voxels of the smallest spacing), up to where it leaves it (or hits opaque geometry);
* a sample's opacity is corrected for the step (:func:`.compositing.opacity_correction`) with VTK's scalar
  opacity unit distance, and samples composite front to back (:mod:`.compositing`); a ray stops once its
  opacity reaches ``early_termination``;
* transparent macro-cells are leapt over (:mod:`.skipping`), lit samples are shaded (:mod:`.shading`).

Work is organised as a *wavefront*: all live rays advance together by ``segment`` samples per iteration, the
samples of all of them are evaluated in one (chunked) field call, finished rays are compacted away.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..evaluate import DEFAULT_CHUNK_SIZE, check_chunk_size, evaluate
from .camera import Camera, check_size
from .compositing import composite_front_to_back, opacity_correction, over, premultiply
from .macrocells import DEFAULT_CELL_SIZE, MacroCells, macrocells_for
from .shading import central_differences, gradient_probes, headlight_phong, unit_normals
from .skipping import CellSkipper, ray_box
from .transfer_function import TransferFunction, TransferTable
from .volume import RenderVolume, as_render_volume

MAX_SAMPLES_PER_RAY = 100_000
"""Default cap on the samples one ray may take (a 57,000-voxel diagonal at one sample per voxel). Beyond it a
render would run for hours, and the float32 lattice index would no longer count samples exactly."""


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
    max_samples_per_ray: int = MAX_SAMPLES_PER_RAY
    """Refuse a ``step`` that would let one ray through the volume's box take more samples than this."""
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
                  "max_samples_per_ray": int(self.max_samples_per_ray) >= 1, "table_size": int(self.table_size) >= 2}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"render setting {name} is out of range: {getattr(self, name)!r}.")
        check_chunk_size(self.chunk_size)

    def check_samples_per_ray(self, volume: RenderVolume, name: str = "step") -> int:
        """The most samples a ray can take through ``volume``'s box at this step; one ``ValueError`` naming the
        step (as ``name``: the caller's own option) when that is more than :attr:`max_samples_per_ray`."""
        needed = samples_per_ray(volume, self.step)
        cap = int(self.max_samples_per_ray)
        if needed > cap:
            diagonal = _diagonal(volume) / min(volume.spacing)  # in voxels
            least = _round_up(diagonal / (cap - 1) if cap > 1 else diagonal * 2)
            raise ValueError(f"{name} {float(self.step)!r} voxels needs up to {needed:,} samples per ray through this "
                             f"volume, more than the cap of {cap:,}; use a step of at least {least:.3g} voxels.")
        return needed


def samples_per_ray(volume: RenderVolume, step: float) -> int:
    """Most lattice samples a ray can take through ``volume``'s box at ``step`` voxels: along its diagonal."""
    return math.floor(_diagonal(volume) / (float(step) * min(volume.spacing))) + 1


def _diagonal(volume: RenderVolume) -> float:
    b = volume.bounds
    return math.sqrt(sum((b[2 * a + 1] - b[2 * a]) ** 2 for a in range(3)))


def _round_up(x: float) -> float:
    """``x`` rounded up to three significant digits (a suggested step that is surely enough)."""
    unit = 10.0 ** (math.floor(math.log10(x)) - 2)
    return math.ceil(x / unit * (1 - 1e-12)) * unit


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

    def add(self, other: "RenderStats") -> None:
        for name in ("rays", "rays_hit", "samples", "samples_skipped", "iterations", "seconds", "field_seconds",
                     "macrocell_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RenderResult:
    image: torch.Tensor
    """``(height, width, 4)`` float32, premultiplied RGBA, row 0 at the top."""
    stats: RenderStats


Progress = Callable[[int], object]
"""Called with the number of rays finished since the last call (``tqdm.update`` fits)."""


class Renderer:
    """Renders one volume; keeps its macro-cells and the per-transfer-function tables between frames."""

    def __init__(self, volume, settings: RenderSettings | None = None, macrocells: MacroCells | None = None):
        self.volume: RenderVolume = as_render_volume(volume)
        self.settings = settings or RenderSettings()
        self.settings.check_samples_per_ray(self.volume)
        self._cells = macrocells
        self._table_key = None
        self._table: TransferTable | None = None

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
               pixels: torch.Tensor | None = None, progress: Progress | None = None) -> RenderResult:
        """An image ``(height, width, 4)`` (premultiplied RGBA, transparent background).

        ``depth`` (``(height, width)`` world distances along each pixel's ray, ``inf`` for none) stops rays at
        opaque geometry. ``pixels`` (flat indices) renders only those pixels; the others stay transparent.
        ``progress`` is called with the number of rays done after each batch.
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
        rgba, stats = self.render_rays(origins, dirs, tf, t_max, progress)
        image = torch.zeros(height * width, 4)
        image[pixels] = rgba
        stats.seconds = time.perf_counter() - start
        return RenderResult(image.reshape(height, width, 4), stats)

    def render_rays(self, origins: torch.Tensor, dirs: torch.Tensor, tf, t_max: torch.Tensor | None = None,
                    progress: Progress | None = None) -> tuple[torch.Tensor, RenderStats]:
        """Premultiplied RGBA ``(N, 4)`` of world rays (unit ``dirs``), each stopped at ``t_max`` if given."""
        s = self.settings
        s.check_samples_per_ray(self.volume)  # settings can change between frames (the VTK mapper's setters)
        stats = RenderStats(rays=int(origins.shape[0]))
        table = self.table(tf)
        out = torch.zeros(origins.shape[0], 4)
        if origins.shape[0] == 0 or table.is_empty:
            if progress is not None:
                progress(int(origins.shape[0]))
            return out, stats
        skipper = None
        if s.macrocells or s.adaptive_step:
            cells, built = self.macrocells()
            stats.macrocell_seconds = built
            skipper = CellSkipper(cells.max_opacity(table), _cell_extent(self.volume, s.cell_size), self.dt,
                                  s.adaptive_step)
        march = _March(self.volume, table, s, self.dt, skipper)
        per_batch = max(1, int(s.max_samples) // int(s.segment))
        with torch.inference_mode():
            for start in range(0, origins.shape[0], per_batch):
                stop = min(start + per_batch, origins.shape[0])
                tm = None if t_max is None else t_max[start:stop]
                out[start:stop] = march.run(origins[start:stop], dirs[start:stop], tm, stats)
                if progress is not None:
                    progress(stop - start)
        return out, stats


def render(volume, camera: Camera, tf, width: int, height: int, settings: RenderSettings | None = None,
           depth: torch.Tensor | None = None) -> RenderResult:
    """One-shot convenience: ``Renderer(volume, settings).render(camera, tf, width, height, depth)``."""
    return Renderer(volume, settings).render(camera, tf, width, height, depth)


def _cell_extent(volume: RenderVolume, cell_size: int) -> torch.Tensor:
    """The volume's far corner in cell coordinates (x, y, z)."""
    return ((torch.tensor(volume.dims, dtype=torch.float64) - 1) / cell_size).float()


# =================================================================================================
# The wavefront march
# =================================================================================================
class _March:
    """One render's constants (coordinate maps, tables, cells) and the wavefront loop.

    Rays are kept in *cell coordinates* (one unit per macro-cell edge, the volume spanning ``[0, (dims-1)/C]``),
    where the skipping DDA needs them; model-cube points are made only for the samples that are evaluated. Ray
    state is float32 (a few hundred samples per ray leave it far more precise than a voxel) and is compacted with
    index gathers, because on a CPU the bookkeeping of a million-sample wavefront costs as much as a fast field.
    """

    def __init__(self, volume: RenderVolume, table: TransferTable, settings: RenderSettings, dt: float,
                 skipper: CellSkipper | None):
        self.volume, self.table, self.s, self.dt = volume, table, settings, dt
        self.field_seconds = 0.0
        b = torch.tensor(volume.bounds, dtype=torch.float64).reshape(3, 2)
        self.lo = b[:, 0]
        self.dims = torch.tensor(volume.dims, dtype=torch.float64)
        # world -> cell coordinates: (x - lo) / spacing / C ; cell -> model cube: c * 2C / (dims - 1) - 1
        self.world_to_cell = ((self.dims - 1) / (b[:, 1] - b[:, 0]) / settings.cell_size)
        self.cell_to_model = (2.0 * settings.cell_size / (self.dims - 1)).float()
        self.extent = _cell_extent(volume, settings.cell_size)
        self.skipper = skipper
        # Per-sample occupancy tests pay off only when a field evaluation costs more than the test (not for grids).
        self.sample_mask = skipper is not None and not volume.is_raw_grid
        # Step-corrected, premultiplied table for the fixed step: one gather gives a sample's contribution.
        self.fixed_table = premultiply(table.rgba[:, :3], opacity_correction(table.rgba[:, 3],
                                                                             dt / settings.opacity_unit_distance))
        self.fixed_table = self.fixed_table.contiguous()

    def _evaluate(self, points: torch.Tensor, chunk_size: int) -> torch.Tensor:
        t0 = time.perf_counter()
        values = evaluate(self.volume.field, points, chunk_size)
        self.field_seconds += time.perf_counter() - t0
        return values

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, origins, dirs, t_max, stats: RenderStats) -> torch.Tensor:
        s, dt = self.s, self.dt
        out = torch.zeros(origins.shape[0], 4)
        co = ((origins.double() - self.lo) * self.world_to_cell).float()
        cd = (dirs.double() * self.world_to_cell).float()
        t_in, t_out = ray_box(co, cd, torch.zeros(3), self.extent)
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
        adaptive = s.adaptive_step and self.skipper is not None
        while st.ray.numel():
            stats.iterations += 1
            if self.skipper is not None:
                self.skipper.skip(st)
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
                valid &= self.skipper.occupied(torch.addcmul(st.co[:, None, :], t[..., None], st.cd[:, None, :]))
            if adaptive:  # the stretched step was chosen for the current cell alone
                valid &= (t < st.exit[:, None]) | (seg == 0)
            contrib, n_eval = self._contributions(t, valid, st)
            evaluated += n_eval
            st.acc = over(st.acc, *composite_front_to_back(contrib[..., :3], contrib[..., 3]))
            if adaptive:
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

    # ---- samples -------------------------------------------------------------------------------
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
        idx = self.table.indices(self._evaluate(pts, s.chunk_size))
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
            c = self._shade(pts, c, st.cd.index_select(0, rows))
        contrib.index_copy_(0, sel, c)
        return contrib.reshape(*valid.shape, 4), int(sel.numel())

    def _dense_contributions(self, t, valid, st: "_Rays"):
        """The same for a cheap field (a raw grid): evaluate the whole block and mask it, which costs less than
        gathering the valid samples and scattering them back."""
        cpos = torch.addcmul(st.co[:, None, :], t[..., None], st.cd[:, None, :])
        pts = cpos.mul_(self.cell_to_model).sub_(1.0).clamp_(-1.0, 1.0).reshape(-1, 3)
        idx = self.table.indices(self._evaluate(pts, max(self.s.chunk_size, pts.shape[0])))
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
        rgba = self.table.rgba
        alpha = opacity_correction(rgba[idx, 3], length.clamp(min=0) / self.s.opacity_unit_distance)
        return premultiply(rgba[idx, :3], alpha)

    def _shade(self, pts, c, cell_dirs):
        """Headlight Phong of samples at model points ``pts`` with premultiplied colours ``c``; ``cell_dirs`` are
        their rays' directions in cell coordinates."""
        s = self.s
        h = (2.0 / (self.dims - 1)).float()  # one voxel in model units, per axis
        values = self._evaluate(gradient_probes(pts, h), s.chunk_size)
        spacing = torch.tensor(self.volume.spacing, dtype=torch.float32)  # one voxel in world units
        normal = unit_normals(central_differences(values, spacing))
        world_dir = (cell_dirs.double() / self.world_to_cell).float()
        world_dir = world_dir / world_dir.norm(dim=1, keepdim=True)
        return headlight_phong(c, normal, world_dir, s.ambient, s.diffuse, s.specular, s.specular_power)


class _Rays:
    """The live rays' state, compacted together with index gathers."""

    FIELDS = ("ray", "co", "cd", "base", "t_end", "step", "k", "exit", "acc")

    def __init__(self, **tensors):
        for name, value in tensors.items():
            setattr(self, name, value)

    def select(self, index: torch.Tensor, fields=FIELDS) -> "_Rays":
        return _Rays(**{name: getattr(self, name).index_select(0, index) for name in fields})
