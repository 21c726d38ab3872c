"""8-bit PQ "fast scan": an AVX-512 VBMI pre-filter over blocks of 64 codes.

The scalar 8-bit ADC scan does one float table lookup per sub-quantizer and
row. Here each (query, list) table, float32 (M, 256), is quantized to uint8
(the scheme of the 4-bit scan in :mod:`.fastscan`: one scale for all
sub-quantizers, one offset per sub-quantizer), and one byte permute
(``vpermi2b``, 128 entries from two registers) per half of a 256-entry table
looks up 64 rows at once; a select on each code's top bit picks the half. The
sums, in uint16 lanes, give a lower bound of each row's float key; only rows
whose bound can still enter the top-k heap are scored exactly, with the float
table in the scalar scan's order. So results are bit-identical to the scalar
scan.

The codes are held in the 4-bit scan's block layout (tiles of 32 rows, byte
``j`` of the 32 rows side by side, see
:class:`~shardann.index._tiles.TiledRows`); a block of 64 rows is two
consecutive tiles of a list (one at a list's odd end).

``vpermi2b`` is an AVX-512 VBMI instruction reached through a Numba intrinsic,
so :data:`AVAILABLE` is False elsewhere and callers keep the scalar 8-bit scan.
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import _simd
from .fastscan import BLOCK as TILE
from .fastscan import host_has, scale_for

#: rows per pre-filter pass: two tiles
BLOCK = 2 * TILE
#: uint16 lanes hold sums of up to 257 terms of at most 255
MAX_SUBQ = 256

AVAILABLE = host_has("avx512f", "avx512bw", "avx512vbmi")

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_V16F32 = _simd.vec(_simd.F32, 16)
_V16I8 = _simd.vec(_I8, 16)
_V32I8 = _simd.vec(_I8, TILE)
_V64I8 = _simd.vec(_I8, BLOCK)
_V64I16 = _simd.vec(_I16, BLOCK)


def _check_table(L):
    _simd.check_c_array("an 8-bit fast-scan table", L, types.float32, 2)


def _row_chunk(builder, data, width, m, c):
    # pointer to floats [16 c, 16 c + 16) of row m of a C-contiguous (rows, width) table
    at = builder.add(builder.mul(m, width), builder.mul(c, ir.Constant(_simd.I64, 16)))
    return _simd.vector_at(builder, data, at, _V16F32)


def _bounds_codegen(add):
    # rows of L (from A + B when ``add``): per row its smallest and largest entry
    def codegen(context, builder, signature, args):
        arrs = [context.make_array(t)(context, builder, a)
                for t, a in zip(signature.args, args, strict=True)]
        L, lo, hi = arrs[0], arrs[-2], arrs[-1]
        rows = builder.extract_value(L.shape, 0)
        width = builder.extract_value(L.shape, 1)
        chunks = builder.udiv(width, ir.Constant(_simd.I64, 16))
        inf = float("inf")
        with cgutils.for_range(builder, rows) as row:
            m = row.index
            vmin = cgutils.alloca_once_value(builder, ir.Constant(_V16F32, [inf] * 16))
            vmax = cgutils.alloca_once_value(builder, ir.Constant(_V16F32, [-inf] * 16))
            with cgutils.for_range(builder, chunks) as chunk:
                ptr = _row_chunk(builder, L.data, width, m, chunk.index)
                if add:
                    a = builder.load(_row_chunk(builder, arrs[1].data, width, m, chunk.index),
                                     align=4)
                    b = builder.load(_row_chunk(builder, arrs[2].data, width, m, chunk.index),
                                     align=4)
                    v = builder.fadd(a, b)
                    builder.store(v, ptr, align=4)
                else:
                    v = builder.load(ptr, align=4)
                old = builder.load(vmin)
                builder.store(builder.select(builder.fcmp_ordered("<", v, old), v, old), vmin)
                old = builder.load(vmax)
                builder.store(builder.select(builder.fcmp_ordered(">", v, old), v, old), vmax)
            for bound, acc, pick in ((lo, vmin, "<"), (hi, vmax, ">")):
                builder.store(_simd.reduce_select(builder, builder.load(acc), pick),
                              builder.gep(bound.data, [m]))
        return context.get_dummy_value()

    return codegen


@intrinsic
def add_bounds(typingctx, L, A, B, lo, hi):
    """``L = A + B`` (float32 (M, W) C-contiguous, W a multiple of 16) and
    ``lo[m]`` / ``hi[m]`` (float32 (M,)) the smallest / largest entry of row ``m``
    of the sum: one pass over the tables, the sums exactly ``A[m, j] + B[m, j]``."""
    for arr in (L, A, B):
        _check_table(arr)
    return types.none(L, A, B, lo, hi), _bounds_codegen(add=True)


@intrinsic
def row_bounds(typingctx, L, lo, hi):
    """``lo[m]`` / ``hi[m]`` (float32 (M,)): the smallest / largest entry of row
    ``m`` of ``L`` (float32 (M, W) C-contiguous, W a multiple of 16)."""
    _check_table(L)
    return types.none(L, lo, hi), _bounds_codegen(add=False)


@njit(inline="always")
def table_bounds(lo, hi, M):
    """``(offset, scale, magnitude)`` of tables whose rows ``m < M`` range over
    ``[lo[m], hi[m]]`` (float32 (>= M,)): every row sums to at least ``offset``,
    ``scale`` maps the widest row onto 0..255, ``magnitude`` bounds the running
    sums' absolute value (to size the slack), as :func:`.fastscan.table_bounds`."""
    offset = np.float32(0.0)
    magnitude = np.float32(0.0)
    widest = np.float32(0.0)
    for m in range(M):
        offset += lo[m]
        magnitude += max(abs(lo[m]), abs(hi[m]))
        widest = max(widest, hi[m] - lo[m])
    return offset, scale_for(widest), magnitude


