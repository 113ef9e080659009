"""``TrainNeuralVolume``: fit a neural volume to any ``vtkImageData`` array, write the model, show the result.

A filter for VTK scripts and, through ``xml/TrainNeuralVolume.xml``, ParaView's "Train Neural Volume"::

    trainer = TrainNeuralVolume()
    trainer.SetInputConnection(reader.GetOutputPort())
    trainer.SetInputArrayToProcess(0, 0, 0, vtkDataObject.FIELD_ASSOCIATION_POINTS, "density")
    trainer.SetModelFileName("density.srn")
    trainer.SetSteps(2000)
    trainer.Update()

Training runs the core's training entry point (:func:`srn_core.training.fit`, as ``srn train`` does, so the
same ``Seed`` gives the same model bit for bit on the CPU) on the selected point or cell array; the model file
is written atomically. The output has the input's geometry and the reconstruction (the model
sampled at the input's points, or cell centres for cell data) under the input array's name, with field data
``PSNR`` (dB, whole volume), ``CompressionRatio`` (the data's float32 bytes over the model file's bytes),
``FileBytes``, ``NumberOfParameters``, ``TrainingSeconds`` and ``TrainingSteps``.

The model file is compressed by default (``Compress``: ``Bits``-bit feature grids, ``DecoderBits``-bit decoder
weights, then ``Codec``; :mod:`srn_core.compression`), as ``srn train`` writes it. The model's size is
``ParameterBudget`` parameters, or, when ``TargetRatio`` or ``TargetSize`` is set, the largest model whose FILE
is that many times smaller than the float32 data, or that many bytes (as ``srn train --ratio/--size``). Progress is reported through ``UpdateProgress``; an abort request (``SetAbortExecute`` /
ParaView's abort) stops training, writes nothing and leaves the output empty.

Under MPI (``pvbatch``, ``pvserver``) training needs the whole volume, not a piece: rank 0 asks its input for
the whole extent, trains and writes the model, and every rank then evaluates the model on its own piece of the
output (so ``ModelFileName`` must be on a file system all ranks see). The other ranks only read their piece.

A temporal input (one that announces ``TIME_STEPS``: a file series, ParaView's PVD reader) with at least two
steps trains ONE time-varying model over all of them (``TrainOverTime``, on by default; off: a static model of
the step the pipeline asks for, as for any other input). The filter asks its input for each step in turn, the
standard VTK pattern for temporal filters: ``RequestUpdateExtent`` sets ``UPDATE_TIME_STEP`` to step ``i`` and
``RequestData`` keeps it and sets ``CONTINUE_EXECUTING`` until every step is read; then
:func:`srn_core.training.fit` trains on the :class:`~srn_core.series.TimeSeries` (``KeyFrames`` key frames,
default one per step; ``ParameterBudget`` or the file-size target covers the whole series). The output is
temporal too: the input's time steps pass through, and each request gets the model evaluated at its
``UPDATE_TIME_STEP`` (between two steps the model interpolates). A later request for another time evaluates the
trained model without reading or training again; reading starts over only when a setting or something upstream
changed, and training only when the steps read differ from those the model learned. ``PSNR`` is then over the
whole series, and the field array ``PSNRPerStep`` holds each step's (the model file's record).

``EnsembleGrid`` (bricks along x, y, z; ``1 1 1``, the default, is one model) trains an ensemble, for data
larger than memory or than one process should train: the bricks are planned on the input's ``WHOLE_EXTENT``
(:func:`srn_core.ensemble_training.plan_bricks`, ``GhostCells`` voxels of overlap), and each execution trains one
brick (:meth:`~srn_core.ensemble_training.EnsembleTraining.train_brick`): ``RequestUpdateExtent`` asks the input
for exactly that brick's extent, ghosts included, so a reader reads only that part, and ``RequestData`` sets
``CONTINUE_EXECUTING`` until this process's bricks are done. Under MPI the ranks take the bricks round robin
(the same bricks, seeds and so the same file as one process, on the same torch thread count); every rank runs
as many executions as the busiest one (a pass without a brick asks for nothing), so they stay in step. Finished
bricks wait in ``<ModelFileName>.parts`` (on a file system every rank shares). A final execution asks for this
rank's piece of the output and concludes, once on every rank: a failure anywhere is an error everywhere (and no
model file); rank 0 assembles the bricks and writes the file atomically (compressed as set) while the others
sleep; then each rank loads only the bricks its piece touches, outputs its piece and the PSNR is summed over the
pieces (the file itself records none, as no process holds the whole volume). Progress runs over this rank's
bricks. An abort keeps the finished bricks (and the interrupted one's checkpoint), and applying the same settings
again resumes them; a model written for unchanged settings and input is evaluated without training again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from vtkmodules.vtkCommonCore import vtkDoubleArray
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkImageData
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as SDDP

from srn_core.compression import CODECS, MAX_BITS, MIN_BITS, Compression
from srn_core.ensemble_training import DEFAULT_GHOST
from srn_core.fields.base import MIN_BUDGET
from srn_core.memory import format_bytes, parse_bytes
from srn_core.modelfile import check_folder_writable
from srn_core.series import TimeSeries
from srn_core.training import check_training_memory

from . import parallel
from ._algorithm import (EvaluationSettings, NeuralAlgorithmBase, data_time, input_time_steps,
                         requested_time)
from .vtk_image import add_field_values, attach_array, selected_array, selected_volume, values_geometry

SUMMARY_KEYS = ("PSNR", "CompressionRatio", "FileBytes", "NumberOfParameters", "TrainingSeconds", "TrainingSteps")
"""The field values rank 0 shares with the other MPI ranks after training."""
ENSEMBLE_KEYS = ("FileBytes", "NumberOfParameters", "TrainingSeconds", "TrainingSteps")
"""The field values rank 0 shares with the other MPI ranks after writing an ensemble."""
EMPTY_EXTENT = (0, -1, 0, -1, 0, -1)
GATHER_SHARE = 0.05
"""Share of the progress bar for reading the time steps of a series (training takes nearly all the time)."""


@dataclass(frozen=True)
class TrainSettings(EvaluationSettings):
    model_file_name: str = ""
    """Where the trained model is written (required)."""
    architecture: str = "apmgsrn"
    """Field architecture (a name known to ``srn_core.fields``)."""
    parameter_budget: int = 50_000
    """Trainable parameters of the model; the configuration is derived from it and the data's shape. Used when
    neither ``target_ratio`` nor ``target_size`` is set."""
    target_ratio: float = 0.0
    """The float32 data's bytes over the model FILE's bytes (0: unused): the largest model whose file fits."""
    target_size: str = ""
    """The model file's size, e.g. ``"200KB"`` or ``"1.5MB"`` ("": unused): the largest model whose file fits."""
    compress: bool = True
    """Write a compressed model file (quantized grids and decoder, then ``codec``); off: float32 parameters."""
    bits: int = Compression().bits
    """Bits per feature-grid value, 4..16 (when ``compress``)."""
    decoder_bits: int = Compression().decoder_bits
    """Bits per decoder weight, 4..16 (when ``compress``)."""
    codec: str = Compression().codec
    """Stage after quantization: lzma, zstd, none, or sz3 (SZ3-coded grids, needs pysz)."""
    steps: int = 1000
    batch_size: int = 1 << 14
    learning_rate: float = 0.0
    """Adam learning rate; 0: the architecture's own default (0.01 for the grid models, 1e-3 for SIREN)."""
    seed: int = 0
    """Seeds the initial weights and the sampled points: the same seed on the CPU gives the same model."""
    time_limit: float = 0.0
    """Seconds after which training stops with the model so far (0: no limit)."""
    mask_non_finite: bool = False
    """Exclude NaN/Inf input values from training and metrics instead of refusing the input."""
    train_over_time: bool = True
    """With an input of two or more time steps, train one time-varying model over all of them; off: a static
    model of the step the pipeline asks for."""
    key_frames: int = 0
    """Key frames of a time-varying model, spread evenly over the time range (0: one per time step)."""
    ensemble_grid: tuple[int, int, int] = (1, 1, 1)
    """Bricks along x, y, z: more than one trains an ensemble, one model per brick, each on its own box of the
    input only (``(1, 1, 1)``: one model of the whole volume)."""
    ghost_cells: int = DEFAULT_GHOST
    """Voxels each brick's training box reaches past its own cell on every side (clamped to the volume), so the
    seams between bricks stay small."""


