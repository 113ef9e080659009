"""Training a field on a volume: random sampling with trilinear ground truth, Adam, the APMGSRN schedule.

* Every step draws ``batch_size`` uniform points in the model cube; targets are the volume's trilinear
  interpolation there (``grid_sample``, corner aligned), normalised to ``[0, 1]`` by the value range.
* One Adam optimizer trains the model (grids, decoder); fields with a ``transforms`` parameter group
  (APMGSRN) get a second one stepped only on the feature-density loss, from ``density_start`` steps on,
  until the density loss stops improving (moving averages over ``density_window`` steps) or
  ``density_stop_fraction`` of the steps have passed (the paper's delayed start and early stop).
* The learning rate follows ReduceLROnPlateau on the running mean loss (the paper's schedule); training stops
  early once it has fallen below ``min_lr_fraction`` of its start, at ``steps``, or at ``time_limit``.
* Compression-aware options (:mod:`.compression_aware`, all off by default): grid total-variation and L1
  penalties added to the loss, and quantization-aware final steps (``qat_fraction``) when :func:`train` is told
  the file's ``compression``.
* Checkpoints (safetensors, no pickle) hold the field, optimizer, scheduler and RNG state, so an interrupted
  run resumes to exactly the same result. Ctrl-C or SIGTERM is deferred to the end of the current step, which
  writes one and raises :class:`TrainingInterrupted`.
* A :class:`~srn_core.volume_source.VolumeSource` (e.g. :func:`srn_core.volume_files.open_source`) no larger
  than ``data_memory`` is read whole and trains exactly as its :class:`Volume`; a larger one streams: the value
  range and checksum come from one pass over it, the points from a bounded set of resident bricks
  (:mod:`.streaming`), and the final PSNR from a z-slab by z-slab evaluation.
* On the CPU an APMGSRN trains on compiled kernels (:mod:`.kernels.fused_training`: ground truth, feature lookups
  and the feature density with their gradients, fused Adam); ``TrainConfig(fused=False)`` or ``SRN_FUSED=0`` trains
  on the PyTorch reference path. ``TrainResult.profile`` times each part of the steps (``docs/training.md``).
* :func:`fit` is the entry point of every front end: it builds the field from a parameter budget with
  seed-only initial weights and the architecture's defaults, then calls :func:`train`.
* A :class:`~srn_core.series.TimeSeries` trains one time-varying model (:mod:`.fields.time_varying`). Each
  step's batch is split evenly over every time step (or ``steps_per_batch`` drawn at random), each part compared
  with its own volume, and ``between_fraction`` of it over random times between neighbouring steps, compared with
  the linear interpolation of the two: what keeps the key frames' features interpolable (section 3 of
  ``docs/time-varying.md`` has the measurements).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .compression import Compression
from .compression_aware import grid_penalty, quantized_forward
from .data import Volume
from .fields import Field, TimeVaryingField, field_for_budget
from .fields.apmgsrn import APMGSRN, density_kl
from .kernels.fused_training import (fused_encode, fused_feature_density, fused_training_supported,
                                     ground_truth_supported, trilinear_border, warm_up)
from .memory import check_allocation
from .devices import resolve_device
from .model import NeuralVolume
from .modelfile import ModelFileError, load_tensors, save_tensors
from .memory import available_bytes
from .series import TimeSeries, series_psnr
from .streaming import BrickSampler
from .volume_source import VolumeSource


@dataclass
class TrainConfig:
    steps: int = 10_000
    """Maximum optimisation steps."""
    batch_size: int = 1 << 16
    """Random points per step."""
    lr: float | None = None
    """Adam learning rate of grids and decoder; ``None``: the architecture's ``default_lr`` (0.01 for grid models)."""
    seed: int = 0
    """Seeds initialisation and sampling: the same seed on CPU gives the same model bit for bit."""
    device: str = "auto"
    """``auto`` (CUDA if present), ``cpu`` or ``cuda[:i]``."""
    time_limit: float | None = None
    """Stop after this many seconds of training (the model so far is kept)."""
    density_start: int = 500
    """Steps before the feature-density loss starts moving APMGSRN's grids (delayed start)."""
    density_stop_fraction: float = 0.8
    """Fraction of ``steps`` (or of ``time_limit``) after which the grids are frozen in any case."""
    density_window: int = 1000
    """Moving-average window (steps) of the density-loss early stop."""
    density_min_improvement: float = 1e-4
    """Relative improvement (0.01 %) below which, twice in a row, the grids count as converged."""
    plateau_patience: int = 500
    """Steps without a 0.01 % improvement of the running mean loss before the learning rate drops 10x."""
    min_lr_fraction: float = 0.01
    """Stop early once the learning rate falls below this fraction of ``lr``."""
    checkpoint_every: float = 60.0
    """Seconds between checkpoints (when a checkpoint path is given)."""
    checkpoint_every_steps: int = 500
    """Steps between checkpoints, so a run killed before the first timed one still leaves one."""
    grid_tv_weight: float = 0.0
    """Weight of the feature grids' total variation in the loss (:func:`.compression_aware.grid_penalty`;
    AMGSRN++ uses 1e-4): smoother grids, for files whose grids are stored by SZ3."""
    grid_l1_weight: float = 0.0
    """Weight of the feature grids' mean absolute value in the loss (AMGSRN++ uses 2.5e-5): sparser grids."""
    qat_fraction: float = 0.0
    """Final fraction of ``steps`` (or of ``time_limit``) trained quantization-aware: the forward pass uses the
    grids and decoder as the file's ``compression`` stores them (straight-through gradient). Only when
    :func:`train` is given a ``compression``; a float32 file has nothing to adapt to."""
    steps_per_batch: int | None = None
    """Time series only: how many time steps (drawn at random each step) share one batch of points; ``None``:
    all of them. A key frame left out of a step still moves (Adam's momentum) without a gradient, so fewer
    steps per batch trained worse in every measurement (``docs/time-varying.md``)."""
    between_fraction: float = 0.25
    """Time series only: the fraction of each batch drawn at random times between neighbouring steps, with the
    linear interpolation of the two steps as target. Without it nothing constrains the model between its key
    frames, and the blend of two frames' features decoded far from both frames' values."""
    data_memory: int | None = None
    """Bytes of volume data training may hold. A :class:`~srn_core.volume_source.VolumeSource` no larger is read
    whole and trains exactly as the :class:`Volume` would; a larger one streams bricks (:mod:`.streaming`), at most
    this many bytes of them resident. ``None``: a quarter of the memory available when training starts
    (:func:`srn_core.memory.available_bytes`), leaving the rest to the model, its optimizer state, the batch and
    the page cache. A :class:`Volume` or time series already in memory is never streamed."""
    brick_size: int = 32
    """Streaming only: cells per axis of a brick (each stored with one more voxel per axis: 33^3 float32 =
    144 kB). Measured on ch2better (301x370x316, 16 MiB resident, 1500 steps of 16384 points): 16 trained 1.6 dB
    better than 32 at the same turnover but read 5x slower (43 vs 230 MB/s: one memory map per brick), which on
    a volume of gigabytes costs more than faster turnover, the stronger lever."""
    refresh_steps: int = 5
    """Streaming only: steps between swaps of resident bricks. Each brick stays resident ``refresh_steps /
    swap_fraction`` steps, and the whole file is read once per ``bricks / resident * that`` steps (recorded as
    ``cycle_steps``). Measured on ch2better at 64 MiB resident (48 %), PSNR after 1500 steps against 25.89 dB in
    memory: 25.02 dB with 25 steps, 25.37 with 5; at 16 MiB (12 %) 19.3 with 25, 22.5 with 1. Faster turnover
    trains better and reads more (here 4.2 GB in 1500 steps at 5)."""
    swap_fraction: float = 0.25
    """Streaming only: fraction of the resident bricks replaced at each refresh (the oldest ones, by the next of a
    random order of all bricks, so every brick is resident equally long)."""
    fused: bool = True
    """Train on the compiled CPU kernels where they apply (:mod:`srn_core.kernels.fused_training`): ground truth by
    index arithmetic for any field on the CPU; for an APMGSRN also the feature lookups (forward and backward), the
    feature density and its gradient, and Adam's fused update. ``False`` (or ``SRN_FUSED=0`` in the environment)
    trains on the PyTorch reference path, which is also what CUDA and the other architectures run. Both paths
    draw the same points and agree to float32 rounding; the models differ in the last bits."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if self.lr is not None and not (self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}.")
        if self.time_limit is not None and not (self.time_limit > 0):
            raise ValueError(f"time_limit must be positive seconds, got {self.time_limit!r}.")
        for name in ("grid_tv_weight", "grid_l1_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {getattr(self, name)!r}.")
        if self.data_memory is not None and int(self.data_memory) < 1:
            raise ValueError(f"data_memory must be a positive number of bytes or None, got {self.data_memory!r}.")
        for name in ("brick_size", "refresh_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if not 0 < self.swap_fraction <= 1:
            raise ValueError(f"swap_fraction must be in (0, 1], got {self.swap_fraction!r}.")
        if self.steps_per_batch is not None and int(self.steps_per_batch) < 1:
            raise ValueError(f"steps_per_batch must be a positive integer or None (all), got {self.steps_per_batch!r}.")
        if not 0 <= self.between_fraction < 1:
            raise ValueError(f"between_fraction must be a fraction from 0 to below 1, got {self.between_fraction!r}.")
        if not 0 <= self.qat_fraction <= 1:
            raise ValueError(f"qat_fraction must be a fraction from 0 to 1, got {self.qat_fraction!r}.")


@dataclass
class TrainProgress:
    step: int
    steps: int
    loss: float
    """Mean squared error of the last batch, in normalised units."""
    psnr: float
    """Running PSNR estimate (dB) from recent batches."""
    lr: float
    seconds: float
    grids_frozen: bool


STEP_PHASES = ("points", "ground truth", "feature lookups", "decoder", "loss", "backward", "optimizer",
               "density loss", "schedule")
"""The parts of a training step :attr:`TrainResult.profile` times. "feature lookups" (with the grid transforms)
and "decoder" are split for an APMGSRN; for other fields the whole forward counts as "decoder". "backward" is
the reconstruction loss's (lookups and decoder); "density loss" is APMGSRN's transform update, forward, backward
and step."""


@dataclass
class TrainResult:
    model: NeuralVolume
    psnr: float
    """PSNR (dB) over every voxel of the training volume."""
    steps: int
    seconds: float
    stopped_because: str
    profile: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds spent in each part of the training steps of this call (:data:`STEP_PHASES`); on CUDA, where
    kernels run asynchronously, a phase's time may show up in a later one."""


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C, SIGTERM or an abort request, between two steps.

    The checkpoint (if any) holds the state after ``step`` whole steps: resuming from it ends exactly where an
    uninterrupted run ends. ``signal`` is the signal number that stopped it (``None`` for an abort request).
    """

    def __init__(self, step: int, checkpoint: str | None, signal: int | None = None):
        self.step, self.checkpoint, self.signal = step, checkpoint, signal
        where = f"; resume from checkpoint {checkpoint!r}" if checkpoint else ""
        super().__init__(f"training interrupted at step {step}{where}.")


class _Interrupts:
    """SIGINT and SIGTERM handlers for the training loop (main thread only; the previous handlers come back after).

    While ``deferring`` a signal is only recorded, so a step is never cut in half (a checkpoint taken then would
    hold half an optimizer update and resume to a different model); the loop checks :attr:`received` between
    steps. Otherwise (the final evaluation) it raises :class:`KeyboardInterrupt` at once. SIGTERM, which
    schedulers and ``mpirun`` send, is handled exactly like Ctrl-C. Where a host installed its own handlers
    outside Python (``signal.getsignal`` gives ``None``) they are left alone.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.deferring = True
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.deferring:
            self.received = signum
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not None:
                    self.previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous.clear()


