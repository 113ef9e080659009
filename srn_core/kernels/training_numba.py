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

import numpy as np
from numba import njit, prange

from .apmgsrn_numba import BLOCK, GEOMETRY_COLUMNS, GRID_PAD, LOW, SPAN, _grid_features  # noqa: F401 (re-exported)

_OPTIONS = dict(parallel=True, boundscheck=False, fastmath={"contract"}, cache=True)


@njit(**_OPTIONS)
def lookup_forward(points, geometry, grids, grid_dims, n_channels, n_tasks, out):
    """``out[i, g * C + c]`` = trilinear value of channel ``c`` of grid ``g`` at ``points[i]``: the features
    ``(N, M * C)`` the decoder reads.

    ``geometry (M, 16)`` and the padded flat ``grids`` are :func:`~srn_core.kernels.fused_apmgsrn.pack`'s (cell
    coordinates of the grids with :data:`GRID_PAD` zero cells around them); the lookups are the inference
    kernel's SIMD gathers (:func:`_grid_features`), :data:`SPAN` points grid by grid.
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
            for i in range(count):
                px[i] = points[span_start + i, 0]
                py[i] = points[span_start + i, 1]
                pz[i] = points[span_start + i, 2]
            for g in range(m):
                grid = grids[g * n_channels * channel:]
                for b in range(0, count, BLOCK):
                    _grid_features(px[b:], py[b:], pz[b:], geometry[g], grid, n_channels, row, plane, channel,
                                   feats[:, b:], g * n_channels)
            for i in range(count):
                for f in range(n_features):
                    out[span_start + i, f] = feats[f, i]


@njit(**_OPTIONS)
def lookup_backward(points, geometry, grad_t, grid_dims, n_channels, n_splits, grad_grids):
    """Adds the feature gradient ``grad_t (M * C, N)`` (transposed: one row per grid channel) into
    ``grad_grids``: ``n_splits`` flat copies of the padded grids (zeroed by the caller; the padding receives what
    falls outside a grid and is dropped after).

    A task is one grid and one of ``n_splits`` ranges of points, so no two tasks write the same cells of the same
    copy: no atomics, no locks. With at least as many grids as threads ``n_splits`` is 1; otherwise the caller
    sums the copies. A block's cell coordinates are computed first (a loop LLVM vectorises), then its corners
    are scattered, in the forward's clamping and corner order.
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
        weights = np.empty((6, BLOCK), grad_t.dtype)  # per point: x, 1 - x, y, 1 - y, z, 1 - z
        stop = min(n, (split + 1) * per_split)
        for b in range(split * per_split, stop, BLOCK):
            count = min(BLOCK, stop - b)
            for k in range(count):
                corner[k], tx, ty, tz = _cell(points, b + k, geometry, g, row, plane)
                weights[0, k], weights[1, k] = tx, 1 - tx
                weights[2, k], weights[3, k] = ty, 1 - ty
                weights[4, k], weights[5, k] = tz, 1 - tz
            for c in range(n_channels):
                first = base + c * channel
                values = grad_t[g * n_channels + c]
                for k in range(count):
                    tx, ux, ty, uy, tz, uz = (weights[0, k], weights[1, k], weights[2, k], weights[3, k],
                                              weights[4, k], weights[5, k])
                    value = values[b + k]
                    far, near = value * tz, value * uz
                    j = first + corner[k]
                    v = near * uy
                    grad_grids[j] += v * ux
                    grad_grids[j + 1] += v * tx
                    v = near * ty
                    grad_grids[j + row] += v * ux
                    grad_grids[j + row + 1] += v * tx
                    v = far * uy
                    grad_grids[j + plane] += v * ux
                    grad_grids[j + plane + 1] += v * tx
                    v = far * ty
                    grad_grids[j + plane + row] += v * ux
                    grad_grids[j + plane + row + 1] += v * tx


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


@njit(**_OPTIONS)
def density_forward(points, affine, weights, exponent, n_tasks, gaussians, out):
    """``out[i] = sum_g weights[g] * gaussians[g, i]`` with ``gaussians[g, i] = exp(-0.5 * sum_r local_r **
    exponent)``, ``local = A p + b``: the feature density. The Gaussians are kept for :func:`density_backward`
    (the exponentials are most of the work).

    ``affine (M, 12)``: each grid's transform rows ``[A | b]`` (3x4, row-major); ``weights (M,)``.
    """
    n = points.shape[0]
    m = affine.shape[0]
    per_task = (n + n_tasks - 1) // n_tasks
    for task in prange(n_tasks):
        stop = min(n, (task + 1) * per_task)
        for i in range(task * per_task, stop):
            out[i] = 0
        for g in range(m):
            a = affine[g]
            wg = weights[g]
            for i in range(task * per_task, stop):
                px, py, pz = points[i, 0], points[i, 1], points[i, 2]
                s = (_power(a[0] * px + a[1] * py + a[2] * pz + a[3], exponent)
                     + _power(a[4] * px + a[5] * py + a[6] * pz + a[7], exponent)
                     + _power(a[8] * px + a[9] * py + a[10] * pz + a[11], exponent))
                f = math.exp(-0.5 * s)
                gaussians[g, i] = f
                out[i] += wg * f


@njit(**_OPTIONS)
def density_backward(points, affine, weights, exponent, gaussians, grad_out, n_tasks, partial):
    """Gradients of ``sum_i grad_out[i] * density[i]`` (:func:`density_forward`, whose ``gaussians`` it reads) per
    task: ``partial[task, g, :12]`` for the affine rows ``[A | b]``, ``partial[task, g, 12]`` for ``weights[g]``
    (the caller adds the tasks up).

    ``d density / d local_r = weights[g] * f * (-0.5 * exponent) * local_r ** (exponent - 1)``, and
    ``local = A p + b`` spreads it over the row ``[p, 1]``.
    """
    n = points.shape[0]
    m = affine.shape[0]
    per_task = (n + n_tasks - 1) // n_tasks
    for task in prange(n_tasks):
        acc = partial[task]
        stop = min(n, (task + 1) * per_task)
        for g in range(m):
            a = affine[g]
            scale = weights[g] * (-0.5 * exponent)
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = 0.0
            for i in range(task * per_task, stop):
                px, py, pz = points[i, 0], points[i, 1], points[i, 2]
                gf = grad_out[i] * gaussians[g, i]
                s12 += gf
                common = gf * scale
                d0 = common * _power(a[0] * px + a[1] * py + a[2] * pz + a[3], exponent - 1)
                d1 = common * _power(a[4] * px + a[5] * py + a[6] * pz + a[7], exponent - 1)
                d2 = common * _power(a[8] * px + a[9] * py + a[10] * pz + a[11], exponent - 1)
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
            for k, value in enumerate((s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12)):
                acc[g, k] += value


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
