"""``NeuralVolumeError``: where and by how much a reconstruction differs from the reference data.

The seed paper (APMGSRN) shows reconstructions next to renderings of their error; this filter produces that
error volume. Input 0 is the reference image; the reconstruction is either a second image on input 1 (for
example a ``NeuralVolumeSource`` sampled on the same grid) or, when input 1 is not connected, the model in
``ModelFileName`` evaluated at the reference's points. The output has the reference's geometry with

* ``AbsoluteError`` = ``|reconstruction - reference|`` (active scalars) and
* ``SignedError`` = ``reconstruction - reference``

at the reference array's association (point or cell), and field data ``PSNR`` (dB), ``MaxError``, ``MSE``,
``SSIM`` and ``DataRange`` computed by :mod:`srn_core.metrics` (the same numbers ``srn eval`` prints). When the
model in ``ModelFileName`` is compared, the field data also hold its file's ``CompressionRatio`` (the float32
training data's bytes over the file's bytes, as ``srn eval`` prints it), ``FileBytes`` and
``NumberOfParameters``, and ``ModelFileStorage`` says how it stores its tensors (e.g. "grids 8-bit + lzma,
decoder 12-bit" or "float32"). Without
scikit-image (as in a bare ParaView Python) ``SSIM`` is NaN and a warning says why.

Time: the reference is compared at the time it holds (its ``DATA_TIME_STEP``: a temporal reader's step for the
requested ``UPDATE_TIME_STEP``), or else at the requested time. A time-varying model in ``ModelFileName`` is
evaluated at that same time (``ModelTime`` in the field data; a time outside its range is clamped to it with a
warning), and its PSNR and SSIM are measured against the value range of the whole series it learned (the
model's value range, reported as ``DataRange``), which is what ``srn eval`` and
:func:`srn_core.series.series_psnr` report for each step. The output carries the compared time as its
``DATA_TIME_STEP``.

In parallel (``pvbatch``/``pvserver`` under MPI) each rank compares only its own piece, and the ranks combine
their sums (:class:`srn_core.metrics.ErrorSums`, a point that two pieces share counted once), so ``PSNR``,
``MSE``, ``MaxError`` and ``DataRange`` are those of the whole volume on every rank. ``SSIM`` is the mean of the
pieces' SSIMs weighted by their points: its windows do not cross piece boundaries, so it can differ slightly
from the serial value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkImageData
from vtkmodules.vtkCommonExecutionModel import vtkAlgorithm, vtkStreamingDemandDrivenPipeline as SDDP

from srn_core import metrics

from . import model_cache, parallel
from ._algorithm import EvaluationSettings, NeuralAlgorithmBase, data_time, requested_time
from .vtk_image import add_field_values, array_names, attach_array, selected_array, selected_volume, volume_from_image


@dataclass(frozen=True)
class ErrorSettings(EvaluationSettings):
    model_file_name: str = ""
    """Model evaluated at the reference's points when input 1 is not connected."""


