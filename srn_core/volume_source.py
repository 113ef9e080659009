"""Volumes read box by box: the one interface training, ensembles and metrics use for data that may not fit.

A :class:`VolumeSource` is a scalar volume on an :class:`~srn_core.geometry.ImageGeometry` that hands out any
sub-box as float32, ``source.read(np.s_[z0:z1, y0:y1, x0:x1])`` being exactly ``volume.values[z0:z1, y0:y1,
x0:x1]`` of the same data read whole (NaN where a value is not finite and ``mask_nonfinite`` is on).
:class:`ArraySource` wraps an in-memory :class:`~srn_core.data.Volume`; the file-backed sources (memory maps,
HDF5/NetCDF hyperslabs, raw appended VTI) live in :mod:`srn_core.volume_files`.

Conventions: boxes are NumPy index tuples in array order ``(z, y, x)``, half-open; ``shape`` is ``(nz, ny, nx)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .data import Volume
from .geometry import ImageGeometry
from .memory import check_allocation

Box = tuple[slice, slice, slice]
"""A sub-box in array order ``(z, y, x)``: three slices with step 1 (``np.s_[z0:z1, y0:y1, x0:x1]``)."""


@dataclass(frozen=True)
class SourceStatistics:
    """What training and model files need to know of a whole volume, from one streaming pass."""

    value_range: tuple[float, float]
    """Min and max of the finite values."""
    checksum: str
    """SHA-256 equal to :meth:`srn_core.data.Volume.checksum` of the same data read whole."""
    nonfinite: int
    """Number of NaN/Inf values (kept as NaN only with ``mask_nonfinite``)."""
    mean: float
    std: float


def box_shape(box: Box, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The ``(nz, ny, nx)`` of ``box`` inside an array of ``shape``; one clear error for a box outside it."""
    out = []
    for axis, (s, n) in enumerate(zip(box, shape)):
        start, stop, step = s.indices(n)
        if step != 1 or not (0 <= start < stop <= n) or (s.start is not None and s.start < 0) or (
                s.stop is not None and s.stop > n):
            raise ValueError(f"box {box} does not lie inside the volume of shape {shape} (axis {'zyx'[axis]}).")
        out.append(stop - start)
    return tuple(out)  # type: ignore[return-value]


def box_geometry(geometry: ImageGeometry, box: Box) -> ImageGeometry:
    """The geometry of the points of ``box`` (array order) of an image of ``geometry``."""
    z, y, x = (s.indices(n)[:2] for s, n in zip(box, geometry.shape))
    return geometry.sub_geometry((x[0], x[1] - 1, y[0], y[1] - 1, z[0], z[1] - 1))