@intrinsic
def quantize_rows(typingctx, L, lo, scale, out):
    """``out[W m + j] = min((L[m, j] - lo[m]) * scale, 255)`` truncated to uint8,
    for L float32 (M, W) C-contiguous (W a multiple of 16), lo float32 (M,)
    the row minima (so the product is >= 0), out uint8 (>= M * W,)."""
    _check_table(L)

    def codegen(context, builder, signature, args):
        Lv = context.make_array(signature.args[0])(context, builder, args[0])
        lo_v = context.make_array(signature.args[1])(context, builder, args[1])
        out_v = context.make_array(signature.args[3])(context, builder, args[3])
        rows = builder.extract_value(Lv.shape, 0)
        width = builder.extract_value(Lv.shape, 1)
        chunks = builder.udiv(width, ir.Constant(_simd.I64, 16))
        scale = _simd.splat(builder, args[2], 16)
        top = ir.Constant(_V16F32, [255.0] * 16)
        clamp = _simd.declare(builder, "llvm.minnum.v16f32", _V16F32, [_V16F32, _V16F32])
        with cgutils.for_range(builder, rows) as row:
            m = row.index
            low = _simd.splat(builder, builder.load(builder.gep(lo_v.data, [m])), 16)
            with cgutils.for_range(builder, chunks) as chunk:
                c = chunk.index
                v = builder.load(_row_chunk(builder, Lv.data, width, m, c), align=4)
                q = builder.fmul(builder.fsub(v, low), scale)
                q8 = builder.fptoui(builder.call(clamp, [q, top]), _V16I8)
                at = builder.add(builder.mul(m, width),
                                 builder.mul(c, ir.Constant(_simd.I64, 16)))
                builder.store(q8, _simd.vector_at(builder, out_v.data, at, _V16I8), align=1)
        return context.get_dummy_value()

    return types.none(L, lo, scale, out), codegen


