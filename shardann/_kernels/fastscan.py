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
a generic CPU) and callers keep the scalar scan. Where the host also has
AVX-512BW (:data:`WIDE`), :func:`block_mask` shuffles two code bytes per
512-bit instruction and sums in 16 bits without widening (FAISS's trick),
and :func:`score_block` scores a block's rows with 16-entry float permutes
instead of row by row; both give what the AVX2 / scalar code gives, bit for bit.
"""

import numpy as np
from llvmlite import ir
from numba import config, njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import _simd

BLOCK = 32
MAX_SUBQ = 256  # uint16 lanes hold sums of up to 257 terms of at most 255


def host_has(*features):
    """Whether Numba compiles for this host and its CPU has every one of ``features``
    (LLVM's names: "avx2", "avx512vbmi", ...)."""
    if config.CPU_NAME or config.CPU_FEATURES:
        return False  # compiling for a chosen (maybe generic) CPU: do not assume any
    try:
        import llvmlite.binding as ll

        host = ll.get_host_cpu_features()
        return all(bool(host.get(f, False)) for f in features)
    except Exception:  # noqa: BLE001 - no feature map means no fast path, never an error
        return False


AVAILABLE = host_has("avx2")
#: AVX-512 (F and BW): exact block scores with 16-entry float permutes
WIDE = AVAILABLE and host_has("avx512f", "avx512bw")

_V32I8 = _simd.vec(ir.IntType(8), BLOCK)
_V32I16 = _simd.vec(ir.IntType(16), BLOCK)


_V64I8 = _simd.vec(ir.IntType(8), 2 * BLOCK)
_V16I16 = _simd.vec(ir.IntType(16), 16)
_PAIR = 4 * BLOCK  # qlut bytes of two code bytes' four tables


@njit(inline="always")
def qlut_size(code_size):
    """Bytes of the quantized tables of ``code_size`` code bytes (see :func:`block_mask`)."""
    return _PAIR * ((code_size + 1) // 2)


def _table_at(builder, j, which):
    # byte offset in qlut of code byte j's low (which=0) or high (1) nibble table
    pair = builder.mul(builder.lshr(j, ir.Constant(_simd.I64, 1)), ir.Constant(_simd.I64, _PAIR))
    half = builder.mul(builder.and_(j, ir.Constant(_simd.I64, 1)), ir.Constant(_simd.I64, BLOCK))
    return builder.add(builder.add(pair, half), ir.Constant(_simd.I64, which * 2 * BLOCK))


def _nibbles(builder, v):
    width = v.type.count
    low4 = ir.Constant(v.type, [15] * width)
    return builder.and_(v, low4), builder.lshr(v, ir.Constant(v.type, [4] * width))


def _mask_typing(bcodes, offset, qlut, code_size, thr):
    return types.uint32(bcodes, offset, qlut, code_size, thr)


def _below(builder, sums, thr_v):
    limit = _simd.splat(builder, builder.trunc(thr_v, ir.IntType(16)), BLOCK)
    return builder.bitcast(builder.icmp_unsigned("<=", sums, limit), _simd.I32)


@intrinsic
def block_mask_avx2(typingctx, bcodes, offset, qlut, code_size, thr):
    """Bit ``i`` set where row ``i`` of the block at byte ``offset`` of ``bcodes``
    has a quantized table sum ``<= thr``.

    bcodes : uint8 (nbytes,) block layout; offset : int64 byte offset of the block;
    qlut : uint8 (:func:`qlut_size` (code_size),) quantized tables in pairs of
    code bytes: code bytes ``2p`` and ``2p + 1`` take bytes ``[128 p, 128 p + 128)``,
    the low-nibble tables of both first (sub-quantizers ``4p`` then ``4p + 2``),
    then the high-nibble ones (``4p + 1``, ``4p + 3``), each table's 16 entries
    twice (one copy per 128-bit lane); :func:`block_mask_avx512` reads a
    pair's two tables of a nibble as one 512-bit register.
    code_size : int64; thr : int64 in [0, 65535]. Returns uint32.
    """
    def codegen(context, builder, signature, args):
        codes_p = _simd.data_pointer(context, builder, signature.args[0], args[0])
        lut_p = _simd.data_pointer(context, builder, signature.args[2], args[2])
        offset_v, nbytes_v, thr_v = args[1], args[3], args[4]
        shuffle = _simd.declare(builder, "llvm.x86.avx2.pshuf.b", _V32I8, [_V32I8, _V32I8])
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V32I16, [0] * BLOCK))
        block = builder.gep(codes_p, [offset_v])
        with cgutils.for_range(builder, nbytes_v) as loop:
            j = loop.index
            at = builder.mul(j, ir.Constant(_simd.I64, BLOCK))
            lo, hi = _nibbles(builder, builder.load(
                _simd.vector_at(builder, block, at, _V32I8), align=1))
            t0 = builder.load(_simd.vector_at(builder, lut_p, _table_at(builder, j, 0), _V32I8),
                              align=1)
            t1 = builder.load(_simd.vector_at(builder, lut_p, _table_at(builder, j, 1), _V32I8),
                              align=1)
            r0 = builder.zext(builder.call(shuffle, [t0, lo]), _V32I16)
            r1 = builder.zext(builder.call(shuffle, [t1, hi]), _V32I16)
            builder.store(builder.add(builder.load(acc), builder.add(r0, r1)), acc)
        return _below(builder, builder.load(acc), thr_v)

    return _mask_typing(bcodes, offset, qlut, code_size, thr), codegen


def _accumulate_pair(builder, accs, r0, r1):
    # FAISS's 16-bit accumulation without widening: as uint16 lanes a shuffle
    # result is (even byte) + 256 (odd byte); adding those, and separately the
    # odd bytes (>> 8), keeps both sums with no zero-extension (the even one is
    # recovered at the end; uint16 wrap-around cancels out there)
    eight = ir.Constant(_simd.vec(ir.IntType(16), BLOCK), [8] * BLOCK)
    w0, w1 = (builder.bitcast(r, _V32I16) for r in (r0, r1))
    both, odd = accs
    builder.store(builder.add(builder.load(both), builder.add(w0, w1)), both)
    odd_sum = builder.add(builder.lshr(w0, eight), builder.lshr(w1, eight))
    builder.store(builder.add(builder.load(odd), odd_sum), odd)


def _row_order():
    # word t of a folded 256-bit sum holds row 16 (t // 8) + 2 (t % 8) (even
    # sums) or that + 1 (odd sums, words 16.. of the pair): row r's word
    order = []
    for r in range(BLOCK):
        t = (r // 16) * 8 + (r % 16) // 2
        order.append(t + 16 * (r % 2))
    return order


@intrinsic
def block_mask_avx512(typingctx, bcodes, offset, qlut, code_size, thr):
    """:func:`block_mask_avx2` with AVX-512BW: the same bits, from the same
    arguments. Two code bytes (64 contiguous bytes of the tile) per 512-bit
    shuffle, their tables side by side in ``qlut``; the two halves are added
    at the end."""
    def codegen(context, builder, signature, args):
        codes_p = _simd.data_pointer(context, builder, signature.args[0], args[0])
        lut_p = _simd.data_pointer(context, builder, signature.args[2], args[2])
        offset_v, nbytes_v, thr_v = args[1], args[3], args[4]
        shuffle = _simd.declare(builder, "llvm.x86.avx512.pshuf.b.512", _V64I8,
                                [_V64I8, _V64I8])
        narrow = _simd.declare(builder, "llvm.x86.avx2.pshuf.b", _V32I8, [_V32I8, _V32I8])
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V32I16, [0] * BLOCK))
                for _ in range(2)]
        block = builder.gep(codes_p, [offset_v])
        pairs = builder.lshr(nbytes_v, ir.Constant(_simd.I64, 1))
        with cgutils.for_range(builder, pairs) as loop:
            p = loop.index
            lo, hi = _nibbles(builder, builder.load(_simd.vector_at(
                builder, block, builder.mul(p, ir.Constant(_simd.I64, 2 * BLOCK)), _V64I8),
                align=1))
            at = builder.mul(p, ir.Constant(_simd.I64, _PAIR))
            t0 = builder.load(_simd.vector_at(builder, lut_p, at, _V64I8), align=1)
            at = builder.add(at, ir.Constant(_simd.I64, 2 * BLOCK))
            t1 = builder.load(_simd.vector_at(builder, lut_p, at, _V64I8), align=1)
            _accumulate_pair(builder, accs, builder.call(shuffle, [t0, lo]),
                             builder.call(shuffle, [t1, hi]))
        odd = builder.trunc(nbytes_v, ir.IntType(1))
        with builder.if_then(odd, likely=False):
            # the last code byte alone: its tables are the first of their pair
            last = builder.sub(nbytes_v, ir.Constant(_simd.I64, 1))
            lo, hi = _nibbles(builder, builder.load(_simd.vector_at(
                builder, block, builder.mul(last, ir.Constant(_simd.I64, BLOCK)), _V32I8),
                align=1))
            zero = ir.Constant(_V32I8, [0] * BLOCK)
            widen = ir.Constant(_simd.vec(_simd.I32, 2 * BLOCK), list(range(2 * BLOCK)))
            res = []
            for which, idx in ((0, lo), (1, hi)):
                t = builder.load(_simd.vector_at(builder, lut_p, _table_at(builder, last, which),
                                                 _V32I8), align=1)
                res.append(builder.shuffle_vector(builder.call(narrow, [t, idx]), zero, widen))
            _accumulate_pair(builder, accs, *res)
        both, odd_sums = (builder.load(a) for a in accs)
        eight = ir.Constant(_V32I16, [8] * BLOCK)
        even_sums = builder.sub(both, builder.shl(odd_sums, eight))
        lanes = [ir.Constant(_simd.vec(_simd.I32, 16), list(range(h, h + 16))) for h in (0, 16)]
        folded = []
        for v in (even_sums, odd_sums):
            a, b = (builder.shuffle_vector(v, v, half) for half in lanes)
            folded.append(builder.add(a, b))
        rows = builder.shuffle_vector(folded[0], folded[1],
                                      ir.Constant(_simd.vec(_simd.I32, BLOCK), _row_order()))
        return _below(builder, rows, thr_v)

    return _mask_typing(bcodes, offset, qlut, code_size, thr), codegen


