"""The compiled APMGSRN evaluation: grid transforms, trilinear lookups and the decoder in one numba kernel.

Imported only by :mod:`srn_core.kernels.fused_apmgsrn`, and only on first use: importing numba takes 0.2-0.5 s,
and a kernel is compiled (about 5 s) or loaded from numba's on-disk cache (``cache=True``, about 0.7 s) the
first time a process needs it.

How a thread works. ``prange`` hands out chunks of points; a chunk is evaluated in spans of :data:`SPAN` points:

1. grid by grid, :func:`_grid_features` maps the span's points into the grid (``local = A p + b``, folded with
   ``grid_sample``'s unnormalisation into one affine map per grid), gathers the 8 corner values of 16 points at
   a time with SIMD gathers (neighbours along x as one 64-bit element) and interpolates. The grids carry
   :data:`GRID_PAD` zero cells on every side and coordinates are clamped into that border, so ``grid_sample``'s
   per-corner zero padding needs no branch and no index leaves the array. One grid at a time over many points
   keeps that grid in L1;
2. block by block (:data:`BLOCK` points), the decoder layers as register tiles: a few points x the layer's width
   of accumulators stay in SIMD registers over the whole input loop (:func:`_dense_relu_vectors` for widths that
   are multiples of 16, else :func:`_dense_relu`);
3. the output layer's dot product, the scaling to data units and the clamp, written straight to the output.

Why it is written this way (each measured on the 2-core Xeon this project runs on). LLVM vectorises neither the
lookups (its cost model refuses gathers; scalar lookups cost about 30 cycles each, gathers 5x less) nor the
tiles well on its own (it prefers 256-bit registers), so both are written as LLVM vector code through numba
intrinsics. The decoder width is a compile-time constant (one kernel per width, :func:`kernel_for_width`), so
the other loops have fixed trip counts; for widths that are not a multiple of 16 LLVM's SLP vectoriser packs
:func:`_dense_relu`'s tile into registers. numba leaves SLP vectorisation off by default (a 2023 LLVM
miscompilation, fixed since); :func:`compile_with_slp` turns it on for the compile of these kernels only, and
the tests compare every configuration with the PyTorch reference.
"""

from __future__ import annotations

import contextlib
import types as pytypes
import warnings

import llvmlite.ir as llvm_ir
import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils, config
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic

BLOCK = 64
"""Points per block: a block's features and activations (``BLOCK`` x the widest layer floats) stay in L1."""
SPAN = 1024
"""Points whose features are computed grid by grid before the decoder runs on them block by block: a grid
(a few ten kilobytes) stays in L1 while all of them read it, the span's features (32 KB per 8 grid channels)
in L2. Random points otherwise miss L1 on most of their 128 corner reads."""
LANES = 16
"""Points per SIMD gather (one AVX-512 register; LLVM splits it into two on AVX2 machines)."""
GRID_PAD = 2
"""Zero cells around every grid. Cell coordinates are clamped into ``[-1.5, n + 0.5]``, so a point outside a
grid reads only padding (zero contribution per corner, exactly ``grid_sample``'s zero padding)."""
TILE_VECTORS = 16
"""Accumulator registers (of 16 floats) of one :func:`_dense_relu_vectors` tile: 8 points x 32 outputs, half the
32 AVX-512 registers (10 % faster than 8 here)."""
TILE_FLOATS = 64
"""Accumulators of one :func:`_dense_relu` tile (8 AVX registers; measured best: 2 points x 32 outputs, 4 x 16
or 1 x 64; twice as many ran several times slower). Also the widest decoder the kernel takes."""
GEOMETRY_COLUMNS = 16
"""Per grid: the 12 coefficients of ``cell = A' p + b'`` (row-major ``[A' | b']``), the 3 upper clamp bounds
(x, y, z; the lower one is :data:`LOW` on every axis) and one unused column."""
LOW = GRID_PAD - 1.5
"""Lower clamp bound of padded cell coordinates."""


