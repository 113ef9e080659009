"""The behaviour every neural-volume VTK algorithm shares: config-backed setters, the settings of where and in
what batches a model runs (``Device``, ``ChunkSize``), and clean error reporting.

Setters copy their value into a frozen dataclass and call ``Modified()`` only when something changed, so an
unchanged pipeline never re-executes. A bad input (missing model, zero dimensions, inverted bounds, ...)
becomes exactly one ``ErrorEvent`` whose text is one sentence naming the algorithm, the parameter and the
value; the output stays empty and the request still returns 1 (:meth:`NeuralAlgorithmBase.guarded`). Raising
instead would print the Python traceback plus the executive's multi-line dump of the request ("returned failure
for request ..."), which is two errors and much noise for one user mistake. Unexpected exceptions (bugs) keep
their traceback.
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass

from vtkmodules.util.vtkAlgorithm import VTKPythonAlgorithmBase
from vtkmodules.vtkCommonCore import vtkCommand, vtkOutputWindow
from vtkmodules.vtkCommonDataModel import vtkDataObject
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as SDDP

from srn_core.evaluate import DEFAULT_CHUNK_SIZE

# Exceptions that mean "the input or a setting is wrong": reported as their message alone.
USER_ERRORS = (ValueError, OSError, ImportError, MemoryError)


@dataclass(frozen=True)
class EvaluationSettings:
    """The settings every algorithm has (the base of each one's settings dataclass)."""

    device: str = "auto"
    """Torch device of the model: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Points evaluated per batch: bounds memory whatever the image size."""


# ---- time in the pipeline (VTK's keys, shared by the source and the filters) ------------------------------
def publish_time_steps(out_info, times) -> None:
    """Announce ``times`` (increasing) as the output's ``TIME_STEPS`` and their ``TIME_RANGE``, or, for
    ``None``, remove both: a static model that replaces a time-varying one must not leave stale steps behind
    (ParaView's animation would keep offering them)."""
    if times:
        out_info.Set(SDDP.TIME_STEPS(), [float(t) for t in times], len(times))
        out_info.Set(SDDP.TIME_RANGE(), [float(times[0]), float(times[-1])], 2)
    else:
        out_info.Remove(SDDP.TIME_STEPS())
        out_info.Remove(SDDP.TIME_RANGE())


def requested_time(out_info) -> float | None:
    """The time the pipeline asks for (``UPDATE_TIME_STEP``), or ``None`` when a request names no time."""
    return float(out_info.Get(SDDP.UPDATE_TIME_STEP())) if out_info.Has(SDDP.UPDATE_TIME_STEP()) else None


def input_time_steps(in_info) -> list[float] | None:
    """The ``TIME_STEPS`` an input announces (``None`` without any)."""
    if in_info is None or not in_info.Has(SDDP.TIME_STEPS()):
        return None
    steps = in_info.Get(SDDP.TIME_STEPS())
    return [float(t) for t in steps] if steps else None


def data_time(data) -> float | None:
    """The time a data object holds (its ``DATA_TIME_STEP``), or ``None``."""
    if data is None or not data.GetInformation().Has(vtkDataObject.DATA_TIME_STEP()):
        return None
    return float(data.GetInformation().Get(vtkDataObject.DATA_TIME_STEP()))


class NeuralAlgorithmBase(VTKPythonAlgorithmBase):
    """A ``VTKPythonAlgorithmBase`` whose settings live in ``self._config`` (a frozen :class:`EvaluationSettings`)."""

    def __init__(self, config, **kwargs):
        VTKPythonAlgorithmBase.__init__(self, **kwargs)
        self._config = config
        self.last_error: str | None = None
        """The last error reported by this algorithm (``None`` after a successful execution)."""

    # ---- settings ------------------------------------------------------------------------------
    def _set(self, **changes) -> None:
        """Replace config entries; ``Modified()`` only when a value actually changes."""
        new = dataclasses.replace(self._config, **changes)
        if new != self._config:
            self._config = new
            self.Modified()

    @property
    def config(self):
        """The current settings (a frozen dataclass; change them through the ``Set*`` methods)."""
        return self._config

    def SetDevice(self, device):
        self._set(device=str(device or "auto"))

    def GetDevice(self):
        return self._config.device

    def SetChunkSize(self, chunk_size):
        self._set(chunk_size=int(chunk_size))

    def GetChunkSize(self):
        return self._config.chunk_size

    def checked_evaluation_settings(self) -> tuple[str, int]:
        """``(device, chunk size)`` once both are known to work; else one error naming ``Device`` or ``ChunkSize``.

        Checked before any model is loaded or trained, so a typo costs nothing and reads as a setting's mistake
        rather than torch's list of every device type it knows.
        """
        from srn_core.devices import resolve_device

        c = self._config
        if c.chunk_size < 1:
            raise ValueError(f"ChunkSize must be a positive integer, got {c.chunk_size!r}.")
        try:
            resolve_device(c.device)
        except RuntimeError:  # torch.device's own complaint about an unknown device type
            raise ValueError(f"Device {c.device!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from None
        except ValueError as exc:  # a device this machine does not have
            raise ValueError(f"Device {c.device!r} cannot be used: {exc}") from None
        return c.device, c.chunk_size

    def guarded(self, output, produce, failure: BaseException | None = None) -> int:
        """Run ``produce()``, which fills ``output``; on failure report one error and leave ``output`` empty.

        The tail of every ``RequestData``: it returns 1 either way, because a failed request would make the
        executive print its own multi-line error next to ours. ``failure`` is a problem found earlier (filters
        under MPI hold theirs until every rank has been told), reported instead of producing anything.
        """
        try:
            if failure is not None:
                raise failure
            produce()
        except Exception as exc:
            self.error(exc)
            output.Initialize()
            return 1
        self.last_error = None
        return 1

    # ---- errors and warnings -------------------------------------------------------------------
    def _report(self, event: int, kind: str, message: str) -> None:
        """Emit ``message`` like ``vtkErrorMacro``/``vtkWarningMacro``: to observers, else the output window."""
        if self.HasObserver(event):
            self.InvokeEvent(event, message)
        else:
            window = vtkOutputWindow.GetInstance()
            text = f"{kind}: {message}\n"
            (window.DisplayErrorText if kind == "ERROR" else window.DisplayWarningText)(text)

    def error(self, exc: BaseException | str) -> None:
        """Report one clear error for ``exc`` and remember it in :attr:`last_error`."""
        name = type(self).__name__
        if isinstance(exc, str):
            message = exc
        elif isinstance(exc, USER_ERRORS):
            message = str(exc) or type(exc).__name__
        else:  # a bug: keep the traceback so it can be fixed
            message = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        message = message if message.startswith(name) else f"{name}: {message}"
        self.last_error = message
        self._report(vtkCommand.ErrorEvent, "ERROR", message)

    def warning(self, message: str) -> None:
        """Report a warning (``WarningEvent`` or the output window)."""
        self._report(vtkCommand.WarningEvent, "WARNING", f"{type(self).__name__}: {message}")
