"""4-bit PQ "fast scan": a SIMD pre-filter over blocks of 32 codes.

A scalar ADC scan does one table lookup per code byte and row. For 4-bit codes
a whole 16-entry table fits in one SIMD register, so a byte shuffle
(``pshufb``) looks up 32 rows at once. The tables are first quantized to
uint8 (one scale for all sub-quantizers, one offset per sub-quantizer) and
summed in uint16 lanes. The quantized sum gives a lower bound of each row's
float distance; only rows whose bound can still enter the top-k heap are
scored exactly, with the same float tables and summation order as the scalar
scan. So results are bit-identical to the scalar scan, and the SIMD pass only
decides which rows are worth scoring.

Block layout (:class:`~shardann.index._tiles.TiledRows` keeps a list slab's
codes in it, so it is the only copy): rows are grouped in tiles of 32, and
tile ``t`` holds ``code_size`` groups of 32 bytes, group ``j`` being byte
``j`` of rows ``32 t .. 32 t + 31``. Every list starts on a tile, so block
``b`` of list ``l`` is the tile at byte ``(start[l] + 32 b) * code_size``
(lanes past a list's end hold anything: they are never scored).

The shuffle is an x86 AVX2 instruction reached through a Numba intrinsic, so
:data:`AVAILABLE` is False elsewhere (other CPUs, or Numba told to compile for
a generic CPU) and callers keep the scalar scan.
"""

import numpy as np
from llvmlite import ir
from numba import config, njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import _simd

BLOCK = 32
MAX_SUBQ = 256  # uint16 lanes hold sums of up to 257 terms of at most 255


def _host_has_avx2():
    if config.CPU_NAME or config.CPU_FEATURES:
        return False  # compiling for a chosen (maybe generic) CPU: do not assume AVX2
    try:
        import llvmlite.binding as ll

        return bool(ll.get_host_cpu_features().get("avx2", False))
    except Exception:  # noqa: BLE001 - no feature map means no fast path, never an error
        return False


AVAILABLE = _host_has_avx2()

_V32I8 = _simd.vec(ir.IntType(8), BLOCK)
_V32I16 = _simd.vec(ir.IntType(16), BLOCK)


@intrinsic
def block_mask(typingctx, bcodes, offset, qlut, code_size, thr):
    """Bit ``i`` set where row ``i`` of the block at byte ``offset`` of ``bcodes``
    has a quantized table sum ``<= thr``.

    bcodes : uint8 (nbytes,) block layout; offset : int64 byte offset of the block;
    qlut : uint8 (2 * code_size * 32,) quantized tables, sub-quantizer ``m`` in
    bytes ``[32 m, 32 m + 32)`` (its 16 entries twice, one copy per 128-bit lane);
    code_size : int64; thr : int64 in [0, 65535]. Returns uint32.
    """
    sig = types.uint32(bcodes, offset, qlut, code_size, thr)

    def codegen(context, builder, signature, args):
        codes_p = _simd.data_pointer(context, builder, signature.args[0], args[0])
        lut_p = _simd.data_pointer(context, builder, signature.args[2], args[2])
        offset_v, nbytes_v, thr_v = args[1], args[3], args[4]
        shuffle = _simd.declare(builder, "llvm.x86.avx2.pshuf.b", _V32I8, [_V32I8, _V32I8])
        low4 = ir.Constant(_V32I8, [15] * BLOCK)
        four = ir.Constant(_V32I8, [4] * BLOCK)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V32I16, [0] * BLOCK))
        block = builder.gep(codes_p, [offset_v])
        with cgutils.for_range(builder, nbytes_v) as loop:
            j = loop.index
            at = builder.mul(j, ir.Constant(_simd.I64, BLOCK))
            v = builder.load(_simd.vector_at(builder, block, at, _V32I8), align=1)
            lo = builder.and_(v, low4)
            hi = builder.and_(builder.lshr(v, four), low4)
            at = builder.mul(j, ir.Constant(_simd.I64, 2 * BLOCK))
            t0 = builder.load(_simd.vector_at(builder, lut_p, at, _V32I8), align=1)
            at = builder.add(at, ir.Constant(_simd.I64, BLOCK))
            t1 = builder.load(_simd.vector_at(builder, lut_p, at, _V32I8), align=1)
            r0 = builder.zext(builder.call(shuffle, [t0, lo]), _V32I16)
            r1 = builder.zext(builder.call(shuffle, [t1, hi]), _V32I16)
            builder.store(builder.add(builder.load(acc), builder.add(r0, r1)), acc)
        limit = _simd.splat(builder, builder.trunc(thr_v, ir.IntType(16)), BLOCK)
        keep = builder.icmp_unsigned("<=", builder.load(acc), limit)
        return builder.bitcast(keep, _simd.I32)

    return sig, codegen


@njit(cache=True)
def put_rows(tiles, rows, values):
    """``tiles[rows[i] // 32, :, rows[i] % 32] = values[i]``: write rows into
    the block layout. tiles uint8 (ntiles, width, 32); rows int64 (n,), each
    in ``[0, 32 * ntiles)`` (the caller checks); values uint8 (n, width)."""
    for i in range(rows.shape[0]):
        t = rows[i] // BLOCK
        lane = rows[i] % BLOCK
        for j in range(tiles.shape[1]):
            tiles[t, j, lane] = values[i, j]


@njit(cache=True)
def take_rows(tiles, rows, out):
    """``out[i] = tiles[rows[i] // 32, :, rows[i] % 32]``: read rows out of the
    block layout (shapes as :func:`put_rows`)."""
    for i in range(rows.shape[0]):
        t = rows[i] // BLOCK
        lane = rows[i] % BLOCK
        for j in range(tiles.shape[1]):
            out[i, j] = tiles[t, j, lane]


