"""Render a neural volume in an ordinary VTK scene, next to opaque geometry, and save a PNG.

    .venv/bin/python examples/render_vtk.py model.srn out.png [--preset "Cool to Warm"] [--size 512 512]
    .venv/bin/python examples/render_vtk.py model.srn --interactive    # needs a display: orbit with the mouse

The model is drawn by ``NeuralVolumeMapper`` with a ``vtkVolumeProperty`` built from a preset and the
renderer's active camera; a box cuts through the volume to show rays stopping at opaque geometry. In the
default cache mode the model is decoded into a brick cache once and VTK's ray caster draws it; interactively,
the first frame is a coarse preview refined right after, and orbiting costs what raw data costs. With
``--mode direct`` the network is ray marched every frame (every 2nd-8th ray while the mouse moves).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vtkmodules.vtkInteractionStyle  # noqa: E402,F401
import vtkmodules.vtkRenderingOpenGL2  # noqa: E402,F401
from vtkmodules.vtkFiltersSources import vtkCubeSource  # noqa: E402
from vtkmodules.vtkIOImage import vtkPNGWriter  # noqa: E402
from vtkmodules.vtkRenderingCore import (vtkActor, vtkPolyDataMapper, vtkRenderer, vtkRenderWindow,  # noqa: E402
                                         vtkRenderWindowInteractor, vtkWindowToImageFilter)

from paraview_plugin.neural_volume_mapper import NeuralVolumeMapper, volume_property_from_tf  # noqa: E402
from srn_core.loading import load_model  # noqa: E402
from srn_core.render import TransferFunction  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("output", nargs="?", default="neural_vtk.png")
    ap.add_argument("--preset", default="Cool to Warm")
    ap.add_argument("--size", nargs=2, type=int, default=(512, 512))
    ap.add_argument("--interactive", action="store_true")
    ap.add_argument("--mode", choices=("cache", "direct"), default="cache", help="render mode (default cache)")
    args = ap.parse_args(argv)

    model = load_model(args.model)
    tf = TransferFunction.from_preset(args.preset, model.value_range)
    prop = volume_property_from_tf(tf, unit_distance=min(model.geometry.spacing))

    renderer = vtkRenderer()
    renderer.SetBackground(0.32, 0.34, 0.43)
    window = vtkRenderWindow()
    window.AddRenderer(renderer)
    window.SetSize(*args.size)
    if not args.interactive:
        window.SetOffScreenRendering(1)

    b = model.bounds
    box = vtkCubeSource()
    box.SetBounds(b[0] + 0.45 * (b[1] - b[0]), b[0] + 0.55 * (b[1] - b[0]), b[2] - 0.1 * (b[3] - b[2]),
                  b[3] + 0.1 * (b[3] - b[2]), b[4], b[5])
    box_mapper = vtkPolyDataMapper()
    box_mapper.SetInputConnection(box.GetOutputPort())
    box_actor = vtkActor()
    box_actor.SetMapper(box_mapper)
    box_actor.GetProperty().SetColor(0.9, 0.85, 0.3)
    renderer.AddActor(box_actor)

    mapper = NeuralVolumeMapper(model)
    mapper.SetRenderMode(args.mode)
    mapper.SetVolumeProperty(prop)
    mapper.AddToRenderer(renderer)

    renderer.ResetCamera(*b)
    camera = renderer.GetActiveCamera()
    camera.Azimuth(30)
    camera.Elevation(20)
    camera.OrthogonalizeViewUp()
    renderer.ResetCameraClippingRange()

    if args.interactive:
        interactor = vtkRenderWindowInteractor()
        interactor.SetRenderWindow(window)
        interactor.SetDesiredUpdateRate(5.0)  # frames per second asked for while the mouse moves
        interactor.Initialize()
        mapper.SetProgressive(True)  # the event loop runs the refinement timer: a preview first, then detail
        window.Render()
        interactor.Start()
        return 0
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    writer = vtkPNGWriter()
    writer.SetFileName(args.output)
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    if args.mode == "direct":
        s = mapper.last_stats
        print(f"{args.output}: {s.samples:,} samples in {s.seconds:.2f} s")
    else:
        f = mapper.last_cache_frame
        print(f"{args.output}: level {f.lod}, {f.points_decoded:,} points decoded in {f.prepare_seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