def train(volume: Volume | TimeSeries | VolumeSource, field: Field, config: TrainConfig = TrainConfig(),
          checkpoint: str | os.PathLike | None = None, resume: bool = False,
          callback: Callable[[TrainProgress], bool | None] | None = None, callback_every: int = 25,
          compression: Compression | None = None) -> TrainResult:
    """Fit ``field`` to ``volume`` (a :class:`TimeSeries` needs a time-varying field); returns the trained
    :class:`NeuralVolume` with its final PSNR (over the whole series, and per step in ``training``).

    A :class:`~srn_core.volume_source.VolumeSource` no larger than ``config.data_memory`` is read whole and trains
    exactly as its volume; a larger one streams bricks (:class:`~srn_core.streaming.BrickSampler`, its settings
    and I/O in the model's ``training["streamed"]``), and its checkpoints hold the resident bricks.

    ``compression``: how the model file will be stored, for ``config.qat_fraction`` (quantization-aware final
    steps); ``None`` (a float32 file) trains in float32 throughout.

    ``callback`` is called every ``callback_every`` steps; returning ``True`` aborts (like Ctrl-C: the
    checkpoint is written and :class:`TrainingInterrupted` raised). With a ``checkpoint`` path the state is saved
    every ``config.checkpoint_every_steps`` steps, every ``config.checkpoint_every`` seconds, on an interrupt and
    once more when training ends; the checkpoint is kept, so the caller deletes it only once the model file is
    safely written (a failed write then loses nothing: ``resume`` goes straight to the finished state).

    An interrupt during the final full-volume evaluation (which only measures the PSNR) does not lose the model:
    the result then has ``psnr`` NaN, the model's ``training`` no ``"psnr"`` and ``stopped_because`` ends in
    ``"; PSNR not measured (interrupted)"``.
    """
    device = resolve_device(config.device)
    if config.lr is None:
        config = dataclasses.replace(config, lr=field.default_lr)
    if isinstance(volume, VolumeSource):
        config = dataclasses.replace(config, data_memory=data_memory_bytes(config))
        if volume.nbytes <= config.data_memory:
            volume = volume.load()  # fits: today's exact in-memory path
    state = _TrainState(volume, field, config, device, compression)
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state.load(checkpoint)
    elif resume and checkpoint is not None:
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist; nothing to resume.")
    stopped = "steps"
    with _Interrupts() as interrupts:
        saver = _CheckpointSaver(state, checkpoint)
        try:
            while state.step < config.steps:
                if interrupts.received is not None:
                    raise KeyboardInterrupt
                if config.time_limit is not None and state.seconds >= config.time_limit:
                    stopped = "time_limit"
                    break
                if state.lr < config.min_lr_fraction * config.lr:
                    stopped = "converged"
                    break
                state.run_step()
                if callback is not None and (state.step % callback_every == 0 or state.step == config.steps):
                    if callback(state.progress()):
                        raise KeyboardInterrupt
                saver.maybe_save()
        except KeyboardInterrupt:
            saver.save()
            raise TrainingInterrupted(state.step, None if checkpoint is None else str(checkpoint),
                                      interrupts.received) from None
        saver.save()  # the finished state: a failed model write can be redone with resume, without training
        field.eval()
        model = NeuralVolume(field, volume.geometry, volume.name)
        if isinstance(volume, TimeSeries):
            model.time_steps, model.time_unit = list(volume.times), volume.time_unit
        # The evaluation may take longer than the training but only measures: an interrupt ends it at once, and
        # the model is returned without a PSNR instead of being lost.
        final_psnr, per_step = math.nan, None
        try:
            interrupts.deferring = False
            if interrupts.received is None:  # none arrived while the last checkpoint was written
                measured = series_psnr(model, volume)
                final_psnr, per_step = measured["psnr"], measured.get("psnr_per_step")
        except KeyboardInterrupt:
            pass
        finally:
            interrupts.deferring = True
    if math.isnan(final_psnr):
        stopped += "; PSNR not measured (interrupted)"
    model.training = {
        "steps": state.step, "seconds": round(state.seconds, 3), "psnr": round(final_psnr, 4),
        "stopped_because": stopped, "data_sha256": state.checksum, "seed": config.seed,
        "batch_size": config.batch_size, "lr": config.lr, "device": str(device),
        "grids_frozen_at": state.frozen_at, "torch": torch.__version__,
    }
    # Compression-aware settings only where used, so plain models describe themselves as before.
    for key in ("grid_tv_weight", "grid_l1_weight"):
        if getattr(config, key):
            model.training[key] = getattr(config, key)
    if state.qat_from is not None:
        model.training["quantization_aware_from"] = state.qat_from
    if state.sampler is not None:
        model.training["streamed"] = {"data_memory": config.data_memory, "brick_size": config.brick_size,
                                      "refresh_steps": config.refresh_steps, "swap_fraction": config.swap_fraction,
                                      "resident_bricks": state.sampler.capacity, "bricks": state.sampler.count,
                                      "cycle_steps": round(state.sampler.cycle_steps, 1),
                                      "bytes_read": state.sampler.bytes_read,
                                      "read_seconds": round(state.sampler.read_seconds, 3)}
    if per_step is not None:
        model.training["psnr_per_step"] = [round(v, 4) for v in per_step]
        model.training["steps_per_batch"] = config.steps_per_batch or len(volume)
        model.training["between_fraction"] = config.between_fraction
    if math.isnan(final_psnr):
        del model.training["psnr"]  # unknown, not NaN: readers treat a present "psnr" as a measurement
    return TrainResult(model, final_psnr, state.step, state.seconds, stopped, dict(state.profile))


