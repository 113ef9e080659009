"""Error metrics between a reference volume and a reconstruction: one definition for every layer.

The CLI (``srn eval``), the trainer's reports and the VTK/ParaView error filter all call these, so a PSNR
printed anywhere in the project means the same number:

* ``psnr = 20 log10(range) - 10 log10(MSE)`` where ``range`` is the reference's ``max - min`` (unless given);
* ``max_abs_error = max |reconstruction - reference|``;
* ``ssim``: scikit-image's ``structural_similarity`` on the 3-D volume with the same ``range`` (imported only
  when called, so the core keeps needing nothing beyond torch and numpy).

Whole-volume metrics of a volume split into pieces (MPI ranks) come from :class:`ErrorSums`: each piece sums
what PSNR, MSE, max error and range need, the sums are combined, and the numbers equal those of the whole.

Inputs are array-likes (NumPy arrays or torch tensors) of the same shape. Points where the reference is not
finite (masked NaN of a :class:`~srn_core.data.Volume` built with ``mask_nonfinite``) and points outside an
optional boolean ``mask`` are excluded from every metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().to("cpu").numpy()
    return np.asarray(values, dtype=np.float64)


NOTHING_TO_COMPARE = "no point is both finite in the reference and inside the mask; nothing to compare."


def _prepare(reference, reconstruction, mask=None,
             allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference and reconstruction as float64 arrays and the boolean mask of the points that count (an error
    when none counts, unless ``allow_empty``)."""
    ref = _as_numpy(reference)
    rec = _as_numpy(reconstruction)
    if ref.shape != rec.shape:
        raise ValueError(f"reference shape {ref.shape} and reconstruction shape {rec.shape} differ.")
    keep = np.isfinite(ref)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != ref.shape:
            raise ValueError(f"mask shape {m.shape} does not match the volumes' shape {ref.shape}.")
        keep &= m
    if not allow_empty and not keep.any():
        raise ValueError(NOTHING_TO_COMPARE)
    return ref, rec, keep


def data_range(reference, mask=None) -> float:
    """``max - min`` of the finite (and masked-in) reference values: the peak signal of :func:`psnr`."""
    ref = _as_numpy(reference)
    keep = np.isfinite(ref) if mask is None else np.isfinite(ref) & np.asarray(mask, dtype=bool)
    if not keep.any():
        raise ValueError("the reference holds no finite value.")
    vals = ref[keep]
    return float(vals.max() - vals.min())


def mse(reference, reconstruction, mask=None) -> float:
    """Mean squared error over the points that count (a non-finite reconstruction value gives ``inf``)."""
    ref, rec, keep = _prepare(reference, reconstruction, mask)
    diff = rec[keep] - ref[keep]
    if not np.isfinite(diff).all():
        return math.inf
    return float(np.mean(diff * diff))


def psnr(reference, reconstruction, data_range: float | None = None, mask=None) -> float:
    """Peak signal-to-noise ratio in dB: ``20 log10(range) - 10 log10(MSE)``.

    ``data_range`` defaults to the reference's ``max - min``. Identical volumes give ``inf``; a constant
    reference (range 0) with any error gives ``-inf``.
    """
    return _psnr_db(_range(reference, data_range, mask), mse(reference, reconstruction, mask))


def _psnr_db(rng: float, err: float) -> float:
    """``20 log10(rng) - 10 log10(err)`` with the edge cases of :func:`psnr`."""
    if err == 0.0:
        return math.inf
    if rng == 0.0 or not math.isfinite(err):
        return -math.inf
    return 20.0 * math.log10(rng) - 10.0 * math.log10(err)


def max_abs_error(reference, reconstruction, mask=None) -> float:
    """Largest ``|reconstruction - reference|`` over the points that count."""
    ref, rec, keep = _prepare(reference, reconstruction, mask)
    diff = np.abs(rec[keep] - ref[keep])
    return float(diff.max()) if np.isfinite(diff).all() else math.inf


