"""APMGSRN inference as one compiled CPU kernel: :func:`fused_evaluator` gives a callable that returns what
``field(points)`` returns, about 10x faster, for APMGSRNs and ensembles of them
(benchmarks/field_throughput.py: 28 against 2.3 M points/s for the 44k-parameter inia19 model, 2 threads).

The PyTorch path (``field(points)``) stays the reference: it is what training differentiates, what runs on CUDA
and what every other architecture uses. The fused kernel (:mod:`srn_core.kernels.apmgsrn_numba`) is a numba
function of the same parameters; it agrees with the reference to about 1e-6 of the value range (float32 sums in
another order; tested to 1e-5). It is used when all of these hold, else :func:`fused_evaluator` returns ``None``
and the caller evaluates the field itself:

* the field is an :class:`~srn_core.fields.APMGSRN` (any grid count, features, grid shape, input padding, decoder
  width up to 64 and depth, with or without biases) or an :class:`~srn_core.fields.EnsembleField` of them;
* its parameters are float32 tensors on the CPU;
* numba imports (``pip install numba``; without it a ``RuntimeWarning`` says so once per process);
* the environment variable ``SRN_FUSED`` is not ``0`` (read at every call: ``SRN_FUSED=0`` gives the reference
  path everywhere, e.g. to compare).

Weights are packed into numpy arrays once per field and repacked when a parameter or buffer changes (any
in-place update bumps a tensor's version counter: optimiser steps, ``load_state_dict``, ``copy_``); the pack is
held per field object through a weak reference, so it goes when the field goes. The evaluator is for inference:
its result never has a gradient. It runs on ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
import weakref
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..fields.apmgsrn import APMGSRN
from ..fields.base import to_data_units
from ..fields.ensemble import EnsembleField

CHUNKS_PER_THREAD = 4
"""Pieces each thread's share of the points is cut into; threads take them one at a time (numba's dynamic
scheduling, chunk size 1), so a thread that another process slows down takes fewer: beside one busy process,
2 threads kept 11 M points/s instead of 8 with numba's default static split (measured)."""

MAX_WIDTH = 64
"""The widest decoder the kernel takes (its register tile holds 64 accumulators); wider ones use PyTorch."""

_EVALUATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_KERNEL = None  # the imported srn_core.kernels.apmgsrn_numba module, once imported
_KERNEL_ERROR: BaseException | None = None
_WARNED = False
_COMPILED_WIDTHS: set[int] = set()
_LOCK = threading.RLock()  # one kernel launch at a time: numba's workqueue threading layer is not re-entrant


def fused_evaluator(field) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A callable ``values = f(points)`` equal to ``field(points)`` (to float32 rounding), or ``None`` when the
    fused kernel cannot evaluate ``field`` (see the module docstring for when).

    ``points``: float32 CPU tensor ``(N, 3)`` in the model cube; ``values``: float32 ``(N,)`` in data units,
    clamped to the value range while ``field.clamp_output`` is on (read at every call). The same callable is
    returned for the same field until the field is garbage collected.
    """
    if os.environ.get("SRN_FUSED", "1").strip() == "0" or not _supported(field) or _kernel() is None:
        return None
    try:
        evaluator = _EVALUATORS.get(field)
    except TypeError:  # a field that cannot be weakly referenced
        return None
    if evaluator is None:
        evaluator = FusedEnsemble(field) if isinstance(field, EnsembleField) else FusedAPMGSRN(field)
        _EVALUATORS[field] = evaluator
    return evaluator


def _supported(field) -> bool:
    if isinstance(field, EnsembleField):
        # A partial ensemble (loaded for an extent) is supported over its loaded bricks; routing a point to an
        # absent one is the ensemble's own error.
        loaded = [field.bricks[k] for k in field.present]
        return len(loaded) > 0 and all(type(b) is APMGSRN and _cpu_float32(b) for b in loaded)
    if type(field) is not APMGSRN:  # a subclass may compute something else
        return False
    layers = field.decoder.linears
    return _cpu_float32(field) and layers[-1].out_features == 1 and layers[0].out_features <= MAX_WIDTH


def _cpu_float32(field) -> bool:
    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in field.parameters())


def _kernel():
    """The compiled-kernel module, imported on first use; ``None`` (and one warning) when numba is unusable."""
    global _KERNEL, _KERNEL_ERROR, _WARNED
    if _KERNEL is None and _KERNEL_ERROR is None:
        try:
            with _signals_held():
                from . import apmgsrn_numba  # noqa: PLC0415 - deliberately lazy: numba takes ~0.5 s to import

            _KERNEL = apmgsrn_numba
        except Exception as exc:  # noqa: BLE001 - numba missing, or a numba/numpy/llvmlite mismatch
            _KERNEL_ERROR = exc
    if _KERNEL is None and not _WARNED:
        _WARNED = True
        exc = _KERNEL_ERROR
        if isinstance(exc, ModuleNotFoundError) and exc.name in ("numba", "llvmlite"):
            reason = "numba is not installed (pip install numba)"
        else:
            reason = f"numba failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        warnings.warn(f"the fused APMGSRN kernel is off because {reason}; evaluating with PyTorch instead "
                      f"(same values, about 10x slower).", RuntimeWarning, stacklevel=4)
    return _KERNEL


@contextlib.contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM while numba imports or compiles, and deliver them right after.

    LLVM calls back into Python (ctypes callbacks) while it compiles; a Python signal handler that raises there
    (``KeyboardInterrupt``, or the training loop's interrupt handler) is swallowed by ctypes with an "Exception
    ignored" traceback, and the interrupt is lost. Held here, the signal reaches its own handler a few seconds
    later, outside the compiler. Signal handlers can only be changed in the main thread; elsewhere nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):  # a Python handler; SIG_DFL / SIG_IGN act outside Python and need no holding
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in caught:
            signal.raise_signal(signum)


class _CompileError(Exception):
    """The kernel failed to compile; its cause is numba's exception."""


