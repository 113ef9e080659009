"""``NeuralVolumeSource``: a trained neural volume as a ``vtkImageData`` source at any resolution and region.

Usable from any VTK script (the PyPI ``vtk`` wheel or ParaView's bundled VTK) and, through
``xml/NeuralVolumeSource.xml``, as ParaView's "Neural Volume Source"::

    >>> from paraview_plugin.neural_volume_source import NeuralVolumeSource
    >>> source = NeuralVolumeSource()
    >>> source.SetFileName("brain.srn")
    >>> source.SetSamplingDimensions(128, 128, 128)
    >>> source.Update()      # or UpdatePiece(piece, pieces, 0): only that piece is evaluated

``RequestInformation`` publishes the whole extent, origin and spacing and that any sub-extent can be produced;
``RequestData`` evaluates the model only at the points of the requested ``UPDATE_EXTENT`` (through the core's
chunked :meth:`NeuralVolume.resample`), so streaming, pieces and MPI ranks each pay only for their part.

A time-varying model (``NeuralVolume.is_time_varying``) makes the source temporal, as a file-series reader is:
``RequestInformation`` publishes the model's ``TIME_STEPS`` and ``TIME_RANGE`` (so ParaView's animation offers
them), and ``RequestData`` evaluates the model at the requested ``UPDATE_TIME_STEP``: any time in the range,
between two stored steps too (the model interpolates); a time outside the range is clamped to it, as VTK's
readers answer one, and a request without a time gets the first step. The output's ``DATA_TIME_STEP`` is the
time evaluated. A static model publishes no time::

    >>> source.UpdateTimeStep(1.5)            # a time-varying model, between its steps 1 and 2

An ensemble (a model trained brick by brick, ``srn train --ensemble`` or Train Neural Volume's
``EnsembleGrid``) is never loaded whole for a piece: ``RequestInformation`` reads only the file's description
(no brick), and ``RequestData`` loads just the bricks whose routing cells the requested extent touches
(:func:`srn_core.loading.load_model` with the piece's extent of the training grid), so each MPI rank holds its
own bricks only. :attr:`NeuralVolumeSource.loaded_bricks` says which the last evaluation held.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from vtkmodules.vtkCommonCore import VTK_FLOAT
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkDataSetAttributes, vtkImageData
from vtkmodules.vtkCommonExecutionModel import vtkAlgorithm, vtkStreamingDemandDrivenPipeline as SDDP

from srn_core.fields.ensemble import EnsembleField
from srn_core.geometry import ImageGeometry, check_bounds, check_dims
from srn_core.memory import check_allocation

from . import model_cache
from ._algorithm import EvaluationSettings, NeuralAlgorithmBase, publish_time_steps, requested_time
from .vtk_image import add_field_values, image_from_array

EMPTY_EXTENT = (0, -1, 0, -1, 0, -1)
MAX_DIMENSION = 2 ** 31 - 1
"""Points per axis a VTK image can hold: extents are C ``int``."""
BYTES_PER_POINT = 8
"""Memory an output point costs at its peak: the float32 values, then VTK's own float32 copy of them."""


@dataclass(frozen=True)
class SourceConfig(EvaluationSettings):
    file_name: str = ""
    """Our model file (``.srn``, safetensors), or an APMGSRN checkpoint folder (or a file inside it)."""
    sampling_dimensions: tuple[int, int, int] = (64, 64, 64)
    """Points per axis of the output image."""
    use_model_bounds: bool = True
    """Sample the box the model was trained on (the training data's bounds) instead of ``sampling_bounds``."""
    sampling_bounds: tuple[float, ...] = (0.0, 1.0, 0.0, 1.0, 0.0, 1.0)
    """World box ``(xmin, xmax, ymin, ymax, zmin, zmax)`` whose corners are the image's corner points."""
    clamp_to_data_range: bool = True
    """Keep the model's answers inside the value range of its training data (``Field.clamp_output``)."""


def _values(args, n: int, what: str) -> tuple:
    """Setter arguments given either as ``n`` numbers or as one sequence of ``n``."""
    if len(args) == 1 and hasattr(args[0], "__len__") and not isinstance(args[0], str):
        args = tuple(args[0])
    if len(args) != n:
        raise TypeError(f"{what} takes {n} values, got {len(args)}: {args!r}.")
    return tuple(args)