_V16F32 = _simd.vec(_simd.F32, 16)
_V16I8 = _simd.vec(ir.IntType(8), 16)


def _row_pointer(context, builder, arr_type, arr, row):
    # the 16 floats of row ``row`` of a C-contiguous (rows, 16) array
    data = _simd.data_pointer(context, builder, arr_type, arr)
    return _simd.vector_at(builder, data, builder.mul(row, ir.Constant(_simd.I64, 16)), _V16F32)


def _check_table_type(L):
    _simd.check_c_array("a fast-scan table", L, types.float32, 2)


def _row_reduce(pick):
    @intrinsic
    def reduce_row(typingctx, L, row):
        _check_table_type(L)

        def codegen(context, builder, signature, args):
            v = builder.load(_row_pointer(context, builder, signature.args[0], *args), align=4)
            # halving tree of compare-and-select (minps / maxps); LLVM's
            # reduce.fmin intrinsic would expand to scalar NaN handling
            width = 16
            while width > 1:
                width //= 2
                undef = ir.Constant(v.type, ir.Undefined)
                a = builder.shuffle_vector(
                    v, undef, ir.Constant(_simd.vec(_simd.I32, width), list(range(width))))
                b = builder.shuffle_vector(
                    v, undef, ir.Constant(_simd.vec(_simd.I32, width),
                                          list(range(width, 2 * width))))
                v = builder.select(builder.fcmp_ordered(pick, a, b), a, b)
            return builder.extract_element(v, ir.Constant(_simd.I32, 0))

        return types.float32(L, row), codegen

    return reduce_row


row_min = _row_reduce("<")  # smallest of the 16 entries of a table row
row_max = _row_reduce(">")  # largest of the 16 entries of a table row


@intrinsic
def quantize_row(typingctx, L, row, low, scale, out):
    """``out[32 row + j] = out[32 row + 16 + j] = min((L[row, j] - low) * scale, 255)``
    truncated to uint8 (the caller makes the product >= 0)."""
    _check_table_type(L)

    def codegen(context, builder, signature, args):
        L_v, row_v, low_v, scale_v, out_v = args
        v = builder.load(_row_pointer(context, builder, signature.args[0], L_v, row_v), align=4)
        q = builder.fmul(builder.fsub(v, _simd.splat(builder, low_v, 16)),
                         _simd.splat(builder, scale_v, 16))
        clamp = _simd.declare(builder, "llvm.minnum.v16f32", _V16F32, [_V16F32, _V16F32])
        q8 = builder.fptoui(builder.call(clamp, [q, ir.Constant(_V16F32, [255.0] * 16)]),
                            _V16I8)
        data = _simd.data_pointer(context, builder, signature.args[4], out_v)
        first = builder.mul(row_v, ir.Constant(_simd.I64, BLOCK))
        second = builder.add(first, ir.Constant(_simd.I64, 16))
        builder.store(q8, _simd.vector_at(builder, data, first, _V16I8), align=1)
        builder.store(q8, _simd.vector_at(builder, data, second, _V16I8), align=1)
        return context.get_dummy_value()

    return types.none(L, row, low, scale, out), codegen


@intrinsic
def add_rows(typingctx, L, A, B):
    """``L[m] = A[m] + B[m]`` for every row of ``A`` (C-contiguous float32
    (rows, 16) arrays; ``L`` has at least as many rows)."""
    for arr in (L, A, B):
        _check_table_type(arr)

    def codegen(context, builder, signature, args):
        shape = context.make_array(signature.args[1])(context, builder, args[1]).shape
        rows = builder.extract_value(shape, 0)
        with cgutils.for_range(builder, rows) as loop:
            ptr = [_row_pointer(context, builder, t, a, loop.index)
                   for t, a in zip(signature.args, args, strict=True)]
            total = builder.fadd(builder.load(ptr[1], align=4), builder.load(ptr[2], align=4))
            builder.store(total, ptr[0], align=4)
        return context.get_dummy_value()

    return types.none(L, A, B), codegen


@njit(inline="always")
def table_bounds(L, M):
    """``(offset, scale, magnitude)`` of the float tables ``L`` (C-contiguous
    float32 (>= M, 16)): every row sums to at least ``offset`` (the sum of
    the table minima), ``scale`` maps the widest table onto 0..255, and
    ``magnitude`` bounds the running sums' absolute value (to size slack)."""
    offset = np.float32(0.0)
    magnitude = np.float32(0.0)
    widest = np.float32(0.0)
    for m in range(M):
        lo = row_min(L, m)
        hi = row_max(L, m)
        offset += lo
        magnitude += max(abs(lo), abs(hi))
        widest = max(widest, hi - lo)
    scale = np.float32(255.0) / widest if widest > 0 else np.float32(0.0)
    if not scale < np.inf:
        scale = np.float32(0.0)
    return offset, scale, magnitude


@njit(inline="always")
def quantize_tables(L, M, scale, out):
    """Quantize the float tables ``L`` to uint8 in ``out`` (the ``qlut``
    layout of :func:`block_mask`, rows past ``M`` zero) with ``scale`` from
    :func:`table_bounds`: every row then sums to at least
    ``offset + (quantized sum) / scale``."""
    for m in range(M):
        quantize_row(L, m, row_min(L, m), scale, out)
    for i in range(M * BLOCK, out.shape[0]):
        out[i] = 0


@njit(inline="always")
def block_threshold(top, base, offset, scale, slack):
    """Largest quantized sum that can still reach a key ``<= top``: -1 when no
    row can (the list can be left), 65535 when every row can."""
    if top == np.inf:
        return 65535
    lim = (top + slack - base - offset) * scale
    if lim < 0:
        return -1
    if lim >= 65535.0:
        return 65535
    return int(lim)