#: the block pre-filter of this host (both compute the same bits)
block_mask = block_mask_avx512 if WIDE else block_mask_avx2


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
_V16I32 = _simd.vec(_simd.I32, 16)
_V32I32 = _simd.vec(_simd.I32, BLOCK)


@intrinsic
def block_scores(typingctx, bcodes, offset, L, code_size, base, out):
    """``out[i] = base + sum_j (L[2j, c & 15] + L[2j+1, c >> 4])``, ``c`` byte
    ``j`` of row ``i`` of the block at byte ``offset`` of ``bcodes``, added in
    ``j`` order: the scalar scan's key of every row of the block, bit for bit.
    AVX-512F only (:data:`WIDE`): a 16-entry float table is one register and
    ``vpermps`` looks up 16 rows at once.

    bcodes : uint8 (nbytes,) block layout; offset : int64; L : float32
    C-contiguous (>= 2 * code_size, 16); code_size : int64; base : float32;
    out : float32 (>= 32,).
    """
    _check_table_type(L)
    sig = types.none(bcodes, offset, L, code_size, base, out)

    def codegen(context, builder, signature, args):
        codes_p = _simd.data_pointer(context, builder, signature.args[0], args[0])
        lut_p = _simd.data_pointer(context, builder, signature.args[2], args[2])
        out_p = _simd.data_pointer(context, builder, signature.args[5], args[5])
        offset_v, nbytes_v, base_v = args[1], args[3], args[4]
        perm = _simd.declare(builder, "llvm.x86.avx512.permvar.sf.512", _V16F32,
                             [_V16F32, _V16I32])
        low4 = ir.Constant(_V32I8, [15] * BLOCK)
        four = ir.Constant(_V32I8, [4] * BLOCK)
        halves = [ir.Constant(_simd.vec(_simd.I32, 16), list(range(h, h + 16)))
                  for h in (0, 16)]
        start = _simd.splat(builder, base_v, 16)
        accs = [cgutils.alloca_once_value(builder, start) for _ in halves]
        block = builder.gep(codes_p, [offset_v])
        with cgutils.for_range(builder, nbytes_v) as loop:
            j = loop.index
            at = builder.mul(j, ir.Constant(_simd.I64, BLOCK))
            v = builder.load(_simd.vector_at(builder, block, at, _V32I8), align=1)
            lo = builder.zext(builder.and_(v, low4), _V32I32)
            hi = builder.zext(builder.lshr(v, four), _V32I32)
            t0 = builder.load(_simd.vector_at(builder, lut_p, at, _V16F32), align=4)
            at = builder.add(at, ir.Constant(_simd.I64, 16))
            t1 = builder.load(_simd.vector_at(builder, lut_p, at, _V16F32), align=4)
            for acc, half in zip(accs, halves, strict=True):
                i0 = builder.shuffle_vector(lo, lo, half)
                i1 = builder.shuffle_vector(hi, hi, half)
                pair = builder.fadd(builder.call(perm, [t0, i0]), builder.call(perm, [t1, i1]))
                builder.store(builder.fadd(builder.load(acc), pair), acc)
        for h, acc in enumerate(accs):
            dst = _simd.vector_at(builder, out_p, ir.Constant(_simd.I64, 16 * h), _V16F32)
            builder.store(builder.load(acc), dst, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def score_block(bcodes, at, L, code_size, base, mask, out):
    """``out[i]`` = the scalar scan's key of row ``i`` of the block at byte
    ``at`` (as :func:`block_scores`) for every bit ``i`` of ``mask`` set; the
    other entries are left undefined. One SIMD pass over the block with
    AVX-512, else row by row."""
    if WIDE:
        block_scores(bcodes, at, L, code_size, base, out)
        return
    for i in range(BLOCK):
        if (mask >> i) & 1:
            s = base
            for j in range(code_size):
                c = bcodes[at + j * BLOCK + i]
                s += L[2 * j, c & 15] + L[2 * j + 1, c >> 4]
            out[i] = s


def _row_pointer(context, builder, arr_type, arr, row):
    # the 16 floats of row ``row`` of a C-contiguous (rows, 16) array
    data = _simd.data_pointer(context, builder, arr_type, arr)
    return _simd.vector_at(builder, data, builder.mul(row, ir.Constant(_simd.I64, 16)), _V16F32)


def _check_table_type(L):
    _simd.check_c_array("a fast-scan table", L, types.float32, 2)


def _halve(builder, a, b, width, pick):
    # a, b each hold 16 / width rows of `width` partial results side by side;
    # keep the `pick` of each row's two halves: one vector of twice the rows
    half = width // 2
    rows = 2 * (16 // width)
    first = [r * width + t for r in range(rows) for t in range(half)]
    second = [r * width + half + t for r in range(rows) for t in range(half)]
    x = builder.shuffle_vector(a, b, ir.Constant(_V16I32, first))
    y = builder.shuffle_vector(a, b, ir.Constant(_V16I32, second))
    # compare-and-select (minps / maxps); LLVM's minnum would add NaN handling
    return builder.select(builder.fcmp_ordered(pick, x, y), x, y)


def _reduce16(builder, vecs, pick):
    # lane i of the result: the `pick` (min / max) of the 16 entries of vecs[i]
    width = 16
    while len(vecs) > 1:
        vecs = [_halve(builder, vecs[i], vecs[i + 1], width, pick)
                for i in range(0, len(vecs), 2)]
        width //= 2
    return vecs[0]


def _hsum(builder, v):
    total = builder.extract_element(v, ir.Constant(_simd.I32, 0))
    for i in range(1, 16):
        total = builder.fadd(total, builder.extract_element(v, ir.Constant(_simd.I32, i)))
    return total


def _hmax(builder, v):
    top = builder.extract_element(v, ir.Constant(_simd.I32, 0))
    for i in range(1, 16):
        e = builder.extract_element(v, ir.Constant(_simd.I32, i))
        top = builder.select(builder.fcmp_ordered(">", e, top), e, top)
    return top


@intrinsic
def row_bounds(typingctx, L, lows):
    """``lows[m]`` = the smallest entry of row ``m`` of ``L`` for every row, and
    returns ``(sum of the row minima, widest row (max - min), sum over rows of
    max(|min|, |max|))``. L : float32 C-contiguous (rows, 16), rows a multiple
    of 16 (:func:`table_rows`); lows : float32 (>= rows,). Sixteen rows at a
    time: a halving tree over pairs of rows leaves each row's minimum (and
    maximum) in a lane of its own, with no horizontal reduction per row."""
    _check_table_type(L)
    _simd.check_c_array("row minima", lows, types.float32, 1)
    sig = types.UniTuple(types.float32, 3)(L, lows)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        groups = builder.lshr(builder.extract_value(arr.shape, 0), ir.Constant(_simd.I64, 4))
        low_p = _simd.data_pointer(context, builder, signature.args[1], args[1])
        zero = ir.Constant(_V16F32, [0.0] * 16)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(3)]
        with cgutils.for_range(builder, groups) as loop:
            first = builder.mul(loop.index, ir.Constant(_simd.I64, 16))
            vecs = [builder.load(_row_pointer(context, builder, signature.args[0], args[0],
                                              builder.add(first, ir.Constant(_simd.I64, i))),
                                 align=4) for i in range(16)]
            lo = _reduce16(builder, vecs, "<")
            hi = _reduce16(builder, vecs, ">")
            builder.store(lo, _simd.vector_at(builder, low_p, first, _V16F32), align=4)
            off, wide, mag = (builder.load(a) for a in sums)
            spread = builder.fsub(hi, lo)
            neg = builder.fsub(zero, lo)  # max(|lo|, |hi|) = max(-lo, hi) as lo <= hi
            absmax = builder.select(builder.fcmp_ordered(">", neg, hi), neg, hi)
            builder.store(builder.fadd(off, lo), sums[0])
            builder.store(builder.select(builder.fcmp_ordered(">", spread, wide), spread, wide),
                          sums[1])
            builder.store(builder.fadd(mag, absmax), sums[2])
        off, wide, mag = (builder.load(a) for a in sums)
        return context.make_tuple(builder, signature.return_type,
                                  [_hsum(builder, off), _hmax(builder, wide), _hsum(builder, mag)])

    return sig, codegen


@njit(inline="always")
def table_rows(code_size):
    """Rows of the float table array of ``code_size`` code bytes: ``2 code_size``
    rounded up to 16 (:func:`row_bounds` takes 16 rows at a time)."""
    return (2 * code_size + 15) // 16 * 16


@intrinsic
def quantize_row(typingctx, L, row, low, scale, out):
    """``out[at + j] = out[at + 16 + j] = min((L[row, j] - low) * scale, 255)``
    truncated to uint8 (the caller makes the product >= 0), ``at`` the place
    of sub-quantizer ``row``'s table in the ``qlut`` layout of :func:`block_mask_avx2`."""
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
        # sub-quantizer 2j + h is nibble h of code byte j
        j = builder.lshr(row_v, ir.Constant(_simd.I64, 1))
        first = _table_at(builder, j, 0)
        first = builder.add(first, builder.mul(builder.and_(row_v, ir.Constant(_simd.I64, 1)),
                                               ir.Constant(_simd.I64, 2 * BLOCK)))
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
def table_bounds(L, lows):
    """``(offset, scale, magnitude)`` of the float tables ``L`` (C-contiguous
    float32 (:func:`table_rows` (code_size), 16), rows past the sub-quantizers
    zero): every row sums to at least ``offset`` (the sum of the table
    minima, left in ``lows`` float32 (rows,)), ``scale`` maps the widest table
    onto 0..255, and ``magnitude`` bounds the running sums' absolute value
    (to size slack)."""
    offset, widest, magnitude = row_bounds(L, lows)
    return offset, scale_for(widest), magnitude


@njit(inline="always")
def scale_for(widest):
    """The scale mapping a table of range ``widest`` onto 0..255 (0 when there is
    none: every entry then quantizes to 0, a valid lower bound)."""
    scale = np.float32(255.0) / widest if widest > 0 else np.float32(0.0)
    if not scale < np.inf:
        scale = np.float32(0.0)
    return scale


@njit(inline="always")
def quantize_tables(L, M, lows, scale, out):
    """Quantize the float tables ``L`` to uint8 in ``out`` (uint8
    (:func:`qlut_size` (code_size),), the ``qlut`` layout of
    :func:`block_mask_avx2`, rows past ``M`` zero) with ``lows`` and ``scale``
    from :func:`table_bounds`: every row then sums to at least
    ``offset + (quantized sum) / scale``."""
    for m in range(M):
        quantize_row(L, m, lows[m], scale, out)
    for m in range(M, out.shape[0] // BLOCK):
        # qlut place of sub-quantizer m (as quantize_row's): pair, byte in pair, nibble
        at = (m >> 2) * _PAIR + ((m >> 1) & 1) * BLOCK + (m & 1) * 2 * BLOCK
        for i in range(at, at + BLOCK):
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
