"""Time series of volumes: one geometry and one array over increasing time values, and how a model is measured
against one.

Readers that produce a series (a NetCDF variable with a time dimension, a 4-D NIfTI, a list or glob of files)
live with the single-volume readers in :mod:`srn_core.data`; VTK's (``.vti`` lists, ``.pvd`` collections) in
``paraview_plugin.vtk_image``. All of them end here, where the steps are checked against each other.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .data import Volume
from .metrics import ErrorSums, mse, psnr
from .volume_source import VolumeSource


@dataclass
class TimeSeries:
    """Volumes ``steps[i]`` at times ``times[i]`` (increasing), all on one geometry with one array name.

    A step that differs from the first in dims, origin, spacing or array name is one clear error naming the
    step: a model learns one grid over time, and nothing is silently resampled or dropped.
    """

    steps: list[Volume]
    times: list[float]
    time_unit: str = ""
    """What a time value means (``hours since ...``, ``s``); empty when the source does not say."""

    def __post_init__(self):
        if not self.steps:
            raise ValueError("a time series needs at least one step, got none.")
        if len(self.times) != len(self.steps):
            raise ValueError(f"a time series of {len(self.steps)} steps needs as many times, got {len(self.times)}.")
        times = [float(t) for t in self.times]
        for i, t in enumerate(times):
            if not math.isfinite(t):
                raise ValueError(f"time step {i} has time {t}; times must be finite numbers.")
            if i and not t > times[i - 1]:
                raise ValueError(f"time step {i} has time {t:g}, not after step {i - 1}'s {times[i - 1]:g}; "
                                 f"times must increase.")
        self.times = times
        first = self.steps[0]
        for i, step in enumerate(self.steps[1:], 1):
            g, g0 = step.geometry, first.geometry
            for what, a, b in (("dims", g.dims, g0.dims), ("origin", g.origin, g0.origin),
                               ("spacing", g.spacing, g0.spacing)):
                if not np.allclose(a, b, rtol=1e-6, atol=0):
                    raise ValueError(f"time step {i} (t={times[i]:g}) has {what} {tuple(a)} but step 0 has "
                                     f"{tuple(b)}; every step of a series needs the same grid.")
            if step.name != first.name:
                raise ValueError(f"time step {i} (t={times[i]:g}) holds array {step.name!r} but step 0 holds "
                                 f"{first.name!r}; every step of a series needs the same array.")
        if any(s.mask_nonfinite for s in self.steps):
            for s in self.steps:
                s.mask_nonfinite = True

    # ---- what a single volume also has -------------------------------------------------------------
    @property
    def geometry(self):
        return self.steps[0].geometry

    @property
    def name(self) -> str:
        return self.steps[0].name

    @property
    def mask_nonfinite(self) -> bool:
        return self.steps[0].mask_nonfinite

    @property
    def value_range(self) -> tuple[float, float]:
        """The range over every step (what a model of the whole series rescales to)."""
        ranges = [s.value_range for s in self.steps]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def __len__(self) -> int:
        return len(self.steps)

    def checksum(self) -> str:
        """SHA-256 of every step's checksum and the times: ties a model to the exact series it learned."""
        h = hashlib.sha256()
        for t, s in zip(self.times, self.steps):
            h.update(repr(t).encode())
            h.update(s.checksum().encode())
        return h.hexdigest()

    def select(self, indices) -> "TimeSeries":
        """The steps at ``indices`` (in that order, which must keep the times increasing)."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < len(self.steps):
                raise ValueError(f"time step index {i} is out of range; the series has steps 0 to "
                                 f"{len(self.steps) - 1}.")
        return TimeSeries([self.steps[i] for i in indices], [self.times[i] for i in indices], self.time_unit)


def parse_time_selection(text: str, count: int) -> list[int]:
    """Step indices from a ``--time`` selection: ``all``, ``I``, ``I,J,K``, ``A:B`` or ``A:B:S`` (Python slice,
    end exclusive). One clear error for anything else or an index outside ``0..count-1``."""
    text = str(text).strip()
    if text == "all":
        return list(range(count))
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            indices = list(range(count))[slice(*parts)]
        else:
            indices = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--time selection {text!r} is not 'all', an index, a comma list or a slice A:B[:S].") \
            from None
    bad = [i for i in indices if not 0 <= i < count]
    if bad or not indices:
        raise ValueError(f"--time selection {text!r} selects steps {bad or 'none'}; the series has steps 0 to "
                         f"{count - 1}.")
    return indices


def series_psnr(model, reference, chunk_size: int | None = None, slab_bytes: int | None = None) -> dict:
    """PSNR of ``model`` against a :class:`~srn_core.data.Volume`, a :class:`TimeSeries` or a
    :class:`~srn_core.volume_source.VolumeSource`.

    A source is compared z-slab by z-slab (slabs of at most ``slab_bytes`` of data, default the source's
    ``pass_bytes``, the model resampled on the same slab), the errors added up by
    :class:`~srn_core.metrics.ErrorSums`: memory stays bounded by the slab whatever the volume's size.

    For a series: every step resampled at its time and compared with the series' one value range;
    ``psnr`` is over the whole series (the mean squared error of all steps), ``psnr_per_step`` per step.
    """
    kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
    if isinstance(reference, VolumeSource):
        total = ErrorSums()
        nx, ny = reference.shape[2], reference.shape[1]
        for box, values in reference.slabs(slab_bytes or reference.pass_bytes):
            z0, z1, _ = box[0].indices(reference.shape[0])
            rec = model.resample(extent=(0, nx - 1, 0, ny - 1, z0, z1 - 1), **kwargs)
            for ref_slice, rec_slice in zip(values, rec):  # a z-slice at a time: ErrorSums holds float64 copies
                total = total + ErrorSums.of(ref_slice, rec_slice,
                                             np.isfinite(ref_slice) if reference.mask_nonfinite else None)
        return {"psnr": total.psnr}
    if not isinstance(reference, TimeSeries):
        values = model.resample(**kwargs)
        return {"psnr": psnr(reference.values, values, mask=reference.finite_mask)}
    lo, hi = reference.value_range
    errors, per_step = [], []
    for t, step in zip(reference.times, reference.steps):
        values = model.resample(time=t, **kwargs)
        errors.append(mse(step.values, values, step.finite_mask))
        per_step.append(psnr(step.values, values, data_range=hi - lo, mask=step.finite_mask))
    mean = float(np.mean(errors))
    overall = math.inf if mean == 0 else (-math.inf if hi == lo else 20 * math.log10(hi - lo) - 10 * math.log10(mean))
    return {"psnr": overall, "psnr_per_step": per_step}