class NeuralVolumeSource(NeuralAlgorithmBase):
    """A ``vtkImageData`` source that samples a neural volume (a model file) on a regular grid.

    Output: one float32 point array named after the model's array (``NeuralVolume.array_name``), in data
    units (inside the training data's value range unless ``ClampToDataRange`` is off), plus field data
    ``CompressionRatio`` and ``TrainingPSNR`` (from the model's provenance, when known).
    Settings changes re-execute; an unchanged pipeline re-uses the loaded model (cached by path, file state
    and device) and the last evaluated extent.
    """

    def __init__(self):
        NeuralAlgorithmBase.__init__(self, SourceConfig(), nInputPorts=0, nOutputPorts=1, outputType="vtkImageData")
        self._plan = None  # (model, model key, geometry) from the last RequestInformation, None after an error
        self._info_error = None  # the problem RequestInformation found, reported by RequestData
        self._last = None  # (request key, vtk array) of the last evaluation
        self.evaluations = 0
        """How many times the model was evaluated (tests use it to check that nothing runs twice)."""
        self.evaluated_points = 0
        self.loaded_bricks: list[int] | None = None
        """The ensemble bricks the last evaluation's model held (``None`` for a model that is not an ensemble)."""

    # ---- settings (ParaView properties call these) ---------------------------------------------
    def SetFileName(self, file_name):
        self._set(file_name=str(file_name or ""))

    def GetFileName(self):
        return self._config.file_name

    def SetSamplingDimensions(self, *dims):
        self._set(sampling_dimensions=tuple(int(d) for d in _values(dims, 3, "SamplingDimensions")))

    def GetSamplingDimensions(self):
        return self._config.sampling_dimensions

    def SetUseModelBounds(self, flag):
        self._set(use_model_bounds=bool(flag))

    def GetUseModelBounds(self):
        return int(self._config.use_model_bounds)

    def SetSamplingBounds(self, *bounds):
        self._set(sampling_bounds=tuple(float(b) for b in _values(bounds, 6, "SamplingBounds")))

    def GetSamplingBounds(self):
        return self._config.sampling_bounds

    def SetSamplingOrigin(self, *origin):
        """Move the sampling box to start at ``origin`` keeping its size (ParaView's box widget position)."""
        o = tuple(float(v) for v in _values(origin, 3, "SamplingOrigin"))
        b = self._config.sampling_bounds
        self._set(sampling_bounds=tuple(v for a in range(3) for v in (o[a], o[a] + b[2 * a + 1] - b[2 * a])))

    def GetSamplingOrigin(self):
        b = self._config.sampling_bounds
        return (b[0], b[2], b[4])

    def SetSamplingSize(self, *size):
        """Resize the sampling box from its origin (ParaView's box widget scale)."""
        s = tuple(float(v) for v in _values(size, 3, "SamplingSize"))
        b = self._config.sampling_bounds
        self._set(sampling_bounds=tuple(v for a in range(3) for v in (b[2 * a], b[2 * a] + s[a])))

    def GetSamplingSize(self):
        b = self._config.sampling_bounds
        return (b[1] - b[0], b[3] - b[2], b[5] - b[4])

    def SetClampToDataRange(self, flag):
        self._set(clamp_to_data_range=bool(flag))

    def GetClampToDataRange(self):
        return int(self._config.clamp_to_data_range)

    def GetTimestepValues(self):
        """The time steps the last information pass published (``UpdateInformation``): a time-varying model's,
        ``()`` for a static one (ParaView's ``TimestepValues``)."""
        info = self.GetOutputInformation(0)
        return tuple(info.Get(SDDP.TIME_STEPS())) if info.Has(SDDP.TIME_STEPS()) else ()

    def GetTimeRange(self):
        """``(first, last)`` of :meth:`GetTimestepValues`, ``()`` for a static model (ParaView's ``TimeRange``)."""
        info = self.GetOutputInformation(0)
        return tuple(info.Get(SDDP.TIME_RANGE())) if info.Has(SDDP.TIME_RANGE()) else ()

    # ---- pipeline ------------------------------------------------------------------------------
    def output_geometry(self, model) -> ImageGeometry:
        """The output image's geometry for the current settings (validated)."""
        c = self._config
        dims = check_dims(c.sampling_dimensions)
        if max(dims) > MAX_DIMENSION:
            raise ValueError(f"SamplingDimensions {tuple(dims)} exceed {MAX_DIMENSION} points per axis, the most "
                             f"a VTK image holds.")
        if c.use_model_bounds:
            bounds = model.bounds
        else:
            try:
                bounds = check_bounds(c.sampling_bounds)
            except ValueError as exc:
                raise ValueError(f"SamplingBounds {tuple(c.sampling_bounds)} are invalid: {exc}") from None
        return ImageGeometry.from_bounds(bounds, dims)

    def RequestInformation(self, request, inInfo, outInfo):
        info = outInfo.GetInformationObject(0)
        self._plan = None
        self._info_error = None
        try:
            c = self._config
            try:
                check_dims(c.sampling_dimensions)
            except ValueError:
                raise ValueError(f"SamplingDimensions must be three integers >= 1, got "
                                 f"{tuple(c.sampling_dimensions)}.") from None
            device, _ = self.checked_evaluation_settings()
            model, key = model_cache.load_description(c.file_name, device)
            geometry = self.output_geometry(model)
        except Exception as exc:
            # Reported by RequestData, which always follows when data is wanted: a GUI that only asks for
            # information (a freshly created source without a file yet) shows no error.
            self._info_error = exc
            info.Set(SDDP.WHOLE_EXTENT(), EMPTY_EXTENT, 6)
            publish_time_steps(info, None)
            return 1
        self._plan = (model, key, geometry)
        publish_time_steps(info, model.time_steps)
        info.Set(SDDP.WHOLE_EXTENT(), geometry.whole_extent, 6)
        info.Set(vtkDataObject.ORIGIN(), geometry.origin, 3)
        info.Set(vtkDataObject.SPACING(), geometry.spacing, 3)
        info.Set(vtkAlgorithm.CAN_PRODUCE_SUB_EXTENT(), 1)
        vtkDataObject.SetActiveAttributeInfo(info, vtkDataObject.FIELD_ASSOCIATION_POINTS,
                                             vtkDataSetAttributes.SCALARS, model.array_name, VTK_FLOAT, 1, -1)
        return 1

    def RequestData(self, request, inInfo, outInfo):
        output = vtkImageData.GetData(outInfo)
        info = outInfo.GetInformationObject(0)
        extent = tuple(info.Get(SDDP.UPDATE_EXTENT()))
        return self.guarded(output, lambda: self._produce(output, extent, requested_time(info)))

    def _produce(self, output, extent, time: float | None) -> None:
        """The model's values at the points of ``extent`` (and at ``time``, for a time-varying model) in
        ``output`` (re-used when nothing changed)."""
        if self._plan is None:  # RequestInformation found a problem: reported now, with an empty output
            problem, self._info_error = self._info_error, None
            if problem is not None:
                raise problem
            output.Initialize()
            return
        model, key, geometry = self._plan
        if any(extent[2 * a] > extent[2 * a + 1] for a in range(3)):
            output.Initialize()
            return
        c = self._config
        if model.is_time_varying:
            time = model.clamped_time(time)
            output.GetInformation().Set(vtkDataObject.DATA_TIME_STEP(), time)
        else:
            time = None  # a static model answers every time alike, as a source without TIME_STEPS does
            output.GetInformation().Remove(vtkDataObject.DATA_TIME_STEP())
        request_key = (key, geometry, extent, c.clamp_to_data_range, time)
        if self._last is not None and self._last[0] == request_key:
            output.SetExtent(extent)
            output.SetOrigin(geometry.origin)
            output.SetSpacing(geometry.spacing)
            output.GetPointData().SetScalars(self._last[1])
        else:
            points = math.prod(extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3))
            check_allocation(BYTES_PER_POINT * points, f"SamplingDimensions {tuple(c.sampling_dimensions)}"
                             + ("" if extent == geometry.whole_extent else f" (the piece {extent})"))
            model = self._model_for(model, geometry, extent)
            at_time = model.at_time(time)  # the model itself when static; else a static frame at ``time``
            with _clamping(at_time.field, c.clamp_to_data_range):
                values = at_time.resample(geometry, extent=extent, chunk_size=c.chunk_size)
            image_from_array(values, geometry, model.array_name, extent=extent, image=output)
            self.evaluations += 1
            self.evaluated_points += values.size
            self._last = (request_key, output.GetPointData().GetScalars())
        fields = {"CompressionRatio": model.compression_ratio}
        if self.loaded_bricks is not None:
            fields["LoadedBricks"] = len(self.loaded_bricks)
        if "psnr" in model.training:
            fields["TrainingPSNR"] = float(model.training["psnr"])
        add_field_values(output, fields)

    def _model_for(self, described, geometry: ImageGeometry, extent):
        """The model that evaluates ``extent`` of ``geometry``: ``described`` itself, or for an ensemble the
        bricks the extent touches (its points' box in the training grid, widened to whole grid points)."""
        field = described.field
        if not isinstance(field, EnsembleField):
            self.loaded_bricks = None
            return described
        model, _ = model_cache.load_cached(self._config.file_name, self._config.device,
                                           extent=training_extent(described.geometry, geometry, extent))
        self.loaded_bricks = list(model.field.present)
        return model


