"""The behaviour every neural-volume VTK algorithm shares: config-backed setters and clean error reporting.

Setters copy their value into a frozen dataclass and call ``Modified()`` only when something changed, so an
unchanged pipeline never re-executes. A bad input (missing model, zero dimensions, inverted bounds, ...)
becomes exactly one ``ErrorEvent`` whose text is one sentence naming the algorithm, the parameter and the
value; the output stays empty and the request still returns 1. Raising instead would print the Python
traceback plus the executive's multi-line dump of the request ("returned failure for request ..."), which
is two errors and much noise for one user mistake. Unexpected exceptions (bugs) keep their traceback.
"""

from __future__ import annotations

import dataclasses
import traceback

from vtkmodules.util.vtkAlgorithm import VTKPythonAlgorithmBase
from vtkmodules.vtkCommonCore import vtkCommand, vtkOutputWindow

# Exceptions that mean "the input or a setting is wrong": reported as their message alone.
USER_ERRORS = (ValueError, OSError, ImportError, MemoryError)


class NeuralAlgorithmBase(VTKPythonAlgorithmBase):
    """A ``VTKPythonAlgorithmBase`` whose settings live in ``self._config`` (a frozen dataclass)."""

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