def ssim(reference, reconstruction, data_range: float | None = None, mask=None) -> float:
    """Mean structural similarity of two volumes (or images) with scikit-image, over the points that count.

    The window is scikit-image's default 7 points per axis, shrunk (to an odd size of at least 3) for volumes
    thinner than that. Excluded points are set to the reference's mean in both volumes so they add no
    structure, and the SSIM map is averaged over the included points only (and, as scikit-image does, away
    from the border half-window), so without a mask the result equals ``structural_similarity``'s.

    Raises
    ------
    ImportError
        When scikit-image is not installed (``pip install scikit-image``).
    ValueError
        When an axis has fewer than 3 points, or no point counts (an all-false mask, or a mask whose points all
        lie in the border half-window).
    """
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise ImportError("SSIM needs scikit-image, which is not installed here: pip install scikit-image") from None
    ref, rec, keep = _prepare(reference, reconstruction, mask)
    rng = _range(reference, data_range, mask)
    smallest = min(ref.shape)
    if smallest < 3:
        raise ValueError(f"SSIM needs at least 3 points along every axis, got a volume of shape {ref.shape}.")
    win = min(7, smallest if smallest % 2 == 1 else smallest - 1)
    fill = float(ref[keep].mean())
    ref = np.where(keep, ref, fill)
    rec = np.where(keep & np.isfinite(rec), rec, fill)
    _, ssim_map = structural_similarity(ref, rec, data_range=rng if rng > 0 else 1.0, win_size=win, full=True)
    # Like scikit-image's own mean, skip the border half-window, where the map is computed on padding.
    pad = (win - 1) // 2
    inner = tuple(slice(pad, n - pad) for n in ref.shape)
    counted = keep[inner]
    if not counted.any():
        # The map is not defined there; averaging the filled-in background instead would be a number of nothing.
        raise ValueError(f"SSIM: every counted point lies within {pad} points of the border, where the {win}-point "
                         f"window does not fit; nothing to compare.")
    return float(ssim_map[inner][counted].mean())


@dataclass(frozen=True)
class ErrorSums:
    """The additive statistics behind :func:`mse`, :func:`psnr`, :func:`max_abs_error` and :func:`data_range`.

    ``ErrorSums.of(piece_ref, piece_rec)`` for each piece of a volume (no point counted twice), combined with
    ``+`` (or a reduction of :meth:`sums` with SUM and :meth:`maxima` with MAX across MPI ranks), gives exactly
    the metrics of the whole volume. A piece with nothing to compare is ``ErrorSums()``.
    """

    count: float = 0.0
    sse: float = 0.0
    """Sum of squared errors (``inf`` once a reconstruction value is not finite)."""
    max_abs: float = 0.0
    ref_max: float = -math.inf
    ref_min: float = math.inf

    @classmethod
    def of(cls, reference, reconstruction, mask=None) -> "ErrorSums":
        ref, rec, keep = _prepare(reference, reconstruction, mask, allow_empty=True)
        if not keep.any():
            return cls()
        diff = rec[keep] - ref[keep]
        finite = bool(np.isfinite(diff).all())
        vals = ref[keep]
        return cls(count=float(keep.sum()), sse=float(np.sum(diff * diff)) if finite else math.inf,
                   max_abs=float(np.abs(diff).max()) if finite else math.inf,
                   ref_max=float(vals.max()), ref_min=float(vals.min()))

    def __add__(self, other: "ErrorSums") -> "ErrorSums":
        return ErrorSums(self.count + other.count, self.sse + other.sse, max(self.max_abs, other.max_abs),
                         max(self.ref_max, other.ref_max), min(self.ref_min, other.ref_min))

    def sums(self) -> list[float]:
        """The entries combined by summation: ``[count, sse]``."""
        return [self.count, self.sse]

    def maxima(self) -> list[float]:
        """The entries combined by maximum: ``[max_abs, ref_max, -ref_min]``."""
        return [self.max_abs, self.ref_max, -self.ref_min]

    @classmethod
    def from_reduced(cls, sums, maxima) -> "ErrorSums":
        """Inverse of :meth:`sums` / :meth:`maxima` after a reduction."""
        return cls(float(sums[0]), float(sums[1]), float(maxima[0]), float(maxima[1]), -float(maxima[2]))

    def _check(self) -> None:
        if self.count <= 0:
            raise ValueError(NOTHING_TO_COMPARE)

    @property
    def mse(self) -> float:
        self._check()
        return self.sse / self.count

    @property
    def data_range(self) -> float:
        self._check()
        return self.ref_max - self.ref_min

    @property
    def psnr(self) -> float:
        """As :func:`psnr` with the reference's own range."""
        return _psnr_db(self.data_range, self.mse)


def _range(reference, given: float | None, mask) -> float:
    if given is None:
        return data_range(reference, mask)
    rng = float(given)
    if not math.isfinite(rng) or rng < 0:
        raise ValueError(f"data_range must be a finite number >= 0, got {given!r}.")
    return rng


__all__ = ["data_range", "mse", "psnr", "max_abs_error", "ssim", "ErrorSums"]