def training_extent(training: ImageGeometry, geometry: ImageGeometry, extent) -> tuple[int, ...]:
    """The smallest extent of the ``training`` grid whose box holds the points of ``extent`` of ``geometry``,
    clamped to the training grid (points outside the model's bounds are evaluated clamped to it, so by the
    bricks at its faces). Rounded outwards with a margin of a millionth of a voxel: a point on a grid plane
    counts for it."""
    out = []
    for a in range(3):
        n = training.dims[a]
        if n < 2:
            out += [0, 0]
            continue
        step = training.spacing[a]
        lo = (geometry.origin[a] + extent[2 * a] * geometry.spacing[a] - training.origin[a]) / step
        hi = (geometry.origin[a] + extent[2 * a + 1] * geometry.spacing[a] - training.origin[a]) / step
        lo, hi = min(lo, hi), max(lo, hi)
        i0 = min(n - 1, max(0, math.floor(lo + 1e-6)))
        i1 = min(n - 1, max(0, math.ceil(hi - 1e-6)))
        out += [i0, max(i0, i1)]
    return tuple(out)


@contextlib.contextmanager
def _clamping(field, clamp: bool):
    """``field.clamp_output`` set to ``clamp`` for one evaluation: the model is shared (``model_cache``) with
    other sources and filters, whose own settings must not change."""
    before = field.clamp_output
    field.clamp_output = clamp
    try:
        yield
    finally:
        field.clamp_output = before
