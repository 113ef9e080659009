"""The compiled parts of an APMGSRN training step (numba): feature lookups forward and backward, the feature
density forward and backward, and trilinear ground truth.

Imported only by :mod:`srn_core.kernels.fused_training`, on first use (numba takes 0.2-0.5 s to import; each
kernel compiles once per dtype, or loads from numba's on-disk cache).

Every kernel is a ``prange`` over tasks that numba hands out one at a time (the caller sets chunk size 1): a
thread that another process slows down takes fewer tasks instead of holding up the step. They are plain scalar
loops: the work per point is a few dozen flops, and what the PyTorch path pays (``grid_sample`` and its backward
materialising ``(M, N, 3)`` coordinate tensors and their gradient, ~25 elementwise passes of the density's
flat-top Gaussian) is memory traffic, which one pass over the points avoids.

Conventions shared with the reference (:class:`srn_core.fields.APMGSRN`): a grid ``g`` maps a point ``p`` (xyz in
the model cube) to the continuous cell index ``cell = A' p + b'`` (x along W, y along H, z along D), the
transform folded with ``grid_sample(align_corners=True)``'s unnormalisation (:func:`cell_geometry` in the caller);
corners outside the grid read zero (``padding_mode="zeros"``). The kernels are generic in the float type, so the
float64 gradient checks run the same code as float32 training.
"""

from __future__ import annotations

import math
import types as pytypes

import numpy as np
from numba import njit, prange

from .apmgsrn_numba import BLOCK, GRID_PAD, LOW, SPAN, span_features

_OPTIONS = dict(parallel=True, boundscheck=False, fastmath={"contract"}, cache=True)


@njit(**_OPTIONS)
def lookup_forward(points, geometry, grids, grid_dims, n_channels, n_tasks, out):
    """``out[i, g * C + c]`` = trilinear value of channel ``c`` of grid ``g`` at ``points[i]``: the features
    ``(N, M * C)`` the decoder reads.

    ``geometry (M, 16)`` and the padded flat ``grids`` are :func:`~srn_core.kernels.fused_apmgsrn.pack`'s (cell
    coordinates of the grids with :data:`GRID_PAD` zero cells around them); the lookups are the inference
    kernel's SIMD gathers (:func:`~.apmgsrn_numba.span_features`), :data:`SPAN` points grid by grid.
    """
    n = points.shape[0]
    m = geometry.shape[0]
    d, h, w = grid_dims[0], grid_dims[1], grid_dims[2]
    row = w + 2 * GRID_PAD
    plane = (h + 2 * GRID_PAD) * row
    channel = (d + 2 * GRID_PAD) * plane
    n_features = m * n_channels
    n_spans = (n + SPAN - 1) // SPAN
    per_task = (n_spans + n_tasks - 1) // n_tasks
    for task in prange(n_tasks):
        px = np.zeros(SPAN, np.float32)
        py = np.zeros(SPAN, np.float32)
        pz = np.zeros(SPAN, np.float32)
        feats = np.empty((n_features, SPAN), np.float32)
        for span_start in range(task * per_task * SPAN, min(n, (task + 1) * per_task * SPAN), SPAN):
            count = min(SPAN, n - span_start)
            span_features(points, span_start, count, geometry, grids, n_channels, row, plane, channel, px, py, pz,
                          feats)
            for i in range(count):
                for f in range(n_features):
                    out[span_start + i, f] = feats[f, i]


