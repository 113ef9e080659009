"""paraview_plugin.model_cache: a model path that is no regular file is refused without blocking the pipeline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from paraview_plugin import model_cache

# A subprocess with a timeout: a blocked open of a FIFO holds the GIL, so it would hang this test process.
LOAD = ("import sys\nfrom paraview_plugin import model_cache\n"
        "try:\n    model_cache.load_cached(sys.argv[1], 'cpu')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n")


def test_a_fifo_named_as_the_model_is_one_clear_error(tmp_path):
    fifo = tmp_path / "model.srn"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-c", LOAD, str(fifo)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == [f"ModelFileError model file {str(fifo)!r} is a FIFO, not a regular file."]


def test_an_empty_file_name_and_a_missing_file_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"^no model file is set \(FileName is empty\)"):
        model_cache.model_path("")
    with pytest.raises(FileNotFoundError, match=r"^model file '.*gone\.srn' does not exist\.$"):
        model_cache.load_cached(str(tmp_path / "gone.srn"), "cpu")