def _disable(exc: BaseException) -> None:
    """Turn the kernel off for this process after ``exc`` (said once, like a missing numba)."""
    global _KERNEL, _KERNEL_ERROR
    _KERNEL, _KERNEL_ERROR = None, exc
    _kernel()


def tensor_slots(module: torch.nn.Module) -> list[tuple[dict, str, torch.Tensor]]:
    """Every parameter and buffer of ``module`` with the dict that holds it: ``(holder, name, tensor)``."""
    return [(holder, name, t) for m in module.modules() for holder in (m._parameters, m._buffers)
            for name, t in holder.items() if t is not None]


def slots_version(slots) -> tuple | None:
    """Storage and version counter of every tensor of ``slots``, or ``None`` when one of them was replaced.

    Any in-place change bumps a version counter (optimiser steps, ``load_state_dict``, ``copy_``), assigning
    ``.data`` changes the storage, assigning a new parameter replaces the holder's entry. A few microseconds:
    walking ``module.parameters()`` on every call took 33.
    """
    if not all(holder.get(name) is t for holder, name, t in slots):
        return None
    return tuple((t._version, t.data_ptr()) for _, _, t in slots)


class PackedAPMGSRN(NamedTuple):
    """An APMGSRN's parameters as the arrays the compiled kernel reads (see :func:`pack`)."""
    geometry: np.ndarray     # (M, 16) per grid: cell = A' p + b' as 12 coefficients, then the 3 upper clamp bounds
    grids: np.ndarray        # flat M * C * (D + 2P) * (H + 2P) * (W + 2P): grids with P zero cells on every side
    grid_dims: np.ndarray    # (3,) int64: D, H, W
    n_channels: int          # C
    first_t: np.ndarray      # (M * C, width) first decoder layer, transposed, without the input-padding columns
    first_bias: np.ndarray   # (width,) its bias plus the padding columns' weights (those inputs are always 1)
    hidden_t: np.ndarray     # (n_hidden_layers - 1, width, width) the hidden layers, transposed
    hidden_bias: np.ndarray  # (n_hidden_layers - 1, width)
    last: np.ndarray         # (width,) the output layer
    last_bias: np.float32
    low: np.float32          # value range
    high: np.float32
    width: int