@dataclass
class _Gather:
    """The time steps of a series read so far (one execution each, ``CONTINUE_EXECUTING`` in between)."""

    key: tuple
    """What was read: the settings, the input's times and the upstream pipeline's modification time."""
    times: list[float]
    index: int = 0
    """The step the next execution reads."""
    steps: list = dataclasses.field(default_factory=list)
    """The steps read (rank 0 or the only process), as :class:`~srn_core.data.Volume`."""
    used: str | None = None
    """Where the array lives: ``"point"`` or ``"cell"``."""
    path: Path | None = None
    key_frames: list[float] | None = None
    failure: BaseException | None = None
    aborted: bool = False


@dataclass
class _EnsembleRun:
    """One ensemble run of this process: its bricks, trained one per execution (``CONTINUE_EXECUTING``), then a
    final execution that reads this rank's piece of the output."""

    key: tuple
    """What is trained: the settings, the upstream pipeline's modification time, the input's grid, the ranks."""
    rank: int
    size: int
    association: str
    """Where the array lives, ``"point"`` or ``"cell"`` (planned before any data arrives)."""
    path: Path | None = None
    plan: object = None
    """The :class:`~srn_core.ensemble_training.BrickPlan` of the input's whole extent."""
    bricks: list = dataclasses.field(default_factory=list)
    """This rank's bricks (round robin)."""
    passes: int = 0
    """Training executions of every rank (the most bricks any rank has); the next one concludes."""
    index: int = 0
    run: object = None
    """The :class:`~srn_core.ensemble_training.EnsembleTraining` of the work folder."""
    trained: bool = False
    """The model file of this key is written and unchanged: evaluate it, train nothing."""
    summary: dict = dataclasses.field(default_factory=dict)
    failure: BaseException | None = None
    aborted: bool = False
    stopped: bool = False
    """Stopped because another rank failed (that rank reports the error)."""
    concluded: bool = False

    def input_extent(self, index: int) -> tuple[int, ...]:
        """The input extent pass ``index`` asks for: this rank's brick's box (its points; a cell box's cells
        need one more point per axis), or nothing once it has none left or has stopped."""
        if index >= len(self.bricks) or self.failure is not None or self.aborted or self.stopped:
            return EMPTY_EXTENT
        whole = self.key[2]
        box = self.plan.extent(self.bricks[index])
        out = []
        for a in range(3):
            lo, hi = box[2 * a] + whole[2 * a], box[2 * a + 1] + whole[2 * a]
            if self.association == "cell":
                hi = min(hi + 1, whole[2 * a + 1])
            out += [lo, hi]
        return tuple(out)


@dataclass
class _SeriesState:
    """A trained time-varying model, evaluated for each requested time until ``key`` changes."""

    key: tuple
    model: object
    summary: dict
    name: str
    used: str
    path: Path


