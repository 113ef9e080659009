"""Bad input catalogue: model files given to ``srn info`` and ``srn resample``.

Every case runs the real command in a subprocess and must end with exit status 1, exactly one line on standard
error (``srn <cmd>: error: ...``) that names the file and the problem, no traceback, no output file, and within
the subprocess timeout (a FIFO used to block forever; a small file declaring huge grids used to allocate them).
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from core_samples import small_model, write_model_file
from srn_runner import run_srn

HUGE_CONFIG = {**small_model().field.config_dict(), "n_features": 4, "grid_shape": [1000, 1000, 1000]}


def nan_in(name, value=math.nan):
    """The small model's tensor ``field.<name>`` with its first value replaced."""
    t = small_model().field.state_dict()[name].clone()
    t.view(-1)[0] = value
    return {f"field.{name}": t}


def value_range(lo, hi):
    """A value range stored consistently in the metadata and in the field's ``value_range`` tensor."""
    return {"value_range": [lo, hi], "tensors": {"field.value_range": torch.tensor([lo, hi])}}


# (case id, keyword arguments of write_model_file, a phrase the one error line must contain)
CASES = [
    ("metadata-json-list", {"header_text": "[1, 2]"}, "not a JSON object"),
    ("metadata-json-string", {"header_text": '"a model"'}, "not a JSON object"),
    ("metadata-nested-100000-deep", {"header_text": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
    ("metadata-not-json", {"header_text": "{"}, "corrupt metadata"),
    ("format-version-string", {"format_version": "1"}, "format_version must be a positive integer, got '1'"),
    ("format-version-null", {"format_version": None}, "format_version must be a positive integer, got None"),
    ("format-version-float", {"format_version": 1.5}, "format_version must be a positive integer, got 1.5"),
    ("format-version-list", {"format_version": [1]}, "format_version must be a positive integer, got [1]"),
    ("format-version-boolean", {"format_version": True}, "format_version must be a positive integer, got True"),
    ("format-version-newer", {"format_version": 99}, "newer than this neural-volume"),
    ("format-missing", {"format": ...}, "not a neural-volume model"),
    ("architecture-unknown", {"architecture": "bogus"}, "unknown model architecture 'bogus'"),
    ("architecture-number", {"architecture": 3}, "architecture must be a string, got 3"),
    ("config-list", {"config": [1, 2]}, "config must be a JSON object, got [1, 2]"),
    ("geometry-missing", {"geometry": ...}, "has no geometry"),
    ("training-list", {"training": [1]}, "training must be a JSON object, got [1]"),
    ("array-name-number", {"array_name": 5}, "array_name must be a string, got 5"),
    ("huge-grids-declared", {"config": HUGE_CONFIG},
     "declares field.feature_grids of shape [4, 4, 1000, 1000, 1000] but holds [4, 2, 5, 6, 7]"),
    ("nan-weight", {"tensors": nan_in("feature_grids")},
     "1 value that is not finite (NaN or Inf) in field.feature_grids"),
    ("inf-weight", {"tensors": nan_in("decoder.0.weight", math.inf)},
     "1 value that is not finite (NaN or Inf) in field.decoder.0.weight"),
    ("nan-value-range", value_range(math.nan, 1.0), "value range [nan, 1]"),
    ("inf-value-range", value_range(-math.inf, 1.0), "value range [-inf, 1]"),
    ("inverted-value-range", value_range(3.0, -1.0), "value range [3, -1]"),
    ("nan-value-range-tensor-only", {"tensors": {"field.value_range": torch.tensor([math.nan, 1.0])}},
     "value range [nan, 1]"),
]


srn = functools.partial(run_srn, timeout=120)


# One interpreter runs the command's ``main`` on every case (starting Python and torch once per case would take
# minutes on a busy machine); what a case writes to stderr, and any exception escaping ``main``, is kept per case.
DRIVER = """
import contextlib, io, json, sys, traceback
from srn.cli import main
results = {}
for case, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException:
            traceback.print_exc(file=err)
            rc = None
    results[case] = [rc, err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """``{(command, case): (path, output, exit status, stderr)}`` for every case and both commands."""
    d = tmp_path_factory.mktemp("bad-model-files")
    runs = {}
    for command in ("info", "resample"):
        argvs = []
        for case, kwargs, _ in CASES:
            path, out = d / f"{case}.srn", d / f"{case}-{command}.npy"
            if not path.exists():
                write_model_file(path, **kwargs)
            argvs.append([case, [command, str(path)] + (["-o", str(out)] if command == "resample" else [])])
            runs[command, case] = (path, out)
        proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        for case, (rc, err) in json.loads(proc.stdout.splitlines()[-1]).items():
            runs[command, case] += (rc, err)
    return runs


@pytest.mark.parametrize("command", ["info", "resample"])
@pytest.mark.parametrize("case, kwargs, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_model_file_is_one_clear_error(catalogue, command, case, kwargs, phrase):
    path, out, rc, stderr = catalogue[command, case]
    lines = stderr.splitlines()
    assert rc == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith(f"srn {command}: error: "), stderr
    assert f"model file {str(path)!r}" in lines[0] and phrase in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("command", ["info", "resample"])
def test_a_fifo_as_model_is_refused_without_blocking(tmp_path, command):
    fifo = tmp_path / "model.srn"
    os.mkfifo(fifo)
    proc = srn(command, fifo, *(["-o", tmp_path / "out.npy"] if command == "resample" else []), timeout=60)
    assert proc.stderr.splitlines() == [f"srn {command}: error: model file {str(fifo)!r} is a FIFO, "
                                        f"not a regular file."]
    assert proc.returncode == 1


def test_a_character_device_as_model_is_refused():
    proc = srn("info", "/dev/null")
    assert proc.stderr.splitlines() == ["srn info: error: model file '/dev/null' is a character device, "
                                        "not a regular file."]


@pytest.mark.skipif(os.geteuid() == 0, reason="file permissions do not apply to root")
def test_an_unreadable_model_is_permission_denied(tmp_path):
    path = tmp_path / "m.srn"
    write_model_file(path)
    path.chmod(0)
    proc = srn("info", path)
    assert proc.stderr.splitlines() == [f"srn info: error: model file {str(path)!r} cannot be read: "
                                        f"permission denied."]


def test_a_model_that_does_not_fit_in_memory_is_refused_before_it_is_built(tmp_path):
    path = tmp_path / "m.srn"
    write_model_file(path)
    proc = subprocess.run([sys.executable, "-m", "srn.cli", "info", str(path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "SRN_MEMORY_LIMIT": "1kB"})
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"srn info: error: model file {str(path)!r} (apmgsrn, 2,144 parameters) needs "), lines
    assert lines[0].endswith(" of memory but only 1 kB is available; ask for less."), lines
