"""A decoded-brick cache: the model decoded lazily onto voxel grids, one per level of detail, only where it shows.

Rotating the view must not wait for the network every frame. The cache decodes the field onto a voxel grid per
level of detail (LOD), brick by brick, and only the bricks the current transfer function can make visible; a
grid renderer (VTK's ``vtkFixedPointVolumeRayCastMapper``, or :meth:`.RenderVolume.from_grid` with our marcher)
then draws the cached grid every frame at raw-data speed, and the network is queried again only for bricks a new
transfer function uncovers, a finer level, or a changed model.

**Levels.** LOD ``L`` samples the field at ``n_L = ceil((d - 1) / 2^L) + 1`` points per axis, where ``d`` is the
volume's own point count (``RenderVolume.dims``: the training grid, LOD 0). The spacing is
``(max - min) / (n_L - 1)``, so every level spans exactly the volume's world bounds (its voxels are at most
``2^L`` LOD-0 voxels wide, a little less when ``2^L`` does not divide ``d - 1``).

**Storage: one contiguous array per level, not sparse bricks.** Each level is one C-contiguous float32 array
``(nz, ny, nx)``, allocated on first use and kept; its buffer never moves while the level lives, so VTK wraps it
without a copy and only needs ``Modified()`` when :attr:`CachedLevel.version` changes. Sparse per-brick arrays
would save the memory of invisible bricks, but VTK's ray casters need one contiguous image: assembling the bricks
into one every frame would double both the memory and the time of a frame.

**Bricks** are the unit of decoding and of visibility: ``brick_size`` voxels per edge at their level; brick
``i`` covers the level's points ``i*B ... (i+1)*B`` *inclusive* (neighbours share a face, the one ghost layer a
trilinear sample needs), clipped to the array. A brick is *visible* when any macro-cell
(:func:`~.macrocells.macrocells_for`, cells of the LOD-0 lattice with conservative value ranges) covering its
closed box can have a non-zero opacity under the transfer table (``table=None``: everything is visible). A brick
point sits at LOD-0 voxel ``p (d - 1) / (n_L - 1)``; the covering cells are those whose closed boxes contain part
of the brick's, and a cell that only touches the brick's face is not needed, because each cell's range already
includes its own faces (at LOD 0 with ``brick_size`` equal to the cell size, a brick is exactly one cell).
Visible bricks are decoded (one chunked :func:`~srn_core.evaluate.evaluate` call gathers the points of many
bricks). Each point is evaluated once, by the brick that owns it (whose half-open box ``[i*B, (i+1)*B)`` holds it;
the last bricks also own the array's far faces), unless that owner stays undecoded: then the brick that needs the
point on its face evaluates it too, and the owner evaluates it again if a later request decodes it (a face per
such neighbour: a few per cent of a level decoded in pieces).

**Invisible bricks hold a fill**, written once, when the level is allocated (and again only when the model
changes): the smallest ``vmin`` of the macro-cells covering the brick. Why the image does not change: every cell
of an invisible brick has zero opacity over its whole range, and the cells covering a brick form a connected
block of cells that share faces, so the union ``I_b`` of their ranges is one interval of zero opacity. A trilinear
sample inside brick ``b`` interpolates the 8 corners of one level voxel, all points of ``b``'s closed box; each
corner holds ``b``'s fill, a true value (which lies in ``I_b``), or the fill of a neighbour ``w`` sharing that
face point, which lies in ``I_w``; ``I_w`` also holds the true value at the shared point, so it overlaps ``I_b``.
The union of intervals that all overlap ``I_b`` is one interval of zero opacity, and every interpolated value lies
in it: the sample is transparent, as it is with the true values. A fill is independent of the transfer function
(any table that makes the brick invisible gives its whole interval zero opacity); a table that makes a filled
brick visible has it decoded on top. Fills are written only at allocation, so a fill never overwrites a decoded
voxel, and a decoded brick's box (faces included) always holds true values.

**Memory** is bounded by :attr:`BrickCacheSettings.memory_bytes` (the sum of the allocated level arrays): a new
level evicts the least recently used other levels; a level that alone exceeds the bound is refused, and
:meth:`BrickCache.lod_for_view` picks one only when even the coarsest does not fit. **The model changing** (any
parameter replaced or modified in place, e.g. retraining) is detected on every call: the allocated levels are
refilled in place (their buffers stay put; the version bumps) and requests decode them again. A field without
parameters cannot be watched: call :meth:`BrickCache.invalidate` when it changes.

Decoding runs on the field's device (``evaluate`` moves each chunk there); the levels live in host memory, where
VTK reads them. Pure PyTorch and NumPy: no VTK here.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field as dataclass_field

import numpy as np
import torch

from ..evaluate import DEFAULT_CHUNK_SIZE, evaluate
from ..geometry import ImageGeometry
from .camera import Camera, check_size
from .macrocells import DEFAULT_CELL_SIZE, MacroCells, macrocells_for
from .transfer_function import TransferFunction, TransferTable
from .volume import RenderVolume

MAX_LOD = 6
"""The coarsest level offered (1/64 of the resolution per axis), unless the volume runs out of points first."""

DECODE_BATCH_POINTS = 1 << 20
"""Points gathered into one decode batch (12 MB of coordinates): bricks are collected until a batch holds about
this many points, then the batch goes to the field in ``chunk_size`` pieces."""

FILLED, DECODED = 1, 2
"""Brick states: holding its fill, or decoded (true values on its whole closed box)."""


@dataclass
class BrickCacheSettings:
    """How the cache bricks, bounds and decodes its levels."""

    brick_size: int = 16
    """Voxels per brick edge at the brick's level (the unit of visibility and decoding). 16, the macro-cells' size:
    on inia19 with the Tissue preset, LOD 0 decodes 40 % of its points with bricks of 16 and 65 % with bricks of 32,
    and the bookkeeping of the smaller bricks costs nothing measurable (bricks of 8 would double it)."""
    memory_bytes: int = 1 << 30
    """Bound on the sum of the allocated level arrays (bytes); least recently used levels are evicted to keep it."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Points per field call while decoding (bounds the field's working memory)."""
    cell_size: int = DEFAULT_CELL_SIZE
    """LOD-0 voxels per macro-cell edge for visibility; the default shares the renderer's cached macro-cells."""

    def __post_init__(self):
        for name, least in (("brick_size", 1), ("memory_bytes", 1), ("chunk_size", 1), ("cell_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"brick cache setting {name} must be a positive integer, got {value!r}.")
            setattr(self, name, int(value))


@dataclass
class CachedLevel:
    """One level of detail: a stable float32 ``(nz, ny, nx)`` array on a VTK image geometry, and its state."""

    lod: int
    values: np.ndarray
    """``(nz, ny, nx)`` float32, C-contiguous; the buffer never moves while the level lives (wrap it in VTK)."""
    origin: tuple[float, float, float]
    """World position of point ``(0, 0, 0)`` (the volume's minimum corner)."""
    spacing: tuple[float, float, float]
    """World distance between points per axis; ``origin + (dims - 1) * spacing`` is the volume's maximum corner."""
    dims: tuple[int, int, int]
    """Points per axis ``(nx, ny, nz)``."""
    bricks: int
    """Bricks in the level."""
    version: int = 0
    """Bumps whenever ``values`` change (a decode or a fill): the VTK side calls ``Modified()`` then."""
    complete: bool = False
    """Every brick visible under the last transfer table this level was checked against is decoded."""
    missing_bricks: int = 0
    """Visible bricks (under that table) not yet decoded."""
    visible_bricks: int = 0
    """Bricks visible under that table."""
    decoded_bricks: int = 0
    """Bricks holding true values."""
    evicted: bool = False
    """True once the cache dropped this level (evicted or invalidated): drop any wrapper of ``values`` too."""

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    @property
    def geometry(self) -> ImageGeometry:
        """The level as an image geometry (``RenderVolume.from_grid(level.values, level.geometry)``)."""
        return ImageGeometry(self.dims, self.origin, self.spacing)


@dataclass
class _Axis:
    """One axis of one level's brick layout (arrays are per brick, inclusive point indices)."""

    points: int
    starts: np.ndarray
    ends: np.ndarray
    """Last point of each brick's closed box: the next brick's first point, or the array's last point."""
    owned_ends: np.ndarray
    """Last point each brick owns (its far face belongs to the next brick)."""
    first_cell: np.ndarray
    last_cell: np.ndarray
    """The macro-cells (along this axis) covering each brick's closed box."""
    owner: np.ndarray
    """``(points,)`` the brick owning each point."""
    coordinates: torch.Tensor
    """``(points,)`` float32 model-cube coordinates of the points."""

    @property
    def count(self) -> int:
        return len(self.starts)


@dataclass
class _LevelState:
    level: CachedLevel
    axes: tuple[_Axis, _Axis, _Axis]
    """x, y, z."""
    state: np.ndarray
    """``(bz, by, bx)`` uint8 brick states."""
    last_used: int = 0
    visibility_key: tuple | None = None
    visible: np.ndarray | None = dataclass_field(default=None, repr=False)


class BrickCache:
    """Decoded levels of one :class:`~.volume.RenderVolume` (see the module docstring for the design).

    ``device`` is where decode points are built (default: the CPU; :func:`~srn_core.evaluate.evaluate` moves
    them to a field's parameters' device either way); decoded values are stored in host memory.

    Counters (totals since the cache was made; ``last_*``: the last :meth:`request`): ``points_decoded`` /
    ``last_points_decoded`` (field evaluations), ``bricks_decoded``, ``bricks_reused`` (visible bricks a request
    found decoded: hits), ``bricks_filled`` (every brick of a level gets its fill when the level is allocated or
    the model changed), ``evictions`` (levels dropped for ``memory_bytes``), ``decode_seconds`` /
    ``last_decode_seconds``.
    """

    points_decoded: int
    last_points_decoded: int
    bricks_decoded: int
    bricks_reused: int
    bricks_filled: int
    evictions: int
    decode_seconds: float
    last_decode_seconds: float

    def __init__(self, volume: RenderVolume, settings: BrickCacheSettings | None = None, device=None):
        if not isinstance(volume, RenderVolume):
            raise ValueError(f"a brick cache needs a RenderVolume, got {type(volume).__name__}.")
        self.volume = volume
        self.settings = settings if settings is not None else BrickCacheSettings()
        if not isinstance(self.settings, BrickCacheSettings):
            raise ValueError(f"brick cache settings must be BrickCacheSettings, got {type(self.settings).__name__}.")
        try:
            self.device = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError):
            raise ValueError(f"brick cache device must name a torch device, got {device!r}.") from None
        self.points_decoded = self.last_points_decoded = 0
        self.bricks_decoded = self.bricks_reused = self.bricks_filled = self.evictions = 0
        self.decode_seconds = self.last_decode_seconds = 0.0
        self._levels: dict[int, _LevelState] = {}
        self._clock = 0
        self._model_version = _parameter_version(volume.field)
        self._cells: MacroCells | None = None
        self._table_key: tuple | None = None
        self._table_ref: TransferTable | None = None  # keeps the keyed table alive, so its id is not reused
        self._occupied: np.ndarray | None = None
        d = max(volume.dims) - 1
        self._max_lod = min(MAX_LOD, (d - 1).bit_length())  # the first level with 2 points on every axis

    # ---- geometry ------------------------------------------------------------------------------
    @property
    def max_lod(self) -> int:
        """The coarsest level: :data:`MAX_LOD`, or the first with 2 points on every axis if that comes sooner."""
        return self._max_lod

    def level_dims(self, lod: int) -> tuple[int, int, int]:
        """Points per axis ``(nx, ny, nz)`` of level ``lod``: ``ceil((d - 1) / 2^lod) + 1``."""
        lod = self._check_lod(lod)
        return tuple(-(-(d - 1) // (1 << lod)) + 1 for d in self.volume.dims)  # type: ignore[return-value]

    def level_spacing(self, lod: int) -> tuple[float, float, float]:
        """World distance between points of level ``lod`` per axis (the bounds stay exact)."""
        b = self.volume.bounds
        return tuple((b[2 * a + 1] - b[2 * a]) / (n - 1) for a, n in enumerate(self.level_dims(lod)))  # type: ignore

    def level_nbytes(self, lod: int) -> int:
        """Bytes of level ``lod``'s array."""
        nx, ny, nz = self.level_dims(lod)
        return nx * ny * nz * 4

    @property
    def nbytes(self) -> int:
        """Bytes held by the allocated levels (at most ``settings.memory_bytes``)."""
        return sum(s.level.nbytes for s in self._levels.values())

    def lod_for_view(self, camera: Camera, width: int, height: int, step: float = 1.0) -> int:
        """The coarsest level whose voxels are no larger than what one pixel (or one ray step) covers.

        The footprint is the world size of a pixel at the volume's nearest depth in front of the camera
        (perspective: ``2 depth tan(view_angle / 2) / height``; parallel: ``2 parallel_scale / height``), or the
        ray step (``step`` LOD-0 voxels) when that is longer, as mip-mapping takes the larger footprint:
        ``lod = floor(log2(footprint / voxel))`` for the smallest LOD-0 spacing, clamped to ``[0, max_lod]``,
        then made coarser while the level would not fit in ``memory_bytes`` (the bound wins over detail).
        """
        if not isinstance(camera, Camera):
            raise ValueError(f"lod_for_view needs a Camera, got {type(camera).__name__}.")
        width, height = check_size(width, height)
        try:
            ok = not isinstance(step, bool) and math.isfinite(float(step)) and float(step) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"lod_for_view step must be a positive number of voxels, got {step!r}.")
        voxel = min(self.volume.spacing)
        if camera.parallel_projection:
            pixel = 2.0 * camera.parallel_scale / height
        else:
            pixel = 2.0 * self._nearest_depth(camera) * math.tan(math.radians(camera.view_angle) / 2) / height
        footprint = max(pixel, float(step) * voxel)
        lod = 0
        if footprint > voxel:
            lod = int(math.floor(math.log2(footprint / voxel) + 1e-9))  # 4 voxels is LOD 2 despite rounding
        lod = min(max(lod, 0), self.max_lod)
        while lod < self.max_lod and self.level_nbytes(lod) > self.settings.memory_bytes:
            lod += 1
        return lod

    def _nearest_depth(self, camera: Camera) -> float:
        """Smallest distance in front of the eye (along the view direction) of any point of the volume's box."""
        _, _, forward = camera.frame()
        b = self.volume.bounds
        depths = [sum((corner[a] - camera.position[a]) * forward[a] for a in range(3))
                  for corner in itertools.product(b[0:2], b[2:4], b[4:6])]
        return max(0.0, min(depths))

    # ---- the cache -----------------------------------------------------------------------------
    def level(self, lod: int) -> CachedLevel | None:
        """Level ``lod`` as cached (possibly partial), without decoding anything; ``None`` if not allocated."""
        lod = self._check_lod(lod)
        self._check_model()
        state = self._levels.get(lod)
        return None if state is None else state.level

    def finest_complete_level(self, table: TransferTable | None, at_least: int = 0) -> CachedLevel | None:
        """The finest cached level, no finer than ``at_least``, with every brick visible under ``table`` decoded.

        Checking a level updates its ``complete`` / ``missing_bricks`` for ``table``; nothing is decoded.
        """
        at_least = self._check_lod(at_least, "at_least")
        table = _check_table(table)
        self._check_model()
        for lod in sorted(self._levels):
            if lod < at_least:
                continue
            state = self._levels[lod]
            self._update_completeness(state, self._visibility(state, table))
            if state.level.complete:
                self._touch(state)
                return state.level
        return None

    def request(self, lod: int, table: TransferTable | None = None, max_points: int | None = None) -> CachedLevel:
        """Level ``lod`` with the bricks visible under ``table`` decoded (``None``: every brick).

        Allocates the level if needed (evicting least recently used other levels to stay within
        ``memory_bytes``; a level larger than the bound alone raises ``ValueError``), then decodes the visible
        bricks not decoded yet, in brick order, at most about ``max_points`` field evaluations in this call
        (``None``: all; whole bricks, at least one when ``max_points > 0``). A level still missing bricks has
        ``complete=False``; later requests finish it.
        """
        lod = self._check_lod(lod)
        table = _check_table(table)
        if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer))
                                       or max_points < 0):
            raise ValueError(f"max_points must be a non-negative integer or None, got {max_points!r}.")
        self._check_model()
        state = self._levels.get(lod)
        if state is None:
            # A level decoded whole in this very call needs no fills (nor the macro-cells they come from): a cold
            # preview then costs only its own points.
            state = self._allocate(lod, fill=not (table is None and max_points is None))
        self._touch(state)
        visible = self._visibility(state, table)
        todo = visible & (state.state != DECODED)
        self.bricks_reused += int((visible & (state.state == DECODED)).sum())
        self.last_points_decoded = 0
        self.last_decode_seconds = 0.0
        if todo.any():
            self._decode(state, self._batch(state, np.flatnonzero(todo), max_points))
        self._update_completeness(state, visible)
        return state.level

    def invalidate(self) -> None:
        """Drop every level (the model changed in a way the cache cannot see, e.g. a field without parameters)."""
        for state in self._levels.values():
            state.level.evicted = True
        self._levels.clear()
        self._cells = None
        self._table_key = self._table_ref = self._occupied = None
        self._model_version = _parameter_version(self.volume.field)

    # ---- internals -----------------------------------------------------------------------------
    def _check_lod(self, lod, name: str = "lod") -> int:
        if isinstance(lod, bool) or not isinstance(lod, (int, np.integer)) or not 0 <= lod <= self.max_lod:
            raise ValueError(f"{name} must be an integer level from 0 to {self.max_lod}, got {lod!r}.")
        return int(lod)

    def _touch(self, state: _LevelState) -> None:
        self._clock += 1
        state.last_used = self._clock

    def _check_model(self) -> None:
        """Refill every level in place when the field's parameters changed since they were decoded."""
        version = _parameter_version(self.volume.field)
        if version == self._model_version:
            return
        self._model_version = version
        self._cells = None
        self._table_key = self._table_ref = self._occupied = None
        for state in self._levels.values():
            state.state[...] = FILLED
            state.visibility_key = state.visible = None
            level = state.level
            level.decoded_bricks, level.missing_bricks, level.complete = 0, level.visible_bricks, False
            self._fill(state)

    def _macrocells(self) -> MacroCells:
        if self._cells is None:  # held here: the renderer may rebuild the shared cache with other cell sizes
            s = self.settings
            self._cells = macrocells_for(self.volume, s.cell_size, None, s.chunk_size)
        return self._cells

    def _allocate(self, lod: int, fill: bool = True) -> _LevelState:
        size = self.level_nbytes(lod)
        limit = self.settings.memory_bytes
        if size > limit:
            raise ValueError(f"LOD {lod} ({' x '.join(map(str, self.level_dims(lod)))} points, {size:,} bytes) does "
                             f"not fit in the brick cache's memory_bytes {limit:,}; request a coarser level "
                             f"(lod_for_view picks one that fits) or raise memory_bytes.")
        while self._levels and self.nbytes + size > limit:
            victim = min(self._levels, key=lambda k: self._levels[k].last_used)
            self._levels.pop(victim).level.evicted = True
            self.evictions += 1
        dims = self.level_dims(lod)
        axes = tuple(self._axis(lod, a, dims[a]) for a in range(3))
        nx, ny, nz = dims
        level = CachedLevel(lod, np.empty((nz, ny, nx), dtype=np.float32), (self.volume.bounds[0],
                            self.volume.bounds[2], self.volume.bounds[4]), self.level_spacing(lod), dims,
                            bricks=axes[0].count * axes[1].count * axes[2].count)
        state = _LevelState(level, axes, np.full((axes[2].count, axes[1].count, axes[0].count), FILLED, np.uint8))
        if fill:
            self._fill(state)
        self._levels[lod] = state
        return state

    def _axis(self, lod: int, a: int, n: int) -> _Axis:
        """Brick layout of level ``lod`` along axis ``a`` (``n`` points)."""
        size, cell = self.settings.brick_size, self.settings.cell_size
        d = self.volume.dims[a]
        count = -(-(n - 1) // size)
        starts = np.arange(count, dtype=np.int64) * size
        ends = np.minimum(starts + size, n - 1)
        owned_ends = np.where(np.arange(count) == count - 1, n - 1, ends - 1)
        # A level point p sits at LOD-0 voxel p (d - 1) / (n - 1); the cells covering [lo, hi] are those from
        # floor(lo / C) to ceil(hi / C) - 1 (exact integer arithmetic: no rounding at cell faces).
        scale = (n - 1) * cell
        cells = max(1, -(-(d - 1) // cell))  # as macrocells.cell_counts
        first = np.minimum(starts * (d - 1) // scale, cells - 1)
        last = np.clip(-(-(ends * (d - 1)) // scale) - 1, first, cells - 1)
        owner = np.minimum(np.arange(n) // size, count - 1)
        coords = (torch.arange(n, dtype=torch.float64) * (2.0 / (n - 1)) - 1.0).float()
        return _Axis(n, starts, ends, owned_ends, first, last, owner, coords)

    def _fill(self, state: _LevelState) -> None:
        """Give every point its owning brick's fill (the smallest vmin of the cells covering the brick)."""
        cells = self._macrocells()
        ax, ay, az = state.axes
        vmin = cells.vmin.numpy()
        fill = _reduce_boxes(vmin, (az, ay, ax), np.minimum)
        values = state.level.values
        plane_owner = np.ix_(ay.owner, ax.owner)
        for k in range(az.count):
            values[az.starts[k]:az.owned_ends[k] + 1] = fill[k][plane_owner]
        state.level.version += 1
        self.bricks_filled += state.level.bricks

    def _visibility(self, state: _LevelState, table: TransferTable | None) -> np.ndarray:
        """``(bz, by, bx)`` bool: bricks whose covering cells can have a non-zero opacity under ``table``."""
        if table is None:
            return np.ones(state.state.shape, dtype=bool)
        key = (id(table), table.rgba._version, table.lo, table.hi)
        if key != self._table_key:
            self._table_key, self._table_ref = key, table
            self._occupied = (self._macrocells().max_opacity(table) > 0).numpy()
        if state.visibility_key != key:
            ax, ay, az = state.axes
            state.visible = _reduce_boxes(self._occupied, (az, ay, ax), np.logical_or)
            state.visibility_key = key
        return state.visible

    def _update_completeness(self, state: _LevelState, visible: np.ndarray) -> None:
        level = state.level
        level.visible_bricks = int(visible.sum())
        level.missing_bricks = int((visible & (state.state != DECODED)).sum())
        level.decoded_bricks = int((state.state == DECODED).sum())
        level.complete = level.missing_bricks == 0

    def _batch(self, state: _LevelState, todo: np.ndarray, max_points: int | None) -> np.ndarray:
        """The bricks (flat indices, brick order) to decode now: all, or whole bricks up to about ``max_points``."""
        if max_points is None:
            return todo
        if max_points == 0:
            return todo[:0]
        ax, ay, az = state.axes
        k, j, i = np.unravel_index(todo, state.state.shape)
        sizes = ((ax.ends - ax.starts + 1)[i] * (ay.ends - ay.starts + 1)[j] * (az.ends - az.starts + 1)[k])
        take = max(1, int(np.searchsorted(np.cumsum(sizes), max_points, side="right")))
        return todo[:take]

    def _decode(self, state: _LevelState, bricks: np.ndarray) -> None:
        """Evaluate the field on the boxes the ``bricks`` (flat indices) need and write them into the level."""
        start = time.perf_counter()
        ax, ay, az = state.axes
        shape = state.state.shape
        decoded_after = state.state == DECODED
        decoded_after.reshape(-1)[bricks] = True
        boxes = []  # (z0, z1, y0, y1, x0, x1) inclusive
        for k, j, i in zip(*np.unravel_index(bricks, shape)):
            for ez, ey, ex in itertools.product((0, 1), repeat=3):
                if (ez and k == az.count - 1) or (ey and j == ay.count - 1) or (ex and i == ax.count - 1):
                    continue  # the brick's far face is the array's end: it owns it
                if (ez or ey or ex) and decoded_after[k + ez, j + ey, i + ex]:
                    continue  # the face's owner holds (or is about to hold) its true values
                boxes.append((*_part(az, k, ez), *_part(ay, j, ey), *_part(ax, i, ex)))
        values = state.level.values
        points = 0
        batch: list[tuple] = []
        batch_points = 0
        for box in boxes + [None]:
            if box is not None:
                batch.append(box)
                batch_points += (box[1] - box[0] + 1) * (box[3] - box[2] + 1) * (box[5] - box[4] + 1)
            if batch and (box is None or batch_points >= DECODE_BATCH_POINTS):
                self._decode_boxes(state, batch, batch_points, values)
                points += batch_points
                batch, batch_points = [], 0
        state.state.reshape(-1)[bricks] = DECODED  # only now: a face skipped above relies on its owner's decode
        state.level.version += 1
        seconds = time.perf_counter() - start
        self.points_decoded += points
        self.last_points_decoded = points
        self.bricks_decoded += int(len(bricks))
        self.decode_seconds += seconds
        self.last_decode_seconds = seconds

    def _decode_boxes(self, state: _LevelState, boxes: list[tuple], total: int, values: np.ndarray) -> None:
        ax, ay, az = state.axes
        pts = torch.empty(total, 3, dtype=torch.float32, device=self.device)
        offset = 0
        for z0, z1, y0, y1, x0, x1 in boxes:
            grid = torch.cartesian_prod(az.coordinates[z0:z1 + 1], ay.coordinates[y0:y1 + 1],
                                        ax.coordinates[x0:x1 + 1])  # z slowest, x fastest: the array's order
            pts[offset:offset + grid.shape[0]] = grid.flip(1)
            offset += grid.shape[0]
        out = evaluate(self.volume.field, pts, self.settings.chunk_size).cpu().numpy()
        offset = 0
        for z0, z1, y0, y1, x0, x1 in boxes:
            n = (z1 - z0 + 1) * (y1 - y0 + 1) * (x1 - x0 + 1)
            values[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = out[offset:offset + n].reshape(z1 - z0 + 1, y1 - y0 + 1,
                                                                                      x1 - x0 + 1)
            offset += n


def _part(axis: _Axis, b: int, far: int) -> tuple[int, int]:
    """Inclusive point range of brick ``b`` along ``axis``: the points it owns, or (``far``) its far face."""
    if far:
        return int(axis.ends[b]), int(axis.ends[b])
    return int(axis.starts[b]), int(axis.owned_ends[b])


def _reduce_boxes(cells: np.ndarray, axes: tuple[_Axis, _Axis, _Axis], op) -> np.ndarray:
    """``op``-reduce ``(cz, cy, cx)`` cell values over each brick's covering cells: ``(bz, by, bx)``.

    The covering cells of a brick form a box, so the reduction separates into one pass per axis.
    """
    out = cells
    for dim, axis in enumerate(axes):  # z, y, x
        parts = [op.reduce(np.take(out, np.arange(f, l + 1), axis=dim), axis=dim)
                 for f, l in zip(axis.first_cell, axis.last_cell)]
        out = np.stack(parts, axis=dim)
    return out


def _check_table(table) -> TransferTable | None:
    if table is None or isinstance(table, TransferTable):
        return table
    if isinstance(table, TransferFunction):
        raise ValueError("the brick cache needs a TransferTable: pass tf.table(), not the TransferFunction.")
    raise ValueError(f"table must be a TransferTable or None, got {type(table).__name__}.")


def _parameter_version(field) -> tuple:
    """Identity and in-place version of every parameter: changes when the model is retrained or edited."""
    params = getattr(field, "parameters", None)
    if params is None:
        return ()
    return tuple((id(p), p._version) for p in params())