@njit(**_OPTIONS)
def lookup_backward(points, geometry, grad, grid_dims, n_channels, n_splits, grad_grids):
    """Adds the feature gradient ``grad (N, M * C)`` into ``grad_grids``: ``n_splits`` flat copies of the padded
    grids (zeroed by the caller; the padding receives what falls outside a grid and is dropped after).

    A task is one grid and one of ``n_splits`` ranges of points, so no two tasks write the same cells of the same
    copy: no atomics, no locks. With at least as many grids as threads ``n_splits`` is 1; otherwise the caller
    sums the copies. A block's cell coordinates are computed first, then its corners are scattered, clamped as
    :func:`_grid_features` clamps them.
    """
    n = points.shape[0]
    m = geometry.shape[0]
    d, h, w = grid_dims[0], grid_dims[1], grid_dims[2]
    row = w + 2 * GRID_PAD
    plane = (h + 2 * GRID_PAD) * row
    channel = (d + 2 * GRID_PAD) * plane
    per_split = (n + n_splits - 1) // n_splits
    for task in prange(m * n_splits):
        g = task % m
        split = task // m
        base = (split * m + g) * n_channels * channel
        corner = np.empty(BLOCK, np.int64)
        fx = np.empty(BLOCK, grad.dtype)
        fy = np.empty(BLOCK, grad.dtype)
        fz = np.empty(BLOCK, grad.dtype)
        stop = min(n, (split + 1) * per_split)
        for b in range(split * per_split, stop, BLOCK):
            count = min(BLOCK, stop - b)
            for k in range(count):
                corner[k], fx[k], fy[k], fz[k] = _cell(points, b + k, geometry, g, row, plane)
            for c in range(n_channels):
                first = base + c * channel
                column = g * n_channels + c
                for k in range(count):
                    value = grad[b + k, column]
                    tx, ty, tz = fx[k], fy[k], fz[k]
                    far = value * tz
                    near = value - far
                    near_up = near * ty
                    near_down = near - near_up
                    far_up = far * ty
                    far_down = far - far_up
                    j = first + corner[k]
                    e = near_down * tx
                    grad_grids[j] += near_down - e
                    grad_grids[j + 1] += e
                    e = near_up * tx
                    grad_grids[j + row] += near_up - e
                    grad_grids[j + row + 1] += e
                    e = far_down * tx
                    grad_grids[j + plane] += far_down - e
                    grad_grids[j + plane + 1] += e
                    e = far_up * tx
                    grad_grids[j + plane + row] += far_up - e
                    grad_grids[j + plane + row + 1] += e


@njit(inline="always", cache=True)
def _cell(points, i, geometry, g, row, plane):
    """Point ``i``'s lower corner in grid ``g`` (flat offset in one padded channel) and its fractions along x, y,
    z: the coordinates clamped into the padding exactly as :func:`_grid_features` clamps them."""
    px, py, pz = points[i, 0], points[i, 1], points[i, 2]
    cx = min(max(geometry[g, 0] * px + geometry[g, 1] * py + geometry[g, 2] * pz + geometry[g, 3], LOW),
             geometry[g, 12])
    cy = min(max(geometry[g, 4] * px + geometry[g, 5] * py + geometry[g, 6] * pz + geometry[g, 7], LOW),
             geometry[g, 13])
    cz = min(max(geometry[g, 8] * px + geometry[g, 9] * py + geometry[g, 10] * pz + geometry[g, 11], LOW),
             geometry[g, 14])
    ix, iy, iz = int(cx), int(cy), int(cz)  # floor: the coordinates are positive
    return iz * plane + iy * row + ix, cx - ix, cy - iy, cz - iz


@njit(**_OPTIONS)
def lookup_forward_scalar(points, geometry, grids, grid_dims, n_channels, out):
    """:func:`lookup_forward` in plain scalar code, for any float type: the float64 twin the gradient checks run
    against :func:`lookup_backward` (the SIMD gathers are float32 only)."""
    n = points.shape[0]
    m = geometry.shape[0]
    d, h, w = grid_dims[0], grid_dims[1], grid_dims[2]
    row = w + 2 * GRID_PAD
    plane = (h + 2 * GRID_PAD) * row
    channel = (d + 2 * GRID_PAD) * plane
    for i in prange(n):
        for g in range(m):
            j, tx, ty, tz = _cell(points, i, geometry, g, row, plane)
            for c in range(n_channels):
                k = (g * n_channels + c) * channel + j
                near = ((grids[k] * (1 - tx) + grids[k + 1] * tx) * (1 - ty)
                        + (grids[k + row] * (1 - tx) + grids[k + row + 1] * tx) * ty)
                far = ((grids[k + plane] * (1 - tx) + grids[k + plane + 1] * tx) * (1 - ty)
                       + (grids[k + plane + row] * (1 - tx) + grids[k + plane + row + 1] * tx) * ty)
                out[i, g * n_channels + c] = near * (1 - tz) + far * tz


