"""Training an ensemble: one model per brick of a regular grid, trained separately, assembled into one file.

This is how a volume too large for one model (or one process) is trained: the model cube is cut into the
uniform routing cells of :class:`~srn_core.fields.EnsembleField`, each brick trains on its cell's voxels widened
by ``ghost`` voxels on each side (so its model has seen the data just across its faces, and the seams between
bricks stay small), and the trained bricks are assembled into one :class:`~srn_core.model.NeuralVolume`.

* :func:`plan_bricks` gives the :class:`BrickPlan`: every brick's box of voxels and its bounds in the model cube.
* :class:`EnsembleTraining` trains one brick at a time in a work folder: a finished brick is written as our
  normal model file (``brick-00007.safetensors``, atomically) and its checkpoint deleted; an unfinished one keeps
  its checkpoint (``brick-00007.checkpoint``), so a resumed run skips finished bricks and resumes the others
  exactly where they stopped. A small JSON manifest refuses a folder that holds parts of a different run.
* :func:`train_ensemble` runs the whole thing serially or over MPI ranks (an mpi4py-style communicator): ranks
  take bricks round robin, a failing rank leaves a marker file that the others poll (they stop, keeping their
  checkpoints), and every rank then raises :class:`EnsembleTrainingFailed`. Rank 0 assembles the model.

Seeds depend on the run's seed and the brick index only (:func:`brick_seed`), never on the rank: the same
ensemble comes out of 1 or 8 processes (on the CPU with the same torch thread count per process: float sums
depend on it), and out of an interrupted and resumed run, bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .compression import Compression
from .data import Volume
from .fields.ensemble import EnsembleConfig, EnsembleField, cells_meeting_extent
from .geometry import ImageGeometry
from .model import NeuralVolume
from .modelfile import atomic_write
from .series import TimeSeries, series_psnr
from .training import TrainConfig, TrainingInterrupted, TrainProgress, TrainResult, fit
from .volume_source import Box, VolumeSource, as_source, box_shape

DEFAULT_GHOST = 2
"""Ghost voxels added on each side of a brick's routing cell (clamped to the volume), beyond the rounding of the
cell's faces outwards to whole voxels. Chosen by ``benchmarks/seams.py`` (inia19 at half resolution, 2x1x1 and
2x2x2 bricks, equal total parameters and steps; its docstring has the table): at every ghost width the error
within 2 voxels of the cut planes stood to the interior's as it does for one model of the whole volume, but the
step between the two bricks' values on a cut plane (what a ray sees at a seam) was 1.29 / 1.22 times the model's
RMSE with 0 ghosts against 0.95 / 0.78 with 2, no better with 4 or 8; each ghost voxel costs a little PSNR (the
bricks' parameters spread over more voxels: 2x2x2 37.6 dB with 0, 37.3 with 2, 36.4 with 8). 2 is the smallest
width whose step is within 10 % of the least measured on both grids."""

MANIFEST_NAME = "ensemble.json"
"""The work folder's record of the run it belongs to."""

RESOURCE_SETTINGS = ("seed", "device", "data_memory", "checkpoint_every", "checkpoint_every_steps")
"""Training settings a resumed run may change (the seed is recorded per brick instead): where and with how much
memory it runs, and how often it saves, not what it trains."""

FAILURE_POLL_SECONDS = 2.0
"""How often (seconds of wall time) a training brick checks whether another rank has failed."""


# ---- the plan -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BrickPlan:
    """Where each brick of an ensemble lies: its routing cell, its training box and the bounds of its model.

    Brick ``(i, j, k)`` (along x, y, z) has index ``i + j * gx + k * gx * gy`` (x fastest), and answers for the
    points :meth:`EnsembleField.brick_index <srn_core.fields.EnsembleField.brick_index>` routes to it: the
    ``k``-th of the model cube's uniform cells.
    """

    geometry: ImageGeometry
    """The whole volume's grid (its bounds are the model cube)."""
    grid: tuple[int, int, int]
    """Bricks along x, y, z."""
    ghost: int
    """Voxels added to each side of a brick's routing cell for training (clamped to the volume)."""

    def __len__(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def cell(self, k: int) -> tuple[int, int, int]:
        """``(i, j, k)`` of brick ``k`` along x, y, z."""
        k = self._checked(k)
        gx, gy = self.grid[0], self.grid[1]
        return k % gx, (k // gx) % gy, k // (gx * gy)

    def _axis_range(self, axis: int, c: int) -> tuple[int, int]:
        """Half-open voxel range of cell ``c`` along ``axis`` (x=0), ghosts included, clamped."""
        n, g = self.geometry.dims[axis], self.grid[axis]
        lower = (c * (n - 1)) // g  # floor of the cell's lower face, in voxels
        upper = -((-(c + 1) * (n - 1)) // g)  # ceil of its upper face
        return max(0, lower - self.ghost), min(n, upper + 1 + self.ghost)

    def extent(self, k: int) -> tuple[int, int, int, int, int, int]:
        """The VTK extent ``(x0, x1, y0, y1, z0, z1)`` (inclusive) of :meth:`box` ``(k)`` in the whole grid."""
        out = []
        for axis, c in enumerate(self.cell(k)):
            lo, hi = self._axis_range(axis, c)
            out += [lo, hi - 1]
        return tuple(out)  # type: ignore[return-value]

    def box(self, k: int) -> Box:
        """Brick ``k``'s training box in array order ``(z, y, x)``, half-open, ghosts included."""
        e = self.extent(k)
        return np.s_[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1]

    def model_bounds(self, k: int) -> tuple[float, ...]:
        """The box of the ensemble's model cube that maps to brick ``k``'s own ``[-1, 1]^3``
        (``xmin, xmax, ymin, ymax, zmin, zmax``; voxel ``v`` of ``N`` at ``-1 + 2 v / (N - 1)``)."""
        e = self.extent(k)
        dims = self.geometry.dims
        return tuple(-1.0 + 2.0 * e[2 * a + s] / (dims[a] - 1) for a in range(3) for s in (0, 1))

    def bricks_touching(self, extent) -> list[int]:
        """Bricks whose routing cells meet the VTK ``extent`` of the whole grid (what a piece must load)."""
        return cells_meeting_extent(self.grid, self.geometry.dims, extent)

    def _checked(self, k: int) -> int:
        if not 0 <= int(k) < len(self):
            raise IndexError(f"brick {k} does not exist; the plan has bricks 0 to {len(self) - 1}.")
        return int(k)

    def to_dict(self) -> dict:
        return {"geometry": self.geometry.to_dict(), "grid": list(self.grid), "ghost": self.ghost}


def plan_bricks(geometry: ImageGeometry, grid, ghost: int = DEFAULT_GHOST) -> BrickPlan:
    """The :class:`BrickPlan` of ``grid`` bricks (along x, y, z) over ``geometry`` with ``ghost`` voxels."""
    try:
        grid = tuple(int(g) for g in grid)
    except (TypeError, ValueError):
        grid = ()
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"ensemble grid must be three brick counts (x, y, z) of at least 1, got {grid!r}.")
    if isinstance(ghost, bool) or int(ghost) != ghost or ghost < 0:
        raise ValueError(f"ghost must be a whole number of voxels, 0 or more, got {ghost!r}.")
    for axis, (g, n) in enumerate(zip(grid, geometry.dims)):
        if g > n - 1:
            raise ValueError(f"ensemble grid {grid} has {g} bricks along {'xyz'[axis]}, but the volume's {n} points "
                             f"there leave a brick under 2 points of its own; use at most {max(1, n - 1)}.")
    return BrickPlan(geometry, grid, int(ghost))


def brick_seed(seed: int, k: int) -> int:
    """The training seed of brick ``k`` of a run seeded ``seed``: a hash of both, never of the rank."""
    digest = hashlib.sha256(f"neural-volume ensemble brick {int(seed)} {int(k)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def brick_file(work_dir: str | os.PathLike, k: int) -> Path:
    """Where a run in ``work_dir`` keeps brick ``k``'s finished model (its existence means the brick is done)."""
    return Path(work_dir) / f"brick-{int(k):05d}.safetensors"


class EnsembleTrainingFailed(Exception):
    """A rank's brick failed; every rank raises this, naming the failed rank(s) and their errors.

    ``failures`` maps each failed rank to its message. Finished bricks and the others' checkpoints stay in the
    work folder, so the run can be resumed once the cause is fixed.
    """

    def __init__(self, failures: dict[int, str], work_dir: str):
        self.failures, self.work_dir = dict(failures), work_dir
        parts = "; ".join(f"rank {r}: {m}" for r, m in sorted(self.failures.items()))
        super().__init__(f"ensemble training failed ({parts}); the finished bricks and checkpoints are kept in "
                         f"{work_dir!r}: fix the cause and resume.")


# ---- one run's work folder --------------------------------------------------------------------------------
class EnsembleTraining:
    """One ensemble run's bricks in ``work_dir``: train them (in any order, on any rank), then assemble.

    ``budget`` is the whole ensemble's parameter budget (``None``: the data's points / 100); each brick gets
    ``budget // len(plan)``. ``config`` is every brick's training config but its seed, which is
    :func:`brick_seed` ``(config.seed, k)``. ``compression``: the file the ensemble will be written as, for
    quantization-aware training (``config.qat_fraction``); the bricks themselves are kept float32.
    ``data_sha256``: the whole data's checksum, when the caller knows it (recorded and checked in the manifest,
    and the assembled model's provenance).
    """

    def __init__(self, plan: BrickPlan, architecture: str, budget: int | None, config: TrainConfig,
                 work_dir: str | os.PathLike, *, resume: bool = False, compression: Compression | None = None,
                 data_sha256: str | None = None):
        if architecture == EnsembleField.architecture:
            raise ValueError("architecture names what each brick is; an ensemble of ensembles is not supported.")
        if budget is None:
            budget = plan.geometry.num_points // 100
        self.plan, self.architecture, self.budget, self.config = plan, architecture, int(budget), config
        self.brick_budget = self.budget // len(plan)
        self.work_dir, self.resume, self.compression = Path(work_dir), resume, compression
        self.data_sha256 = data_sha256
        self._last_poll = 0.0
        self._manifest = {
            "kind": "neural-volume ensemble training", "plan": plan.to_dict(), "architecture": architecture,
            "budget": self.budget, "seeds": [brick_seed(config.seed, k) for k in range(len(plan))],
            "data_sha256": data_sha256,
            "train_config": {k: v for k, v in dataclasses.asdict(config).items() if k not in RESOURCE_SETTINGS},
            "compression": None if compression is None else dataclasses.asdict(compression),
        }
        self._check_work_dir()

    # ---- paths ----
    def brick_path(self, k: int) -> Path:
        return brick_file(self.work_dir, self.plan._checked(k))

    def checkpoint_path(self, k: int) -> Path:
        return self.work_dir / f"brick-{self.plan._checked(k):05d}.checkpoint"

    def _check_work_dir(self) -> None:
        """Create ``work_dir`` with the manifest, or check that the one there belongs to this run."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / MANIFEST_NAME
        ours = json.loads(json.dumps(self._manifest))  # as stored: tuples became lists
        if path.exists():
            try:
                theirs = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"work folder {str(self.work_dir)!r} has an unreadable {MANIFEST_NAME} ({exc}); "
                                 f"delete the folder to start afresh.") from None
            if not isinstance(theirs, dict):
                theirs = {}
            if theirs.get("data_sha256") is None or ours["data_sha256"] is None:
                theirs, ours = {**theirs, "data_sha256": None}, {**ours, "data_sha256": None}
            differs = [key for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
            if "train_config" in differs and isinstance(theirs.get("train_config"), dict):
                a, b = ours["train_config"], theirs["train_config"]
                differs.remove("train_config")
                differs += [f"training setting {key}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
            if differs:
                raise ValueError(
                    f"work folder {str(self.work_dir)!r} holds parts of a different ensemble run (its "
                    f"{', '.join(differs)} differ from this run's); delete it to start afresh, or give another "
                    f"work folder.")
        parts = sorted(p.name for p in self.work_dir.glob("brick-*"))
        if parts and not self.resume:
            raise ValueError(f"work folder {str(self.work_dir)!r} already holds {len(parts)} brick file(s) of "
                             f"this run; resume it (--resume, resume=True) or delete the folder to start afresh.")
        if not path.exists():
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(self._manifest, indent=1)))

    # ---- bricks ----
    def bricks_for_rank(self, rank: int, size: int) -> list[int]:
        """The bricks rank ``rank`` of ``size`` trains: round robin (``rank, rank + size, ...``)."""
        if not 0 <= rank < size:
            raise ValueError(f"rank must be from 0 to size - 1 = {size - 1}, got {rank}.")
        return list(range(rank, len(self.plan), size))

    def is_finished(self, k: int) -> bool:
        return self.brick_path(k).is_file()

    def brick_data(self, k: int, data: Volume | VolumeSource) -> Volume | VolumeSource:
        """Brick ``k``'s training data out of ``data``: the whole volume (its box is cut out) or the box alone
        (what a pipeline asked for brick ``k``'s extent gives)."""
        source = as_source(data)
        box = self.plan.box(k)
        shape = box_shape(box, self.plan.geometry.shape)
        if source.shape == self.plan.geometry.shape:
            return source.sub(box)
        if source.shape == shape:
            return data
        raise ValueError(f"data of shape {source.shape} (z, y, x) is neither the whole volume "
                         f"{self.plan.geometry.shape} nor brick {k}'s box {shape}.")

    def train_brick(self, k: int, data: Volume | VolumeSource,
                    callback: Callable[[TrainProgress], bool | None] | None = None) -> NeuralVolume | None:
        """Train brick ``k`` on its box of ``data`` (resuming its checkpoint, if any) and write its model file;
        returns the brick's model, or ``None`` when it was finished already (nothing is read then).

        ``callback(progress)`` returning ``True`` aborts like Ctrl-C (checkpoint kept, :class:`TrainingInterrupted`);
        so does a failure marker of another rank, polled every :data:`FAILURE_POLL_SECONDS`.
        """
        if self.is_finished(k):
            return None
        brick = self.brick_data(k, data)  # a source: fit reads it whole when it fits config.data_memory, else streams
        config = dataclasses.replace(self.config, seed=brick_seed(self.config.seed, k))
        checkpoint = self.checkpoint_path(k)

        def watch(progress: TrainProgress) -> bool:
            if callback is not None and callback(progress):
                return True
            now = time.monotonic()
            if now - self._last_poll >= FAILURE_POLL_SECONDS:
                self._last_poll = now
                return bool(self.failures())
            return False

        result = fit(brick, self.architecture, self.brick_budget, config, checkpoint=checkpoint,
                     resume=checkpoint.exists(), callback=watch, compression=self.compression)
        model = result.model
        model.training.update(ensemble_brick=k, ensemble_extent=list(self.plan.extent(k)))
        model.save(self.brick_path(k))
        checkpoint.unlink(missing_ok=True)
        return model

    # ---- failures (files, so that ranks on any node of a shared file system see them) ----
    def fail(self, rank: int, message: str) -> None:
        """Record that ``rank`` failed with ``message``; the other ranks' bricks stop at their next poll."""
        path = self.work_dir / f"failed-rank-{int(rank):05d}.txt"
        atomic_write(path, lambda tmp: Path(tmp).write_text(str(message)))

    def failures(self) -> dict[int, str]:
        """``{rank: message}`` of every failure marker in the work folder."""
        out = {}
        for p in sorted(self.work_dir.glob("failed-rank-*.txt")):
            try:
                out[int(p.stem.rsplit("-", 1)[1])] = p.read_text()
            except (OSError, ValueError):
                continue
        return out

    def clear_failures(self) -> None:
        """Remove the failure markers of an earlier attempt (before any rank starts training)."""
        for p in self.work_dir.glob("failed-rank-*.txt"):
            p.unlink(missing_ok=True)

    # ---- the result ----
    def assemble(self, data_sha256: str | None = None) -> NeuralVolume:
        """The finished bricks as one ensemble :class:`NeuralVolume` on the whole volume's geometry."""
        from .loading import load_model

        missing = [k for k in range(len(self.plan)) if not self.is_finished(k)]
        if missing:
            raise ValueError(f"ensemble in {str(self.work_dir)!r} lacks {len(missing)} of its {len(self.plan)} "
                             f"finished bricks (bricks {missing[:8]}); train them first.")
        bricks = [load_model(self.brick_path(k)) for k in range(len(self.plan))]
        fields = [b.field for b in bricks]
        config = EnsembleConfig(grid=self.plan.grid, brick_architecture=self.architecture,
                                brick_configs=[f.config_dict() for f in fields],
                                brick_bounds=[list(self.plan.model_bounds(k)) for k in range(len(self.plan))])
        field = EnsembleField(config, bricks=fields).eval()
        first = bricks[0].training
        training = {
            "steps": sum(int(b.training.get("steps", 0)) for b in bricks),
            "seconds": round(sum(float(b.training.get("seconds", 0.0)) for b in bricks), 3),
            "data_sha256": data_sha256 or self.data_sha256,
            "seed": self.config.seed, "batch_size": first.get("batch_size"), "lr": first.get("lr"),
            "ensemble_grid": list(self.plan.grid), "ensemble_ghost": self.plan.ghost,
            "ensemble_bricks": [{"steps": b.training.get("steps"), "seconds": b.training.get("seconds"),
                                 "psnr": b.training.get("psnr"),
                                 "stopped_because": b.training.get("stopped_because")} for b in bricks],
            "torch": first.get("torch"),
        }
        if training["data_sha256"] is None:
            del training["data_sha256"]
        return NeuralVolume(field, self.plan.geometry, bricks[0].array_name, training)

    def cleanup(self) -> None:
        """Remove the work folder (once the assembled model file is safely written)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


# ---- the whole run ---------------------------------------------------------------------------------------
def train_ensemble(data: Volume | VolumeSource, grid, architecture: str = "apmgsrn", budget: int | None = None,
                   config: TrainConfig = TrainConfig(), *, ghost: int = DEFAULT_GHOST,
                   work_dir: str | os.PathLike, resume: bool = False, comm=None,
                   callback: Callable[[int, TrainProgress], bool | None] | None = None,
                   compression: Compression | None = None) -> TrainResult | None:
    """Train an ensemble of ``grid`` bricks (along x, y, z) on ``data``; the caller writes the model file of the
    result and then calls ``EnsembleTraining.cleanup`` (or deletes ``work_dir``).

    ``comm``: ``None`` trains every brick here; an mpi4py-style communicator (``Get_rank``, ``Get_size``,
    ``allgather``, ``Barrier``) splits the bricks round robin over its ranks. Returns the :class:`TrainResult`
    (the assembled model, PSNR over the whole data) on rank 0, ``None`` on the others. If any rank's brick
    fails, every rank raises :class:`EnsembleTrainingFailed` and nothing is assembled; serially, a brick's own
    error (or Ctrl-C's :class:`TrainingInterrupted`) propagates as it is. ``callback(k, progress)`` returning
    ``True`` aborts.
    """
    if isinstance(data, TimeSeries):
        raise ValueError("ensembles train one static volume; a time series trains one time-varying model.")
    source = as_source(data)
    rank, size = (0, 1) if comm is None else (int(comm.Get_rank()), int(comm.Get_size()))
    plan = plan_bricks(source.geometry, grid, ghost)
    checksum, run, refused = None, None, None
    if rank == 0:  # rank 0 makes (or checks) the folder and its manifest and clears old failure markers
        try:
            checksum = source.checksum()
            run = EnsembleTraining(plan, architecture, budget, config, work_dir, resume=resume,
                                   compression=compression, data_sha256=checksum)
            run.clear_failures()
        except Exception as exc:  # noqa: BLE001 - the other ranks must not wait for a rank that gave up
            refused = f"{type(exc).__name__}: {exc}"
            if comm is None or comm.Get_size() == 1:
                raise
            comm.allgather(refused)
            raise
    if comm is not None:
        refused = comm.allgather(refused)[0]  # also the barrier: nobody trains before the folder is checked
        if refused is not None:
            raise EnsembleTrainingFailed({0: refused}, str(work_dir))
    status = "ok"
    try:
        if run is None:
            run = EnsembleTraining(plan, architecture, budget, config, work_dir, resume=True,
                                   compression=compression)
        for k in run.bricks_for_rank(rank, size):
            run.train_brick(k, source, None if callback is None else (lambda p, k=k: callback(k, p)))
    except TrainingInterrupted as exc:
        if comm is None and not run.failures():
            raise
        others = {r: m for r, m in run.failures().items() if r != rank}
        if others and exc.signal is None:
            status = "aborted"  # stopped because another rank failed
        else:
            status = f"failed: {exc}"
            run.fail(rank, str(exc))
    except Exception as exc:  # noqa: BLE001 - every error must reach the other ranks
        if comm is None:
            raise
        status = f"failed: {type(exc).__name__}: {exc}"
        if run is not None:
            run.fail(rank, f"{type(exc).__name__}: {exc}")
    statuses = [status] if comm is None else comm.allgather(status)
    failed = {r: s[len("failed: "):] for r, s in enumerate(statuses) if s.startswith("failed: ")}
    if failed or any(s != "ok" for s in statuses):
        failed = failed or run.failures()
        raise EnsembleTrainingFailed(failed, str(work_dir))
    if rank != 0:
        return None
    started = time.perf_counter()
    model = run.assemble(checksum)
    final_psnr = float(series_psnr(model, data)["psnr"])  # a source is compared slab by slab
    model.training["psnr"] = round(final_psnr, 4)
    model.training["assembly_seconds"] = round(time.perf_counter() - started, 3)
    reasons = sorted({b["stopped_because"] for b in model.training["ensemble_bricks"] if b["stopped_because"]})
    return TrainResult(model, final_psnr, int(model.training["steps"]), float(model.training["seconds"]),
                       ", ".join(reasons) or "steps")


__all__ = ["DEFAULT_GHOST", "BrickPlan", "plan_bricks", "brick_seed", "brick_file", "EnsembleTraining", "EnsembleTrainingFailed",
           "train_ensemble"]
