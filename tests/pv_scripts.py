"""Writing and running ParaView scripts in tests: plugin loading lines, subprocess runs, reading what they wrote.

Shared by the tests that launch Debian's real pvpython / pvbatch / mpirun (``tests/paraview_plugin``, ``tests/xml``).
"""

from __future__ import annotations

import textwrap

import numpy as np
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkIOImage import vtkPNGReader
from vtkmodules.vtkIOXML import vtkXMLImageDataReader, vtkXMLPImageDataReader

import paraview_env
from paraview_plugin.vtk_image import image_from_array, write_vti

DIMS = (23, 17, 13)

LOAD = {
    "xml": "for name in ('NeuralVolumeSource', 'TrainNeuralVolume', 'NeuralVolumeError'):\n"
           "    LoadPlugin(os.path.join(XML_DIR, name + '.xml'), ns=globals())",
    "py": "LoadPlugin(PLUGIN_FILE, ns=globals())",
    "auto": "pass  # PV_PLUGIN_PATH loads the plugin at start-up",
}


def script(tmp_path, body: str, name: str = "script.py", load: str = "xml") -> str:
    """Write a ParaView script: imports, plugin loading, then ``body``; returns its path."""
    head = textwrap.dedent(f"""\
        import json, os, sys
        from paraview.simple import *
        XML_DIR = {str(paraview_env.XML_DIR)!r}
        PLUGIN_FILE = {str(paraview_env.PLUGIN_FILE)!r}
        OUT = {str(tmp_path)!r}
        """)
    path = tmp_path / name
    path.write_text(head + LOAD[load] + "\n" + textwrap.dedent(body))
    return str(path)


def run_ok(cmd, env, timeout=180):
    result = paraview_env.run(cmd, env, timeout=timeout)
    assert result.returncode == 0, f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    return result


def write_analytic(path, volume, values=None):
    """``volume`` (or ``values`` on its grid) as a VTI file whose point array is named "density"; returns ``path``."""
    write_vti(path, image_from_array(volume.values if values is None else values, volume.geometry, "density"))
    return path


def read_image(path):
    reader = vtkXMLPImageDataReader() if str(path).endswith(".pvti") else vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def values_of(image, name):
    e = image.GetExtent()
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    return vtk_to_numpy(image.GetPointData().GetArray(name)).reshape(shape)


MPI_RANK = """
    from paraview import servermanager
    pm = servermanager.vtkProcessModule.GetProcessModule()
    rank, ranks = pm.GetPartitionId(), pm.GetNumberOfLocalPartitions()
"""
"""Script lines giving each pvbatch rank its ``rank`` and the number of ``ranks``."""

def side_by_side_render(first: str, second: str, array: str, preset: str, low: float, high: float,
                        azimuth: float, elevation: float, background=(0.1, 0.1, 0.15)) -> str:
    """pvpython code that volume-renders the proxies named ``first`` and ``second`` one after the other in one
    view with the same stock preset and camera (reset on ``first``), saving ``OUT/<name>.png`` for each."""
    return textwrap.dedent(f"""\
        view = CreateRenderView()
        view.ViewSize = [400, 400]
        view.OrientationAxesVisibility = 0
        view.Background = {list(background)}
        try:
            view.UseColorPaletteForBackground = 0
        except AttributeError:
            pass
        lut = GetColorTransferFunction({array!r})
        lut.ApplyPreset({preset!r}, True)
        lut.RescaleTransferFunction({low}, {high})
        otf = GetOpacityTransferFunction({array!r})
        otf.RescaleTransferFunction({low}, {high})
        for name, proxy in (({first!r}, {first}), ({second!r}, {second})):
            display = Show(proxy, view)
            display.SetRepresentationType("Volume")
            ColorBy(display, ("POINTS", {array!r}))
            display.LookupTable = lut
            display.ScalarOpacityFunction = otf
            if name == {first!r}:
                view.ResetCamera()
                view.GetActiveCamera().Azimuth({azimuth})
                view.GetActiveCamera().Elevation({elevation})
            Render(view)
            SaveScreenshot(os.path.join(OUT, name + ".png"), view, ImageResolution=[400, 400])
            Hide(proxy, view)
        """)


def read_png(path, flip_rows: bool = False) -> np.ndarray:
    """RGB of a PNG as float64 ``(h, w, 3)``; VTK reads bottom row first, ``flip_rows`` puts the top row first."""
    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    img = reader.GetOutput()
    w, h, _ = img.GetDimensions()
    rgb = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3].astype(np.float64)
    return rgb[::-1].copy() if flip_rows else rgb