@njit(inline="always", cache=True)
def _power(x, n):
    """``x ** n`` for an integer ``n >= 0`` by repeated squaring."""
    result = x * 0 + 1
    base = x
    while n:
        if n & 1:
            result *= base
        n >>= 1
        if n:
            base *= base
    return result


EXPONENT = None  # set per compiled copy of the density kernels (see density_kernels)


def _density_exponents(points, affine, n_tasks, out):
    """``out[g, i] = -0.5 * sum_r local_r ** EXPONENT`` with ``local = A p + b`` (``affine (M, 12)``: each grid's
    rows ``[A | b]``): the exponent of grid ``g``'s flat-top Gaussian at point ``i``. ``EXPONENT`` is a constant of
    each compiled copy, so the powers unroll and the loop over points vectorises."""
    n = points.shape[0]
    m = affine.shape[0]
    per_task = (n + n_tasks - 1) // n_tasks
    for task in prange(n_tasks):
        stop = min(n, (task + 1) * per_task)
        for g in range(m):
            a0, a1, a2, a3 = affine[g, 0], affine[g, 1], affine[g, 2], affine[g, 3]
            a4, a5, a6, a7 = affine[g, 4], affine[g, 5], affine[g, 6], affine[g, 7]
            a8, a9, a10, a11 = affine[g, 8], affine[g, 9], affine[g, 10], affine[g, 11]
            row = out[g]
            for i in range(task * per_task, stop):
                px, py, pz = points[i, 0], points[i, 1], points[i, 2]
                row[i] = -0.5 * (_power(a0 * px + a1 * py + a2 * pz + a3, EXPONENT)
                                 + _power(a4 * px + a5 * py + a6 * pz + a7, EXPONENT)
                                 + _power(a8 * px + a9 * py + a10 * pz + a11, EXPONENT))


def _density_backward(points, affine, weights, gaussians, grad_out, n_tasks, partial):
    """Gradients of ``sum_i grad_out[i] * density[i]``, ``density[i] = sum_g weights[g] * gaussians[g, i]``, per
    task: ``partial[task, g, :12]`` for the affine rows ``[A | b]``, ``partial[task, g, 12]`` for ``weights[g]``
    (the caller adds the tasks up).

    ``d density / d local_r = weights[g] * f * (-0.5 * EXPONENT) * local_r ** (EXPONENT - 1)``, and
    ``local = A p + b`` spreads it over the row ``[p, 1]``.
    """
    n = points.shape[0]
    m = affine.shape[0]
    per_task = (n + n_tasks - 1) // n_tasks
    for task in prange(n_tasks):
        stop = min(n, (task + 1) * per_task)
        for g in range(m):
            a0, a1, a2, a3 = affine[g, 0], affine[g, 1], affine[g, 2], affine[g, 3]
            a4, a5, a6, a7 = affine[g, 4], affine[g, 5], affine[g, 6], affine[g, 7]
            a8, a9, a10, a11 = affine[g, 8], affine[g, 9], affine[g, 10], affine[g, 11]
            scale = weights[g] * (-0.5 * EXPONENT)
            f = gaussians[g]
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = 0.0
            for i in range(task * per_task, stop):
                px, py, pz = points[i, 0], points[i, 1], points[i, 2]
                gf = grad_out[i] * f[i]
                s12 += gf
                common = gf * scale
                d0 = common * _power(a0 * px + a1 * py + a2 * pz + a3, EXPONENT - 1)
                d1 = common * _power(a4 * px + a5 * py + a6 * pz + a7, EXPONENT - 1)
                d2 = common * _power(a8 * px + a9 * py + a10 * pz + a11, EXPONENT - 1)
                s0 += d0 * px
                s1 += d0 * py
                s2 += d0 * pz
                s3 += d0
                s4 += d1 * px
                s5 += d1 * py
                s6 += d1 * pz
                s7 += d1
                s8 += d2 * px
                s9 += d2 * py
                s10 += d2 * pz
                s11 += d2
            acc = partial[task, g]
            acc[0] += s0
            acc[1] += s1
            acc[2] += s2
            acc[3] += s3
            acc[4] += s4
            acc[5] += s5
            acc[6] += s6
            acc[7] += s7
            acc[8] += s8
            acc[9] += s9
            acc[10] += s10
            acc[11] += s11
            acc[12] += s12


