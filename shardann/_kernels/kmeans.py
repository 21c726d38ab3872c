"""k-means steps: nearest-centroid assignment and centroid accumulation."""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import _simd


@njit(cache=True, fastmath=True)
def argmin_from_dots(dots_t, cnorms, ip, labels, keys, second):
    """Nearest centroid of each row given its dot products with the centroids.

    Parameters
    ----------
    dots_t : float32 (k, n), ``centroids @ x.T`` — centroid-major, so the
        inner loop runs along rows: an elementwise compare-and-blend that
        vectorizes (a running minimum along one row is a serial chain; 2.5x
        slower here).
    cnorms : float32 (k,), squared centroid norms (ignored when ``ip``).
    ip : bool, maximise the inner product instead of minimising L2.
    labels : int64 (n,) out, the first best centroid.
    keys : float32 (n,) out, the minimised key (``|c|^2 - 2 x.c`` for L2,
        ``-x.c`` for ip).
    second : float32 (n,) out, the second smallest key (+inf when k == 1), so
        the caller can tell which rows' best centroid rounding could change.
    """
    k, n = dots_t.shape
    # key = base[j] - scale * dot: |c|^2 - 2 x.c for L2, 0 - 1 x.c = -x.c for ip
    base = np.zeros(k, np.float32) if ip else cnorms
    scale = np.float32(1.0) if ip else np.float32(2.0)  # float64 would promote the loop
    best = np.zeros(n, np.int32)  # int32 lanes: twice as many per vector as int64
    # explicit loops, no slice assignment: Numba compiles its generic slice
    # and broadcast code (with error-message formatting) per kernel, seconds on
    # a fresh install
    for i in range(n):
        keys[i] = np.inf
        second[i] = np.inf
    for j in range(k):
        b = base[j]
        col = dots_t[j]
        jj = np.int32(j)
        for i in range(n):
            v = b - scale * col[i]
            cur = keys[i]
            better = v < cur  # strict: the first centroid wins ties
            s = second[i]
            second[i] = cur if better else (v if v < s else s)
            keys[i] = v if better else cur
            best[i] = jj if better else best[i]
    for i in range(n):
        labels[i] = best[i]


_LOWDIM_BLOCK = 128
SIMD_ROWS = 32  # rows per register block of the 4- and 8-wide kernels


def _make_argmin_block(width):
    """Intrinsic: nearest of ``k`` centroids (``width`` dims, zero padded) for
    32 rows held in vector registers, with the running best value and index
    kept in registers across the centroid loop (a Numba loop keeps them in
    memory and runs about 3x slower)."""

    @intrinsic
    def argmin_block(typingctx, xt, C, cnorms, best, arg):
        # xt float32 (width, 32): -2 * the rows, transposed; C float32 (k, width);
        # cnorms float32 (k,); out: best float32 (32,), arg int32 (32,)
        _simd.check_c_array("xt", xt, types.float32, 2)
        _simd.check_c_array("C", C, types.float32, 2)
        _simd.check_c_array("cnorms", cnorms, types.float32, 1)
        _simd.check_c_array("best", best, types.float32, 1)
        _simd.check_c_array("arg", arg, types.int32, 1)

        def codegen(context, builder, signature, args):
            xt_p, C_p, cn_p, best_p, arg_p = (
                _simd.data_pointer(context, builder, t, a)
                for t, a in zip(signature.args, args, strict=True))
            shape = context.make_array(signature.args[1])(context, builder, args[1]).shape
            k = builder.extract_value(shape, 0)
            R = SIMD_ROWS
            vf, vi = _simd.vec(_simd.F32, R), _simd.vec(_simd.I32, R)
            xs = [builder.load(_simd.vector_at(builder, xt_p, ir.Constant(_simd.I64, t * R), vf),
                               align=4) for t in range(width)]
            best_slot = cgutils.alloca_once_value(builder, ir.Constant(vf, [float("inf")] * R))
            arg_slot = cgutils.alloca_once_value(builder, ir.Constant(vi, [0] * R))
            fmuladd = _simd.declare(builder, f"llvm.fmuladd.v{R}f32", vf, [vf, vf, vf])
            with cgutils.for_range(builder, k) as loop:
                j = loop.index
                v = _simd.splat(builder, builder.load(builder.gep(cn_p, [j])), R)
                row = builder.mul(j, ir.Constant(_simd.I64, width))
                for t in range(width):
                    at = builder.add(row, ir.Constant(_simd.I64, t))
                    c = builder.load(builder.gep(C_p, [at]))
                    v = builder.call(fmuladd, [xs[t], _simd.splat(builder, c, R), v])
                cur = builder.load(best_slot)
                better = builder.fcmp_ordered("<", v, cur)  # strict: first centroid wins ties
                builder.store(builder.select(better, v, cur), best_slot)
                jv = _simd.splat(builder, builder.trunc(j, _simd.I32), R)
                builder.store(builder.select(better, jv, builder.load(arg_slot)), arg_slot)
            zero = ir.Constant(_simd.I64, 0)
            builder.store(builder.load(best_slot), _simd.vector_at(builder, best_p, zero, vf),
                          align=4)
            builder.store(builder.load(arg_slot), _simd.vector_at(builder, arg_p, zero, vi),
                          align=4)
            return context.get_dummy_value()

        return types.none(xt, C, cnorms, best, arg), codegen

    return argmin_block


_argmin_block4 = _make_argmin_block(4)
_argmin_block8 = _make_argmin_block(8)
_argmin_block12 = _make_argmin_block(12)
_argmin_block16 = _make_argmin_block(16)

