"""Small volumes and models with known values, shared by the core's tests."""

from __future__ import annotations

import numpy as np
import torch

from srn_core.data import Volume
from srn_core.fields import APMGSRN, APMGSRNConfig
from srn_core.geometry import ImageGeometry
from srn_core.model import NeuralVolume


def analytic_values(geometry) -> np.ndarray:
    """A smooth field on ``geometry``'s points, ``(nz, ny, nx)``: easy to learn, not symmetric in any axis."""
    from srn_core.geometry import axis_coordinates

    x, y, z = (a.numpy() for a in axis_coordinates(geometry))
    b = geometry.bounds
    u, v, w = ((c - b[2 * i]) / (b[2 * i + 1] - b[2 * i]) * 2 - 1 for i, c in enumerate((x, y, z)))
    zz, yy, xx = np.meshgrid(w, v, u, indexing="ij")
    return (np.sin(2.5 * xx + 0.5) * np.cos(2.0 * yy) + 0.8 * zz * zz + 0.3 * xx * yy).astype(np.float32)


def analytic_volume(dims=(20, 16, 12), origin=(1.0, -2.0, 0.5), spacing=(0.5, 1.0, 2.0)) -> Volume:
    """A smooth field with an exact value at every point, on a non-cubic, non-unit image."""
    g = ImageGeometry(dims, origin, spacing)
    b = g.bounds
    z, y, x = np.meshgrid(*[np.linspace(b[2 * a], b[2 * a + 1], g.dims[a]) for a in (2, 1, 0)], indexing="ij")
    u = [(c - b[2 * a]) / (b[2 * a + 1] - b[2 * a]) for a, c in enumerate((x, y, z))]
    values = np.sin(2.5 * u[0]) * np.cos(1.5 * u[1]) + 0.5 * u[2]
    return Volume(values.astype(np.float32), g, "wave")


def small_model(seed=0) -> NeuralVolume:
    torch.manual_seed(seed)
    field = APMGSRN(APMGSRNConfig(n_grids=4, n_features=2, grid_shape=(5, 6, 7), width=16), value_range=(-1.0, 3.0))
    with torch.no_grad():
        field.feature_grids.normal_(0, 1.0)
    return NeuralVolume(field.eval(), ImageGeometry((20, 16, 12), (1.0, -2.0, 0.5), (0.5, 1.0, 2.0)), "wave")


def write_model_file(path, model: NeuralVolume | None = None, header_text: str | None = None, tensors=None,
                     **meta) -> None:
    """Write ``model`` (default :func:`small_model`) as our model file with metadata keys replaced by ``meta``
    (the value ``...`` removes a key), tensors replaced or added by ``tensors``, or the metadata JSON replaced
    whole by ``header_text``: the bad files of the bad-input catalogue."""
    import json

    from safetensors.torch import save_file

    model = model or small_model()
    state = {f"field.{k}": v.detach().clone() for k, v in model.field.state_dict().items()}
    state.update(tensors or {})
    header = {"format": "neural-volume", "format_version": 1, **model.metadata(), **meta}
    header = {k: v for k, v in header.items() if v is not ...}
    save_file(state, str(path), metadata={"neural_volume": json.dumps(header) if header_text is None else header_text})


SERIES_TIMES = [0.0, 1.0, 2.5]
SERIES_GEOMETRY = ImageGeometry((16, 14, 12), (1.0, -2.0, 0.5), (0.5, 0.25, 1.0))
"""Times and grid of the ``series`` / ``time_model`` fixtures (``conftest.py``)."""


def analytic_series_values(geometry, t: float) -> np.ndarray:
    """:func:`analytic_values` plus a term linear in time ``t``, ``(nz, ny, nx)``: a smooth series whose steps
    differ everywhere and that a time-varying model's linear key-frame blending can follow."""
    from srn_core.geometry import axis_coordinates

    x, y, z = (a.numpy() for a in axis_coordinates(geometry))
    b = geometry.bounds
    u, v, w = ((c - b[2 * i]) / (b[2 * i + 1] - b[2 * i]) * 2 - 1 for i, c in enumerate((x, y, z)))
    zz, yy, xx = np.meshgrid(w, v, u, indexing="ij")
    return (analytic_values(geometry) + t * (0.3 * xx * yy + 0.2 * np.cos(3 * zz))).astype(np.float32)


def write_vti_series(folder, geometry, times, name: str = "v", stem: str = "step") -> list:
    """One ``.vti`` per time of ``times`` (:func:`analytic_series_values`) as ``folder/<stem>_<i>.vti`` (the
    index unpadded, so names sort naturally, not alphabetically); returns the paths in time order."""
    from pathlib import Path

    from paraview_plugin.vtk_image import image_from_array, write_vti

    paths = []
    for i, t in enumerate(times):
        path = Path(folder) / f"{stem}_{i}.vti"
        write_vti(path, image_from_array(analytic_series_values(geometry, t), geometry, name))
        paths.append(path)
    return paths
