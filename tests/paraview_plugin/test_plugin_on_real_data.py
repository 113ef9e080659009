"""Train Neural Volume and Neural Volume Error in real pvpython on real data (the inia19 T1 brain template).

The template is downsampled 4x per axis (42 x 52 x 32 points) so that a 200-step training fits the test
budget; the trained model is then volume rendered next to the data with a stock preset (Grayscale) and the
image PSNR is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

import paraview_env
from paraview_plugin.vtk_image import image_from_array, write_vti
from srn_core import metrics
from srn_core.data import Volume
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model

from pv_scripts import read_image, read_png, run_ok, side_by_side_render, values_of

INIA19 = Path("/usr/share/mricron/templates/inia19-t1-brain.nii.gz")

pytestmark = [pytest.mark.paraview,
              pytest.mark.skipif(paraview_env.missing_reason() is not None,
                                 reason=str(paraview_env.missing_reason())),
              pytest.mark.skipif(not INIA19.is_file(), reason=f"{INIA19} is missing (apt-get install mricron-data)")]

STEPS = 200
PSNR_FLOOR = 30.0

BODY = """
    from paraview import servermanager
    data = XMLImageDataReader(FileName=[sys.argv[1]])
    model = os.path.join(OUT, "brain.srn")
    train = TrainNeuralVolume(Input=data, ModelFileName=model, Steps={steps}, BatchSize=2048,
                              ParameterBudget=30000, Device="cpu")
    train.Scalars = ["POINTS", "t1"]
    train.UpdatePipeline()
    trained = servermanager.Fetch(train)
    error = NeuralVolumeError(Input=data, ModelFileName=model)
    error.UpdatePipeline()
    errors = servermanager.Fetch(error)
    fields = lambda image: {{image.GetFieldData().GetAbstractArray(i).GetName():
                            image.GetFieldData().GetAbstractArray(i).GetVariantValue(0).ToString()
                            for i in range(image.GetFieldData().GetNumberOfArrays())}}
    report = {{"train": fields(trained), "error": fields(errors),
               "recon_array": trained.GetPointData().GetScalars().GetName(),
               "error_arrays": [errors.GetPointData().GetArrayName(i)
                                for i in range(errors.GetPointData().GetNumberOfArrays())]}}
    SaveData(os.path.join(OUT, "reconstruction.vti"), proxy=train)

    json.dump(report, open(os.path.join(OUT, "report.json"), "w"))
"""


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """The inia19 T1 template downsampled 4x, as a point-data VTI file named ``t1``."""
    from srn_core.data import read_nifti

    full = read_nifti(INIA19)
    values = full.values[::4, ::4, ::4]
    geometry = ImageGeometry(values.shape[::-1], full.geometry.origin, tuple(4 * s for s in full.geometry.spacing))
    volume = Volume(values, geometry, "t1")
    path = tmp_path_factory.mktemp("brain") / "inia19_ds4.vti"
    write_vti(path, image_from_array(volume.values, geometry, "t1"))
    return path, volume


def test_train_error_and_render_on_real_data(pv_env, brain, tmp_path):
    path, volume = brain
    low, high = volume.value_range
    head = textwrap.dedent(f"""\
        import json, os, sys
        from paraview.simple import *
        OUT = {str(tmp_path)!r}
        LoadPlugin({str(paraview_env.PLUGIN_FILE)!r}, ns=globals())
        """)
    script = tmp_path / "train.py"
    # After training: volume rendering with a stock preset, the data, then the Neural Volume Source of the model.
    render = textwrap.dedent(f"""\
        neural = NeuralVolumeSource(FileName=model, SamplingDimensions=[{", ".join(map(str, volume.geometry.dims))}])
        """) + side_by_side_render("data", "neural", "t1", "Grayscale", low, high, 40, 25, background=(0.0, 0.0, 0.0))
    script.write_text(head + textwrap.dedent(BODY.format(steps=STEPS)) + render)
    result = run_ok(["pvpython", str(script), str(path)], pv_env, timeout=300)
    report = json.loads((tmp_path / "report.json").read_text())
    train, error = report["train"], report["error"]

    # Training reached the floor, and the reported PSNR is the core's PSNR of the written model.
    psnr = float(train["PSNR"])
    assert psnr >= PSNR_FLOOR, train
    assert int(float(train["TrainingSteps"])) <= STEPS
    model = load_model(tmp_path / "brain.srn")
    recon = model.resample()
    assert psnr == pytest.approx(metrics.psnr(volume.values, recon), abs=1e-3)
    # The ratio counts the written (compressed) file's bytes, header included.
    assert float(train["CompressionRatio"]) == pytest.approx(volume.geometry.num_points * 4 / (tmp_path / "brain.srn").stat().st_size,
                                                             rel=1e-5)
    assert model.storage is not None and float(train["CompressionRatio"]) > 2 * model.parameter_ratio
    assert report["recon_array"] == "t1"
    saved = values_of(read_image(tmp_path / "reconstruction.vti"), "t1")
    assert np.abs(saved - recon).max() < 1e-5

    # The error filter agrees with the core's metrics; SSIM is NaN with a warning when skimage is absent.
    assert float(error["PSNR"]) == pytest.approx(psnr, abs=1e-3)
    assert float(error["MaxError"]) == pytest.approx(metrics.max_abs_error(volume.values, recon), rel=1e-4)
    assert sorted(report["error_arrays"]) == ["AbsoluteError", "SignedError"]
    ssim = float(error["SSIM"])
    try:
        import subprocess
        has_skimage = subprocess.run(["pvpython", "-c", "import skimage"], env=pv_env,
                                     capture_output=True).returncode == 0
    except OSError:
        has_skimage = False
    if has_skimage:
        assert ssim == pytest.approx(metrics.ssim(volume.values, recon), abs=1e-6)
    else:
        assert math.isnan(ssim)
        assert "NeuralVolumeError: SSIM is NaN" in result.stdout + result.stderr

    # The neural volume renders like the data with the same stock preset.
    a, b = read_png(tmp_path / "data.png"), read_png(tmp_path / "neural.png")
    background = np.all(a < 1, axis=-1) & np.all(b < 1, axis=-1)
    assert background.mean() < 0.9
    image_psnr = metrics.psnr(a, b, data_range=255.0)
    foreground = metrics.psnr(a, b, data_range=255.0, mask=np.repeat(~background[..., None], 3, -1))
    print(f"inia19/4: training PSNR {psnr:.2f} dB in {float(train['TrainingSeconds']):.1f} s, SSIM {ssim}, "
          f"rendered image PSNR {image_psnr:.2f} dB (foreground {foreground:.2f} dB)")
    # A 200-step model of this high-frequency data (33 dB) renders visibly smoother than the data, and
    # emission-absorption compositing accumulates that bias: about 21 dB here. The 30 dB image check is made
    # on a smooth field in test_paraview_plugin.py; this floor only confirms the same object in the same view.
    assert image_psnr >= 15.0
