"""A model trained on a real volume (inia19), rendered directly, against VTK's render of the raw data.

Slow: trains an APMGSRN on inia19 at half resolution (84 x 103 x 64) for a fixed number of steps (about 30 s
here; deterministic on the CPU, cached between sessions under a digest of the core's source).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
pytest.importorskip("vtkmodules.vtkRenderingCore")

from srn_core.render import Camera, Renderer, RenderSettings, RenderVolume, TransferFunction  # noqa: E402
from srn_core.render.image import image_psnr, over_background, rms_difference, to_uint8  # noqa: E402
from vtk_reference import BACKGROUND, vtk_render  # noqa: E402

INIA19 = Path("/usr/share/mricron/templates/inia19-t1-brain.nii.gz")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not INIA19.is_file(), reason="inia19 needs Debian's mricron-data package")]


@pytest.fixture(scope="module")
def inia19_model():
    """``(volume, model)``: inia19 at half resolution and an APMGSRN trained on it (about 35 dB)."""
    from srn_core.data import Volume, read_nifti
    from srn_core.fields import field_for_budget
    from srn_core.geometry import ImageGeometry
    from srn_core.loading import load_model
    from srn_core.training import TrainConfig, train

    full = read_nifti(INIA19)
    values = np.ascontiguousarray(full.values[::2, ::2, ::2])
    geometry = ImageGeometry(values.shape[::-1], full.geometry.origin, tuple(2 * s for s in full.geometry.spacing))
    volume = Volume(values, geometry, "inia19")
    config = TrainConfig(steps=450, batch_size=8192, seed=0, device="cpu")
    digest = hashlib.sha256(repr((config, volume.checksum())).encode())
    for source in sorted((Path(__file__).resolve().parents[3] / "srn_core").rglob("*.py")):
        digest.update(source.read_bytes())
    cache = Path(tempfile.gettempdir()) / "neural-volume-tests" / f"inia19-half-{digest.hexdigest()[:16]}.srn"
    if cache.is_file():
        return volume, load_model(cache)
    torch.manual_seed(0)
    field = field_for_budget("apmgsrn", 20_000, geometry.shape, volume.value_range)
    result = train(volume, field, config)
    cache.parent.mkdir(exist_ok=True)
    result.model.save(cache)
    return volume, result.model


@pytest.mark.parametrize("preset", ["Cool to Warm", "Grayscale"])
def test_neural_render_matches_vtk_render_of_the_raw_data(inia19_model, preset):
    volume, model = inia19_model
    tf = TransferFunction.from_preset(preset, volume.value_range)
    camera = Camera.reset(volume.geometry.bounds).azimuth(30).elevation(20).zoom(1.5)
    reference = vtk_render(volume.values, volume.geometry, tf, camera, 160, 160, "fixed")
    result = Renderer(model, RenderSettings(early_termination=0.999)).render(camera, tf, 160, 160)
    neural = to_uint8(over_background(result.image, BACKGROUND))
    assert image_psnr(neural, reference) >= 30.0


def test_near_opaque_transfer_function_still_close(inia19_model):
    """A surface-like TF shows the model's boundary errors most; it still stays close to VTK's image."""
    volume, model = inia19_model
    tf = TransferFunction.from_preset("Tissue", volume.value_range)
    camera = Camera.reset(volume.geometry.bounds).azimuth(30).elevation(20).zoom(1.5)
    reference = vtk_render(volume.values, volume.geometry, tf, camera, 160, 160, "gpu")
    result = Renderer(model, RenderSettings(early_termination=0.999)).render(camera, tf, 160, 160)
    assert image_psnr(to_uint8(over_background(result.image, BACKGROUND)), reference) >= 28.0


def test_macrocells_on_the_real_model_keep_the_image(inia19_model):
    volume, model = inia19_model
    tf = TransferFunction.from_preset("Tissue", volume.value_range)
    camera = Camera.reset(volume.geometry.bounds).azimuth(-40).elevation(10).zoom(1.3)
    plain = Renderer(RenderVolume.from_model(model), RenderSettings(macrocells=False)).render(camera, tf, 96, 96)
    skip = Renderer(RenderVolume.from_model(model), RenderSettings(macrocells=True)).render(camera, tf, 96, 96)
    assert rms_difference(plain.image.numpy() * 255, skip.image.numpy() * 255) < 0.5
    assert skip.stats.samples < 0.7 * plain.stats.samples
