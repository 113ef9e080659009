"""An AMGSRN++ folder (options.json + compressed_model.zip with SZ3 grids) opens in Debian's real pvpython through
Neural Volume Source, picked by the zip file inside it as a file dialog would give it."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

import paraview_env
from pv_scripts import DIMS, read_image, run_ok, script, values_of
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model

pysz = pytest.importorskip("pysz")
pytestmark = [pytest.mark.paraview,
              pytest.mark.skipif(paraview_env.missing_reason() is not None,
                                 reason=str(paraview_env.missing_reason()))]

BODY = """
    s = NeuralVolumeSource(FileName=sys.argv[1], SamplingDimensions=[{dims}])
    SaveData(os.path.join(OUT, "amgsrnpp.vti"), proxy=s)
"""


def write_amgsrnpp_folder(folder):
    """A 4-grid AMGSRN++ model saved the peer's default way: .npy entries and one SZ3 stream per channel."""
    gen = torch.Generator().manual_seed(0)
    g, f, grid = 4, 2, (6, 7, 8)
    state = {"_scales": torch.empty(g, 3).uniform_(-0.3, 0.3, generator=gen),
             "_rotations": torch.randn(g, 4, generator=gen), "translations": 0.2 * torch.randn(g, 3, generator=gen),
             "decoder.0.linear.weight": torch.randn(16, g * f, generator=gen) / 3,
             "decoder.1.linear.weight": torch.randn(16, 16, generator=gen) / 4,
             "decoder.2.weight": torch.randn(1, 16, generator=gen) / 4}
    grids = torch.randn(g, f, *grid, generator=gen).numpy()
    folder.mkdir()
    (folder / "options.json").write_text(json.dumps({
        "model": "AMGSRN", "n_grids": g, "n_features": f, "feature_grid_shape": "6,7,8", "n_layers": 2,
        "nodes_per_layer": 16, "use_bias": False, "full_shape": [13, 17, 23], "data": "plume.nc",
        "data_min": -1.0, "data_max": 2.0, "save_with_compression": True, "compressor_used": "sz3"}))
    with zipfile.ZipFile(folder / "compressed_model.zip", "w") as zf:
        for key, t in state.items():
            npy = io.BytesIO()
            np.save(npy, t.numpy())
            zf.writestr(f"{key}.npy", npy.getvalue())
        for c in range(f):
            cfg = pysz.szConfig()
            cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
            cfg.absErrorBound = 1e-3
            stream, _ = pysz.sz.compress(np.ascontiguousarray(grids[:, c]), cfg)
            zf.writestr(f"feature_grid_{c}.sz", np.asarray(stream, dtype=np.uint8).tobytes())
    return folder


def test_neural_volume_source_opens_an_amgsrnpp_folder(pv_env, tmp_path):
    folder = write_amgsrnpp_folder(tmp_path / "plume")
    run_ok(["pvpython", script(tmp_path, BODY.format(dims=", ".join(map(str, DIMS)))),
            str(folder / "compressed_model.zip")], pv_env, timeout=300)
    model = load_model(folder)
    expected = model.resample(ImageGeometry.from_bounds(model.bounds, DIMS))
    shown = values_of(read_image(tmp_path / "amgsrnpp.vti"), "plume")
    assert expected.std() > 0.01  # a varying field, not a constant
    assert np.abs(shown - expected).max() < 1e-5