def pack(field: APMGSRN, grid_pad: int, geometry_columns: int) -> PackedAPMGSRN:
    """``field``'s parameters as contiguous float32 numpy arrays (copies: later changes need a new pack).

    The grid transforms are folded into the ``grid_sample`` unnormalisation: grid ``g`` maps point ``p`` to the
    padded cell coordinate ``(A p + b + 1) / 2 * (n - 1) + grid_pad`` per axis (x to W, y to H, z to D), i.e.
    ``A' p + b'`` with ``A' = A (n - 1) / 2`` and ``b' = (b + 1) (n - 1) / 2 + grid_pad``, computed in float64.
    """
    def array(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().numpy(), dtype=np.float32)

    c = field.config
    grids = array(field.feature_grids)
    m, n_channels, d, h, w = grids.shape
    geometry = cell_geometry(field.transforms, (d, h, w), grid_pad, geometry_columns)
    padded = np.zeros((m, n_channels, d + 2 * grid_pad, h + 2 * grid_pad, w + 2 * grid_pad), np.float32)
    padded[:, :, grid_pad:-grid_pad, grid_pad:-grid_pad, grid_pad:-grid_pad] = grids
    layers = field.decoder.linears
    width = layers[0].out_features
    n_features = c.n_grids * c.n_features

    def bias(layer) -> np.ndarray:
        return np.zeros(layer.out_features, np.float32) if layer.bias is None else array(layer.bias)

    first = array(layers[0].weight)
    hidden = layers[1:-1]
    return PackedAPMGSRN(
        geometry=geometry,
        grids=padded.reshape(-1),
        grid_dims=np.array([d, h, w], np.int64),
        n_channels=int(n_channels),
        first_t=np.ascontiguousarray(first[:, :n_features].T),
        first_bias=(bias(layers[0]).astype(np.float64) + first[:, n_features:].sum(axis=1, dtype=np.float64)
                    ).astype(np.float32),
        hidden_t=np.ascontiguousarray(np.stack([array(l.weight).T for l in hidden]) if hidden
                                      else np.zeros((0, width, width), np.float32)),
        hidden_bias=(np.stack([bias(l) for l in hidden]) if hidden else np.zeros((0, width), np.float32)),
        last=array(layers[-1].weight)[0].copy(),
        last_bias=np.float32(bias(layers[-1])[0]),
        low=np.float32(field.value_range[0]),
        high=np.float32(field.value_range[1]),
        width=int(width),
    )


def cell_geometry(transforms: torch.Tensor, grid_shape, grid_pad: int, geometry_columns: int) -> np.ndarray:
    """``(M, geometry_columns)`` float32: per grid the 12 coefficients of ``cell = A' p + b'`` (row-major
    ``[A' | b']``; x, y, z index W, H, D of a grid padded by ``grid_pad`` cells) and the 3 upper clamp bounds
    (see :func:`pack`; computed in float64)."""
    d, h, w = grid_shape
    t = transforms.detach().double().cpu().numpy()
    m = t.shape[0]
    half = np.array([w - 1, h - 1, d - 1], np.float64) / 2  # local x indexes W, y H, z D
    geometry = np.zeros((m, geometry_columns), np.float32)
    linear = t[:, :3, :3] * half[None, :, None]
    offset = (t[:, :3, 3] + 1) * half + grid_pad
    geometry[:, :12] = np.concatenate([linear, offset[:, :, None]], axis=2).reshape(m, 12)
    geometry[:, 12:15] = np.array([w, h, d], np.float64) + grid_pad + 0.5
    return geometry


class FusedAPMGSRN:
    """``field(points)`` of one APMGSRN through the fused kernel (see :func:`fused_evaluator`).

    Holds the field weakly and its packed weights, repacked when :func:`slots_version` changes.
    """

    def __init__(self, field: APMGSRN):
        self._field = weakref.ref(field)
        self._slots: list = []
        self._version: tuple | None = None
        self._packed: PackedAPMGSRN | None = None

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        field = self._live_field()
        return self.data_units(points, field.clamp_output)

    def data_units(self, points: torch.Tensor, clamp: bool) -> torch.Tensor:
        """Values ``(N,)`` in data units at ``points (N, 3)``, clamped to the value range when ``clamp``."""
        points = _checked_points(points)
        if points.shape[0] == 0:
            return torch.empty(0, dtype=torch.float32)
        if _kernel() is not None:
            packed = self._current_pack()
            out = np.empty(points.shape[0], np.float32)
            try:
                _run(packed, points.numpy(), bool(clamp), out)
                return torch.from_numpy(out)
            except _CompileError as exc:  # numba imported but cannot build the kernel on this machine
                _disable(exc.__cause__)
        field = self._live_field()  # the kernel is off (said once): the field's own PyTorch path
        with torch.no_grad():
            return to_data_units(field.normalized(points), field.value_range, clamp)

    def _live_field(self) -> APMGSRN:
        field = self._field()
        if field is None:
            raise RuntimeError("the field of this fused evaluator no longer exists.")
        return field

    def _current_pack(self) -> PackedAPMGSRN:
        field = self._live_field()
        version = slots_version(self._slots)
        if version is None or version != self._version:
            if not _cpu_float32(field):
                raise ValueError("the fused kernel evaluates float32 fields on the CPU; this field's parameters "
                                 "moved to another device or dtype: call fused_evaluator(field) again.")
            self._slots = tensor_slots(field)
            self._packed = pack(field, _kernel().GRID_PAD, _kernel().GEOMETRY_COLUMNS)
            self._version = slots_version(self._slots)
        return self._packed


