"""tiny-cuda-nn is optional: absent or unusable, fields run in PyTorch; a failing install says so, once."""

from __future__ import annotations

import importlib.abc
import sys
import types
import warnings

import pytest
import torch

from srn_core import accel


@pytest.fixture
def fresh_accel(monkeypatch):
    """``accel`` as in a new process (nothing imported or reported yet), on a machine that claims CUDA."""
    monkeypatch.setattr(accel, "_TCNN", None)
    monkeypatch.setattr(accel, "_TCNN_CHECKED", False)
    monkeypatch.setattr(accel, "_WARNED", False, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delitem(sys.modules, "tinycudann", raising=False)
    return monkeypatch


class _ImportFails(importlib.abc.MetaPathFinder):
    def __init__(self, exc):
        self.exc = exc

    def find_spec(self, name, path=None, target=None):
        if name == "tinycudann":
            raise self.exc


def _calls(n=3):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [accel.tcnn_encoding(3, {"otype": "HashGrid"}) for _ in range(n)]
    return results, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_without_cuda_nothing_is_imported_or_reported():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert accel.tcnn_available() is False
        assert accel.tcnn_encoding(3, {"otype": "HashGrid"}) is None
    assert "tinycudann" not in sys.modules  # never imported without CUDA


def test_a_failing_encoding_falls_back_with_one_warning(fresh_accel):
    fake = types.ModuleType("tinycudann")

    def encoding(*args, **kwargs):
        raise RuntimeError("Encoding HashGrid: unsupported number of features")

    fake.Encoding = encoding
    fresh_accel.setitem(sys.modules, "tinycudann", fake)
    results, messages = _calls()
    assert results == [None, None, None]
    assert messages == ["tiny-cuda-nn encoding HashGrid failed (RuntimeError: Encoding HashGrid: unsupported number "
                        "of features); using the PyTorch implementation instead (same results, slower)."]


def test_a_broken_install_falls_back_with_one_warning(fresh_accel):
    fresh_accel.setattr(sys, "meta_path", [_ImportFails(OSError("libcuda.so.1: version mismatch"))] + sys.meta_path)
    results, messages = _calls()
    assert results == [None, None, None] and accel.tcnn_available() is False
    assert messages == ["tiny-cuda-nn import failed (OSError: libcuda.so.1: version mismatch); using the PyTorch "
                        "implementation instead (same results, slower)."]


def test_not_installed_is_the_ordinary_case_and_silent(fresh_accel):
    fresh_accel.setattr(sys, "meta_path", [_ImportFails(ModuleNotFoundError("No module named 'tinycudann'",
                                                                            name="tinycudann"))] + sys.meta_path)
    results, messages = _calls()
    assert results == [None, None, None] and messages == []


def test_the_hash_grid_runs_in_pytorch_after_the_fallback(fresh_accel):
    from srn_core.fields.hashgrid import HashGridEncoding

    fake = types.ModuleType("tinycudann")
    fake.Encoding = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no kernel for this GPU"))
    fresh_accel.setitem(sys.modules, "tinycudann", fake)
    enc = HashGridEncoding(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=3)
    # The tcnn path is taken only for CUDA parameters; ask for the encoding as that path would.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert accel.tcnn_encoding(3, enc.encoding_config()) is None
        out = enc(torch.rand(5, 3))
    assert out.shape == (5, 4) and len(caught) == 1
