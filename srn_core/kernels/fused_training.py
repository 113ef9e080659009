"""The fast path of an APMGSRN training step on the CPU: compiled feature lookups, feature density and ground
truth (:mod:`srn_core.kernels.training_numba`) behind autograd functions, so the training loop, the decoder and
Adam stay PyTorch.

* :class:`FusedLookup`: ``field.encode(points)`` (features ``(N, M*C)``) with its gradient to the feature grids.
  Like the reference, the transforms get no gradient from the lookups (they move only by the density loss).
* :class:`FusedDensity`: ``field.feature_density(points)`` with its gradient to the transforms and the per-grid
  weights (``det(A) / (2 pi)^1.5``, whose own gradient autograd takes from ``torch.linalg.det``).
* :func:`trilinear_border`: ``grid_sample(volume, points, "bilinear", "border", align_corners=True)`` by index
  arithmetic, the ground truth of a training batch.

The PyTorch path (:meth:`APMGSRN.encode`, :meth:`APMGSRN.feature_density`, ``grid_sample``) stays the reference:
the tests hold these to it (forward and gradients to 1e-5, ``gradcheck`` in float64), and
``TrainConfig(fused=False)`` or ``SRN_FUSED=0`` trains on it. :func:`training_kernels` says whether the kernels can
run (numba imports; else one ``RuntimeWarning``, shared with the inference kernel, and the reference path runs).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from . import fused_apmgsrn
from .fused_apmgsrn import _signals_held, numba_threads

TASKS_PER_THREAD = 4
"""Tasks each thread's share of the points is cut into, handed out one at a time (numba's dynamic scheduling):
a thread slowed by another process takes fewer (see :data:`fused_apmgsrn.CHUNKS_PER_THREAD`)."""

_MODULE = None
_BROKEN: BaseException | None = None  # why the kernels cannot be built in this process (see warm_up)
_COMPILED: set = set()


def training_kernels():
    """The compiled training kernels' module, or ``None`` when numba is unusable (said once per process)."""
    global _MODULE
    # fused_apmgsrn._kernel() imports numba, or says once that it cannot.
    if _MODULE is None and _BROKEN is None and fused_apmgsrn._kernel() is not None:
        with _signals_held():
            from . import training_numba  # noqa: PLC0415 - lazy: compiling is for processes that train

        _MODULE = training_numba
    return _MODULE


def fused_training_enabled() -> bool:
    """False where ``SRN_FUSED=0`` (read at every call), as for the inference kernel."""
    return os.environ.get("SRN_FUSED", "1").strip() != "0"


@contextlib.contextmanager
def _launch(key):
    """:func:`~.fused_apmgsrn.numba_threads` (threads, scheduling, one launch at a time); the first launch of each
    ``key`` (a kernel and its dtypes) compiles or loads from numba's cache, with Ctrl-C held until it is done."""
    with numba_threads() as threads:
        if key in _COMPILED:
            yield threads
        else:
            with _signals_held():
                yield threads
            _COMPILED.add(key)


