"""Exact distance keys between a query and stored rows.

Keys are minimised: squared L2, or the negated inner product.
"""

import numpy as np
from numba import njit


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