@intrinsic
def block_mask(typingctx, bcodes, first, second, qlut, M, thr):
    """Bit ``i`` set where row ``i`` of a 64-row block has a quantized table sum
    ``<= thr``: rows 0..31 are the tile at byte ``first`` of ``bcodes``, rows
    32..63 the tile at byte ``second``.

    bcodes : uint8 (nbytes,) block layout (tiles of ``M`` groups of 32 bytes);
    first, second : int64 byte offsets; qlut : uint8 (>= 256 M,) quantized
    tables (:func:`quantize_rows`), sub-quantizer ``m`` in bytes
    ``[256 m, 256 m + 256)``; M : int64 <= 256; thr : int64 in [0, 65535].
    Returns int64 (the 64 bits of the mask).
    """
    sig = types.int64(bcodes, first, second, qlut, M, thr)

    def codegen(context, builder, signature, args):
        codes_p = _simd.data_pointer(context, builder, signature.args[0], args[0])
        lut_p = _simd.data_pointer(context, builder, signature.args[3], args[3])
        first_v, second_v, m_v, thr_v = args[1], args[2], args[4], args[5]
        permute = _simd.declare(builder, "llvm.x86.avx512.vpermi2var.qi.512", _V64I8,
                                [_V64I8, _V64I8, _V64I8])
        zero = ir.Constant(_V64I8, [0] * BLOCK)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V64I16, [0] * BLOCK))
        tile0 = builder.gep(codes_p, [first_v])
        tile1 = builder.gep(codes_p, [second_v])
        both = ir.Constant(_simd.vec(_simd.I32, BLOCK), list(range(BLOCK)))
        with cgutils.for_range(builder, m_v) as loop:
            j = loop.index
            at = builder.mul(j, ir.Constant(_simd.I64, TILE))
            c0 = builder.load(_simd.vector_at(builder, tile0, at, _V32I8), align=1)
            c1 = builder.load(_simd.vector_at(builder, tile1, at, _V32I8), align=1)
            idx = builder.shuffle_vector(c0, c1, both)
            base = builder.mul(j, ir.Constant(_simd.I64, 256))
            t = [builder.load(_simd.vector_at(
                    builder, lut_p, builder.add(base, ir.Constant(_simd.I64, 64 * h)), _V64I8),
                    align=1) for h in range(4)]
            low = builder.call(permute, [t[0], idx, t[1]])  # entries 0..127
            high = builder.call(permute, [t[2], idx, t[3]])  # entries 128..255
            pick = builder.select(builder.icmp_signed("<", idx, zero), high, low)
            builder.store(builder.add(builder.load(acc), builder.zext(pick, _V64I16)), acc)
        limit = _simd.splat(builder, builder.trunc(thr_v, _I16), BLOCK)
        keep = builder.icmp_unsigned("<=", builder.load(acc), limit)
        return builder.bitcast(keep, _simd.I64)

    return sig, codegen


@intrinsic
def lowest_bit(typingctx, x):
    """Index of the lowest set bit of int64 ``x`` != 0 (64 for 0)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        raise TypeError("lowest_bit takes a 64-bit integer")

    def codegen(context, builder, signature, args):
        cttz = _simd.declare(builder, "llvm.cttz.i64", _simd.I64,
                             [_simd.I64, ir.IntType(1)])
        return builder.call(cttz, [args[0], ir.Constant(ir.IntType(1), 0)])

    return types.int64(x), codegen


@intrinsic
def prefetch(typingctx, arr, first, count):
    """Ask the CPU to bring elements ``[first, first + count)`` of the C-contiguous
    array ``arr`` (any dtype and rank) into its caches: a hint with no effect on
    results, issued a list ahead so the scan does not wait on memory."""
    if not (isinstance(arr, types.Array) and arr.layout == "C"):
        raise TypeError("prefetch takes a C-contiguous array")

    def codegen(context, builder, signature, args):
        arr_t = signature.args[0]
        data = _simd.data_pointer(context, builder, arr_t, args[0])
        item = context.get_abi_sizeof(context.get_data_type(arr_t.dtype))
        i8p = _I8.as_pointer()
        start = builder.bitcast(builder.gep(data, [args[1]]), i8p)
        nbytes = builder.mul(args[2], ir.Constant(_simd.I64, item))
        lines = builder.udiv(builder.add(nbytes, ir.Constant(_simd.I64, 63)),
                             ir.Constant(_simd.I64, 64))
        hint = _simd.declare(builder, "llvm.prefetch.p0", ir.VoidType(),
                             [i8p, _simd.I32, _simd.I32, _simd.I32])
        with cgutils.for_range(builder, lines) as loop:
            at = builder.gep(start, [builder.mul(loop.index, ir.Constant(_simd.I64, 64))])
            # read, keep in all levels (locality 3), data cache
            builder.call(hint, [at, ir.Constant(_simd.I32, 0), ir.Constant(_simd.I32, 3),
                                ir.Constant(_simd.I32, 1)])
        return context.get_dummy_value()

    return types.none(arr, first, count), codegen