class _PhaseClock:
    """Adds the seconds since the previous call to the phase named in each call (``clock("decoder")``)."""

    def __init__(self, totals: dict[str, float], start: float):
        self.totals, self.last = totals, start

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.totals[phase] += now - self.last
        self.last = now


class _CheckpointSaver:
    """Writes the training state every so many steps and seconds; a failed write is reported once, not fatal.

    Checkpointing by steps as well as by time means a process killed outright (SIGKILL, the OOM killer) early in
    a run still leaves something to resume. A full disk must not end a training that may still write its (much
    smaller) model, so a failing write only warns.
    """

    def __init__(self, state: "_TrainState", path: str | os.PathLike | None):
        self.state, self.path = state, path
        self.last_time, self.last_step = time.perf_counter(), state.step
        self.warned = False

    def maybe_save(self) -> None:
        c = self.state.config
        if self.path is not None and (self.state.step - self.last_step >= c.checkpoint_every_steps
                                      or time.perf_counter() - self.last_time > c.checkpoint_every):
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.state.save(self.path)
        except OSError as exc:
            if not self.warned:
                self.warned = True
                warnings.warn(f"could not write the training checkpoint {str(self.path)!r} ({exc.strerror or exc}); "
                              f"training goes on, but an interrupt would lose the steps since the last one.",
                              stacklevel=3)
        self.last_time, self.last_step = time.perf_counter(), self.state.step


