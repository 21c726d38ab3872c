"""k-means steps: nearest-centroid assignment and centroid accumulation."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def argmin_from_dots(dots, cnorms, ip, labels, keys):
    """Nearest centroid of each row given its dot products with the centroids.

    Parameters
    ----------
    dots : float32 (n, k), ``x @ centroids.T``.
    cnorms : float32 (k,), squared centroid norms (ignored when ``ip``).
    ip : bool, maximise the inner product instead of minimising L2.
    labels : int64 (n,) out, the first best centroid.
    keys : float32 (n,) out, the minimised key (``|c|^2 - 2 x.c`` for L2,
        ``-x.c`` for ip).
    """
    n, k = dots.shape
    two = np.float32(2.0)  # a float64 literal would promote the whole loop
    for i in range(n):
        best = np.float32(np.inf)
        arg = 0
        for j in range(k):
            v = -dots[i, j] if ip else cnorms[j] - two * dots[i, j]
            if v < best:
                best = v
                arg = j
        labels[i] = arg
        keys[i] = best


_LOWDIM_BLOCK = 128


@njit(cache=True, fastmath=True)
def argmin_l2_lowdim(x, col0, centroids, cnorms, labels, keys):
    """Nearest centroid by L2 of the columns ``[col0, col0 + dsub)`` of ``x``,
    without BLAS — for low-dimensional data such as PQ sub-vectors.

    Parameters
    ----------
    x : float32 (n, >= col0 + dsub). centroids : float32 (k, dsub).
    cnorms : float32 (k,) squared centroid norms.
    labels : int64 (n,) out, the first nearest centroid.
    keys : float32 (n,) out, ``|c|^2 - 2 x.c`` of that centroid.

    Works on blocks of rows laid out column-major so the inner loops run
    across rows and vectorise (compare-and-select instead of a branch).
    """
    n = x.shape[0]
    k, dsub = centroids.shape
    B = _LOWDIM_BLOCK
    xt = np.zeros((dsub, B), np.float32)
    dist = np.empty(B, np.float32)
    best = np.empty(B, np.float32)
    arg = np.empty(B, np.int64)
    for s in range(0, n, B):
        nb = min(B, n - s)
        for i in range(nb):
            for t in range(dsub):
                xt[t, i] = -2.0 * x[s + i, col0 + t]
        for i in range(B):
            best[i] = np.inf
            arg[i] = 0
        for j in range(k):
            cn = cnorms[j]
            for i in range(B):
                dist[i] = cn
            for t in range(dsub):
                ct = centroids[j, t]
                for i in range(B):
                    dist[i] += xt[t, i] * ct
            for i in range(B):
                better = dist[i] < best[i]
                best[i] = min(dist[i], best[i])
                arg[i] = j if better else arg[i]
        for i in range(nb):
            labels[s + i] = arg[i]
            keys[s + i] = best[i]


@njit(cache=True)
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