class VolumeSource:
    """A scalar volume read box by box. Subclasses implement :meth:`_read` (and may override :meth:`statistics`).

    ``geometry``, ``name`` and ``mask_nonfinite`` mean what they mean on :class:`~srn_core.data.Volume`.
    """

    geometry: ImageGeometry
    name: str = "values"
    mask_nonfinite: bool = False
    pass_bytes: int = 16 << 20
    """Slab size of the streaming passes (:meth:`statistics`, :func:`srn_core.series.series_psnr`): each holds a
    few float64 copies of a slab: the statistics pass measured 340 MB above the baseline at 64 MiB slabs, 120 MB
    at 16 MiB."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    @property
    def nbytes(self) -> int:
        """Bytes of the volume as float32 (what reading it whole would hold)."""
        return 4 * self.geometry.num_points

    def read(self, box: Box) -> np.ndarray:
        """The float32 values of ``box`` ``(nz, ny, nx)``, C-contiguous, a new array the caller owns."""
        shape = box_shape(box, self.shape)
        check_allocation(4 * float(np.prod(shape)), f"a box of {shape} (z, y, x) of {self.name!r}")
        out = np.ascontiguousarray(self._read(box), dtype=np.float32)
        if out.shape != shape:
            raise RuntimeError(f"{type(self).__name__} returned {out.shape} for box {box} of shape {shape}.")
        if not self.mask_nonfinite:
            return out
        bad = ~np.isfinite(out)
        if bad.any():
            out[bad] = np.nan
        return out

    def _read(self, box: Box) -> np.ndarray:
        raise NotImplementedError

    def sub(self, box: Box) -> "VolumeSource":
        """The source of ``box`` alone (its own geometry: the same spacing, its first point as origin)."""
        return BoxSource(self, box)

    def load(self) -> Volume:
        """Everything in memory, as the :class:`~srn_core.data.Volume` the file would read as."""
        return Volume(self.read(np.s_[:, :, :]), self.geometry, self.name, self.mask_nonfinite)

    def slabs(self, max_bytes: int = 64 << 20):
        """``(box, values)`` for consecutive z-slabs covering the volume, each at most ``max_bytes`` of float32
        (at least one z-slice): the streaming pass every whole-volume statistic uses."""
        nz, ny, nx = self.shape
        per_slice = 4 * ny * nx
        step = max(1, int(max_bytes) // per_slice)
        for z0 in range(0, nz, step):
            box = np.s_[z0:min(nz, z0 + step), :, :]
            yield box, self.read(box)

    def statistics(self) -> SourceStatistics:
        """Value range, checksum, non-finite count, mean and standard deviation in one streaming pass (cached).

        Refuses what :class:`~srn_core.data.Volume` refuses: non-finite values without ``mask_nonfinite``, or
        no finite value at all."""
        cached = getattr(self, "_statistics", None)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        lo, hi, bad, count, total, total_sq = np.inf, -np.inf, 0, 0, 0.0, 0.0
        for _, values in self.slabs(self.pass_bytes):
            h.update(memoryview(values).cast("B"))
            finite = np.isfinite(values)
            n_bad = int(values.size - np.count_nonzero(finite))
            bad += n_bad
            kept = values[finite] if n_bad else values.ravel()
            if kept.size:
                lo, hi = min(lo, float(kept.min())), max(hi, float(kept.max()))
                count += kept.size
                as64 = kept.astype(np.float64)
                total += float(as64.sum())
                total_sq += float(np.dot(as64, as64))
        h.update(repr(self.geometry.to_dict()).encode())
        if bad and not self.mask_nonfinite:
            raise ValueError(f"volume {self.name!r} holds {bad} non-finite values (NaN/Inf); pass --mask-nonfinite "
                             f"(mask_nonfinite=True) to exclude them from training and metrics.")
        if count == 0:
            raise ValueError(f"volume {self.name!r} holds no finite value.")
        mean = total / count
        stats = SourceStatistics((lo, hi), h.hexdigest(), bad, mean, float(np.sqrt(max(0.0, total_sq / count - mean ** 2))))
        self._statistics = stats
        return stats

    @property
    def value_range(self) -> tuple[float, float]:
        return self.statistics().value_range

    def checksum(self) -> str:
        return self.statistics().checksum


class ArraySource(VolumeSource):
    """An in-memory :class:`~srn_core.data.Volume` as a source (boxes are copies of its array)."""

    def __init__(self, volume: Volume):
        self.volume = volume
        self.geometry, self.name, self.mask_nonfinite = volume.geometry, volume.name, volume.mask_nonfinite

    def _read(self, box: Box) -> np.ndarray:
        return self.volume.values[box].copy()

    def load(self) -> Volume:
        return self.volume


class BoxSource(VolumeSource):
    """A sub-box of another source, itself a source (what one ensemble brick trains on)."""

    def __init__(self, parent: VolumeSource, box: Box):
        box_shape(box, parent.shape)
        self.parent = parent
        self.offset = tuple(s.indices(n)[0] for s, n in zip(box, parent.shape))
        self.geometry = box_geometry(parent.geometry, box)
        self.name, self.mask_nonfinite = parent.name, parent.mask_nonfinite

    def _read(self, box: Box) -> np.ndarray:
        shifted = tuple(slice(s.indices(n)[0] + o, s.indices(n)[1] + o)
                        for s, n, o in zip(box, self.shape, self.offset))
        return self.parent.read(shifted)


def as_source(data: Volume | VolumeSource) -> VolumeSource:
    """``data`` as a :class:`VolumeSource` (a volume is wrapped, a source returned as is)."""
    return data if isinstance(data, VolumeSource) else ArraySource(data)


__all__ = ["Box", "SourceStatistics", "VolumeSource", "ArraySource", "BoxSource", "as_source", "box_shape",
           "box_geometry"]
