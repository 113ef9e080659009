"""VTK's own volume rendering (PyPI VTK wheel, headless through EGL) as the reference our renderer is compared with."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import vtkmodules.vtkRenderingOpenGL2  # noqa: E402,F401  (registers the OpenGL factories)
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: E402,F401
from vtkmodules.util import numpy_support  # noqa: E402
from vtkmodules.vtkRenderingCore import (vtkRenderer, vtkRenderWindow, vtkVolume,  # noqa: E402
                                         vtkWindowToImageFilter)
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper  # noqa: E402
from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkOpenGLGPUVolumeRayCastMapper  # noqa: E402

from paraview_plugin.neural_volume_mapper import volume_property_from_tf  # noqa: E402
from paraview_plugin.vtk_image import image_from_array  # noqa: E402
from srn_core.render import Camera  # noqa: E402

BACKGROUND = (0.1, 0.1, 0.2)


def set_vtk_camera(vtk_camera, camera: Camera) -> None:
    vtk_camera.SetPosition(*camera.position)
    vtk_camera.SetFocalPoint(*camera.focal_point)
    vtk_camera.SetViewUp(*camera.view_up)
    vtk_camera.SetViewAngle(camera.view_angle)
    vtk_camera.SetParallelProjection(camera.parallel_projection)
    vtk_camera.SetParallelScale(camera.parallel_scale)


def grab(window, width, height) -> np.ndarray:
    """The window's RGB pixels, row 0 at the top."""
    w2i = vtkWindowToImageFilter()
    w2i.SetInput(window)
    w2i.SetInputBufferTypeToRGB()
    w2i.ReadFrontBufferOff()
    w2i.Update()
    px = numpy_support.vtk_to_numpy(w2i.GetOutput().GetPointData().GetScalars()).reshape(height, width, 3)
    return px[::-1].copy()


def window(width, height):
    ren = vtkRenderer()
    ren.SetBackground(*BACKGROUND)
    win = vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.AddRenderer(ren)
    win.SetSize(width, height)
    return ren, win


def vtk_render(values, geometry, tf, camera, width, height, mapper="gpu", step_world=None, geometry_actor=None,
               repeat=1):
    """VTK's own render of raw data ``values`` (and an optional opaque actor): RGB uint8 ``(H, W, 3)``."""
    ren, win = window(width, height)
    m = vtkOpenGLGPUVolumeRayCastMapper() if mapper == "gpu" else vtkFixedPointVolumeRayCastMapper()
    m.SetInputData(image_from_array(values, geometry, "values"))
    m.SetAutoAdjustSampleDistances(0)
    m.SetSampleDistance(step_world or min(geometry.spacing))  # world units; VTK's default of 1.0 is wrong here
    if mapper != "gpu":
        m.SetInteractiveSampleDistance(step_world or min(geometry.spacing))
        m.SetImageSampleDistance(1.0)
    volume = vtkVolume()
    volume.SetMapper(m)
    volume.SetProperty(volume_property_from_tf(tf))
    ren.AddVolume(volume)
    if geometry_actor is not None:
        ren.AddActor(geometry_actor)
    set_vtk_camera(ren.GetActiveCamera(), camera)
    ren.ResetCameraClippingRange()
    for _ in range(repeat):
        win.Render()
    return grab(win, width, height)
