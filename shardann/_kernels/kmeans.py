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



#: relative slack on each float64 step of the bound kernels below (their
#: distances, drifts and bound updates round by at most ``(d + 2) * 2**-53``
#: relatively, far below this for any d < 10**6)
BOUND_SLACK = 1e-10


@njit(cache=True, nogil=True)
def group_bounds(x, labels, centroids, group_of, drift, lower, xnorms, gamma, cmax, ip,
                 own, need):
    """One bound step of exact Lloyd with per-group lower bounds (Yinyang
    k-means): which (row, group of centroids) pairs the next assignment must
    compute.

    After the centroids moved, each row's key to its own centroid is computed
    exactly (float64), and its lower bound on the keys of each group is
    lowered by the furthest a centroid of the group moved. A group whose
    bound stays above the row's own key by more than the rounding margin of
    :func:`shardann.kmeans.rounding_margin` holds neither the row's nearest
    centroid by exact keys nor one BLAS could rank first, so it is skipped.
    A row with a group to compute also computes its own centroid's group.

    Parameters
    ----------
    x : float32 (n, d). labels : int64 (n,), the rows' centroids.
    centroids : float32 (k, d), the moved centroids. group_of : int64 (k,),
        each centroid's group.
    drift : float64 (t,), per group the largest distance one of its centroids
        moved (rounded up).
    lower : float64 (n, t) in/out, per row and group a lower bound on the
        distance (L2) or key (ip, ``-x.c``) of the group's centroids other
        than the row's own; lowered here.
    xnorms : float64 (n,) row norms. gamma, cmax : float, the rounding
        margin's factor and the largest centroid norm.
    ip : bool, keys are ``-x.c`` instead of distances.
    own : float64 (n,) out, the exact squared distance (L2) or key (ip) to
        the row's own centroid.
    need : bool (n, t) out, the pairs to compute.

    Returns the number of rows with a pair to compute.
    """
    n, d = x.shape
    t = lower.shape[1]
    up = 1.0 + BOUND_SLACK
    down = 1.0 - BOUND_SLACK
    active = 0
    for i in range(n):
        c = centroids[labels[i]]
        s = 0.0
        if ip:
            for j in range(d):
                s += np.float64(x[i, j]) * np.float64(c[j])
            own[i] = -s
            # Cauchy-Schwarz: no key fell by more than |x| * its centroid's drift;
            # the dot product's float64 rounding is below BOUND_SLACK |x| cmax
            hi = -s + BOUND_SLACK * xnorms[i] * cmax
            margin = gamma * xnorms[i] * cmax * up
        else:
            for j in range(d):
                v = np.float64(x[i, j]) - np.float64(c[j])
                s += v * v
            own[i] = s
            hi = s * up
            size = xnorms[i] + cmax  # a product, not a call to pow
            margin = gamma * size * size
        any_need = False
        for g in range(t):
            if ip:
                drop = xnorms[i] * drift[g]
                low = lower[i, g] - drop
                if low != np.inf:  # +inf: no other centroid in the group
                    low -= BOUND_SLACK * (abs(low) + drop)
                lower[i, g] = low
                stale = not (low - hi > margin)
            else:
                # triangle inequality: no centroid came nearer than it moved
                low = (lower[i, g] - drift[g]) * down
                low = low if low > 0.0 else 0.0
                lower[i, g] = low
                stale = not (low * low * down > (hi + margin) * up)
            need[i, g] = stale
            any_need |= stale
        if any_need:
            need[i, group_of[labels[i]]] = True
            active += 1
    return active


