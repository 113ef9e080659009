"""The bad-input catalogue of the ParaView filters, run in one real pvpython process (defect 13 of issue 7).

Each case sets one bad property on Neural Volume Source, Train Neural Volume or Neural Volume Error and asks
for data. Each must give exactly one ErrorEvent sentence that names the algorithm, the property and the value
(no traceback), an empty output, no file written, and pvpython must carry on with the next case. The process
sets itself a file-size limit (``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored, what ``ulimit -f`` does) smaller than any
model file once ParaView has started (its MPI start-up needs larger shared-memory files), so a finished training
that cannot write its model stands for a full disk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import paraview_env
from pv_scripts import run_ok, script, write_analytic

pytestmark = [pytest.mark.paraview,
              pytest.mark.skipif(paraview_env.missing_reason() is not None,
                                 reason=str(paraview_env.missing_reason()))]

FILE_SIZE_LIMIT = 16384
"""Bytes a file of the pvpython process may grow to: enough for the report, too little for a model."""

BODY = """
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    models = os.path.join(OUT, "models")
    model, data, nan_data = sys.argv[1], sys.argv[2], sys.argv[3]
    reader = XMLImageDataReader(FileName=[data])
    nan_reader = XMLImageDataReader(FileName=[nan_data])
    train = dict(ModelFileName=os.path.join(models, "m.srn"), Steps=5, BatchSize=1024, ParameterBudget=5000,
                 Device="cpu")
    cases = {{
        "source_device": lambda: NeuralVolumeSource(FileName=model, Device="bogus", SamplingDimensions=[4, 4, 4]),
        "source_dims_int32": lambda: NeuralVolumeSource(FileName=model, SamplingDimensions=[2147483647, 2, 2]),
        "source_dims_memory": lambda: NeuralVolumeSource(FileName=model, SamplingDimensions=[100000, 100000, 100000]),
        "train_device": lambda: TrainNeuralVolume(Input=reader, **dict(train, Device="bogus")),
        "train_time_limit": lambda: TrainNeuralVolume(Input=reader, TimeLimit=-5, **train),
        "train_nan": lambda: TrainNeuralVolume(Input=nan_reader, **train),
        # Compress=0: the float32 file (20 kB) is larger than the 16 kB limit; a compressed one would fit.
        "train_full_disk": lambda: TrainNeuralVolume(Input=reader, **dict(train, Compress=0)),
        "error_device": lambda: NeuralVolumeError(Input=reader, ModelFileName=model, Device="bogus"),
    }}
    report = {{}}
    for name, make in cases.items():
        proxy = make()
        proxy.UpdatePipeline()
        report[name] = {{"points": proxy.GetDataInformation().GetNumberOfPoints(),
                        "error": proxy.GetClientSideObject().last_error}}
        Delete(proxy)
    report["alive"] = True
    json.dump(report, open(os.path.join(OUT, "report.json"), "w"))
"""

EXPECTED = {  # the start of each error (the memory available, and how a full disk is worded, vary)
    "source_device": "NeuralVolumeSource: Device 'bogus' is not a torch device; use auto, cpu, cuda or cuda:N.",
    "source_dims_int32": "NeuralVolumeSource: SamplingDimensions (2147483647, 2, 2) needs 68.7 GB of memory but only ",
    "source_dims_memory": "NeuralVolumeSource: SamplingDimensions (100000, 100000, 100000) needs 8e+03 TB of memory "
                          "but only ",
    "train_device": "TrainNeuralVolume: Device 'bogus' is not a torch device; use auto, cpu, cuda or cuda:N.",
    "train_time_limit": "TrainNeuralVolume: TimeLimit must be 0 (no limit) or a positive number of seconds, "
                        "got -5.0.",
    "train_nan": "TrainNeuralVolume: array 'density' holds 672 non-finite values (NaN/Inf); turn on MaskNonFinite "
                 "to exclude them from training and metrics.",
    "train_full_disk": "TrainNeuralVolume: ModelFileName '{models}/m.srn' could not be written (",
    "error_device": "NeuralVolumeError: Device 'bogus' is not a torch device; use auto, cpu, cuda or cuda:N.",
}


def test_each_bad_property_gives_one_clear_error_and_pvpython_carries_on(pv_env, trained_model, analytic_volume,
                                                                        tmp_path):
    path, _ = trained_model
    data = write_analytic(tmp_path / "data.vti", analytic_volume)
    with_nan = analytic_volume.values.copy()
    with_nan[:, :, 0] = np.nan  # 24 x 28 values on the plane x = 0
    nan_data = write_analytic(tmp_path / "nan.vti", analytic_volume, with_nan)
    models = tmp_path / "models"
    models.mkdir()
    cmd = ["pvpython", script(tmp_path, BODY.format(limit=FILE_SIZE_LIMIT)), str(path), str(data), str(nan_data)]
    result = run_ok(cmd, pv_env, timeout=300)
    output = result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report.pop("alive") is True
    assert list(report) == list(EXPECTED)
    for name, expected in EXPECTED.items():
        case = report[name]
        assert case["points"] == 0, name
        assert case["error"] is not None and case["error"].startswith(expected.format(models=models)), \
            (name, case["error"])
        assert "\n" not in case["error"]
    assert "--mask-nonfinite" not in report["train_nan"]["error"]
    assert "File too large" in report["train_full_disk"]["error"]
    assert report["train_full_disk"]["error"].endswith("); no model was saved.")
    # Exactly one error line per case, no traceback, and no file left behind (not even a temporary one).
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == len(EXPECTED), output
    assert "Traceback" not in output
    assert list(models.iterdir()) == []
