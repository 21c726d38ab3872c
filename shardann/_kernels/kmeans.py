"""k-means steps: nearest-centroid assignment and centroid accumulation."""

import numpy as np
from numba import njit


@njit(cache=True)
def argmin_from_dots(dots, cnorms, ip, labels, keys):
    """Nearest centroid of each row given its dot products with the centroids.

    Parameters
    ----------
    dots : float32 (n, k), ``x @ centroids.T``.
    cnorms : float32 (k,), squared centroid norms (ignored when ``ip``).
    ip : bool, maximise the inner product instead of minimising L2.
    labels : int64 (n,) out. keys : float32 (n,) out, the minimised key
        (``|c|^2 - 2 x.c`` for L2, ``-x.c`` for ip).
    """
    n, k = dots.shape
    for i in range(n):
        best = np.inf
        arg = 0
        for j in range(k):
            if ip:
                v = -dots[i, j]
            else:
                v = cnorms[j] - 2.0 * dots[i, j]
            if v < best:
                best = v
                arg = j
        labels[i] = arg
        keys[i] = best


@njit(cache=True, fastmath=True)
def argmin_direct_l2(x, centroids_t, cnorms, labels, keys):
    """Nearest centroid by L2 for low-dimensional data without BLAS.

    ``centroids_t`` is float32 (d, k), transposed so that the inner loop over
    centroids is contiguous and vectorises. ``keys`` receives ``|c|^2 - 2 x.c``.
    """
    n, d = x.shape
    k = centroids_t.shape[1]
    acc = np.empty(k, np.float32)
    for i in range(n):
        for j in range(k):
            acc[j] = cnorms[j]
        for t in range(d):
            xt = -2.0 * x[i, t]
            for j in range(k):
                acc[j] += xt * centroids_t[t, j]
        best = np.inf
        arg = 0
        for j in range(k):
            if acc[j] < best:
                best = acc[j]
                arg = j
        labels[i] = arg
        keys[i] = best


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