#: widest sub-vectors the register kernels take (zero padded to 4, 8, 12 or 16
#: dimensions); 9..16 dimensions run 2.2-2.4x faster there than in the
#: row-block loop of :func:`_argmin_any`, with the same keys: each is the same
#: chain of fused multiply-adds in dimension order, and a padded dimension
#: adds an exact zero
REGS_MAX_DIM = 16


@njit(inline="always")
def pad_width(dsub):
    """Dimensions (4, 8, 12 or 16) the register kernels pad ``dsub <= 16`` to."""
    return (dsub + 3) // 4 * 4


@njit(nogil=True)
def pad_centroids(centroids, width):
    """float32 (k, width) copy of (k, dsub <= width) centroids, zero padded."""
    k, dsub = centroids.shape
    out = np.zeros((k, width), np.float32)
    for j in range(k):
        for t in range(dsub):
            out[j, t] = centroids[j, t]
    return out


@njit(inline="always")
def nearest_rows(x, s, nb, col0, dsub, padded, cnorms, xt, best, arg):
    """Nearest of the zero-padded centroids ``padded`` (k, 4, 8, 12 or 16) for rows
    ``[s, s + nb)`` (nb <= 32) of columns ``[col0, col0 + dsub)`` of ``x``;
    results in ``best`` float32 (32,) and ``arg`` int32 (32,). ``xt`` float32
    (width, 32) is scratch."""
    _load_block(x, s, nb, col0, dsub, xt)
    width = padded.shape[1]
    if width == 4:
        _argmin_block4(xt, padded, cnorms, best, arg)
    elif width == 8:
        _argmin_block8(xt, padded, cnorms, best, arg)
    elif width == 12:
        _argmin_block12(xt, padded, cnorms, best, arg)
    else:
        _argmin_block16(xt, padded, cnorms, best, arg)


def argmin_l2_lowdim(x, col0, centroids, cnorms, labels, keys):
    """Nearest centroid by L2 of the columns ``[col0, col0 + dsub)`` of ``x``,
    without BLAS — for low-dimensional data such as PQ sub-vectors.

    Parameters
    ----------
    x : float32 (n, >= col0 + dsub), C-contiguous. centroids : float32 (k, dsub).
    cnorms : float32 (k,) squared centroid norms.
    labels : int64 (n,) out, the first nearest centroid.
    keys : float32 (n,) out, ``|c|^2 - 2 x.c`` of that centroid.

    Up to 16 dimensions: 32 rows at a time in vector registers (zero-padded
    to 4, 8, 12 or 16 dimensions). More: rows in column-major blocks so the
    inner loop runs across rows and vectorises (compare-and-select, no branch).
    The two are separate kernels chosen here, so a process compiles only the
    one its data needs.
    """
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    cnorms = np.ascontiguousarray(cnorms, dtype=np.float32)
    if centroids.shape[1] > REGS_MAX_DIM:
        _argmin_any(x, col0, centroids, cnorms, labels, keys)
    else:
        _argmin_regs(x, col0, centroids, cnorms, labels, keys)


@njit(cache=True, fastmath=True, nogil=True)
def _argmin_regs(x, col0, centroids, cnorms, labels, keys):
    # argmin_l2_lowdim for dsub <= 16: 32 rows at a time in vector registers
    k, dsub = centroids.shape
    padded = pad_centroids(centroids, pad_width(dsub))
    R = SIMD_ROWS
    xt = np.zeros((padded.shape[1], R), np.float32)
    best = np.empty(R, np.float32)
    arg = np.empty(R, np.int32)
    for s in range(0, x.shape[0], R):
        nb = min(R, x.shape[0] - s)
        nearest_rows(x, s, nb, col0, dsub, padded, cnorms, xt, best, arg)
        for i in range(nb):
            labels[s + i] = arg[i]
            keys[s + i] = best[i]


@njit(nogil=True)
def _load_block(x, s, nb, col0, dsub, xt):
    m2 = np.float32(-2.0)
    for i in range(nb):
        for t in range(dsub):
            xt[t, i] = m2 * x[s + i, col0 + t]


@njit(cache=True, fastmath=True, nogil=True)
def _argmin_any(x, col0, C, cnorms, labels, keys):
    n = x.shape[0]
    k, dsub = C.shape
    B = _LOWDIM_BLOCK
    xt = np.zeros((dsub, B), np.float32)
    dist = np.empty(B, np.float32)
    best = np.empty(B, np.float32)
    arg = np.empty(B, np.int32)
    for s in range(0, n, B):
        nb = min(B, n - s)
        _load_block(x, s, nb, col0, dsub, xt)
        for i in range(B):
            best[i] = np.inf
            arg[i] = 0
        for j in range(k):
            cj = cnorms[j]
            for i in range(B):
                dist[i] = cj
            for t in range(dsub):
                ct = C[j, t]
                for i in range(B):
                    dist[i] += xt[t, i] * ct
            for i in range(B):
                better = dist[i] < best[i]
                best[i] = dist[i] if better else best[i]
                arg[i] = j if better else arg[i]
        for i in range(nb):
            labels[s + i] = arg[i]
            keys[s + i] = best[i]


@njit(cache=True, nogil=True)
def centroid_sums(x, labels, k):
    """Per-cluster float64 sums (k, d) and int64 counts (k,) of the rows of x."""
    n, d = x.shape
    sums = np.zeros((k, d), np.float64)
    counts = np.zeros(k, np.int64)
    for i in range(n):
        c = labels[i]
        counts[c] += 1
        for t in range(d):
            sums[c, t] += x[i, t]
    return sums, counts