def fit(volume: Volume | TimeSeries | VolumeSource, architecture: str = "apmgsrn", budget: int | None = None,
        config: TrainConfig = TrainConfig(), *, checkpoint: str | os.PathLike | None = None, resume: bool = False,
        callback: Callable[[TrainProgress], bool | None] | None = None, callback_every: int = 25,
        compression: Compression | None = None, key_frames: int | None = None) -> TrainResult:
    """Build a field of ``architecture`` with about ``budget`` parameters and train it on ``volume``.

    The one entry point of every front end (the ``srn`` command, Train Neural Volume), so a seed means the same
    model everywhere. ``budget`` defaults to the data's points / 100 (100x compression against float32);
    ``config.lr=None`` means the architecture's own ``default_lr``. The initial weights are drawn inside
    :func:`torch.random.fork_rng` from ``config.seed``: they depend on the seed alone, and the caller's global
    random state is neither read nor changed.

    A :class:`TimeSeries` gets a time-varying model of ``architecture``'s grids: ``budget`` (default: all steps'
    points / 100) covers the whole series, and ``key_frames`` (default: one per time step) key frames spread
    uniformly over its time range share one decoder.

    A :class:`~srn_core.volume_source.VolumeSource` no larger than ``config.data_memory`` is read whole first (the
    model is then bit for bit the one of its :class:`Volume`); a larger one streams (see :func:`train`).
    """
    if isinstance(volume, VolumeSource):
        config = dataclasses.replace(config, data_memory=data_memory_bytes(config))
        if volume.nbytes <= config.data_memory:
            volume = volume.load()
    series = isinstance(volume, TimeSeries)
    if key_frames is not None and not series:
        raise ValueError(f"key_frames={key_frames} needs a time series; a single volume has no time.")
    if budget is None:
        budget = volume.geometry.num_points * (len(volume) if series else 1) // 100
    budget = int(budget)
    check_training_memory(budget, f"a parameter budget of {budget:,}")
    device = resolve_device(config.device)
    # Fork only the generators the initialisation can touch: the CPU one, and the training device's.
    forked = []
    if device.type == "cuda":
        forked = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(config.seed)
        if series:
            field = TimeVaryingField(TimeVaryingField.config_for(
                architecture, budget, volume.geometry.shape, key_times_for(volume.times, key_frames)),
                volume.value_range)
        else:
            field = field_for_budget(architecture, budget, volume.geometry.shape, volume.value_range)
    return train(volume, field, config, checkpoint=checkpoint, resume=resume, callback=callback,
                 callback_every=callback_every, compression=compression)