class FusedEnsemble:
    """``field(points)`` of an :class:`EnsembleField` of APMGSRN bricks: the points are routed to their bricks
    with the ensemble's own (PyTorch) code, each loaded brick runs the fused kernel."""

    def __init__(self, field: EnsembleField):
        self._field = weakref.ref(field)
        self._bricks = {k: FusedAPMGSRN(field.bricks[k]) for k in field.present}

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        field = self._field()
        if field is None:
            raise RuntimeError("the field of this fused evaluator no longer exists.")
        points = _checked_points(points)
        out = torch.zeros(points.shape[0], dtype=torch.float32)
        for k, rows in field.segments(points):  # the ensemble's own routing (and its error for an absent brick)
            local = field.local_points(k, points[rows])  # the ensemble's own remapping, op for op
            out[rows] = self._bricks[k].data_units(local, field.clamp_output)
        return out


def _checked_points(points: torch.Tensor) -> torch.Tensor:
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be a tensor of shape (N, 3), got {getattr(points, 'shape', type(points))}.")
    if points.device.type != "cpu" or points.dtype != torch.float32:
        raise ValueError(f"points must be float32 on the CPU for the fused kernel, got {points.dtype} on "
                         f"{points.device}.")
    return points.detach().contiguous()


@contextlib.contextmanager
def numba_threads():
    """Inside: numba runs on ``torch.get_num_threads()`` threads (at most ``NUMBA_NUM_THREADS``) with dynamic
    scheduling (chunk size 1, see :data:`CHUNKS_PER_THREAD`), one kernel launch at a time; yields the thread count.
    Shared by every compiled kernel (inference and :mod:`.fused_training`).

    On leaving, torch's OpenMP thread count is restored: numba's OpenMP threading layer sets it, which torch
    shares, to ``NUMBA_NUM_THREADS`` on its first launch. Without this, one evaluation would make every later
    training step in the process (an MPI rank's next brick) run on all cores, oversubscribed and no longer
    bit-identical to a fresh run.
    """
    import numba  # noqa: PLC0415 - imported already by _kernel()

    torch_threads = torch.get_num_threads()
    try:
        with _LOCK:
            numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
            previous = numba.set_parallel_chunksize(1)
            try:
                yield numba.get_num_threads()
            finally:
                numba.set_parallel_chunksize(previous)
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def _run(packed: PackedAPMGSRN, points: np.ndarray, clamp: bool, out: np.ndarray) -> None:
    """One kernel launch over all ``points`` on ``torch.get_num_threads()`` threads."""
    module = _kernel()
    with numba_threads() as threads:
        n_spans = -(-points.shape[0] // module.SPAN)
        n_chunks = max(1, min(n_spans, threads * CHUNKS_PER_THREAD))
        args = (packed.geometry, packed.grids, packed.grid_dims, packed.n_channels, packed.first_t,
                packed.first_bias, packed.hidden_t, packed.hidden_bias, packed.last, packed.last_bias, packed.low,
                packed.high, clamp)
        if packed.width not in _COMPILED_WIDTHS:
            # The first call for a width compiles (or loads from numba's cache) with SLP vectorisation on: a
            # one-point call, so that numba's compiler lock is not held for a whole evaluation.
            try:
                kernel = module.kernel_for_width(packed.width)
                with _signals_held(), module.compile_with_slp():
                    kernel(points[:1], *args, 1, out[:1])
            except Exception as exc:  # noqa: BLE001 - a numba typing or LLVM error
                raise _CompileError from exc
            _COMPILED_WIDTHS.add(packed.width)
        module.kernel_for_width(packed.width)(points, *args, n_chunks, out)