# no fastmath: the bounds compare with +inf and must round as written
@njit(cache=True, nogil=True)
def merge_group_keys(dots_t, cols, cnorms, members, rows, g, ip, xnorms, margin_of, best, arg,
                     second, best_second, lower):
    """Fold one group's BLAS dot products into the rows' running best keys.

    Parameters
    ----------
    dots_t : float32 (gk, b), ``centroids[members] @ xs.T`` for some rows ``xs``.
    cols : int64 (m,), the columns of ``dots_t`` to fold in: rows ``rows``.
    cnorms : float32 (gk,), those centroids' squared norms (ignored for ip).
    members : int64 (gk,), the group's centroids, ascending.
    rows : int64 (m,). g : int, the group.
    ip : bool. xnorms, margin_of : float64 (n,), the row norms and rounding
        margins.
    best, second : float32 (n,) in/out, each row's smallest and second
        smallest key so far (keys as in :func:`argmin_from_dots`); arg : int64
        (n,) in/out, the centroid of ``best`` (first on ties); best_second :
        float32 (n,) in/out, the second smallest key of ``best``'s group.
    lower : float64 (n, t) out, column ``g``: a lower bound on the distance
        (L2) or key (ip) of each of the group's centroids, its BLAS minimum
        less the margin (the row's own group is fixed later).
    """
    m = dots_t.shape[1]
    gmin = np.empty(m, np.float32)
    gsec = np.empty(m, np.float32)
    garg = np.empty(m, np.int64)
    # every column (a vectorized pass), then the ones asked for
    argmin_from_dots(dots_t, cnorms, ip, garg, gmin, gsec)
    for q in range(rows.shape[0]):
        i = rows[q]
        p = cols[q]
        v = gmin[p]
        lower[i, g] = key_lower_bound(v, xnorms[i], margin_of[i], ip)
        if v < best[i]:  # ties between groups are within any margin: decided exactly
            second[i] = min(best[i], gsec[p])
            best[i] = v
            arg[i] = members[garg[p]]
            best_second[i] = gsec[p]
        elif v < second[i]:
            second[i] = v


@njit(inline="always")
def key_lower_bound(key, xnorm, margin, ip):
    """A lower bound on the distance (L2) or key (ip) behind a BLAS key: less
    the rounding margin, then a relative :data:`BOUND_SLACK` for float64."""
    if key == np.inf:
        return np.inf
    k = np.float64(key)
    if ip:
        return k - margin - BOUND_SLACK * (abs(k) + margin)
    xsq = xnorm * xnorm
    sq = k + xsq - margin
    sq -= BOUND_SLACK * (abs(k) + xsq + margin)
    return np.sqrt(sq) * (1.0 - BOUND_SLACK) if sq > 0.0 else 0.0


@njit(cache=True, nogil=True)
def finish_rows(rows, best, arg, second, best_second, xnorms, margin_of, ip, group_of,
                labels, lower):
    """Labels of the recomputed ``rows`` after :func:`merge_group_keys` saw all
    their groups: the BLAS argmin, and for its group the lower bound of the
    group's other centroids. Returns int64 (m,): the rows whose two best keys
    are within the margin, for :func:`~shardann._kernels.distances.nearest_exact`
    to decide (their bounds stay the groups' minima, which hold either way)."""
    near = np.empty(rows.shape[0], np.int64)
    m = 0
    for i in rows:
        labels[i] = arg[i]
        if np.float64(second[i]) - np.float64(best[i]) <= margin_of[i]:
            near[m] = i
            m += 1
        else:
            lower[i, group_of[arg[i]]] = key_lower_bound(best_second[i], xnorms[i],
                                                           margin_of[i], ip)
    return near[:m]


@njit(cache=True, nogil=True)
def gather_rows(x, rows, out):
    """``out[:m] = x[rows]`` for float32 (n, d) ``x``, int64 (m,) ``rows`` and a
    reused float32 (>= m, d) buffer (twice as fast as NumPy's fancy indexing
    into a new array here). Returns ``out[:m]``."""
    m = rows.shape[0]
    for p in range(m):
        r = rows[p]
        for j in range(x.shape[1]):
            out[p, j] = x[r, j]
    return out[:m]