class NeuralVolumeError(NeuralAlgorithmBase):
    """Error volume and error metrics of a reconstruction against a reference (see the module docstring).

    Arrays: ``SetInputArrayToProcess(0, 0, ...)`` picks the reference array (default: active scalars),
    ``SetInputArrayToProcess(1, 1, ...)`` the reconstruction's array on input 1 (default: the array with the
    reference's name, else the active scalars).
    """

    def __init__(self):
        NeuralAlgorithmBase.__init__(self, ErrorSettings(), nInputPorts=2, inputType="vtkImageData",
                                     nOutputPorts=1, outputType="vtkImageData")
        self.metrics: dict[str, float] = {}
        """The field values of the last execution (with the model file's when ``ModelFileName`` was used)."""

    def FillInputPortInformation(self, port, info):
        info.Set(vtkAlgorithm.INPUT_REQUIRED_DATA_TYPE(), "vtkImageData")
        if port == 1:
            info.Set(vtkAlgorithm.INPUT_IS_OPTIONAL(), 1)
        return 1

    # ---- settings ------------------------------------------------------------------------------
    def SetModelFileName(self, path):
        self._set(model_file_name=str(path or ""))

    def GetModelFileName(self):
        return self._config.model_file_name

    # ---- pipeline ------------------------------------------------------------------------------
    def RequestUpdateExtent(self, request, inInfo, outInfo):
        """Ask the reconstruction for the reference's extent when both have the same whole extent.

        Otherwise ask for all of it, so that a grid mismatch reaches RequestData (one clear error) instead of
        the executive rejecting an extent outside the input's whole extent.
        """
        extent = outInfo.GetInformationObject(0).Get(SDDP.UPDATE_EXTENT())
        reference = inInfo[0].GetInformationObject(0)
        reference.Set(SDDP.UPDATE_EXTENT(), extent, 6)
        if inInfo[1].GetNumberOfInformationObjects() > 0:
            other = inInfo[1].GetInformationObject(0)
            same = tuple(other.Get(SDDP.WHOLE_EXTENT())) == tuple(reference.Get(SDDP.WHOLE_EXTENT()))
            other.Set(SDDP.UPDATE_EXTENT(), extent if same else other.Get(SDDP.WHOLE_EXTENT()), 6)
        return 1

    def RequestData(self, request, inInfo, outInfo):
        output = vtkImageData.GetData(outInfo)
        output.Initialize()
        self.metrics = {}
        controller = parallel.piece_controller(outInfo)
        sums, ssim, failure, file_values, series_range = metrics.ErrorSums(), math.nan, None, {}, None
        image = vtkImageData.GetData(inInfo[0])
        # The reference's own time (a temporal reader's step), else the time asked for, else none at all.
        time = data_time(image)
        if time is None:
            time = requested_time(outInfo.GetInformationObject(0))
        # Under MPI a rank may receive an empty piece (more ranks than slabs): it contributes nothing.
        empty_piece = controller is not None and (image is None or image.GetNumberOfPoints() == 0)
        try:
            self.checked_evaluation_settings()
            if not empty_piece:
                if image is None or image.GetNumberOfPoints() == 0:
                    raise ValueError("the reference (input 0) is empty.")
                reference, used = selected_volume(self, image, mask_nonfinite=True)
                recon, file_values, series_range = self._reconstruction(inInfo, reference, used, time)
                ref = reference.values
                signed = recon.astype(np.float32) - ref
                mask = reference.finite_mask
        except Exception as exc:  # reported below, once the other ranks have been told
            failure = exc
        # Under MPI every rank takes part in each exchange, also one that failed, or the others would wait.
        extents = None
        if controller is not None:
            mine = image.GetExtent() if failure is None and not empty_piece else (0, -1, 0, -1, 0, -1)
            extents = parallel.all_extents(controller, mine)
        if failure is None and not empty_piece:
            try:
                if extents is not None:  # count each value once across the ranks
                    owned = _owned(extents, controller.GetLocalProcessId(), used, ref.shape)
                    mask = owned if mask is None else mask & owned
                sums = metrics.ErrorSums.of(ref, recon, mask=mask)
                if sums.count:
                    ssim = self._ssim(ref, recon, mask, series_range)
            except Exception as exc:
                failure = exc
        failed_elsewhere = False
        if controller is not None:
            sums, ssim, series_range, failed_elsewhere = _combine(controller, sums, ssim, series_range,
                                                                  failure is not None)

        def produce():
            if failed_elsewhere:
                raise ValueError("another MPI rank failed (see its error), so there are no whole-volume metrics.")
            data_range = sums.data_range if series_range is None else series_range
            values = {"PSNR": _psnr_db(data_range, sums.mse), "MaxError": sums.max_abs, "MSE": sums.mse,
                      "SSIM": ssim, "DataRange": data_range, **file_values}
            if not empty_piece:
                output.CopyStructure(image)
                attach_array(output, signed, "SignedError", used, active=False)
                attach_array(output, np.abs(signed), "AbsoluteError", used, active=True)
            add_field_values(output, values)
            if time is not None:
                output.GetInformation().Set(vtkDataObject.DATA_TIME_STEP(), time)
            self.metrics = values

        return self.guarded(output, produce, failure)

    def _reconstruction(self, inInfo, reference, association: str,
                        time: float | None) -> tuple[np.ndarray, dict, float | None]:
        """The reconstruction's values on the reference's grid, shaped like ``reference.values``, the model
        file's field values (``{}`` for a reconstruction on input 1) and, for a time-varying model, the value
        range of its series (the PSNR's data range; else ``None``: the reference's own)."""
        other = vtkImageData.GetData(inInfo[1]) if inInfo[1].GetNumberOfInformationObjects() > 0 else None
        if other is not None:
            name, assoc = selected_array(self, 1)
            if name is None:
                names = array_names(other)
                if reference.name in names[association]:
                    name, assoc = reference.name, association
            volume = volume_from_image(other, name, mask_nonfinite=True, association=assoc)
            g, h = reference.geometry, volume.geometry
            if g.dims != h.dims or not (np.allclose(g.origin, h.origin, rtol=1e-6, atol=1e-9)
                                        and np.allclose(g.spacing, h.spacing, rtol=1e-6, atol=1e-12)):
                raise ValueError(f"input 1 ({h.dims[0]}x{h.dims[1]}x{h.dims[2]} points, origin {h.origin}, spacing "
                                 f"{h.spacing}) is not on the reference's grid ({g.dims[0]}x{g.dims[1]}x{g.dims[2]}, "
                                 f"origin {g.origin}, spacing {g.spacing}); resample it first.")
            return volume.values, {}, None
        if not self._config.model_file_name:
            raise ValueError("nothing to compare with: connect a reconstruction to input 1 or set ModelFileName.")
        model, _ = model_cache.load_cached(self._config.model_file_name, self._config.device)
        file_values = {"CompressionRatio": model.compression_ratio, "FileBytes": float(model.file_bytes or 0),
                       "NumberOfParameters": float(model.num_parameters),
                       "ModelFileStorage": model.storage_description}
        if not model.is_time_varying:
            return model.resample(reference.geometry, chunk_size=self._config.chunk_size), file_values, None
        at = model.clamped_time(time)
        lo, hi = model.time_range
        if time is None:
            self.warning(f"neither the reference nor the request has a time; the time-varying model is compared "
                         f"at its first time step, t={at:g}.")
        elif at != time:
            self.warning(f"the reference's time {time:g} is outside the model's time range [{lo:g}, {hi:g}]; "
                         f"compared with the model at t={at:g}.")
        file_values["ModelTime"] = at
        low, high = model.value_range
        values = model.resample(reference.geometry, chunk_size=self._config.chunk_size, time=at)
        return values, file_values, high - low

    def _ssim(self, ref, recon, mask, data_range: float | None = None) -> float:
        try:
            return metrics.ssim(ref, recon, data_range=data_range, mask=mask)
        except ImportError as exc:
            self.warning(f"SSIM is NaN: {exc}.")
        except ValueError as exc:  # too thin for a window
            self.warning(f"SSIM is NaN: {exc}")
        return math.nan


