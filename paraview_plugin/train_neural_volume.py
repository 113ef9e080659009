"""``TrainNeuralVolume``: fit a neural volume to any ``vtkImageData`` array, write the model, show the result.

A filter for VTK scripts and, through ``xml/TrainNeuralVolume.xml``, ParaView's "Train Neural Volume"::

    trainer = TrainNeuralVolume()
    trainer.SetInputConnection(reader.GetOutputPort())
    trainer.SetInputArrayToProcess(0, 0, 0, vtkDataObject.FIELD_ASSOCIATION_POINTS, "density")
    trainer.SetModelFileName("density.srn")
    trainer.SetSteps(2000)
    trainer.Update()

Training runs the core's trainer (:func:`srn_core.training.train`) on the selected point or cell array; the
model file is written atomically. The output has the input's geometry and the reconstruction (the model
sampled at the input's points, or cell centres for cell data) under the input array's name, with field data
``PSNR`` (dB, whole volume), ``CompressionRatio``, ``NumberOfParameters``, ``TrainingSeconds`` and
``TrainingSteps``. Progress is reported through ``UpdateProgress``; an abort request (``SetAbortExecute`` /
ParaView's abort) stops training, writes nothing and leaves the output empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkImageData

from srn_core.evaluate import DEFAULT_CHUNK_SIZE, check_chunk_size

from ._algorithm import NeuralAlgorithmBase
from .vtk_image import array_names, volume_from_image


@dataclass(frozen=True)
class TrainSettings:
    model_file_name: str = ""
    """Where the trained model is written (required)."""
    architecture: str = "apmgsrn"
    """Field architecture (a name known to ``srn_core.fields``)."""
    parameter_budget: int = 50_000
    """Trainable parameters of the model; the configuration is derived from it and the data's shape."""
    steps: int = 1000
    batch_size: int = 1 << 14
    learning_rate: float = 0.01
    seed: int = 0
    time_limit: float = 0.0
    """Seconds after which training stops with the model so far (0: no limit)."""
    mask_non_finite: bool = False
    """Exclude NaN/Inf input values from training and metrics instead of refusing the input."""
    device: str = "auto"
    chunk_size: int = DEFAULT_CHUNK_SIZE


ASSOCIATIONS = {vtkDataObject.FIELD_ASSOCIATION_POINTS: "point", vtkDataObject.FIELD_ASSOCIATION_CELLS: "cell"}


def selected_array(algorithm, index: int) -> tuple[str | None, str | None]:
    """Name and association (``"point"``/``"cell"``) set with ``SetInputArrayToProcess(index, ...)``, if any."""
    info = algorithm.GetInputArrayInformation(index)
    if info is None or not info.Has(vtkDataObject.FIELD_NAME()):
        return None, None
    name = info.Get(vtkDataObject.FIELD_NAME()) or None
    assoc = info.Get(vtkDataObject.FIELD_ASSOCIATION()) if info.Has(vtkDataObject.FIELD_ASSOCIATION()) else None
    return name, ASSOCIATIONS.get(assoc)


def add_field_values(data: vtkImageData, values: dict) -> None:
    """Attach one-tuple field-data arrays (numbers as doubles, strings as a string array)."""
    for name, value in values.items():
        if isinstance(value, str):
            arr = vtkStringArray()
            arr.SetName(name)
            arr.InsertNextValue(value)
        else:
            arr = vtkDoubleArray()
            arr.SetName(name)
            arr.InsertNextValue(float(value))
        data.GetFieldData().AddArray(arr)


def attach_array(output: vtkImageData, values, name: str, association: str, active: bool = True) -> None:
    """Add float32 ``values`` (any shape, x fastest) as a point or cell array of ``output``."""
    import numpy as np

    arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), deep=1)
    arr.SetName(name)
    data = output.GetPointData() if association == "point" else output.GetCellData()
    if active:
        data.SetScalars(arr)
    else:
        data.AddArray(arr)


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

    def SetDevice(self, device):
        self._set(device=str(device or "auto"))

    def SetChunkSize(self, chunk_size):
        self._set(chunk_size=int(chunk_size))

    # ---- pipeline ------------------------------------------------------------------------------
    def RequestData(self, request, inInfo, outInfo):
        from srn_core.fields import field_for_budget
        from srn_core.training import TrainConfig, TrainingInterrupted, train

        output = vtkImageData.GetData(outInfo)
        output.Initialize()
        self.result = None
        c = self._config
        try:
            image = vtkImageData.GetData(inInfo[0])
            if image is None or image.GetNumberOfPoints() == 0:
                raise ValueError("the input image is empty.")
            path = self._checked_output_path()
            check_chunk_size(c.chunk_size)
            if c.parameter_budget < 1000:
                raise ValueError(f"ParameterBudget must be at least 1000, got {c.parameter_budget}.")
            name, association = selected_array(self, 0)
            volume = volume_from_image(image, name, c.mask_non_finite, association)
            used = association or ("point" if volume.name in array_names(image)["point"] else "cell")
            config = TrainConfig(steps=c.steps, batch_size=c.batch_size, lr=c.learning_rate, seed=c.seed,
                                 device=c.device, time_limit=c.time_limit if c.time_limit > 0 else None)
            field = field_for_budget(c.architecture, c.parameter_budget, volume.geometry.shape, volume.value_range)

            def progress(state) -> bool:
                # Training is nearly all of the work; the final evaluation is the last few percent.
                self.UpdateProgress(0.95 * state.step / max(1, state.steps))
                return bool(self.CheckAbort())

            # An abort request ends this execution only; the flag is not reset by VTK itself.
            self.SetAbortExecute(0)
            self.UpdateProgress(0.0)
            try:
                result = train(volume, field, config, callback=progress,
                               callback_every=max(1, min(25, c.steps // 100)))
            except TrainingInterrupted as exc:
                self.warning(f"aborted: {exc} No model was written.")
                output.Initialize()
                return 1
            result.model.save(path)
            recon = result.model.resample(chunk_size=c.chunk_size)
            output.CopyStructure(image)
            attach_array(output, recon, volume.name, used)
            add_field_values(output, {
                "PSNR": result.psnr,
                "CompressionRatio": result.model.compression_ratio,
                "NumberOfParameters": result.model.num_parameters,
                "TrainingSeconds": result.seconds,
                "TrainingSteps": result.steps,
                "ModelFileName": str(path),
            })
            self.result = result
            self.UpdateProgress(1.0)
        except Exception as exc:
            self.error(exc)
            output.Initialize()
            return 1
        self.last_error = None
        return 1

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
        return path