def data_memory_bytes(config: TrainConfig) -> int:
    """``config.data_memory``, or its default: a quarter of :func:`srn_core.memory.available_bytes` now."""
    return int(config.data_memory) if config.data_memory is not None else available_bytes() // 4


def key_times_for(times, key_frames: int | None) -> list[float]:
    """Key frame times: the data's own ``times`` (``key_frames`` None or their number), else ``key_frames``
    times spread evenly from the first to the last."""
    if key_frames is None or int(key_frames) == len(times):
        return [float(t) for t in times]
    k = int(key_frames)
    if not 1 <= k <= len(times) or (k == 1 and len(times) > 1):
        raise ValueError(f"key_frames must be from 2 to the series' {len(times)} steps, got {key_frames}.")
    lo, hi = float(times[0]), float(times[-1])
    return [lo + (hi - lo) * i / (k - 1) for i in range(k)] if k > 1 else [lo]


def check_training_memory(budget: int, what: str) -> None:
    """Refuse a parameter budget whose training state cannot fit in memory, before allocating it.

    Training holds four float32 copies of the parameters: the weights, their gradient and Adam's two moments.
    """
    check_allocation(4 * 4 * float(budget), what)


class _TrainState:
    """Everything that evolves during training, and its (de)serialisation for checkpoints."""

    def __init__(self, volume: Volume | TimeSeries | VolumeSource, field: Field, config: TrainConfig,
                 device: torch.device, compression: Compression | None = None):
        self.volume, self.field, self.config, self.device = volume, field, config, device
        self.compression = compression if config.qat_fraction > 0 else None
        self.qat_from: int | None = None
        streaming = isinstance(volume, VolumeSource)
        stats = volume.statistics() if streaming else None  # one pass over the file
        self.checksum = stats.checksum if streaming else volume.checksum()
        lo, hi = stats.value_range if streaming else volume.value_range
        field.value_range.copy_(torch.tensor([lo, hi]))
        scale = (hi - lo) if hi > lo else 1.0
        self.sampler: BrickSampler | None = None
        # Normalised targets in [0, 1]; NaN (masked) voxels propagate to NaN targets, which are dropped.
        if streaming:
            self.times, self.targets = None, []
        elif isinstance(volume, TimeSeries):
            if not isinstance(field, TimeVaryingField):
                raise ValueError(f"a time series needs a time-varying field, got {field.architecture}.")
            self.times = list(volume.times)
            self.targets = [torch.from_numpy((s.values - lo) / scale).to(device)[None, None] for s in volume.steps]
        else:
            self.times = None
            self.targets = [torch.from_numpy((volume.values - lo) / scale).to(device)[None, None]]
        self.masked = volume.mask_nonfinite
        field.to(device).train()
        # The compiled kernels, where they apply (the reference path otherwise; see TrainConfig.fused).
        self.fused_field = config.fused and fused_training_supported(field)
        self.fused_targets = [t[0, 0].numpy() for t in self.targets] if (
            config.fused and self.targets and ground_truth_supported(self.targets[0])) else None
        if (self.fused_field or self.fused_targets is not None) and not warm_up(
                field.config.density_exponent if self.fused_field else None):
            self.fused_field, self.fused_targets = False, None  # the kernels cannot be built here (said once)
        groups = field.parameter_groups(config.lr)
        main = [g for g in groups if g.get("name") != "transforms"]
        aux = [g for g in groups if g.get("name") == "transforms"]
        adam = dict(betas=(0.9, 0.99), eps=1e-15)
        if self.fused_field:
            adam["fused"] = True  # one kernel per parameter instead of a dozen elementwise passes
        self.optimizer = torch.optim.Adam(main, **adam)
        self.aux_optimizer = torch.optim.Adam(aux, **adam) if aux else None
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=0.1, patience=config.plateau_patience, threshold=1e-4,
            cooldown=config.plateau_patience // 2)
        self.generator = torch.Generator().manual_seed(config.seed)
        if streaming:
            self.sampler = BrickSampler(volume, lo, scale, config.brick_size, config.data_memory,
                                        config.refresh_steps, config.swap_fraction, self.generator, device)
        self.step = 0
        self.seconds = 0.0
        self.losses: deque[float] = deque(maxlen=1000)
        self.density_losses: deque[float] = deque(maxlen=2 * config.density_window)
        self.stalls = 0
        self.frozen_at: int | None = None if self.aux_optimizer else 0
        self.profile = dict.fromkeys(STEP_PHASES, 0.0)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def grids_frozen(self) -> bool:
        return self.frozen_at is not None

    def run_step(self) -> None:
        t0 = time.perf_counter()
        clock = _PhaseClock(self.profile, t0)
        c = self.config
        if self.sampler is not None:
            with torch.no_grad():
                points, target = self.sampler.draw(c.batch_size)
            groups = [(points, None)]
            clock("ground truth")
        else:
            points = (torch.rand(c.batch_size, 3, generator=self.generator) * 2 - 1).to(self.device)
            clock("points")
            if self.times is None:
                with torch.no_grad():
                    target = self._sample(0, points)
                groups = [(points, None)]
            else:
                groups, target = self._time_groups(points)
                points = torch.cat([p.reshape(-1, 3) for p, _ in groups])
            clock("ground truth")
        if self.compression is not None and self.qat_from is None and (
                self.step >= (1 - c.qat_fraction) * c.steps or (
                c.time_limit is not None and self.seconds >= (1 - c.qat_fraction) * c.time_limit)):
            self.qat_from = self.step
        if len(groups) == 1 and groups[0][1] is None and self.qat_from is None and type(self.field) is APMGSRN:
            feats = fused_encode(self.field, points) if self.fused_field else self.field.encode(points)
            clock("feature lookups")
            pred = self.field.decode(feats)
        else:
            pred = torch.cat([self._predict(p, times).reshape(-1) for p, times in groups])
        clock("decoder")
        if self.masked:
            # Zero the targets before differencing: a NaN inside the graph would poison the gradient.
            valid = torch.isfinite(target)
            err = (pred - torch.where(valid, target, 0.0)) ** 2 * valid
            loss = err.sum() / valid.sum().clamp(min=1)
        else:
            err = (pred - target) ** 2
            loss = err.mean()
        penalty = grid_penalty(self.field, c.grid_tv_weight, c.grid_l1_weight)
        self.optimizer.zero_grad(set_to_none=True)
        clock("loss")
        (loss if penalty is None else loss + penalty).backward()
        clock("backward")
        self.optimizer.step()
        clock("optimizer")
        if not self.grids_frozen and self.step >= c.density_start:
            self._density_step(points, err.detach())
            clock("density loss")
        self.losses.append(float(loss.detach()))
        if self.grids_frozen:  # the paper steps the plateau schedule once the grids stopped moving
            self.scheduler.step(sum(self.losses) / len(self.losses))
        clock("schedule")
        self.step += 1
        self.seconds += time.perf_counter() - t0

    def _sample(self, step: int, points: torch.Tensor) -> torch.Tensor:
        """Step ``step``'s normalised trilinear values ``(N,)`` at ``points`` ``(N, 3)``."""
        if self.fused_targets is not None:
            return trilinear_border(self.fused_targets[step], points)
        return F.grid_sample(self.targets[step], points.reshape(1, 1, 1, -1, 3), mode="bilinear",
                             padding_mode="border", align_corners=True).view(-1)

    def _time_groups(self, points: torch.Tensor):
        """A series batch: ``([(points (S, n, 3), S times), ...], targets)``. The stored steps (all, or
        ``steps_per_batch`` at random) share ``1 - between_fraction`` of the points; one random time inside each
        interval between neighbouring steps shares the rest, its target the two steps' linear interpolation."""
        c, times = self.config, self.times
        count = len(times)
        chosen = list(range(count)) if c.steps_per_batch is None or c.steps_per_batch >= count else \
            sorted(torch.randperm(count, generator=self.generator)[:c.steps_per_batch].tolist())
        between = int(round(c.batch_size * c.between_fraction)) // (count - 1) if count > 1 else 0
        stored = (c.batch_size - between * (count - 1)) // len(chosen)
        groups, targets = [], []
        with torch.no_grad():
            p = points[:stored * len(chosen)].view(len(chosen), stored, 3)
            groups.append((p, [times[i] for i in chosen]))
            targets += [self._sample(i, p[k]) for k, i in enumerate(chosen)]
            if between:
                u = torch.rand(count - 1, generator=self.generator).tolist()
                p = points[stored * len(chosen):stored * len(chosen) + between * (count - 1)].view(count - 1, between, 3)
                groups.append((p, [times[j] + u[j] * (times[j + 1] - times[j]) for j in range(count - 1)]))
                targets += [torch.lerp(self._sample(j, p[j]), self._sample(j + 1, p[j]), u[j]) for j in range(count - 1)]
        return groups, torch.cat(targets)

    def _predict(self, points: torch.Tensor, times) -> torch.Tensor:
        """Normalised predictions at ``points``: ``(N,)`` for a volume (``times`` None), ``(S, n)`` for a series
        group."""
        if self.qat_from is not None:
            return quantized_forward(self.field, points, self.compression, times)
        return self.field.normalized(points) if times is None else self.field.normalized_times(points, times)

    def _density_step(self, points: torch.Tensor, err: torch.Tensor) -> None:
        c = self.config
        if self.fused_field:
            aux = density_kl(fused_feature_density(self.field, points), err)
        else:
            aux = self.field.auxiliary_loss(points, err)
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux.backward()
        self.aux_optimizer.step()
        self.density_losses.append(float(aux.detach()))
        w = c.density_window
        if self.step >= c.density_stop_fraction * c.steps or (
                c.time_limit is not None and self.seconds >= c.density_stop_fraction * c.time_limit):
            self.frozen_at = self.step
        elif len(self.density_losses) == 2 * w and self.step % 100 == 0:
            history = list(self.density_losses)
            before, after = sum(history[:w]) / w, sum(history[w:]) / w
            self.stalls = self.stalls + 1 if before - after < c.density_min_improvement * abs(before) else 0
            if self.stalls >= 2:
                self.frozen_at = self.step

    def progress(self) -> TrainProgress:
        recent = list(self.losses)[-50:]
        mse = sum(recent) / max(1, len(recent))
        return TrainProgress(self.step, self.config.steps, self.losses[-1] if self.losses else math.nan,
                             -10 * math.log10(mse) if mse > 0 else math.inf, self.lr, self.seconds, self.grids_frozen)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, path) -> None:
        tensors = {f"field.{k}": v for k, v in self.field.state_dict().items()}
        tensors["rng"] = self.generator.get_state()
        meta = {"checkpoint": {
            "architecture": self.field.architecture, "config": self.field.config_dict(),
            "train_config": dataclasses.asdict(self.config), "data_sha256": self.checksum,
            "step": self.step, "seconds": self.seconds, "losses": list(self.losses),
            "density_losses": list(self.density_losses), "stalls": self.stalls, "frozen_at": self.frozen_at,
            "qat_from": self.qat_from, "scheduler": self.scheduler.state_dict(),
            "optimizers": {},
        }}
        if self.sampler is not None:
            stream_tensors, stream = self.sampler.state()
            tensors.update({f"stream.{k}": v for k, v in stream_tensors.items()})
            meta["checkpoint"]["stream"] = stream
        for name, opt in (("main", self.optimizer), ("aux", self.aux_optimizer)):
            if opt is None:
                continue
            sd = opt.state_dict()
            meta["checkpoint"]["optimizers"][name] = {"param_groups": sd["param_groups"],
                                                      "state_keys": {str(i): sorted(s) for i, s in sd["state"].items()}}
            for i, s in sd["state"].items():
                for key, value in s.items():
                    tensors[f"optim.{name}.{i}.{key}"] = torch.as_tensor(value)
        save_tensors(path, tensors, meta)

    def load(self, path) -> None:
        tensors, meta = load_tensors(path)
        ck = meta.get("checkpoint")
        if ck is None:
            raise ModelFileError(f"{str(path)!r} is a model file, not a training checkpoint.")
        if ck["data_sha256"] != self.checksum:
            raise ValueError(f"checkpoint {str(path)!r} was made on different data; delete it to start afresh.")
        config = json.loads(json.dumps(self.field.config_dict()))  # as stored: tuples became lists
        if ck["architecture"] != self.field.architecture or ck["config"] != config:
            raise ValueError(f"checkpoint {str(path)!r} holds a different model ({ck['architecture']}, "
                             f"{ck['config']}); delete it to start afresh.")
        self.field.load_state_dict({k[6:]: v.to(self.device) for k, v in tensors.items() if k.startswith("field.")})
        self.generator.set_state(tensors["rng"])
        if (self.sampler is None) != ("stream" not in ck):
            made = "streaming" if "stream" in ck else "in memory"
            raise ValueError(f"checkpoint {str(path)!r} was made {made}, this run is not; delete it to start afresh "
                             f"or resume with the same data_memory.")
        if self.sampler is not None:
            self.sampler.load_state({k[7:]: v for k, v in tensors.items() if k.startswith("stream.")}, ck["stream"])
        for name, opt in (("main", self.optimizer), ("aux", self.aux_optimizer)):
            if opt is None:
                continue
            o = ck["optimizers"][name]
            state = {int(i): {key: tensors[f"optim.{name}.{i}.{key}"].to(self.device) if key != "step"
                              else tensors[f"optim.{name}.{i}.{key}"]
                              for key in keys} for i, keys in o["state_keys"].items()}
            opt.load_state_dict({"state": state, "param_groups": o["param_groups"]})
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step, self.seconds = int(ck["step"]), float(ck["seconds"])
        self.losses.extend(ck["losses"])
        self.density_losses.extend(ck["density_losses"])
        self.stalls, self.frozen_at = int(ck["stalls"]), ck["frozen_at"]
        self.qat_from = ck.get("qat_from")  # absent from checkpoints written before quantization-aware training

