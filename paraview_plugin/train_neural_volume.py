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
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as SDDP

from srn_core.compression import CODECS, MAX_BITS, MIN_BITS, Compression
from srn_core.fields.base import MIN_BUDGET
from srn_core.memory import format_bytes, parse_bytes
from srn_core.modelfile import check_folder_writable
from srn_core.training import check_training_memory

from . import parallel
from ._algorithm import EvaluationSettings, NeuralAlgorithmBase
from .vtk_image import add_field_values, attach_array, selected_volume, values_geometry


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


class TrainNeuralVolume(NeuralAlgorithmBase):
    """Train a neural volume on the selected array of the input image (see the module docstring)."""

    def __init__(self):
        NeuralAlgorithmBase.__init__(self, TrainSettings(), nInputPorts=1, inputType="vtkImageData",
                                     nOutputPorts=1, outputType="vtkImageData")
        self.result = None
        """The last :class:`srn_core.training.TrainResult` (``None`` before training or after a failure)."""

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

    # ---- pipeline ------------------------------------------------------------------------------
    def RequestUpdateExtent(self, request, inInfo, outInfo):
        """Under MPI, rank 0 trains on the whole volume: it asks for all of it instead of its piece."""
        controller = parallel.piece_controller(outInfo)
        if controller is not None and controller.GetLocalProcessId() == 0:
            info = inInfo[0].GetInformationObject(0)
            info.Set(SDDP.UPDATE_PIECE_NUMBER(), 0)
            info.Set(SDDP.UPDATE_NUMBER_OF_PIECES(), 1)
            info.Set(SDDP.UPDATE_EXTENT(), info.Get(SDDP.WHOLE_EXTENT()), 6)
        return 1

    def RequestData(self, request, inInfo, outInfo):
        output = vtkImageData.GetData(outInfo)
        output.Initialize()
        self.result = None
        controller = parallel.piece_controller(outInfo)
        trains = controller is None or controller.GetLocalProcessId() == 0
        failure, aborted, summary = None, False, {}
        image = vtkImageData.GetData(inInfo[0])
        # Under MPI a rank other than 0 may receive an empty piece (more ranks than slabs): it only waits.
        empty_piece = not trains and (image is None or image.GetNumberOfPoints() == 0)
        try:
            if empty_piece:
                path = self._checked_output_path()
            else:
                image, volume, used, path, budget = self._checked_input(inInfo)
            if trains:
                summary = self._train(volume, path, budget)
                aborted = summary is None
        except Exception as exc:  # reported below, once the other ranks have been told
            failure = exc
        if controller is not None:  # rank 0's outcome, for every rank
            parallel.idle_barrier(controller)  # the others sleep while rank 0 trains
            keys = ("PSNR", "CompressionRatio", "FileBytes", "NumberOfParameters", "TrainingSeconds",
                    "TrainingSteps")
            shared = parallel.all_reduce(controller, [float(failure is not None), float(aborted)]
                                         + [float((summary or {}).get(k, 0.0)) for k in keys])
            if failure is None and shared[0] > 0:
                failure = ValueError("another MPI rank failed (see its error), so no model was trained.")
            aborted = shared[1] > 0
            if failure is None and not aborted and not trains:
                summary = dict(zip(keys, shared[2:]))

        def produce():
            if aborted:
                output.Initialize()
                return
            if not empty_piece:
                model = self.result.model if self.result is not None else _load_model(path)
                self._fill_output(output, image, outInfo if controller is not None else None, model, volume.name,
                                  used)
            elif not parallel.is_empty_extent(parallel.piece_extent(outInfo)):
                raise ValueError("this rank received an empty input piece but owns a non-empty output piece.")
            add_field_values(output, {**summary, "ModelFileName": str(path)})
            if not empty_piece:
                self.UpdateProgress(1.0)

        return self.guarded(output, produce, failure)

    def _checked_input(self, inInfo):
        """``(image, volume, association, model path, (parameters, target file bytes or None))`` of the input,
        or a clear error before any training."""
        c = self._config
        image = vtkImageData.GetData(inInfo[0])
        if image is None or image.GetNumberOfPoints() == 0:
            raise ValueError("the input image is empty.")
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
        volume, used = selected_volume(self, image, c.mask_non_finite, mask_setting="MaskNonFinite")
        return image, volume, used, path, self._parameter_budget(volume.geometry)

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

    def _parameter_budget(self, geometry) -> tuple[int, float | None]:
        """``(parameters, target file bytes or None)``: ``ParameterBudget``, or the largest model whose file fits
        ``TargetRatio`` / ``TargetSize``."""
        from srn_core.compression import parameters_for_file_size

        c = self._config
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
            target = geometry.num_points * 4 / c.target_ratio
            asked = f"TargetRatio {c.target_ratio:g} (a file of {format_bytes(target)})"
        else:
            return c.parameter_budget, None
        try:
            budget = parameters_for_file_size(c.architecture, target, geometry.shape, self.compression())
        except ValueError as exc:
            raise ValueError(f"{asked}: {exc}") from None
        check_training_memory(budget, f"{asked} ({budget:,} parameters)")
        return budget, target

    def _train(self, volume, path, budget) -> dict | None:
        """Train on ``volume``, write the model to ``path``; its summary, or ``None`` when aborted."""
        from srn_core.training import TrainConfig, TrainingInterrupted, fit

        c = self._config
        config = TrainConfig(steps=c.steps, batch_size=c.batch_size, lr=c.learning_rate or None, seed=c.seed,
                             device=c.device, time_limit=c.time_limit or None)

        def progress(state) -> bool:
            # Training is nearly all of the work; the final evaluation is the last few percent.
            self.UpdateProgress(0.95 * state.step / max(1, state.steps))
            return bool(self.CheckAbort())

        # An abort request ends this execution only; the flag is not reset by VTK itself.
        self.SetAbortExecute(0)
        self.UpdateProgress(0.0)
        try:
            with _all_allowed_cores():
                result = fit(volume, c.architecture, budget[0], config, callback=progress,
                             callback_every=max(1, min(25, c.steps // 100)))
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

    def _fill_output(self, output, image, piece_info, model, name: str, association: str) -> None:
        """The reconstruction on the input's grid; under MPI (``piece_info`` given) on this rank's piece only."""
        if piece_info is None:
            output.CopyStructure(image)
            values = model.resample(chunk_size=self._config.chunk_size)
        else:
            extent = parallel.piece_extent(piece_info)
            output.SetExtent(*extent)
            output.SetOrigin(image.GetOrigin())
            output.SetSpacing(image.GetSpacing())
            values = model.resample(values_geometry(output, association), chunk_size=self._config.chunk_size)
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


def _load_model(path):
    from srn_core.loading import load_model

    if not Path(path).is_file():
        raise FileNotFoundError(f"the model rank 0 wrote, {str(path)!r}, is not visible here; under MPI "
                                f"ModelFileName must be on a file system every rank shares.")
    return load_model(path)
