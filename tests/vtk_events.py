"""Watching VTK's error and warning channels in tests of the VTK algorithms."""

from __future__ import annotations

import pytest
from vtkmodules.vtkCommonCore import vtkOutputWindow, vtkStringOutputWindow


@pytest.fixture(autouse=True)
def no_unobserved_vtk_errors():
    """Fail a test if any VTK error or warning reached the output window (observed events do not)."""
    window = vtkStringOutputWindow()
    previous = vtkOutputWindow.GetInstance()
    vtkOutputWindow.SetInstance(window)
    try:
        yield window
    finally:
        vtkOutputWindow.SetInstance(previous)
    text = window.GetOutput().lower()
    assert "error" not in text and "warning" not in text, window.GetOutput()


class Events:
    """Collects a VTK object's ErrorEvent and WarningEvent messages (observing also silences the console)."""

    def __init__(self, obj):
        self.errors, self.warnings = [], []
        for event, sink in (("ErrorEvent", self.errors), ("WarningEvent", self.warnings)):
            def observer(o, e, data=None, sink=sink):
                sink.append(data)
            observer.CallDataType = "string0"
            obj.AddObserver(event, observer)


def field_value(image, name):
    arr = image.GetFieldData().GetAbstractArray(name)
    return arr.GetValue(0)