class TrainNeuralVolume(NeuralAlgorithmBase):
    """Train a neural volume on the selected array of the input image (see the module docstring)."""

    def __init__(self):
        NeuralAlgorithmBase.__init__(self, TrainSettings(), nInputPorts=1, inputType="vtkImageData",
                                     nOutputPorts=1, outputType="vtkImageData")
        self.result = None
        """The last :class:`srn_core.training.TrainResult` (``None`` before training or after a failure)."""
        self._gather: _Gather | None = None  # the series being read, step by step
        self._series: _SeriesState | None = None  # the time-varying model answering later time requests
        self._trained_series = None  # (settings + data checksum, TrainResult, summary) of the last series trained
        self.gathers = 0
        """How many times the steps of a series were read (tests check that nothing is read twice)."""
        self.trainings = 0
        """How many times a model was trained (an ensemble: how many bricks this process trained)."""
        self._ensemble: _EnsembleRun | None = None  # the ensemble being trained (or evaluated) brick by brick
        self._ensemble_done = None  # (key, model file state, summary) of the last ensemble written
        self._ensemble_resumable = None  # key of an ensemble run that stopped early (its parts may be resumed)
        self.brick_threads: int | None = None
        """Torch threads the last brick trained with (float sums depend on them: tests train references alike)."""
        self.loaded_bricks: list[int] | None = None
        """The ensemble bricks this process loaded to evaluate its piece of the output, in the last run."""
        self.brick_inputs: list[tuple[int, tuple[int, ...]]] = []
        """``(brick, extent of the input received)`` for each brick this process trained in the last run (tests
        check that a rank asked its input for its bricks only)."""

    # ---- settings ------------------------------------------------------------------------------
    def SetModelFileName(self, path):
        self._set(model_file_name=str(path or ""))

    def GetModelFileName(self):
        return self._config.model_file_name

    def SetArchitecture(self, name):
        self._set(architecture=str(name))

    def SetParameterBudget(self, n):
        self._set(parameter_budget=int(n))

    def SetTargetRatio(self, ratio):
        self._set(target_ratio=float(ratio))

    def SetTargetSize(self, size):
        self._set(target_size=str(size or "").strip())

    def SetCompress(self, flag):
        self._set(compress=bool(flag))

    def SetBits(self, bits):
        self._set(bits=int(bits))

    def SetDecoderBits(self, bits):
        self._set(decoder_bits=int(bits))

    def SetCodec(self, codec):
        self._set(codec=str(codec))

    def SetSteps(self, n):
        self._set(steps=int(n))

    def SetBatchSize(self, n):
        self._set(batch_size=int(n))

    def SetLearningRate(self, lr):
        self._set(learning_rate=float(lr))

    def SetSeed(self, seed):
        self._set(seed=int(seed))

    def SetTimeLimit(self, seconds):
        self._set(time_limit=float(seconds))

    def SetMaskNonFinite(self, flag):
        self._set(mask_non_finite=bool(flag))

    def SetTrainOverTime(self, flag):
        self._set(train_over_time=bool(flag))

    def GetTrainOverTime(self):
        return int(self._config.train_over_time)

    def SetKeyFrames(self, n):
        self._set(key_frames=int(n))

    def GetKeyFrames(self):
        return self._config.key_frames

    def SetEnsembleGrid(self, *grid):
        if len(grid) == 1 and hasattr(grid[0], "__len__"):
            grid = tuple(grid[0])
        if len(grid) != 3:
            raise TypeError(f"EnsembleGrid takes 3 values (bricks along x, y, z), got {len(grid)}: {grid!r}.")
        self._set(ensemble_grid=tuple(int(g) for g in grid))

    def GetEnsembleGrid(self):
        return self._config.ensemble_grid

    def SetGhostCells(self, n):
        self._set(ghost_cells=int(n))

    def GetGhostCells(self):
        return self._config.ghost_cells

    # ---- pipeline ------------------------------------------------------------------------------
    def _series_times(self, in_info) -> list[float] | None:
        """The input's time steps when this execution trains over time (``TrainOverTime`` and at least two
        steps), else ``None`` (a single volume: the step the pipeline asks for)."""
        times = input_time_steps(in_info)
        return times if self._config.train_over_time and times is not None and len(times) >= 2 else None

    def RequestUpdateExtent(self, request, inInfo, outInfo):
        """Which input this execution needs: over time, step ``i`` of the gather (``UPDATE_TIME_STEP``); under
        MPI, rank 0 trains on the whole volume, so it asks for all of it instead of its piece."""
        info = inInfo[0].GetInformationObject(0)
        if self._is_ensemble():
            self._gather = None
            return self._ensemble_update_extent(info, outInfo)
        self._ensemble = None
        times = self._series_times(info)
        if times is None:
            self._gather = None
        else:
            key = (self._settings_key(), tuple(times), _upstream_mtime(self))
            if self._gather is not None and self._gather.key != key:
                self._gather = None  # settings or input changed in the middle: start over
            if self._gather is None and (self._series is None or self._series.key != key):
                self._gather = _Gather(key, times)
                self.gathers += 1
            if self._gather is not None:
                info.Set(SDDP.UPDATE_TIME_STEP(), times[self._gather.index])
        controller = parallel.piece_controller(outInfo)
        # Rank 0 needs the whole volume only to train: a trained series model is evaluated piece by piece.
        if controller is not None and controller.GetLocalProcessId() == 0 and (times is None or self._gather):
            info.Set(SDDP.UPDATE_PIECE_NUMBER(), 0)
            info.Set(SDDP.UPDATE_NUMBER_OF_PIECES(), 1)
            info.Set(SDDP.UPDATE_EXTENT(), info.Get(SDDP.WHOLE_EXTENT()), 6)
        return 1

    def RequestData(self, request, inInfo, outInfo):
        if self._ensemble is not None:
            return self._ensemble_step(request, inInfo, outInfo)
        if self._gather is not None:
            return self._gather_step(request, inInfo, outInfo)
        if self._series_times(inInfo[0].GetInformationObject(0)) is None:
            return self._train_volume(inInfo, outInfo)
        output = vtkImageData.GetData(outInfo)
        output.Initialize()
        return self.guarded(output, lambda: self._series_output(output, inInfo, outInfo))

    def _train_volume(self, inInfo, outInfo):
        """Train on the input image as it is (one volume: the step the pipeline asked for)."""
        output = vtkImageData.GetData(outInfo)
        output.Initialize()
        self.result = None
        controller = parallel.piece_controller(outInfo)
        trains = controller is None or controller.GetLocalProcessId() == 0
        failure, run, name, used, path = None, None, None, None, None
        image = vtkImageData.GetData(inInfo[0])
        # Under MPI a rank other than 0 may receive an empty piece (more ranks than slabs): it only waits.
        empty_piece = not trains and (image is None or image.GetNumberOfPoints() == 0)
        try:
            if empty_piece:
                path = self._checked_output_path()
            else:
                image, volume, used, path, budget = self._checked_input(inInfo)
                name = volume.name
                run = lambda: self._train(volume, path, budget)  # noqa: E731
        except Exception as exc:  # reported below, once the other ranks have been told
            failure = exc
        return self._conclude(output, outInfo, image, controller, empty_piece, failure, run, path, name, used)

    def _conclude(self, output, outInfo, image, controller, empty_piece, failure, run, path, name, used,
                  series_key=None) -> int:
        """The end of a training execution: rank 0 (or the only process) calls ``run()`` (its summary, ``None``
        when aborted), every MPI rank learns its outcome, and each fills its output: the model evaluated on the
        input's grid (its own piece under MPI), at the requested time for a series."""
        trains = controller is None or controller.GetLocalProcessId() == 0
        aborted, summary = False, {}
        if failure is None and trains:
            try:
                summary = run()
                aborted = summary is None
            except Exception as exc:  # reported below, once the other ranks have been told
                failure = exc
        if controller is not None:  # rank 0's outcome, for every rank
            parallel.idle_barrier(controller)  # the others sleep while rank 0 trains
            shared = parallel.all_reduce(controller, [float(failure is not None), float(aborted)]
                                         + [float((summary or {}).get(k, 0.0)) for k in SUMMARY_KEYS])
            if failure is None and shared[0] > 0:
                failure = ValueError("another MPI rank failed (see its error), so no model was trained.")
            aborted = shared[1] > 0
            if failure is None and not aborted and not trains:
                summary = dict(zip(SUMMARY_KEYS, shared[2:]))
        if series_key is not None:
            self._series = None
            if failure is None and not aborted:
                try:  # every rank keeps the model: later times are evaluated without any exchange
                    model = self.result.model if self.result is not None else _load_model(path)
                    self._series = _SeriesState(series_key, model, summary, name, used, path)
                except Exception as exc:
                    failure = exc

        def produce():
            if aborted:
                output.Initialize()
                return
            if series_key is not None:
                self._series_output(output, None, outInfo, image)
            else:
                if not empty_piece:
                    model = self.result.model if self.result is not None else _load_model(path)
                    self._fill_output(output, image, outInfo if controller is not None else None, model, name,
                                      used)
                elif not parallel.is_empty_extent(parallel.piece_extent(outInfo)):
                    raise ValueError("this rank received an empty input piece but owns a non-empty output piece.")
                add_field_values(output, {**summary, "ModelFileName": str(path)})
            if not empty_piece:
                self.UpdateProgress(1.0)

        return self.guarded(output, produce, failure)

    # ---- ensembles (EnsembleGrid) --------------------------------------------------------------
    def _is_ensemble(self) -> bool:
        return tuple(self._config.ensemble_grid) != (1, 1, 1)

    def _ensemble_update_extent(self, info, outInfo) -> int:
        """Which input this execution of an ensemble run needs: brick ``k``'s box (ghosts included) while this
        rank trains, nothing on a pass where it has no brick left (other ranks still train theirs), and at the
        end its own piece of the output (evaluated and compared with the model)."""
        controller = parallel.piece_controller(outInfo)
        rank, size = (0, 1) if controller is None else (controller.GetLocalProcessId(),
                                                         controller.GetNumberOfProcesses())
        key = (self._settings_key(), _upstream_mtime(self), tuple(info.Get(SDDP.WHOLE_EXTENT()) or ()),
               _info_values(info, vtkDataObject.ORIGIN(), 0.0), _info_values(info, vtkDataObject.SPACING(), 1.0),
               size)
        e = self._ensemble
        if e is None or e.key != key or e.concluded:
            e = self._ensemble = self._plan_ensemble(key, info, rank, size)
        if e.index < e.passes:
            info.Set(SDDP.UPDATE_PIECE_NUMBER(), 0)
            info.Set(SDDP.UPDATE_NUMBER_OF_PIECES(), 1)
            info.Set(SDDP.UPDATE_EXTENT(), e.input_extent(e.index), 6)
        else:
            out = outInfo.GetInformationObject(0)
            if out.Has(SDDP.UPDATE_EXTENT()):
                info.Set(SDDP.UPDATE_EXTENT(), out.Get(SDDP.UPDATE_EXTENT()), 6)
        return 1

    def _plan_ensemble(self, key, info, rank: int, size: int) -> "_EnsembleRun":
        """A new ensemble run: the bricks of the input's whole extent (its points, or cell centres for a cell
        array), this rank's share of them, or, when neither the settings nor the input changed since the
        model file was written, no training at all."""
        from srn_core.ensemble_training import plan_bricks
        from srn_core.geometry import ImageGeometry

        c = self._config
        association = selected_array(self, 0)[1] or "point"
        e = _EnsembleRun(key, rank, size, association)
        try:
            e.path = self._checked_output_path()
            times = self._series_times(info)
            if times is not None:
                raise ValueError(f"EnsembleGrid {' '.join(map(str, c.ensemble_grid))} trains one static volume, but "
                                 f"the input has {len(times)} time steps; turn TrainOverTime off to train the "
                                 f"current step, or set EnsembleGrid to 1 1 1.")
            whole, origin, spacing = key[2], key[3], key[4]
            if len(whole) != 6 or parallel.is_empty_extent(whole):
                raise ValueError("the input image is empty.")
            dims = tuple(whole[2 * a + 1] - whole[2 * a] + 1 for a in range(3))
            corner = tuple(origin[a] + whole[2 * a] * spacing[a] for a in range(3))
            geometry = ImageGeometry(dims, corner, spacing)
            if association == "cell":  # as vtk_image.values_geometry places cell values
                geometry = ImageGeometry(tuple(max(1, d - 1) for d in dims),
                                         tuple(corner[a] + (0.5 * spacing[a] if dims[a] > 1 else 0.0)
                                               for a in range(3)), spacing)
            try:
                e.plan = plan_bricks(geometry, c.ensemble_grid, c.ghost_cells)
            except ValueError as exc:
                raise ValueError(f"EnsembleGrid {' '.join(map(str, c.ensemble_grid))} with GhostCells "
                                 f"{c.ghost_cells}: {exc}") from None
        except Exception as exc:  # reported by RequestData (every rank alike)
            e.failure = exc
            return e
        done = self._ensemble_done
        if done is not None and done[0] == key and _file_state(e.path) == done[1]:
            e.trained, e.summary = True, dict(done[2])
            return e
        e.bricks = list(range(rank, len(e.plan), size))  # EnsembleTraining.bricks_for_rank: round robin
        e.passes = -(-len(e.plan) // size)  # every rank executes as often as the busiest one
        return e

    def _ensemble_step(self, request, inInfo, outInfo) -> int:
        """One execution of an ensemble run: train this rank's next brick and ask to run again
        (``CONTINUE_EXECUTING``); on the last pass conclude (assemble, write, evaluate this piece)."""
        e = self._ensemble
        output = vtkImageData.GetData(outInfo)
        output.Initialize()
        controller = parallel.piece_controller(outInfo)
        image = vtkImageData.GetData(inInfo[0])
        if e.index < e.passes:
            if e.index == 0:
                self._ensemble_setup(e, controller)
            if e.index < len(e.bricks) and e.failure is None and not e.aborted and not e.stopped:
                self._ensemble_brick(e, image)
            e.index += 1
            if controller is not None or (e.failure is None and not e.aborted):
                request.Set(SDDP.CONTINUE_EXECUTING(), 1)  # the next brick, or the final pass for this piece
                return 1
            e.index = e.passes  # serially a failure or an abort ends the run at once
        request.Remove(SDDP.CONTINUE_EXECUTING())
        e.concluded = True
        return self._ensemble_conclude(output, outInfo, image, controller, e)

    def _ensemble_setup(self, e, controller) -> None:
        """Rank 0 (or the only process) checks the settings and prepares the work folder
        ``<ModelFileName>.parts``; once every rank knows it went well, the others open it too."""
        self.result = None
        self.brick_inputs = []
        self.loaded_bricks = None
        self.SetAbortExecute(0)
        if e.rank == 0 and e.failure is None:
            try:
                e.run = self._open_parts(e, first=True)
            except Exception as exc:  # reported at the conclusion, once every rank knows
                e.failure = exc
        if controller is not None:
            refused = parallel.all_reduce(controller, [float(e.failure is not None)])[0] > 0
            if refused and e.failure is None:
                e.failure = ValueError("another MPI rank could not start the ensemble (see its error), so nothing "
                                       "was trained.")
            if e.failure is None and e.rank != 0:
                try:
                    e.run = self._open_parts(e, first=False)
                except Exception as exc:
                    e.failure = exc
        if e.failure is None:
            self._ensemble_resumable = e.key  # an abort keeps the finished bricks for the next run of this key

    def _open_parts(self, e, first: bool):
        """The :class:`~srn_core.ensemble_training.EnsembleTraining` of this run in ``<ModelFileName>.parts``
        (resuming the bricks an earlier, stopped run of the same settings and input finished)."""
        from srn_core.ensemble_training import EnsembleTraining
        from srn_core.training import TrainConfig

        c = self._config
        parts = _parts_folder(e.path)
        if first:
            self._checked_settings()
            if parts.exists() and not parts.is_dir():
                raise ValueError(f"ModelFileName {str(e.path)!r}: {str(parts)!r}, where an ensemble keeps its bricks "
                                 f"until the model file is written, exists but is not a folder; move it away.")
            if parts.is_dir() and any(parts.glob("brick-*")) and self._ensemble_resumable != e.key:
                raise ValueError(f"ModelFileName {str(e.path)!r}: the parts folder {str(parts)!r} holds bricks of "
                                 f"an earlier, unfinished ensemble run this filter did not start (the input may "
                                 f"have changed since); delete it to train afresh.")
        budget = self._parameter_budget(e.plan.geometry, plan=e.plan)[0]
        # TimeLimit is the whole run's: each rank trains at most ``passes`` bricks one after the other.
        config = TrainConfig(steps=c.steps, batch_size=c.batch_size, lr=c.learning_rate or None, seed=c.seed,
                             device=c.device, time_limit=(c.time_limit / e.passes) or None)
        run = EnsembleTraining(e.plan, c.architecture, budget, config, parts, resume=True,
                               compression=self.compression())
        if first:
            run.clear_failures()
        return run

    def _ensemble_brick(self, e, image) -> None:
        """Train brick ``e.bricks[e.index]`` on the input, which the pipeline delivered for its box only."""
        import torch

        from srn_core.training import TrainingInterrupted

        k, i, n = e.bricks[e.index], e.index, len(e.bricks)
        try:
            if image is None or image.GetNumberOfPoints() == 0:
                raise ValueError(f"the input delivered no data for brick {k} (extent {e.input_extent(i)}).")
            volume, used = selected_volume(self, image, self._config.mask_non_finite, mask_setting="MaskNonFinite")
            if used != e.association:
                raise ValueError(f"array {volume.name!r} is {used} data; select it explicitly (Scalars) to train an "
                                 f"ensemble on {used} data.")
            self.brick_inputs.append((k, tuple(image.GetExtent())))

            def progress(state) -> bool:  # the bar runs over all of this rank's bricks
                self.UpdateProgress(0.95 * (i + state.step / max(1, state.steps)) / n)
                return bool(self.CheckAbort())

            self.UpdateProgress(0.95 * i / n)
            # Serially every core trains; under MPI each rank trains its own bricks on its own core(s).
            with _all_allowed_cores() if e.size == 1 else contextlib.nullcontext():
                self.brick_threads = torch.get_num_threads()
                if e.run.train_brick(k, volume, callback=progress) is not None:  # None: finished by a stopped run
                    self.trainings += 1
        except TrainingInterrupted:
            if self.CheckAbort():
                e.aborted = True
                if e.size > 1:
                    e.run.fail(e.rank, "aborted")  # the other ranks stop at their next poll
            else:
                e.stopped = True  # another rank failed: its error is reported at the conclusion
        except Exception as exc:  # reported at the conclusion; the other ranks stop at their next poll
            e.failure = exc
            if e.run is not None:
                e.run.fail(e.rank, f"{type(exc).__name__}: {exc}")

    def _ensemble_conclude(self, output, outInfo, image, controller, e) -> int:
        """Every rank, once: learn every rank's outcome; rank 0 assembles the bricks and writes the model file
        (the others sleep meanwhile); then each evaluates its piece of the output and the PSNR is summed over
        the pieces."""
        from srn_core.metrics import ErrorSums

        failure, aborted, summary = e.failure, e.aborted, dict(e.summary)
        if controller is not None and e.passes:
            parallel.idle_barrier(controller)  # ranks with fewer or cheaper bricks sleep while others train
            shared = parallel.all_reduce(controller, [float(failure is not None), float(aborted)])
            if failure is None and shared[0] > 0:
                failure = ValueError("another MPI rank failed (see its error), so no ensemble model was written.")
            aborted = shared[1] > 0
        if failure is None and aborted:
            if e.rank == 0:
                self.warning(f"aborted; no model was written. The finished bricks are kept in "
                             f"{str(_parts_folder(e.path))!r}: apply again to resume.")
            return self.guarded(output, output.Initialize)
        if failure is None and not e.trained:
            if e.rank == 0:
                try:
                    summary = self._write_ensemble(e)
                except Exception as exc:
                    failure = exc
            if controller is not None:
                parallel.idle_barrier(controller)
                shared = parallel.all_reduce(controller, [float(failure is not None)]
                                             + [float(summary.get(k, 0.0)) for k in ENSEMBLE_KEYS])
                if failure is None and shared[0] > 0:
                    failure = ValueError("MPI rank 0 could not write the ensemble model (see its error).")
                summary = dict(zip(ENSEMBLE_KEYS, shared[1:]))
        sums, model = ErrorSums(), None
        # Every rank knows by now whether any rank failed (the exchanges above), so all or none sum up below.
        collective = controller is not None and failure is None
        if failure is None:
            try:
                model, sums = self._ensemble_piece(output, outInfo, image, controller, e)
            except Exception as exc:
                failure = exc
        if collective:  # every rank gets here with the same outcome so far: sum the pieces' errors
            reduced = parallel.all_reduce(controller, [float(failure is not None)] + sums.sums())
            maxima = parallel.all_reduce(controller, sums.maxima(), "max")
            if failure is None and reduced[0] > 0:
                failure = ValueError("another MPI rank failed (see its error) while evaluating the ensemble.")
            sums = ErrorSums.from_reduced(reduced[1:], maxima)

        def produce():
            summary["PSNR"] = sums.psnr if sums.count else math.nan
            if model is not None:
                summary["CompressionRatio"] = model.compression_ratio  # the file's bytes: right for a partial model
            self._ensemble_done = (e.key, _file_state(e.path), {k: v for k, v in summary.items() if k != "PSNR"})
            self._ensemble_resumable = None
            if e.rank == 0 and model is not None:
                from srn_core.training import TrainResult

                self.result = TrainResult(model, summary["PSNR"], int(summary.get("TrainingSteps", 0)),
                                          float(summary.get("TrainingSeconds", 0.0)), "steps")
            add_field_values(output, {**summary, "ModelFileName": str(e.path)})
            self.UpdateProgress(1.0)

        return self.guarded(output, produce, failure)

    def _write_ensemble(self, e) -> dict:
        """Rank 0: the finished bricks assembled into one model, written atomically to ``ModelFileName`` (with
        the compression settings), then the parts folder removed; the summary the other ranks receive."""
        model = e.run.assemble()
        model.training["ensemble_ranks"] = e.size
        # No process holds the whole volume, so the file records no PSNR: the filter's output sums it over the
        # pieces (field data PSNR).
        _save(model, e.path, self.compression(), None, self._config.chunk_size)
        e.run.cleanup()
        return {"FileBytes": model.file_bytes, "NumberOfParameters": model.num_parameters,
                "TrainingSeconds": float(model.training.get("seconds", 0.0)),
                "TrainingSteps": int(model.training.get("steps", 0))}

    def _ensemble_piece(self, output, outInfo, image, controller, e):
        """This rank's piece of the output (the whole image serially) from the bricks it touches only, and the
        error sums of the points it owns (pieces share their faces: the upper face belongs to the next piece)."""
        from srn_core.loading import load_model
        from srn_core.metrics import ErrorSums

        c = self._config
        info = outInfo.GetInformationObject(0)
        whole = e.key[2]
        if controller is not None:
            extent = parallel.piece_extent(outInfo)
        else:
            extent = tuple(info.Get(SDDP.UPDATE_EXTENT())) if info.Has(SDDP.UPDATE_EXTENT()) else whole
        if parallel.is_empty_extent(extent):
            return None, ErrorSums()
        if image is None or image.GetNumberOfPoints() == 0:
            raise ValueError("the input delivered no data for this piece of the output.")
        volume, used = selected_volume(self, image, c.mask_non_finite, mask_setting="MaskNonFinite")
        cell = used == "cell"
        flat = [whole[2 * a + 1] == whole[2 * a] for a in range(3)]
        # The piece in the training grid (cell indices for a cell array: one fewer at the upper end).
        grid_extent = []
        for a in range(3):
            lo, hi = extent[2 * a] - whole[2 * a], extent[2 * a + 1] - whole[2 * a]
            grid_extent += [lo, max(lo, hi - 1) if cell and not flat[a] else hi]
        if not Path(e.path).is_file():
            raise FileNotFoundError(f"the model rank 0 wrote, {str(e.path)!r}, is not visible here; under MPI "
                                    f"ModelFileName must be on a file system every rank shares.")
        model = load_model(e.path, device=c.device, extent=tuple(grid_extent))
        self.loaded_bricks = list(getattr(model.field, "present", [0]))
        output.SetExtent(*extent)
        output.SetOrigin(image.GetOrigin())
        output.SetSpacing(image.GetSpacing())
        values = model.resample(values_geometry(output, used), chunk_size=c.chunk_size)
        attach_array(output, values, volume.name, used)
        # The same points of the input (which may be larger than the piece asked for).
        got = image.GetExtent()
        box = tuple(slice(extent[2 * a] - got[2 * a], extent[2 * a] - got[2 * a] + values.shape[2 - a])
                    for a in (2, 1, 0))
        reference = volume.values[box]
        own = tuple(slice(0, n - 1) if not cell and extent[2 * a + 1] < whole[2 * a + 1] and n > 1 else slice(0, n)
                    for a, n in zip((2, 1, 0), values.shape))
        reference, reconstruction = reference[own], values[own]
        mask = np.isfinite(reference) if volume.mask_nonfinite else None
        return model, ErrorSums.of(reference, reconstruction, mask)

    # ---- training over time --------------------------------------------------------------------
    def _gather_step(self, request, inInfo, outInfo) -> int:
        """One execution of the gather: keep step ``i`` of the input series (rank 0 only), then ask the
        executive to run again for step ``i + 1`` (``CONTINUE_EXECUTING``); after the last step, train.

        Under MPI every rank walks through every step (its own piece; rank 0 the whole volume), so the ranks
        keep updating their inputs in step even when an upstream filter communicates.
        """
        g = self._gather
        output = vtkImageData.GetData(outInfo)
        output.Initialize()
        controller = parallel.piece_controller(outInfo)
        trains = controller is None or controller.GetLocalProcessId() == 0
        image = vtkImageData.GetData(inInfo[0])
        n, i = len(g.times), g.index
        if g.failure is None and not g.aborted:
            try:
                if i == 0:
                    self.result = None
                    g.path = self._checked_settings()
                    g.key_frames = self._checked_key_frames(g.times)
                if trains:
                    g.steps.append(self._series_step(image, i, g.times))
                    if self.CheckAbort():
                        g.aborted = True
                self.UpdateProgress((i + 1) / n * GATHER_SHARE)  # exactly GATHER_SHARE after the last step
            except Exception as exc:
                g.failure = exc
        if i + 1 < n and (controller is not None or (g.failure is None and not g.aborted)):
            g.index += 1
            request.Set(SDDP.CONTINUE_EXECUTING(), 1)
            return 1
        request.Remove(SDDP.CONTINUE_EXECUTING())
        self._gather = None
        self.SetAbortExecute(0)
        empty_piece = not trains and (image is None or image.GetNumberOfPoints() == 0)
        name = used = run = None
        if g.failure is None:
            try:
                if trains and g.aborted:
                    run = lambda: self.warning("aborted while reading the time steps; no model was written.")  # noqa: E731
                elif trains:
                    series = TimeSeries(g.steps, g.times)  # one clear error naming a step that does not fit
                    name, used = series.name, g.used
                    run = lambda: self._train_series(series, g)  # noqa: E731
                elif not empty_piece:  # the array's name and association, for this rank's piece of the output
                    volume, used = selected_volume(self, image, self._config.mask_non_finite,
                                                   mask_setting="MaskNonFinite")
                    name = volume.name
            except Exception as exc:
                g.failure = exc
        return self._conclude(output, outInfo, image, controller, empty_piece, g.failure, run, g.path, name, used,
                              series_key=g.key)

    def _series_step(self, image, i: int, times):
        """Step ``i`` of the input series as a :class:`~srn_core.data.Volume` of its own (the reader re-uses
        its arrays for the next step), checked to be the step that was asked for."""
        from srn_core.data import Volume

        if image is None or image.GetNumberOfPoints() == 0:
            raise ValueError(f"time step {i} (t={times[i]:g}) of the input is empty.")
        got = data_time(image)
        if got is not None and not math.isclose(got, times[i], rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"asked for time step {i} (t={times[i]:g}), the input produced t={got:g}; it does not "
                             f"deliver the time steps it announces.")
        volume, used = selected_volume(self, image, self._config.mask_non_finite, mask_setting="MaskNonFinite")
        if self._gather.used is None:
            self._gather.used = used
        return Volume(np.array(volume.values, copy=True), volume.geometry, volume.name,
                      mask_nonfinite=volume.mask_nonfinite)

    def _train_series(self, series, g) -> dict | None:
        """Train one time-varying model on ``series`` (or keep the last one when neither the data nor any
        setting changed since it was trained); its summary, or ``None`` when aborted."""
        trained_key = (self._settings_key(), series.checksum())
        last = self._trained_series
        if last is not None and last[0] == trained_key and Path(g.path).is_file():
            self.result = last[1]
            return dict(last[2])
        budget = self._parameter_budget(series.geometry, len(series), g.key_frames or series.times)
        summary = self._train(series, g.path, budget, key_frames=g.key_frames, progress_from=GATHER_SHARE)
        self._trained_series = (trained_key, self.result, summary) if summary is not None else None
        return summary

    def _settings_key(self) -> tuple:
        """Everything set on this filter that changes the model: the settings and the selected array."""
        return (self._config, selected_array(self, 0))

    def _checked_key_frames(self, times) -> list[float] | None:
        """The key frame times ``KeyFrames`` asks for (``None``: one per time step), or one error naming it."""
        from srn_core.training import key_times_for

        k = self._config.key_frames
        if k == 0:
            return None
        if not 2 <= k <= len(times):
            raise ValueError(f"KeyFrames must be 0 (one per time step) or from 2 to the input's {len(times)} time "
                             f"steps, got {k}.")
        return key_times_for(times, k)

    def _series_output(self, output, inInfo, outInfo, image=None) -> None:
        """The trained series model on the input's grid (this rank's piece under MPI) at the requested time."""
        state = self._series
        if state is None:
            raise ValueError("no time-varying model is trained yet (the last training failed); update again.")
        image = image if image is not None else vtkImageData.GetData(inInfo[0])
        info = outInfo.GetInformationObject(0)
        controller = parallel.piece_controller(outInfo)
        if image is None or image.GetNumberOfPoints() == 0:
            if controller is None or not parallel.is_empty_extent(parallel.piece_extent(outInfo)):
                raise ValueError("the input image is empty.")
        else:
            time = state.model.clamped_time(requested_time(info))
            self._fill_output(output, image, outInfo if controller is not None else None, state.model, state.name,
                              state.used, time)
            output.GetInformation().Set(vtkDataObject.DATA_TIME_STEP(), time)
        add_field_values(output, {**state.summary, "ModelFileName": str(state.path)})
        per_step = state.model.training.get("psnr_per_step")
        if per_step:  # the model file's own record: PSNR of each time step, as stored
            array = vtkDoubleArray()
            array.SetName("PSNRPerStep")
            for value in per_step:
                array.InsertNextValue(float(value))
            output.GetFieldData().AddArray(array)

    def _checked_input(self, inInfo):
        """``(image, volume, association, model path, (parameters, target file bytes or None))`` of the input,
        or a clear error before any training."""
        c = self._config
        image = vtkImageData.GetData(inInfo[0])
        if image is None or image.GetNumberOfPoints() == 0:
            raise ValueError("the input image is empty.")
        path = self._checked_settings()
        volume, used = selected_volume(self, image, c.mask_non_finite, mask_setting="MaskNonFinite")
        return image, volume, used, path, self._parameter_budget(volume.geometry)

    def _checked_settings(self) -> Path:
        """The model path once every setting that needs no data is known to be valid (before any reading or
        training), else one error naming the setting."""
        c = self._config
        path = self._checked_output_path()
        self.checked_evaluation_settings()
        self.compression()
        if not (c.target_ratio or c.target_size):  # a file-size budget is checked once the data's shape is known
            if c.parameter_budget < MIN_BUDGET:
                raise ValueError(f"ParameterBudget must be at least {MIN_BUDGET}, got {c.parameter_budget}.")
            check_training_memory(c.parameter_budget, f"ParameterBudget {c.parameter_budget}")
        if not (c.time_limit >= 0 and math.isfinite(c.time_limit)):
            raise ValueError(f"TimeLimit must be 0 (no limit) or a positive number of seconds, got {c.time_limit}.")
        if not (c.learning_rate >= 0 and math.isfinite(c.learning_rate)):
            raise ValueError(f"LearningRate must be 0 (the architecture's default) or positive, got "
                             f"{c.learning_rate}.")
        return path

    def compression(self) -> Compression | None:
        """The :class:`~srn_core.compression.Compression` of the model file (``None``: float32), or one error
        naming the setting."""
        c = self._config
        if not c.compress:
            return None
        for name, value in (("Bits", c.bits), ("DecoderBits", c.decoder_bits)):
            if not MIN_BITS <= value <= MAX_BITS:
                raise ValueError(f"{name} must be an integer from {MIN_BITS} to {MAX_BITS}, got {value}.")
        if c.codec not in CODECS:
            raise ValueError(f"Codec must be one of {', '.join(CODECS)}, got {c.codec!r}.")
        if c.codec in ("sz3", "zstd"):
            package = {"sz3": "pysz", "zstd": "zstandard"}[c.codec]
            try:
                __import__(package)
            except ImportError:
                raise ImportError(f"Codec {c.codec} needs the {package} package in ParaView's Python; choose "
                                  f"lzma, or install {package}.") from None
        return Compression(c.bits, c.decoder_bits, c.codec)

    def _parameter_budget(self, geometry, steps: int = 1, key_times=None, plan=None) -> tuple[int, float | None]:
        """``(parameters, target file bytes or None)``: ``ParameterBudget``, or the largest model whose file fits
        ``TargetRatio`` / ``TargetSize``; a series of ``steps`` time steps (a time-varying model with
        ``key_times``) counts every step's data. For an ensemble's ``plan`` the budget and the file are the whole
        ensemble's, shared equally by its bricks (each brick's share sized for the largest brick's box, as
        ``srn train --ensemble`` does)."""
        from srn_core.compression import parameters_for_file_size
        from srn_core.volume_source import box_shape

        c = self._config
        count = 1 if plan is None else len(plan)
        if c.target_ratio and c.target_size:
            raise ValueError(f"set TargetRatio ({c.target_ratio:g}) or TargetSize ({c.target_size!r}), not both.")
        if c.target_size:
            try:
                target = parse_bytes(c.target_size)
            except ValueError:
                raise ValueError(f"TargetSize must look like 500KB, 1MB or 2.5GiB, got {c.target_size!r}.") from None
            asked = f"TargetSize {c.target_size}"
        elif c.target_ratio:
            if not (c.target_ratio > 0 and math.isfinite(c.target_ratio)):
                raise ValueError(f"TargetRatio must be 0 (use ParameterBudget) or a positive number, got "
                                 f"{c.target_ratio}.")
            target = geometry.num_points * steps * 4 / c.target_ratio
            asked = f"TargetRatio {c.target_ratio:g} (a file of {format_bytes(target)})"
        else:
            if c.parameter_budget // count < MIN_BUDGET:
                raise ValueError(f"ParameterBudget {c.parameter_budget} leaves {c.parameter_budget // count} "
                                 f"parameters to each of the {count} bricks of EnsembleGrid "
                                 f"{' '.join(map(str, c.ensemble_grid))}; give at least {MIN_BUDGET * count}.")
            return c.parameter_budget, None
        shape = geometry.shape if plan is None else max(
            (box_shape(plan.box(k), plan.geometry.shape) for k in range(count)), key=math.prod)
        if plan is not None:
            asked += f" over {count} bricks"
        try:
            budget = parameters_for_file_size(c.architecture, target / count, shape, self.compression(),
                                              key_times=key_times)
        except ValueError as exc:
            raise ValueError(f"{asked}: {exc}") from None
        check_training_memory(budget, f"{asked} ({budget:,} parameters)")
        return budget * count, target

    def _train(self, volume, path, budget, key_frames=None, progress_from: float = 0.0) -> dict | None:
        """Train on ``volume`` (a :class:`~srn_core.series.TimeSeries` trains a time-varying model with key
        frames at ``key_frames``, default one per step), write the model to ``path``; its summary, or ``None``
        when aborted. Progress runs from ``progress_from`` (what reading the input took) to 0.95."""
        from srn_core.training import TrainConfig, TrainingInterrupted, fit

        c = self._config
        config = TrainConfig(steps=c.steps, batch_size=c.batch_size, lr=c.learning_rate or None, seed=c.seed,
                             device=c.device, time_limit=c.time_limit or None)

        def progress(state) -> bool:
            # Training is nearly all of the work; the final evaluation is the last few percent.
            self.UpdateProgress(progress_from + (0.95 - progress_from) * state.step / max(1, state.steps))
            return bool(self.CheckAbort())

        # An abort request ends this execution only; the flag is not reset by VTK itself.
        self.SetAbortExecute(0)
        self.UpdateProgress(progress_from)
        self.trainings += 1
        try:
            with _all_allowed_cores():
                result = fit(volume, c.architecture, budget[0], config, callback=progress,
                             callback_every=max(1, min(25, c.steps // 100)),
                             key_frames=None if key_frames is None else len(key_frames))
        except TrainingInterrupted as exc:
            self.warning(f"aborted: {exc} No model was written.")
            return None
        compression = self.compression()
        # The output, PSNR and ratio describe the file a user will open: its quantized model, whose PSNR the
        # file records too (as srn train does; the float model's as psnr_before_quantization).
        measure = compression is not None and not math.isnan(result.psnr)
        _save(result.model, path, compression, volume if measure else None, c.chunk_size)
        if compression is not None:
            result = dataclasses.replace(result, model=_load_model(path))
            if measure:
                result = dataclasses.replace(result, psnr=result.model.training["psnr"])
        model = result.model
        self.result = result
        target = budget[1]
        if target is not None and abs(model.file_bytes / target - 1) > 0.10:
            self.warning(f"the model file {str(path)!r} is {model.file_bytes:,} bytes, "
                         f"{model.file_bytes / target - 1:+.0%} off the {int(target):,}-byte target (ratio "
                         f"{model.file_ratio:.1f}x; entropy coding depends on the trained values).")
        return {"PSNR": result.psnr, "CompressionRatio": model.compression_ratio, "FileBytes": model.file_bytes,
                "NumberOfParameters": model.num_parameters, "TrainingSeconds": result.seconds,
                "TrainingSteps": result.steps}

    def _fill_output(self, output, image, piece_info, model, name: str, association: str,
                     time: float | None = None) -> None:
        """The reconstruction on the input's grid (at ``time`` for a time-varying model); under MPI
        (``piece_info`` given) on this rank's piece only."""
        if piece_info is None:
            output.CopyStructure(image)
            values = model.resample(chunk_size=self._config.chunk_size, time=time)
        else:
            extent = parallel.piece_extent(piece_info)
            output.SetExtent(*extent)
            output.SetOrigin(image.GetOrigin())
            output.SetSpacing(image.GetSpacing())
            values = model.resample(values_geometry(output, association), chunk_size=self._config.chunk_size,
                                    time=time)
        attach_array(output, values, name, association)

    def _checked_output_path(self) -> Path:
        """The model path, checked before training so a mistake costs no training time."""
        name = self._config.model_file_name
        if not name:
            raise ValueError("ModelFileName is empty; set the file the trained model is written to.")
        path = Path(name).expanduser()
        if path.is_dir():
            raise ValueError(f"ModelFileName {name!r} is a folder; give a file name.")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"ModelFileName {name!r}: the folder {str(path.parent)!r} does not exist.")
        try:  # a read-only folder must fail now, not after the whole training
            check_folder_writable(path)
        except OSError as exc:
            raise OSError(f"ModelFileName {name!r}: the folder {str(path.parent)!r} is not writable "
                          f"({exc.strerror or exc}); no training was started.") from None
        return path


@contextlib.contextmanager
def _all_allowed_cores():
    """Let torch use every core this process may run on while it trains.

    Under ``mpirun`` torch starts with one thread per rank (measured: 1 thread with 2 allowed cores under
    ``--bind-to none``), yet only rank 0 trains while the others sleep in ``parallel.idle_barrier``. With
    OpenMPI's default binding a rank may only use one core; ``--bind-to none`` frees it (38 s -> 23 s, 400 steps).
    """
    import torch

    before = torch.get_num_threads()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if allowed > before:
        torch.set_num_threads(allowed)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _save(model, path: Path, compression: Compression | None, reference=None, chunk_size: int = 1 << 16) -> None:
    """Write the model atomically; a full disk or a failing file system is one error naming the file."""
    from safetensors import SafetensorError

    try:
        model.save(path, compression, reference=reference, chunk_size=chunk_size)
    except (OSError, SafetensorError) as exc:  # safetensors reports a failed write as its own error
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OSError(f"ModelFileName {str(path)!r} could not be written ({reason}); no model was saved.") from None


def _parts_folder(path: Path) -> Path:
    """Where an ensemble run keeps its finished bricks and checkpoints until the model file is written (as
    ``srn train --ensemble`` does); under MPI on a file system every rank shares, like the model file."""
    return Path(str(path) + ".parts")


def _file_state(path) -> tuple | None:
    """The inode, modification time and size of ``path`` (``None`` when it does not exist)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _info_values(info, key, default: float) -> tuple[float, float, float]:
    """Three numbers of ``info`` (the input's ``ORIGIN`` or ``SPACING``), or ``default`` each when absent."""
    return tuple(float(v) for v in info.Get(key)) if info.Has(key) else (default,) * 3


def _load_model(path):
    from srn_core.loading import load_model

    if not Path(path).is_file():
        raise FileNotFoundError(f"the model rank 0 wrote, {str(path)!r}, is not visible here; under MPI "
                                f"ModelFileName must be on a file system every rank shares.")
    return load_model(path)


def _upstream_mtime(algorithm) -> int:
    """The latest modification time of every algorithm upstream of ``algorithm``'s inputs: a changed reader
    setting or filter anywhere above means the series must be read again."""
    latest, seen, stack = 0, {}, [algorithm]  # seen keeps the wrappers alive, so their ids stay unique
    while stack:
        current = stack.pop()
        for port in range(current.GetNumberOfInputPorts()):
            for connection in range(current.GetNumberOfInputConnections(port)):
                upstream = current.GetInputAlgorithm(port, connection)
                if upstream is not None and id(upstream) not in seen:
                    seen[id(upstream)] = upstream
                    latest = max(latest, upstream.GetMTime())
                    stack.append(upstream)
    return latest
