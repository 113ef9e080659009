"""Render a neural volume directly in a ParaView render view (pvpython, pvbatch, or the GUI as a macro).

The view keeps its own camera and the array keeps its own colour map and opacity function: this attaches a
``NeuralVolumeMapper`` (see ``paraview_plugin/neural_volume_mapper.py``) to the view's renderer, fed with the
live ``vtkColorTransferFunction`` / ``vtkPiecewiseFunction`` ParaView edits and the display's Scalar Opacity
Unit Distance, and hides the source's own representation. By default the mapper decodes the model into a
brick cache once (only where the colour map's opacity can see anything) and VTK's ray caster draws the cache:
moving the camera re-renders from the cache at the speed of raw data; an opacity edit decodes only bricks that
became visible. ``attach(mode="direct")`` ray marches the network every frame instead. Opaque geometry in the
view hides what lies behind the volume.

pvpython / pvbatch::

    from paraview.simple import *
    LoadPlugin(".../paraview_plugin/plugin/NeuralVolume.py", ns=globals())
    source = NeuralVolumeSource(FileName="brain.srn")
    display = Show(source); ColorBy(display, ("POINTS", "values")); display.SetRepresentationType("Volume")
    import sys; sys.path.insert(0, ".../examples"); import render_paraview
    render_paraview.attach(source)           # render_paraview.detach() goes back to ParaView's volume rendering
    SaveScreenshot("neural.png")

GUI: *Macros > Import new macro...* this file, select the Neural Volume Source, press the macro button: it
toggles the neural render of the active view on and off. Works in the builtin session (the GUI without a
remote server, pvpython, pvbatch with one rank); see docs/rendering.md for why and for the limits.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from paraview import simple  # noqa: E402
from vtkmodules.vtkRenderingCore import vtkVolumeProperty  # noqa: E402

from paraview_plugin import model_cache  # noqa: E402
from paraview_plugin.neural_volume_mapper import NeuralVolumeMapper  # noqa: E402


def _renderer(view):
    renderer = view.GetRenderer() if hasattr(view, "GetRenderer") else None
    if renderer is None:
        raise RuntimeError("the neural render needs a Render View in the builtin session (no remote server).")
    return renderer


def attach(source=None, view=None, array: str | None = None, sample_distance: float = 1.0,
           hide_source: bool = True, mode: str = "cache", cache_memory_mb: float | None = None) -> NeuralVolumeMapper:
    """Render the model of ``source`` (a Neural Volume Source; default: the active source) in ``view``.

    ``array`` names the colour map to use (default: the one the source's display is coloured by, else the
    model's array). ``sample_distance`` is in voxels of the model's training grid. ``mode`` is the mapper's
    render mode: ``"cache"`` (VTK's ray caster draws the model's decoded brick cache: rotating the view costs what
    rendering raw data costs) or ``"direct"`` (the network is ray marched every frame); ``cache_memory_mb`` bounds
    the cache (default 1024 MiB).
    """
    source = source or simple.GetActiveSource()
    view = view or simple.GetActiveViewOrCreate("RenderView")
    if source is None or not source.GetProperty("FileName"):
        raise ValueError("select a Neural Volume Source (a source with a model FileName) to render.")
    model, _ = model_cache.load_cached(source.FileName)
    display = simple.GetDisplayProperties(source, view)
    if array is None:
        colored = list(display.ColorArrayName) if display is not None else []
        array = colored[1] if len(colored) > 1 and colored[1] else model.array_name
    lut = simple.GetColorTransferFunction(array)
    pwf = simple.GetOpacityTransferFunction(array)
    prop = vtkVolumeProperty()
    prop.SetColor(lut.GetClientSideObject())  # the live objects ParaView edits: changes re-render
    prop.SetScalarOpacity(pwf.GetClientSideObject())
    unit = getattr(display, "ScalarOpacityUnitDistance", None) if display is not None else None
    prop.SetScalarOpacityUnitDistance(float(unit) if unit else min(model.geometry.spacing))
    prop.SetInterpolationTypeToLinear()
    if display is not None and getattr(display, "Shade", 0):
        prop.ShadeOn()
    renderer = _renderer(view)
    mapper = NeuralVolumeMapper.FindInRenderer(renderer) or NeuralVolumeMapper()
    mapper.SetRenderMode(mode)
    # In the GUI, Qt runs the interactor's timers: a cold cache shows a preview at once and refines right after.
    # pvpython's interactor has no running event loop, so a script's Render() must give the finished image.
    interactor = renderer.GetRenderWindow().GetInteractor() if renderer.GetRenderWindow() else None
    mapper.SetProgressive(interactor is not None and interactor.IsA("QVTKInteractor"))
    if cache_memory_mb is not None:
        mapper.SetCacheMemory(cache_memory_mb)
    mapper.SetModel(model)
    if model.is_time_varying:
        _follow_view_time(mapper, view, renderer)
    mapper.SetVolumeProperty(prop)
    mapper.SetSampleDistance(sample_distance)
    mapper.AddToRenderer(renderer)
    if hide_source and display is not None:
        simple.Hide(source, view)
    simple.Render(view)
    return mapper


def _follow_view_time(mapper: NeuralVolumeMapper, view, renderer) -> None:
    """Draw a time-varying model at the view's time (the animation toolbar's): read before every render, so the
    mapper decodes only when the time changed. One observer per renderer, however often ``attach`` runs."""
    previous = getattr(renderer, "_neural_time_observer", None)
    if previous is not None:
        renderer.RemoveObserver(previous)
    mapper.SetTime(float(view.ViewTime))
    renderer._neural_time_observer = renderer.AddObserver(
        "StartEvent", lambda caller, event: mapper.SetTime(float(view.ViewTime)))


def detach(view=None, source=None) -> bool:
    """Stop rendering neurally in ``view`` (and show ``source`` again, if given); True if something was attached."""
    view = view or simple.GetActiveView()
    mapper = NeuralVolumeMapper.FindInRenderer(_renderer(view)) if view is not None else None
    if mapper is not None:
        mapper.RemoveFromRenderer()
    if source is not None:
        simple.Show(source, view)
    if view is not None:
        simple.Render(view)
    return mapper is not None


def toggle(source=None, view=None) -> bool:
    """Attach if nothing is attached to the view, else detach (what the macro button does); True if attached."""
    view = view or simple.GetActiveViewOrCreate("RenderView")
    source = source or simple.GetActiveSource()
    if NeuralVolumeMapper.FindInRenderer(_renderer(view)) is not None:
        detach(view, source)
        return False
    attach(source, view)
    return True


if __name__ in ("__main__", "__vtkconsole__"):  # run as a script, or as a ParaView GUI macro
    toggle()