_DENSITY_KERNELS: dict[int, tuple] = {}


def density_kernels(exponent: int):
    """``(exponents, backward)``: :func:`_density_exponents` and :func:`_density_backward` compiled for one
    ``exponent`` (once per exponent and process; numba caches each copy under its own name, like
    :func:`~srn_core.kernels.apmgsrn_numba.kernel_for_width`). The backward's sums may be reassociated
    (``fastmath`` "reassoc"), which lets them vectorise."""
    if exponent not in _DENSITY_KERNELS:
        if not 1 <= exponent <= 64:
            raise ValueError(f"the fused density kernel takes exponents from 1 to 64, got {exponent}.")
        built = []
        for template, fastmath in ((_density_exponents, {"contract"}), (_density_backward, {"contract", "reassoc"})):
            name = f"{template.__name__.lstrip('_')}_exponent_{exponent}"
            function = pytypes.FunctionType(template.__code__.replace(co_name=name),
                                            dict(globals(), EXPONENT=exponent), name)
            function.__qualname__, function.__module__, function.__doc__ = name, __name__, template.__doc__
            built.append(njit(parallel=True, boundscheck=False, fastmath=fastmath, cache=True)(function))
        _DENSITY_KERNELS[exponent] = tuple(built)
    return _DENSITY_KERNELS[exponent]


@njit(parallel=True, boundscheck=False, cache=True)
def trilinear_border(volume, points, n_tasks, out):
    """``out[i]`` = ``grid_sample(volume, points, mode="bilinear", padding_mode="border", align_corners=True)``:
    the volume ``(D, H, W)`` read trilinearly at ``points (N, 3)`` (xyz in the model cube), coordinates clamped
    to the volume (border padding). NaN voxels give NaN wherever they have a share, as in ``grid_sample``."""
    n = points.shape[0]
    d, h, w = volume.shape
    per_task = (n + n_tasks - 1) // n_tasks
    for task in prange(n_tasks):
        for i in range(task * per_task, min(n, (task + 1) * per_task)):
            x0, x1, wx0, wx1 = _border_axis(points[i, 0], w)
            y0, y1, wy0, wy1 = _border_axis(points[i, 1], h)
            z0, z1, wz0, wz1 = _border_axis(points[i, 2], d)
            lower = (wy0 * (wx0 * volume[z0, y0, x0] + wx1 * volume[z0, y0, x1])
                     + wy1 * (wx0 * volume[z0, y1, x0] + wx1 * volume[z0, y1, x1]))
            upper = (wy0 * (wx0 * volume[z1, y0, x0] + wx1 * volume[z1, y0, x1])
                     + wy1 * (wx0 * volume[z1, y1, x0] + wx1 * volume[z1, y1, x1]))
            out[i] = wz0 * lower + wz1 * upper


@njit(inline="always", cache=True)
def _border_axis(p, n):
    """Corner indices and weights of model-cube coordinate ``p`` on an axis of ``n`` voxels, clamped to it."""
    cell = min(max((p + 1.0) * 0.5 * (n - 1), 0.0), n - 1.0)
    lower = math.floor(cell)
    i0 = int(lower)
    i1 = min(i0 + 1, n - 1)
    frac = cell - lower
    return i0, i1, 1.0 - frac, frac
