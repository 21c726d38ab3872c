"""Exact distance keys between a query and stored rows.

Keys are minimised: squared L2, or the negated inner product.
"""

import numpy as np
from numba import njit, prange

from . import serial_and_parallel


@njit(cache=True, fastmath=True)
def l2sq(a, b):
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        t = a[j] - b[j]
        s += t * t
    return s


@njit(cache=True, fastmath=True)
def neg_dot(a, b):
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return -s


@njit(cache=True)
def exact_key(a, b, ip):
    if ip:
        return neg_dot(a, b)
    return l2sq(a, b)


@njit(cache=True)
def pairwise_keys(x, y, ip):
    """Direct (non-BLAS) key matrix, float32 (nx, ny): the accurate reference
    used for refinement and small problems."""
    out = np.empty((x.shape[0], y.shape[0]), np.float32)
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            out[i, j] = exact_key(x[i], y[j], ip)
    return out


@njit(cache=True, nogil=True)
def nearest_exact(x, rows, centroids, ip, labels):
    """``labels[r]`` = the centroid of smallest :func:`exact_key` to ``x[r]``
    (the first on ties), for each ``r`` of int64 ``rows``; other rows untouched."""
    for r in rows:
        best = np.inf
        arg = 0
        for j in range(centroids.shape[0]):
            v = exact_key(x[r], centroids[j], ip)
            if v < best:
                best = v
                arg = j
        labels[r] = arg


def _rerank_exact_body(q, centroids, cand, ip, keys, lists):
    """The ``nkeep = keys.shape[1]`` best of each query's candidate centroids by
    :func:`exact_key`, ties by the smaller centroid number.

    q : float32 (nq, d). centroids : float32 (nlist, d). cand : int64 (nq, c)
    candidate centroid numbers, -1 for none; a row whose first candidate is
    -2 takes every centroid instead. keys : float32 (nq, nkeep) out, best
    first; lists : int64 (nq, nkeep) out (padded with +inf / -1).
    """
    nq = q.shape[0]
    nkeep = keys.shape[1]
    nlist = centroids.shape[0]
    for i in prange(nq):
        everything = cand.shape[1] > 0 and cand[i, 0] == -2
        n = nlist if everything else cand.shape[1]
        for t in range(nkeep):
            keys[i, t] = np.inf
            lists[i, t] = -1
        for t in range(n):
            c = t if everything else cand[i, t]
            if c < 0:
                continue
            v = exact_key(q[i], centroids[c], ip)
            # insertion into the sorted row: (key, list) order
            last = nkeep - 1
            if v > keys[i, last] or (v == keys[i, last] and c > lists[i, last]):
                continue
            p = last
            while p > 0 and (keys[i, p - 1] > v or (keys[i, p - 1] == v and lists[i, p - 1] > c)):
                keys[i, p] = keys[i, p - 1]
                lists[i, p] = lists[i, p - 1]
                p -= 1
            keys[i, p] = v
            lists[i, p] = c


rerank_exact_serial, rerank_exact_parallel = serial_and_parallel(_rerank_exact_body)


def _residual_norms_body(x, base, labels, out):
    """``out[i] = |x[i] - base[labels[i]]|^2``: float32 (n, d), (nlist, d),
    int64 (n,) -> float32 (n,) (an IVF row's distance to its centroid)."""
    for i in prange(x.shape[0]):
        out[i] = l2sq(x[i], base[labels[i]])


# rows are independent: the parallel twin gives the same norms
residual_norms_serial, residual_norms_parallel = serial_and_parallel(_residual_norms_body)