# ---- parallel pieces ---------------------------------------------------------------------------------
def _owned(extents, rank: int, association: str, shape) -> np.ndarray:
    """Boolean ``shape`` mask of the values of ``rank``'s piece that it counts: those no lower rank's piece holds.

    Point pieces usually share a layer with their neighbours (VTK splits cells) and cell pieces do not; deciding
    by the pieces' actual extents makes every value count exactly once either way.
    """
    own = extents[rank]
    index = []
    for a in range(3):  # x, y, z: the indices of the piece's values along each axis
        i0, i1 = int(own[2 * a]), int(own[2 * a + 1])
        index.append(np.arange(i0, i1 + 1) if association == "point" else np.arange(i0, max(i1, i0 + 1)))

    def inside(extent) -> np.ndarray:
        axes = []
        for a in range(3):
            lo, hi = int(extent[2 * a]), int(extent[2 * a + 1])
            if association == "cell":  # cell i spans points i..i+1; a flat axis has one cell
                hi = max(hi - 1, lo)
            axes.append((index[a] >= lo) & (index[a] <= hi))
        return axes[2][:, None, None] & axes[1][None, :, None] & axes[0][None, None, :]

    mask = np.ones(tuple(len(i) for i in index[::-1]), dtype=bool)
    for other in range(rank):
        if not parallel.is_empty_extent(extents[other]):
            mask &= ~inside(extents[other])
    if mask.shape != tuple(shape):
        raise ValueError(f"the piece's values are shaped {tuple(shape)}, not as its extent {tuple(own)} "
                         f"implies ({mask.shape}).")
    return mask


def _combine(controller, sums: metrics.ErrorSums, ssim: float, series_range: float | None, failed: bool):
    """All ranks' sums combined: ``(ErrorSums of the whole, point-weighted SSIM, the series' value range (from
    any rank that loaded the model; ``None`` for a static one), whether any rank failed)``."""
    weight = sums.count if math.isfinite(ssim) else 0.0
    added = parallel.all_reduce(controller, sums.sums() + [ssim * weight if weight else 0.0, weight, float(failed)])
    largest = parallel.all_reduce(controller, sums.maxima() + [-1.0 if series_range is None else series_range],
                                  "max")
    whole = metrics.ErrorSums.from_reduced(added[:2], largest[:3])
    return (whole, (added[2] / added[3] if added[3] > 0 else math.nan), None if largest[3] < 0 else largest[3],
            added[4] > 0)


def _psnr_db(data_range: float, mse: float) -> float:
    """``20 log10(range) - 10 log10(MSE)`` with :func:`srn_core.metrics.psnr`'s edge cases (identical: inf;
    a zero range or a non-finite error: -inf)."""
    if mse == 0.0:
        return math.inf
    if data_range == 0.0 or not math.isfinite(mse):
        return -math.inf
    return 20.0 * math.log10(data_range) - 10.0 * math.log10(mse)
