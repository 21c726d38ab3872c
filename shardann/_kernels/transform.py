"""Row transforms that must not depend on the batch a row arrives in.

Stored vectors and codes are made from rows that were normalised (cosine)
and rotated (OPQ). BLAS computes ``x @ R`` with kernels chosen by the
matrix shapes and the row's place in the block (OpenBLAS: 17-27% of the
elements of 32-d rotations differ in their last bit between a product of
3,000 rows and one of 12,000), so the same vector added alone, in a batch,
by a shard or by an ingest worker would be stored differently. These loops
do each row's arithmetic in one fixed order, without ``fastmath`` (no
reassociation, no fused multiply-add), so a row's result is the same
whatever else is in the batch, on every CPU.
"""

import numpy as np
from numba import njit

#: rows per tile of :func:`rotate_rows`: a row of ``R`` is read once per tile
_TILE = 8


@njit(cache=True, nogil=True)
def normalize_rows(x):
    """L2-normalise the rows of float32 (n, d) ``x`` in place; zero rows stay zero.

    The norm is summed in float64, left to right.
    """
    n, d = x.shape
    for i in range(n):
        s = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            s += v * v
        if s > 0.0:
            norm = np.float32(np.sqrt(s))
            for j in range(d):
                x[i, j] = x[i, j] / norm


@njit(cache=True, nogil=True)
def rotate_rows(x, R, out):
    """``out = x @ R`` for float32 (n, d) ``x`` and (d, e) ``R``, each output
    element summed over ``d`` in index order (float32, no fused multiply-add).

    ``out`` float32 (n, e), C-contiguous, is overwritten.
    """
    n, d = x.shape
    e = R.shape[1]
    for s in range(0, n, _TILE):
        t = min(n, s + _TILE)
        for i in range(s, t):
            for j in range(e):
                out[i, j] = 0.0
        for k in range(d):
            row = R[k]
            for i in range(s, t):
                v = x[i, k]
                o = out[i]
                for j in range(e):
                    o[j] += v * row[j]
