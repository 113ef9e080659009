"""The loosest compression setting whose cost stays under a PSNR budget (``srn compress --max-loss``).

The cost of a setting is measured on the model's own samples (its training grid), without the data: the
re-encoded model is compared with the original, and since the quantization error is independent of the
model's own error, the two mean squared errors add. With the model's recorded training PSNR ``P`` over a value
range ``R`` that gives the PSNR the compressed model would reach against the data, and so the loss in dB::

    mse_model = R^2 10^(-P/10);   loss = 10 log10(1 + mse_change / mse_model)

For uniform codes the setting searched is the grid bits (4..16, fewest first); for SZ3 the relative error bound
(bisection on its logarithm, loosest first), as AMGSRN++ searches its SZ3 bound to keep the loss under 0.1 dB.
"""

from __future__ import annotations

import dataclasses
import math

from .compression import MAX_BITS, MIN_BITS, Compression
from .evaluate import DEFAULT_CHUNK_SIZE, image_chunks
from .metrics import ErrorSums

SZ3_BOUNDS = (1e-5, 0.2)
"""Relative error bounds the SZ3 search spans (0.2 of a channel's range is already far past any useful loss)."""
SZ3_STEPS = 10
"""Bisection steps on log(bound): the bound is found within a factor of (0.2/1e-5)**(1/1024) ~ 1 %."""


def recorded_psnr(model) -> float | None:
    """The training PSNR the model records (a finite number), or ``None`` (peers' checkpoints record none)."""
    trained = model.training.get("psnr")
    if isinstance(trained, bool) or not isinstance(trained, (int, float)) or not math.isfinite(trained):
        return None
    return float(trained)


def expected_psnr(model, mse_change: float) -> float | None:
    """The PSNR against the training data a model ``mse_change`` away from ``model`` would reach (the two
    errors taken as independent, so their MSEs add), or ``None`` without a recorded PSNR or value range."""
    trained = recorded_psnr(model)
    lo, hi = model.value_range
    span2 = (hi - lo) ** 2
    if trained is None or span2 <= 0:
        return None
    return 10 * math.log10(span2 / (span2 * 10 ** (-trained / 10) + mse_change))


def model_difference(model, other, chunk_size: int = DEFAULT_CHUNK_SIZE, on_chunk=None) -> ErrorSums:
    """:class:`~srn_core.metrics.ErrorSums` of ``other`` against ``model`` on the model's training grid, chunk by
    chunk (memory O(chunk) whatever the grid); ``on_chunk(points)`` after each chunk (a progress bar)."""
    g = model.geometry
    sums = ErrorSums()
    for a, b in zip(image_chunks(model.field, g, model.bounds, chunk_size=chunk_size),
                    image_chunks(other.field, g, other.bounds, chunk_size=chunk_size)):
        sums = sums + ErrorSums.of(a.numpy(), b.numpy())
        if on_chunk is not None:
            on_chunk(a.shape[0])
    return sums


def loss_db(model, compression: Compression, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """Estimated PSNR loss (dB, against the training data) of storing ``model`` with ``compression``."""
    trained = recorded_psnr(model)
    if trained is None:
        raise ValueError("the model records no training PSNR (peers' checkpoints do not), so the cost of a "
                         "setting against its data cannot be estimated; give --bits or --error-bound instead.")
    change = model_difference(model, model.compressed(compression), chunk_size).mse
    expected = expected_psnr(model, change)
    return 0.0 if expected is None else trained - expected


def loosest_setting(model, compression: Compression, max_loss_db: float = 0.1,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Compression, float]:
    """``(setting, its loss in dB)``: ``compression`` with the fewest grid bits (uniform codes) or the loosest
    SZ3 error bound whose estimated loss is at most ``max_loss_db``. Lossless stage and decoder bits are kept."""
    if not (max_loss_db > 0 and math.isfinite(max_loss_db)):
        raise ValueError(f"max_loss_db must be a positive number of dB, got {max_loss_db!r}.")
    if compression.codec == "sz3":
        return _loosest_bound(model, compression, max_loss_db, chunk_size)
    for bits in range(MIN_BITS, MAX_BITS + 1):  # the loss falls about 6 dB per bit: a few evaluations
        candidate = dataclasses.replace(compression, bits=bits)
        loss = loss_db(model, candidate, chunk_size)
        if loss <= max_loss_db:
            return candidate, loss
    return candidate, loss  # 16 bits: as close to float32 as uniform codes get


def _loosest_bound(model, compression, max_loss_db, chunk_size):
    lo, hi = math.log(SZ3_BOUNDS[0]), math.log(SZ3_BOUNDS[1])

    def at(log_bound):
        candidate = dataclasses.replace(compression, error_bound=math.exp(log_bound))
        return candidate, loss_db(model, candidate, chunk_size)

    best = at(lo)  # the tightest bound; if even that costs too much, it is the best there is
    loose = at(hi)
    if loose[1] <= max_loss_db:
        return loose
    for _ in range(SZ3_STEPS):
        mid = 0.5 * (lo + hi)
        candidate = at(mid)
        if candidate[1] <= max_loss_db:
            best, lo = candidate, mid
        else:
            hi = mid
    return best
