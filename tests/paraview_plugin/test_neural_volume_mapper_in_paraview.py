"""Neural rendering inside a ParaView render view (Debian's pvpython), with the view's camera and colour map.

The script renders the Neural Volume Source with ParaView's own volume rendering, then attaches the neural
renderer (``examples/render_paraview.py``) to the same view and renders again: same camera, same colour map
and opacity function, so the images agree closely. In direct mode, editing the opacity function or moving the
camera re-renders; in cache mode (the default), moving the camera re-renders from the brick cache without
decoding anything; ``toggle`` detaches and shows the source again.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import paraview_env
from srn_core.render.image import image_psnr

from pv_scripts import read_png

pytestmark = [pytest.mark.paraview,
              pytest.mark.skipif(paraview_env.missing_reason() is not None,
                                 reason=str(paraview_env.missing_reason()))]

# Both scripts start alike: the source volume-rendered by ParaView itself, saved as the reference image.
SCENE = """
import json, os, sys, time
from paraview.simple import *
LoadPlugin({plugin!r}, ns=globals())
sys.path.insert(0, {examples!r})
import render_paraview
OUT = {out!r}
source = NeuralVolumeSource(FileName={model!r})
source.SamplingDimensions = {dims!r}
view = GetActiveViewOrCreate("RenderView")
view.ViewSize = [240, 200]
view.OrientationAxesVisibility = 0
display = Show(source, view)
display.SetRepresentationType("Volume")
ColorBy(display, ("POINTS", "density"))
GetColorTransferFunction("density").ApplyPreset("Cool to Warm", True)
view.ResetCamera()
camera = view.GetActiveCamera()
camera.Azimuth(30)
camera.Elevation(20)
Render(view)
SaveScreenshot(os.path.join(OUT, "paraview.png"), view, ImageResolution=[240, 200])
"""

BODY = SCENE + """
mapper = render_paraview.attach(source, view, mode="direct")
SaveScreenshot(os.path.join(OUT, "neural.png"), view, ImageResolution=[240, 200])
counts = [mapper.render_count]
Render(view)
counts.append(mapper.render_count)          # unchanged view: the image is reused
camera.Azimuth(40)
Render(view)
counts.append(mapper.render_count)          # camera moved: re-rendered
SaveScreenshot(os.path.join(OUT, "moved.png"), view, ImageResolution=[240, 200])
otf = GetOpacityTransferFunction("density")
otf.Points = [otf.Points[0], 0.0, 0.5, 0.0, otf.Points[-4], 0.2, 0.5, 0.0]
Render(view)
counts.append(mapper.render_count)          # opacity edited: re-rendered
attached = render_paraview.toggle(source, view)
result = dict(counts=counts, attached_after_toggle=attached, visible=GetDisplayProperties(source, view).Visibility,
              samples=mapper.last_stats.samples)
with open(os.path.join(OUT, "result.json"), "w") as f:
    json.dump(result, f)
"""



def test_neural_render_in_a_paraview_view_follows_its_camera_and_colour_map(pv_env, trained_model, tmp_path):
    path, model = trained_model
    body = BODY.format(plugin=str(paraview_env.PLUGIN_FILE), examples=str(paraview_env.REPO / "examples"),
                       out=str(tmp_path), model=str(path), dims=list(model.geometry.dims))
    script = tmp_path / "render.py"
    script.write_text(textwrap.dedent(body))
    result = paraview_env.run(["pvpython", str(script)], pv_env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["counts"] == [1, 1, 2, 3]
    assert out["attached_after_toggle"] is False and out["visible"] == 1
    paraview, neural, moved = (read_png(tmp_path / f"{n}.png", flip_rows=True) for n in ("paraview", "neural", "moved"))
    background = np.all(paraview == paraview[0, 0], axis=-1)
    assert background.mean() < 0.85  # the volume fills a good part of the view
    # ParaView renders the source's grid sampled from the model; we ray-march the model itself
    psnr = image_psnr(neural, paraview, peak=255.0)
    print(f"neural render in the view vs ParaView's volume rendering of the source: {psnr:.2f} dB")
    assert psnr >= 35.0
    assert image_psnr(moved, neural, peak=255.0) < 30.0  # the camera move shows in the image


CACHE_BODY = SCENE + """
mapper = render_paraview.attach(source, view)
mapper.SetBrickSize(8)
Render(view)
SaveScreenshot(os.path.join(OUT, "cached.png"), view, ImageResolution=[240, 200])
decoded = [mapper.GetCache().points_decoded]
frames = []
for k in range(6):                           # rotating the view: frames from the cache
    camera.Azimuth(10)
    t = time.perf_counter()
    Render(view)
    frames.append(dict(seconds=time.perf_counter() - t, decoded=mapper.last_cache_frame.points_decoded,
                       lod=mapper.last_cache_frame.lod))
SaveScreenshot(os.path.join(OUT, "moved.png"), view, ImageResolution=[240, 200])
otf = GetOpacityTransferFunction("density")
otf.Points = [otf.Points[0], 0.0, 0.5, 0.0, otf.Points[-4], 0.2, 0.5, 0.0]
Render(view)
result = dict(mode=mapper.GetRenderMode(), decoded=decoded, frames=frames,
              level_points=int(mapper.GetCache().level(0).values.size),
              after_opacity_edit=mapper.last_cache_frame.points_decoded)
attached = render_paraview.toggle(source, view)
result.update(attached_after_toggle=attached, visible=GetDisplayProperties(source, view).Visibility)
with open(os.path.join(OUT, "result.json"), "w") as f:
    json.dump(result, f)
"""


def test_cache_mode_in_a_paraview_view_rotates_from_the_cache(pv_env, trained_model, tmp_path):
    path, model = trained_model
    body = CACHE_BODY.format(plugin=str(paraview_env.PLUGIN_FILE), examples=str(paraview_env.REPO / "examples"),
                             out=str(tmp_path), model=str(path), dims=list(model.geometry.dims))
    script = tmp_path / "render.py"
    script.write_text(textwrap.dedent(body))
    result = paraview_env.run(["pvpython", str(script)], pv_env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["mode"] == "cache"
    assert 0 < out["decoded"][0] <= out["level_points"]
    assert [f["decoded"] for f in out["frames"]] == [0] * 6 and {f["lod"] for f in out["frames"]} == {0}
    assert out["after_opacity_edit"] >= 0
    assert out["attached_after_toggle"] is False and out["visible"] == 1
    paraview, cached, moved = (read_png(tmp_path / f"{n}.png", flip_rows=True) for n in ("paraview", "cached", "moved"))
    # ParaView volume-renders the source's grid, sampled from the model at its training dims: the same values
    # the cache decoded, drawn by another VTK mapper.
    psnr = image_psnr(cached, paraview, peak=255.0)
    print(f"cache-mode render in the view vs ParaView's volume rendering of the source: {psnr:.2f} dB; "
          f"orbit frames {[round(1000 * f['seconds']) for f in out['frames']]} ms")
    assert psnr >= 35.0
    assert image_psnr(moved, cached, peak=255.0) < 30.0  # the camera move shows in the image
