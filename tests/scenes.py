"""Small synthetic scenes shared by the renderer tests (core and VTK)."""

from __future__ import annotations

import numpy as np

from srn_core.render import TransferFunction


def blob_values(geometry):
    """A ball of smoothly varying density in an empty (zero) box: lots of space to skip."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in geometry.dims), indexing="ij")
    r = np.sqrt(x ** 2 + (1.3 * y) ** 2 + z ** 2)
    v = np.clip(1.0 - r / 0.6, 0, None) * (1.0 + 0.3 * np.sin(6 * x))
    return np.ascontiguousarray(v.transpose(2, 1, 0), dtype=np.float32)


def tissue_tf():
    return TransferFunction.from_points([(0, 0, 0, 0), (0.4, 1, 0.5, 0.2), (1.3, 1, 1, 1)],
                                        [(0, 0), (0.05, 0), (0.5, 0.6), (1.3, 0.9)])