# ---- LLVM building blocks ----------------------------------------------------------------------
class _VectorGEP(llvm_ir.instructions.Instruction):
    """``getelementptr inbounds float, ptr base, <16 x i32> index``: the addresses of ``base[index[k]]``.

    One base and 32-bit offsets is the form x86 turns into single ``vgatherdps`` instructions (pointer vectors
    built with integer arithmetic become pairs of 64-bit-index gathers, twice the work); llvmlite's own GEP
    takes no vector index.
    """

    def __init__(self, parent, base, index, vector_type):
        super().__init__(parent, vector_type, "getelementptr", [base, index])

    def descr(self, buf):
        base, index = self.operands
        buf.append(f"getelementptr inbounds float, {base.type} {base.get_reference()}, "
                   f"{index.type} {index.get_reference()}\n")


@intrinsic
def _stack_array(typingctx, size, dtype):
    """A pointer to ``size`` (a compile-time constant) values of ``dtype`` on the stack: unlike a numpy array,
    LLVM can keep such a small array in registers (scalar replacement of aggregates)."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value
    item = dtype.instance_type if isinstance(dtype, types.NumberClass) else dtype.dtype

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(item),
                                   size=llvm_ir.Constant(llvm_ir.IntType(64), count))

    return types.CPointer(item)(size, dtype), codegen


@intrinsic
def _grid_features(typingctx, px, py, pz, geometry, grid, n_channels, row, plane, channel, feats, first_row):
    """``feats[first_row + c, i]`` = trilinear value of channel ``c`` of one grid at block point ``i``.

    ``px, py, pz``: the block's coordinates ``(BLOCK,)``; ``geometry``: the grid's :data:`GEOMETRY_COLUMNS`
    floats; ``grid``: the grid's first channel in the flat padded grids (a 1-D view); ``row``, ``plane``,
    ``channel``: element strides of y, z and channels in it. Written as LLVM vector code, :data:`LANES` points
    at a time: coordinates, clamping, cell indices and weights, the 8 corners as 4 neighbour pairs along x
    (``llvm.masked.gather`` of 64-bit elements: half the loads of 8 single-float gathers, 1.5x faster) and 7
    lerps.
    """
    def codegen(context, builder, signature, args):
        f32, i32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(32), llvm_ir.IntType(64)
        vf, vi = llvm_ir.VectorType(f32, LANES), llvm_ir.VectorType(i32, LANES)
        def array(k):
            return context.make_array(signature.args[k])(context, builder, args[k])

        xs, ys, zs, geo, source = (array(k).data for k in range(5))
        out = array(9)
        n_chan, row_i, plane_i, channel_i, first = args[5], args[6], args[7], args[8], args[10]
        contract = ("contract",)

        def splat(value, vector_type):
            one_lane = builder.insert_element(llvm_ir.Constant(vector_type, None), value, llvm_ir.Constant(i32, 0))
            return builder.shuffle_vector(one_lane, llvm_ir.Constant(vector_type, None),
                                          llvm_ir.Constant(vi, [0] * LANES))

        def scalar(index):
            return builder.load(builder.gep(geo, [llvm_ir.Constant(i64, index)]))

        def vector_at(pointer, offset, vector_type):
            address = builder.gep(pointer, [llvm_ir.Constant(i64, offset)])
            return builder.load(builder.bitcast(address, vector_type.as_pointer()), align=4)

        def fma(a, b, c):
            return builder.fadd(builder.fmul(a, b, flags=contract), c, flags=contract)

        def lerp(a, b, t, u):  # a * (1 - t) + b * t, the order grid_sample uses
            return builder.fadd(builder.fmul(a, u, flags=contract), builder.fmul(b, t, flags=contract), flags=contract)

        coef = [splat(scalar(k), vf) for k in range(12)]
        low = llvm_ir.Constant(vf, [LOW] * LANES)
        highs = [splat(scalar(12 + k), vf) for k in range(3)]
        one = llvm_ir.Constant(vf, [1.0] * LANES)
        row_v, plane_v = splat(builder.trunc(row_i, i32), vi), splat(builder.trunc(plane_i, i32), vi)
        corner_shifts = [0, 1, row_i, (row_i, 1), plane_i, (plane_i, 1), (plane_i, row_i), (plane_i, row_i, 1)]
        out_row_bytes = cgutils.unpack_tuple(builder, out.strides, 2)[0]

        def element_offset(parts):
            parts = parts if isinstance(parts, tuple) else (parts,)
            total = llvm_ir.Constant(i64, 0)
            for part in parts:
                total = builder.add(total, part if isinstance(part, llvm_ir.Value) else llvm_ir.Constant(i64, part))
            return total

        half = LANES // 2
        vptr_half = llvm_ir.VectorType(llvm_ir.PointerType(), half)
        vpair = llvm_ir.VectorType(i64, half)
        vbool_half = llvm_ir.VectorType(llvm_ir.IntType(1), half)
        gather_pairs = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(vpair, [vptr_half, i32, vbool_half, vpair]),
            f"llvm.masked.gather.v{half}i64.v{half}p0")
        halves = [llvm_ir.Constant(llvm_ir.VectorType(i32, half), list(range(k * half, (k + 1) * half)))
                  for k in range(2)]
        evens = llvm_ir.Constant(vi, list(range(0, 2 * LANES, 2)))
        odds = llvm_ir.Constant(vi, list(range(1, 2 * LANES, 2)))

        def gather_x_pairs(base, index):
            """The values at ``base[index]`` and ``base[index + 1]`` for all lanes: each pair of neighbours along
            x is one 64-bit element of a gather, half the loads of two 32-bit gathers."""
            pairs = []
            for lanes in halves:
                addresses = _VectorGEP(builder.block, base, builder.shuffle_vector(index, index, lanes), vptr_half)
                builder._insert(addresses)
                gathered = builder.call(gather_pairs, [addresses, llvm_ir.Constant(i32, 4),
                                                       llvm_ir.Constant(vbool_half, [1] * half),
                                                       llvm_ir.Constant(vpair, None)])
                pairs.append(builder.bitcast(gathered, vf))
            return builder.shuffle_vector(pairs[0], pairs[1], evens), builder.shuffle_vector(pairs[0], pairs[1], odds)

        for start in range(0, BLOCK, LANES):
            p = [vector_at(a, start, vf) for a in (xs, ys, zs)]
            cells, fractions = [], []
            for axis in range(3):
                c = coef[4 * axis: 4 * axis + 4]
                u = fma(c[0], p[0], fma(c[1], p[1], fma(c[2], p[2], c[3])))
                # ``u > low ? u : low`` sends NaN to ``low`` as well: no index ever leaves the padded grid.
                u = builder.select(builder.fcmp_ordered(">", u, low), u, low)
                u = builder.select(builder.fcmp_ordered("<", u, highs[axis]), u, highs[axis])
                cell = builder.fptosi(u, vi)  # floor: u is positive
                cells.append(cell)
                fractions.append(builder.fsub(u, builder.sitofp(cell, vf)))
            tx, ty, tz = fractions
            ux, uy, uz = (builder.fsub(one, t) for t in fractions)
            offset = builder.add(builder.add(builder.mul(cells[2], plane_v), builder.mul(cells[1], row_v)), cells[0])
            with cgutils.for_range(builder, n_chan) as loop:
                origin = builder.gep(source, [builder.mul(loop.index, channel_i)])
                corners = [value for shift in corner_shifts[::2]
                           for value in gather_x_pairs(builder.gep(origin, [element_offset(shift)]), offset)]
                near = lerp(lerp(corners[0], corners[1], tx, ux), lerp(corners[2], corners[3], tx, ux), ty, uy)
                far = lerp(lerp(corners[4], corners[5], tx, ux), lerp(corners[6], corners[7], tx, ux), ty, uy)
                value = lerp(near, far, tz, uz)
                row_start = builder.gep(builder.bitcast(out.data, llvm_ir.IntType(8).as_pointer()),
                                        [builder.mul(builder.add(first, loop.index), out_row_bytes)])
                target = builder.gep(builder.bitcast(row_start, f32.as_pointer()), [llvm_ir.Constant(i64, start)])
                builder.store(value, builder.bitcast(target, vf.as_pointer()), align=4)
        return context.get_dummy_value()

    sig = types.void(px, py, pz, geometry, grid, n_channels, row, plane, channel, feats, first_row)
    return sig, codegen


# ---- the decoder ------------------------------------------------------------------------------
@intrinsic
def _dense_relu_vectors(typingctx, x, weights_t, bias, out, width):
    """``out[i, :] = relu(x[i, :] @ weights_t + bias)`` for the ``BLOCK`` rows of ``x`` (any strides), as LLVM
    vector code: :data:`TILE_VECTORS` accumulators of :data:`LANES` floats (``tile_points`` points x
    ``width / LANES`` vectors) live in registers over the whole input loop; each input adds one broadcast of
    ``x[i, k]`` times a row of ``weights_t (n_in, width)``. ``width`` is a compile-time multiple of ``LANES``.
    """
    if not isinstance(width, types.IntegerLiteral) or width.literal_value % LANES:
        return None
    n_vectors = width.literal_value // LANES
    tile_points = 1
    while tile_points * 2 * n_vectors <= TILE_VECTORS:  # a power of two, so it divides BLOCK
        tile_points *= 2

    def codegen(context, builder, signature, args):
        f32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(64)
        vf = llvm_ir.VectorType(f32, LANES)
        xs, weights, biases, outs = (context.make_array(signature.args[k])(context, builder, args[k]) for k in range(4))
        x_strides = cgutils.unpack_tuple(builder, xs.strides, 2)
        w_row_bytes = cgutils.unpack_tuple(builder, weights.strides, 2)[0]
        out_row_bytes = cgutils.unpack_tuple(builder, outs.strides, 2)[0]
        n_in = cgutils.unpack_tuple(builder, weights.shape, 2)[0]
        contract = ("contract",)
        zero = llvm_ir.Constant(vf, [0.0] * LANES)

        def byte_address(pointer, offset_bytes):
            return builder.gep(builder.bitcast(pointer, llvm_ir.IntType(8).as_pointer()), [offset_bytes])

        def load_vector(pointer, offset_bytes):
            return builder.load(builder.bitcast(byte_address(pointer, offset_bytes), vf.as_pointer()), align=4)

        def splat(value):
            zero_index = llvm_ir.Constant(llvm_ir.IntType(32), 0)
            one_lane = builder.insert_element(llvm_ir.Constant(vf, None), value, zero_index)
            return builder.shuffle_vector(one_lane, llvm_ir.Constant(vf, None),
                                          llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), LANES), [0] * LANES))

        accumulators = [[cgutils.alloca_once(builder, vf) for _ in range(n_vectors)] for _ in range(tile_points)]
        bias_vectors = [load_vector(biases.data, llvm_ir.Constant(i64, 4 * LANES * v)) for v in range(n_vectors)]
        with cgutils.for_range(builder, llvm_ir.Constant(i64, BLOCK // tile_points)) as tiles:
            first_point = builder.mul(tiles.index, llvm_ir.Constant(i64, tile_points))
            rows = [builder.mul(builder.add(first_point, llvm_ir.Constant(i64, p)), x_strides[0])
                    for p in range(tile_points)]
            for p in range(tile_points):
                for v in range(n_vectors):
                    builder.store(bias_vectors[v], accumulators[p][v])
            with cgutils.for_range(builder, n_in) as inputs:
                k = inputs.index
                w_row = builder.mul(k, w_row_bytes)
                w = [load_vector(weights.data, builder.add(w_row, llvm_ir.Constant(i64, 4 * LANES * v)))
                     for v in range(n_vectors)]
                column = builder.mul(k, x_strides[1])
                for p in range(tile_points):
                    f = splat(builder.load(builder.bitcast(byte_address(xs.data, builder.add(rows[p], column)),
                                                           f32.as_pointer())))
                    for v in range(n_vectors):
                        acc = builder.load(accumulators[p][v])
                        builder.store(builder.fadd(builder.fmul(f, w[v], flags=contract), acc, flags=contract),
                                      accumulators[p][v])
            for p in range(tile_points):
                out_row = builder.mul(builder.add(first_point, llvm_ir.Constant(i64, p)), out_row_bytes)
                for v in range(n_vectors):
                    acc = builder.load(accumulators[p][v])
                    relu = builder.select(builder.fcmp_ordered(">", acc, zero), acc, zero)
                    target = byte_address(outs.data, builder.add(out_row, llvm_ir.Constant(i64, 4 * LANES * v)))
                    builder.store(relu, builder.bitcast(target, vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(x, weights_t, bias, out, width), codegen


@njit(inline="always", boundscheck=False)
def _dense_relu(x, weights_t, bias, out, width, tile_points):
    """``out[i, :] = relu(x[i, :] @ weights_t + bias)`` for the ``BLOCK`` rows of ``x`` (any strides).

    ``weights_t`` is ``(n_in, width)`` (torch's ``(out, in)`` transposed: one input's weights are a contiguous
    row); ``width`` and ``tile_points`` (points per register tile) are compile-time constants.
    """
    n_in = weights_t.shape[0]
    acc = carray(_stack_array(TILE_FLOATS, np.float32), (TILE_FLOATS,))
    for i0 in range(0, BLOCK, tile_points):
        for p in range(tile_points):
            for j in range(width):
                acc[p * width + j] = bias[j]
        for k in range(n_in):
            for p in range(tile_points):
                f = x[i0 + p, k]
                for j in range(width):
                    acc[p * width + j] += f * weights_t[k, j]
        for p in range(tile_points):
            for j in range(width):
                out[i0 + p, j] = max(acc[p * width + j], np.float32(0))


@njit(inline="always", boundscheck=False)
def _layer(x, weights_t, bias, out, width, tile_points, vector_layers):
    """One hidden layer of a block: :func:`_dense_relu_vectors` when the width is a multiple of LANES."""
    if vector_layers:
        _dense_relu_vectors(x, weights_t, bias, out, width)
    else:
        _dense_relu(x, weights_t, bias, out, width, tile_points)


@njit(inline="always", boundscheck=False)
def _dot(h, i, weights, width):
    """``h[i, :] @ weights`` in eight interleaved partial sums: one SIMD register instead of one serial chain."""
    part = carray(_stack_array(8, np.float32), (8,))
    for lane in range(8):
        part[lane] = 0
    for j0 in range(0, width - width % 8, 8):
        for lane in range(8):
            part[lane] += h[i, j0 + lane] * weights[j0 + lane]
    total = ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]))
    for j in range(width - width % 8, width):
        total += h[i, j] * weights[j]
    return total


# ---- the kernel ---------------------------------------------------------------------------------
@njit(inline="always", boundscheck=False)
def span_features(points, span_start, count, geometry, grids, n_channels, row, plane, channel, px, py, pz, feats):
    """``feats[g * C + c, i]`` for the ``count`` points from ``span_start``: their coordinates copied into the
    span buffers ``px, py, pz`` (``SPAN`` long), then grid by grid over the whole span, :data:`BLOCK` points per
    :func:`_grid_features` call (one grid's cells stay in L1 while ``SPAN`` points read them). The last block may
    read stale buffer entries past ``count``; it writes only ``feats`` columns below ``SPAN``, which the caller
    ignores. Shared by the inference kernel and the training forward (:mod:`.training_numba`)."""
    for i in range(count):
        px[i] = points[span_start + i, 0]
        py[i] = points[span_start + i, 1]
        pz[i] = points[span_start + i, 2]
    for g in range(geometry.shape[0]):
        grid = grids[g * n_channels * channel:]
        for b in range(0, count, BLOCK):
            _grid_features(px[b:], py[b:], pz[b:], geometry[g], grid, n_channels, row, plane, channel,
                           feats[:, b:], g * n_channels)


WIDTH = TILE_POINTS = VECTOR_LAYERS = None  # set per compiled copy of _evaluate_apmgsrn (see kernel_for_width)


def _evaluate_apmgsrn(points, geometry, grids, grid_dims, n_channels, first_t, first_bias, hidden_t, hidden_bias,
                      last, last_bias, low, high, clamp, n_chunks, out):
    """APMGSRN values in data units ``out (N,)`` at ``points (N, 3)``; the other arrays are
    :func:`~srn_core.kernels.fused_apmgsrn.pack`'s. ``n_chunks`` pieces are shared among the threads.

    The template of :func:`kernel_for_width`: ``WIDTH``, ``TILE_POINTS`` and ``VECTOR_LAYERS`` are constants of
    each compiled copy.
    """
    n = points.shape[0]
    n_features = first_t.shape[0]
    d, h, w = grid_dims[0], grid_dims[1], grid_dims[2]
    row = w + 2 * GRID_PAD
    plane = (h + 2 * GRID_PAD) * row
    channel = (d + 2 * GRID_PAD) * plane
    n_spans = (n + SPAN - 1) // SPAN
    per_chunk = (n_spans + n_chunks - 1) // n_chunks
    span = high - low
    for chunk in prange(n_chunks):
        px = np.zeros(SPAN, np.float32)
        py = np.zeros(SPAN, np.float32)
        pz = np.zeros(SPAN, np.float32)
        feats = np.empty((n_features, SPAN), np.float32)
        h1 = np.empty((BLOCK, WIDTH), np.float32)
        h2 = np.empty((BLOCK, WIDTH), np.float32)
        for span_start in range(chunk * per_chunk * SPAN, min(n, (chunk + 1) * per_chunk * SPAN), SPAN):
            m = min(SPAN, n - span_start)
            span_features(points, span_start, m, geometry, grids, n_channels, row, plane, channel, px, py, pz, feats)
            for b in range(0, m, BLOCK):
                _layer(feats[:, b:b + BLOCK].T, first_t, first_bias, h1, WIDTH, TILE_POINTS, VECTOR_LAYERS)
                for layer in range(hidden_t.shape[0]):
                    if layer % 2 == 0:
                        _layer(h1, hidden_t[layer], hidden_bias[layer], h2, WIDTH, TILE_POINTS, VECTOR_LAYERS)
                    else:
                        _layer(h2, hidden_t[layer], hidden_bias[layer], h1, WIDTH, TILE_POINTS, VECTOR_LAYERS)
                last_hidden = h1 if hidden_t.shape[0] % 2 == 0 else h2
                for i in range(min(BLOCK, m - b)):
                    v = (_dot(last_hidden, i, last, WIDTH) + last_bias) * span + low
                    if clamp:
                        v = min(max(v, low), high)
                    out[span_start + b + i] = v


_KERNELS: dict[int, object] = {}


def kernel_for_width(width: int):
    """The compiled evaluation for decoders ``width`` neurons wide (built once per width and process).

    Each width gets its own copy of :func:`_evaluate_apmgsrn`, named ``evaluate_apmgsrn_width_<width>``, whose
    globals hold the width as a constant; numba compiles and caches each copy under its own name. (Closures
    would not do: numba's cache names closures of one function alike, and two widths loaded from the cache
    into one process then collide.)
    """
    if width in _KERNELS:
        return _KERNELS[width]
    if not 1 <= width <= TILE_FLOATS:
        raise ValueError(f"the fused kernel supports decoder widths from 1 to {TILE_FLOATS}, got {width}.")
    tile_points = 1
    while tile_points * 2 * width <= TILE_FLOATS:  # a power of two, so it divides BLOCK
        tile_points *= 2
    name = f"evaluate_apmgsrn_width_{width}"
    constants = dict(globals(), WIDTH=width, TILE_POINTS=tile_points, VECTOR_LAYERS=width % LANES == 0)
    function = pytypes.FunctionType(_evaluate_apmgsrn.__code__.replace(co_name=name), constants, name)
    function.__qualname__ = name
    function.__module__ = __name__
    function.__doc__ = _evaluate_apmgsrn.__doc__
    options = dict(parallel=True, boundscheck=False, fastmath={"contract"})
    try:
        kernel = njit(cache=True, **options)(function)
    except RuntimeError as exc:  # "no locator available": neither the package nor a user cache is writable
        warnings.warn(f"numba cannot cache the fused APMGSRN kernel here ({exc}); it compiles in every process "
                      f"(about 5 s). Set NUMBA_CACHE_DIR to a writable folder to keep it.", RuntimeWarning,
                      stacklevel=2)
        kernel = njit(**options)(function)
    _KERNELS[width] = kernel
    return kernel


@contextlib.contextmanager
def compile_with_slp():
    """numba's SLP vectoriser on for whatever compiles inside (off by default, see the module docstring).

    Holds numba's compiler lock, so no other compilation in the process sees the switch.
    """
    with global_compiler_lock:
        saved = config.SLP_VECTORIZE
        config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            config.SLP_VECTORIZE = saved