def _tasks(n: int, threads: int) -> int:
    return max(1, min(n, threads * TASKS_PER_THREAD))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class FusedLookup(torch.autograd.Function):
    """Grid-major features ``(N, M*C)`` of float32 ``grids (M, C, D, H, W)`` at ``points (N, 3)`` placed by
    ``transforms (M, 4, 4)``; the gradient flows to ``grids`` only."""

    @staticmethod
    def forward(ctx, points: torch.Tensor, transforms: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        module = training_kernels()
        pad = module.GRID_PAD
        points = points.detach().contiguous()
        m, c = grids.shape[:2]
        geometry = fused_apmgsrn.cell_geometry(transforms, grids.shape[-3:], pad,
                                               fused_apmgsrn._kernel().GEOMETRY_COLUMNS)
        padded = F.pad(grids.detach(), (pad,) * 6)
        dims = np.array(grids.shape[-3:], np.int64)
        out = torch.empty(points.shape[0], m * c, dtype=grids.dtype)
        with _launch(("lookup", grids.dtype)) as threads:
            if grids.dtype == torch.float32:
                module.lookup_forward(points.numpy(), geometry, padded.view(-1).numpy(), dims, c,
                                      _tasks(-(-points.shape[0] // module.SPAN), threads), out.numpy())
            else:  # the float64 gradient checks
                module.lookup_forward_scalar(points.numpy(), geometry.astype(_numpy(points).dtype),
                                             padded.view(-1).numpy(), dims, c, out.numpy())
        ctx.save_for_backward(points)
        ctx.geometry, ctx.dims, ctx.padded_shape = geometry, dims, tuple(padded.shape)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (points,) = ctx.saved_tensors
        module = training_kernels()
        pad = module.GRID_PAD
        m, c = ctx.padded_shape[:2]
        grad = grad.contiguous()
        with _launch(("lookup_backward", grad.dtype)) as threads:
            splits = max(1, math.ceil(threads / m)) if points.shape[0] >= threads else 1
            padded = torch.zeros((splits, *ctx.padded_shape), dtype=grad.dtype)
            module.lookup_backward(points.numpy(), ctx.geometry.astype(_numpy(points).dtype), grad.numpy(), ctx.dims, c, splits,
                                   padded.view(-1).numpy())
        if splits > 1:
            padded = padded.sum(0, keepdim=True)
        return None, None, padded[0, :, :, pad:-pad, pad:-pad, pad:-pad].contiguous()


class FusedDensity(torch.autograd.Function):
    """``sum_g weights[g] * exp(-0.5 * sum_r local_gr ** exponent)`` per point ``(N,)``, ``local = A p + b`` from
    ``transforms (M, 4, 4)``; gradients to ``transforms`` and ``weights``. The exponents come from the kernel, the
    exponentials and the weighted sum from torch (vectorised ``exp``, one matrix-vector product)."""

    @staticmethod
    def forward(ctx, points: torch.Tensor, transforms: torch.Tensor, weights: torch.Tensor,
                exponent: int) -> torch.Tensor:
        exponents_kernel, _ = training_kernels().density_kernels(int(exponent))
        points = points.detach().contiguous()
        dtype = _numpy(points).dtype
        affine = np.ascontiguousarray(transforms.detach()[:, :3, :].reshape(-1, 12).cpu().numpy(), dtype)
        gaussians = torch.empty(affine.shape[0], points.shape[0], dtype=points.dtype)
        with _launch(("density", int(exponent), points.dtype)) as threads:
            exponents_kernel(points.numpy(), affine, _tasks(points.shape[0], threads), gaussians.numpy())
        gaussians.exp_()
        ctx.save_for_backward(points, gaussians, weights.detach())
        ctx.affine, ctx.exponent = affine, int(exponent)
        return torch.mv(gaussians.t(), weights.detach().to(points.dtype)).to(transforms.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        points, gaussians, weights = ctx.saved_tensors
        _, backward_kernel = training_kernels().density_kernels(ctx.exponent)
        m = ctx.affine.shape[0]
        grad = grad.detach().to(points.dtype).contiguous()
        with _launch(("density_backward", ctx.exponent, points.dtype)) as threads:
            tasks = _tasks(points.shape[0], threads)
            partial = np.zeros((tasks, m, 13), np.float64)
            backward_kernel(points.numpy(), ctx.affine, weights.to(points.dtype).numpy(), gaussians.numpy(),
                            grad.numpy(), tasks, partial)
        total = torch.from_numpy(partial.sum(axis=0))
        grad_transforms = torch.zeros(m, 4, 4, dtype=torch.float64)
        grad_transforms[:, :3, :] = total[:, :12].reshape(m, 3, 4)
        return None, grad_transforms.to(weights.dtype), total[:, 12].to(weights.dtype), None


def trilinear_border(volume: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """``grid_sample(volume[None, None], points, "bilinear", "border", align_corners=True)`` for a ``(D, H, W)``
    array and ``points (N, 3)`` (xyz, model cube): ``(N,)`` in the volume's dtype."""
    module = training_kernels()
    points = points.detach().contiguous()
    out = np.empty(points.shape[0], volume.dtype)
    with _launch(("trilinear", volume.dtype, points.dtype)) as threads:
        module.trilinear_border(volume, points.numpy(), _tasks(points.shape[0], threads), out)
    return torch.from_numpy(out)


# ---- what the training loop calls ---------------------------------------------------------------------------
def fused_training_supported(field) -> bool:
    """Whether :func:`fused_encode` and :func:`fused_feature_density` can train ``field``: a plain
    :class:`~srn_core.fields.APMGSRN` with float32 parameters on the CPU, numba usable and ``SRN_FUSED`` not 0."""
    from ..fields.apmgsrn import APMGSRN  # noqa: PLC0415 - kept out of the kernels' import path

    return (fused_training_enabled() and type(field) is APMGSRN and fused_apmgsrn._cpu_float32(field)
            and training_kernels() is not None)


def fused_encode(field, points: torch.Tensor) -> torch.Tensor:
    """``field.encode(points)`` through :class:`FusedLookup` (differentiable in the feature grids)."""
    return FusedLookup.apply(points, field.transforms, field.feature_grids)


def fused_feature_density(field, points: torch.Tensor) -> torch.Tensor:
    """``field.feature_density(points)`` through :class:`FusedDensity` (differentiable in the transforms)."""
    return FusedDensity.apply(points, field.transforms, field.density_weights(), field.config.density_exponent)


def ground_truth_supported(target: torch.Tensor) -> bool:
    """Whether :func:`trilinear_border` can sample ``target``: a float32 CPU tensor, numba usable, ``SRN_FUSED``
    not 0."""
    return (fused_training_enabled() and target.device.type == "cpu" and target.dtype == torch.float32
            and training_kernels() is not None)


def warm_up(density_exponent: int | None = None) -> bool:
    """Compile (or load from numba's cache: about a second the first time in a process) the float32 kernels a
    training step launches, on a few dummy points, so that this happens before training's clock starts rather than
    inside its first step. ``density_exponent``: also the feature-density kernels of that exponent.

    Returns False, having said why once (``RuntimeWarning``), when the kernels cannot be built here: numba fails to
    compile, or to write its cache (a full disk, a file size limit). :func:`training_kernels` then returns ``None``
    for the rest of the process, and training runs on the PyTorch path.
    """
    global _MODULE, _BROKEN
    if training_kernels() is None:
        return False
    try:
        points = torch.zeros(2, 3)
        trilinear_border(np.zeros((2, 2, 2), np.float32), points)
        transforms = torch.eye(4)[None]
        grids = torch.zeros(1, 1, 2, 2, 2, requires_grad=True)
        FusedLookup.apply(points, transforms, grids).sum().backward()
        if density_exponent is not None:
            transforms.requires_grad_()
            FusedDensity.apply(points, transforms, torch.ones(1), int(density_exponent)).sum().backward()
        return True
    except Exception as exc:  # noqa: BLE001 - a numba typing or LLVM error, an OSError writing numba's cache
        _MODULE, _BROKEN = None, exc
        detail = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(f"the fused training kernels could not be built here ({type(exc).__name__}: {detail}); "
                      f"training on the PyTorch path instead (same results, slower).", RuntimeWarning, stacklevel=2)
        return False
