"""Compressed model files in Debian's real pvpython: Neural Volume Source opens them unchanged, Train Neural Volume
writes them (Bits, TargetRatio), and Neural Volume Error reports their ratio."""

from __future__ import annotations

import json

import numpy as np
import pytest

import paraview_env
from pv_scripts import DIMS, read_image, run_ok, script, values_of, write_analytic
from srn_core.compression import Compression
from srn_core.geometry import ImageGeometry
from srn_core.loading import load_model
from srn_core.modelfile import load_tensors

pytestmark = [pytest.mark.paraview,
              pytest.mark.skipif(paraview_env.missing_reason() is not None,
                                 reason=str(paraview_env.missing_reason()))]

BODY = """
    s = NeuralVolumeSource(FileName=sys.argv[1], SamplingDimensions=[{dims}])
    SaveData(os.path.join(OUT, "compressed.vti"), proxy=s)
    reference = XMLImageDataReader(FileName=[sys.argv[2]])
    trainer = TrainNeuralVolume(Input=reference, ModelFileName=os.path.join(OUT, "trained.srn"), Steps=30,
                                BatchSize=1024, TargetRatio=3, Bits=6, Device="cpu")
    trainer.Scalars = ["POINTS", "density"]
    trainer.UpdatePipeline()
    error = NeuralVolumeError(Input=reference, ModelFileName=sys.argv[1])
    error.UpdatePipeline()

    def field(proxy, name):
        return servermanager.Fetch(proxy).GetFieldData().GetAbstractArray(name).GetValue(0)

    json.dump({{"trained_ratio": field(trainer, "CompressionRatio"), "trained_bytes": field(trainer, "FileBytes"),
               "error_ratio": field(error, "CompressionRatio"), "error_storage": field(error, "ModelFileStorage"),
               "properties": trainer.ListProperties()}},
              open(os.path.join(OUT, "report.json"), "w"))
"""


def test_compressed_files_in_paraview(pv_env, trained_model, analytic_volume, tmp_path):
    path, model = trained_model  # a float32 file
    small = tmp_path / "small.srn"
    model.save(small, Compression(bits=8))
    compressed = load_model(small)
    reference = write_analytic(tmp_path / "reference.vti", analytic_volume)
    run_ok(["pvpython", script(tmp_path, BODY.format(dims=", ".join(map(str, DIMS)))), str(small),
            str(reference)], pv_env, timeout=300)

    # Neural Volume Source: exactly the compressed model's values, and within its quantization error of the
    # float32 model (measured on the training grid here: 8-bit grids move outputs by about 0.3 % of the range).
    image = read_image(tmp_path / "compressed.vti")
    geometry = ImageGeometry.from_bounds(model.bounds, DIMS)
    shown = values_of(image, "density")
    assert np.abs(shown - compressed.resample(geometry)).max() < 1e-5
    lo, hi = model.value_range
    bound = np.abs(compressed.resample() - model.resample()).max()  # the quantization's effect on the outputs
    assert 0 < bound < 0.02 * (hi - lo)
    assert np.abs(shown - model.resample(geometry)).max() <= bound * 1.5  # other points of the same fields

    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("TargetRatio", "TargetSize", "Compress", "Bits", "DecoderBits", "Codec", "ParameterBudget"):
        assert name in report["properties"]
    trained = tmp_path / "trained.srn"
    size = trained.stat().st_size
    assert report["trained_bytes"] == size
    assert report["trained_ratio"] == pytest.approx(analytic_volume.geometry.num_points * 4 / size)
    assert {e["bits"] for e in load_tensors(trained)[1]["storage"].values() if e["role"] == "grid"} == {6}
    assert report["error_ratio"] == pytest.approx(analytic_volume.geometry.num_points * 4 / small.stat().st_size)
    assert report["error_storage"] == "grids 8-bit + lzma, decoder 12-bit"
