"""``srn render`` in a subprocess: the sample cap (a tiny --step used to run for ever) and progress on stderr."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from srn_core.render import Camera, Renderer, RenderSettings, TransferFunction
from srn_core.render.image import to_uint8


def srn_render(model, out, *args, timeout=120):
    # The timeout turns a regression (an unbounded march) into a failure instead of a hung test session.
    return subprocess.run([sys.executable, "-m", "srn.cli", "render", str(model), "-o", str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("step", ["1e-9", "0.0001"])
def test_a_step_needing_too_many_samples_per_ray_is_refused(trained_model, tmp_path, step):
    path, model = trained_model
    out = tmp_path / "image.png"
    proc = srn_render(path, out, "--step", step, "--size", "16", "16")
    # the model's box is 32 x 28 x 24 points at spacings 0.5, 0.25, 1 (15.5 x 6.75 x 23): its diagonal is 114.18
    # of the smallest voxels, so a ray takes up to floor(114.18 / step) + 1 samples
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    value = repr(float(step))
    samples = {"1e-9": "114,179,682,957", "0.0001": "1,141,797"}[step]
    assert proc.stderr.splitlines() == [
        f"srn render: error: --step {value} voxels needs up to {samples} samples per ray through this volume, "
        f"more than the cap of 100,000; use a step of at least 0.00115 voxels."]
    assert not out.exists()


def test_render_shows_progress_unless_quiet(trained_model, tmp_path):
    path, _ = trained_model
    proc = srn_render(path, tmp_path / "a.png", "--size", "24", "16")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    # stderr is a pipe here: one plain line at the end (and one per 10 s), not a tqdm bar
    assert [line.split(",")[0] for line in lines if line.startswith("render:")] == ["render: 384/384 rays (100%)"]
    assert lines[-1].startswith("rendered 24x16 in ")
    quiet = srn_render(path, tmp_path / "b.png", "--size", "24", "16", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()


def test_srn_render_writes_the_png_the_core_renders(trained_model, tmp_path, capsys):
    from srn.cli import main
    from srn_core.render.image import over_background

    path, model = trained_model
    out = tmp_path / "image.png"
    assert main(["render", str(path), "-o", str(out), "--size", "40", "30", "--preset", "Viridis",
                 "--azimuth", "30", "--elevation", "20", "--zoom", "1.2", "--step", "0.5"]) == 0
    blob = out.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", blob[16:24]) == (40, 30)
    start = blob.index(b"IDAT") + 4
    (n,) = struct.unpack(">I", blob[start - 8:start - 4])
    png = np.frombuffer(zlib.decompress(blob[start:start + n]), np.uint8).reshape(30, 1 + 40 * 3)[:, 1:]
    camera = Camera.reset(model.bounds).azimuth(30).elevation(20).zoom(1.2)
    tf = TransferFunction.from_preset("Viridis", model.value_range)
    settings = RenderSettings(step=0.5, opacity_unit_distance=min(model.geometry.spacing))
    expected = to_uint8(over_background(Renderer(model, settings).render(camera, tf, 40, 30).image))
    assert np.array_equal(png.reshape(30, 40, 3), expected)
    assert "samples evaluated" in capsys.readouterr().err
    assert main(["render", str(path), "-o", str(tmp_path / "x.png"), "--preset", "no such map"]) == 1
    assert "unknown preset 'no such map'" in capsys.readouterr().err


def _pixels(path, width, height) -> np.ndarray:
    """The RGB pixels of one of our PNGs (one IDAT chunk, filter 0 on every row)."""
    blob = path.read_bytes()
    start = blob.index(b"IDAT") + 4
    (n,) = struct.unpack(">I", blob[start - 8:start - 4])
    rows = np.frombuffer(zlib.decompress(blob[start:start + n]), np.uint8).reshape(height, 1 + width * 3)
    return rows[:, 1:].reshape(height, width, 3).astype(float)


def test_a_time_varying_model_renders_at_the_time_asked_and_refuses_no_time(tmp_path):
    from srn_core.data import Volume
    from srn_core.geometry import ImageGeometry
    from srn_core.series import TimeSeries
    from srn_core.training import TrainConfig, fit

    g = ImageGeometry((12, 10, 8))
    ramp = np.linspace(0, 1, 12, dtype=np.float32)[None, None, :].repeat(8, 0).repeat(10, 1)
    series = TimeSeries([Volume(ramp * k, g, "v") for k in (0.2, 1.0)], [0.0, 1.0])
    model = fit(series, "apmgsrn", 3000, TrainConfig(steps=60, batch_size=2048)).model
    path = tmp_path / "tv.srn"
    model.save(path)
    r = srn_render(path, tmp_path / "x.png", "--size", "32", "32")
    assert r.returncode == 1 and "is time-varying (2 steps from 0 to 1); give --time T." in r.stderr, r.stderr
    r = srn_render(path, tmp_path / "x.png", "--time", "3")
    assert r.returncode == 1 and "--time 3 is outside the model's time range [0, 1]." in r.stderr, r.stderr
    images = []
    for t in ("0", "1"):
        r = srn_render(path, tmp_path / f"t{t}.png", "--size", "32", "32", "--time", t, "--quiet",
                       "--range", "0", "1")
        assert r.returncode == 0, r.stderr
        images.append(_pixels(tmp_path / f"t{t}.png", 32, 32))
    assert np.abs(images[0] - images[1]).mean() > 5.0  # a different time is a different picture
