"""Shared fixtures: one small trained model per session, and ParaView's environment with one Xvfb."""

from __future__ import annotations

import os

# Before anything imports torch (core_samples does, ahead of srn_core): OpenMP reads the wait policy once, and
# spinning threads made training tests 10-30x slower whenever another process shared the 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest

import paraview_env
from core_samples import analytic_series_values, analytic_values


@pytest.fixture(scope="session")
def analytic_volume():
    """A 32 x 28 x 24 analytic volume with a non-trivial origin and anisotropic spacing."""
    from srn_core.data import Volume
    from srn_core.geometry import ImageGeometry

    geometry = ImageGeometry((32, 28, 24), (1.0, -2.0, 0.5), (0.5, 0.25, 1.0))
    return Volume(analytic_values(geometry), geometry, "density")


@pytest.fixture(scope="session")
def trained_model(analytic_volume, tmp_path_factory):
    """``(path, model)``: an APMGSRN trained briefly (about 35 dB) on :func:`analytic_volume`, saved as ``.srn``."""
    from srn_core.training import TrainConfig

    config = TrainConfig(steps=150, batch_size=1024, seed=0, device="cpu")
    return _cached_model(analytic_volume, 20_000, config, "density", tmp_path_factory)


@pytest.fixture(scope="session")
def series():
    """The analytic time series of ``core_samples.SERIES_TIMES`` on ``SERIES_GEOMETRY``, array "density"."""
    from core_samples import SERIES_GEOMETRY, SERIES_TIMES
    from srn_core.data import Volume
    from srn_core.series import TimeSeries

    return TimeSeries([Volume(analytic_series_values(SERIES_GEOMETRY, t), SERIES_GEOMETRY, "density")
                       for t in SERIES_TIMES], SERIES_TIMES)


@pytest.fixture(scope="session")
def time_model(series, tmp_path_factory):
    """``(path, model)``: a time-varying model trained briefly (about 35 dB) on :func:`series`."""
    from srn_core.training import TrainConfig

    config = TrainConfig(steps=200, batch_size=2048, seed=0, device="cpu")
    return _cached_model(series, 5000, config, "series", tmp_path_factory)


def _cached_model(data, budget: int, config, stem: str, tmp_path_factory):
    """``(path, model)``: ``fit(data, "apmgsrn", budget, config)`` saved as ``<stem>.srn`` in a fresh folder.

    Training on the CPU is deterministic, so the file is kept between sessions (ctest runs each test file in
    its own session) under a name that changes with the settings, the data and the core's source code.
    """
    from srn_core.loading import load_model
    from srn_core.training import fit

    digest = hashlib.sha256(repr((config, data.checksum())).encode())
    for source in sorted((paraview_env.REPO / "srn_core").rglob("*.py")):
        if "render" not in source.parts:  # the renderer does not change what training produces
            digest.update(source.read_bytes())
    cache = Path(tempfile.gettempdir()) / "neural-volume-tests" / f"{stem}-{digest.hexdigest()[:16]}.srn"
    if not cache.is_file():
        result = fit(data, "apmgsrn", budget, config)  # the seed alone fixes the initial weights
        cache.parent.mkdir(exist_ok=True)
        result.model.save(cache)
    path = tmp_path_factory.mktemp(stem) / f"{stem}.srn"
    shutil.copyfile(cache, path)
    return path, load_model(path)


@pytest.fixture(scope="session")
def pv_display():
    """One ``Xvfb -noreset`` display for every ParaView test of the session (skips without ParaView)."""
    reason = paraview_env.missing_reason()
    if reason:
        pytest.skip(reason)
    server = paraview_env.Xvfb()
    display = server.start()
    yield display
    server.stop()


@pytest.fixture(scope="session")
def pv_env(pv_display):
    """Environment for pvpython/pvbatch/mpirun: repository, shim and torch venv on PYTHONPATH, Xvfb display."""
    return paraview_env.environment(pv_display)
