"""Whole-row gather and scatter for 2-D arrays (codes, vectors).

Each row is moved as one opaque ``np.void`` item: one memcpy per row instead
of NumPy's element-wise fancy indexing over the columns.
"""

import numpy as np


def take_rows(a, rows):
    """``a[rows]`` for a 2-D array ``a`` (any dtype) and int (m,) ``rows``; a new array."""
    a = np.ascontiguousarray(a)
    if a.ndim == 2 and a.shape[1]:
        void = a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(-1)
        return void[rows].view(a.dtype).reshape(len(rows), a.shape[1])
    return a[rows]


def scatter_rows(dst, dest, src):
    """``dst[dest] = src`` for C-contiguous 2-D ``dst``, int (m,) ``dest``, (m, w) ``src``."""
    if dst.ndim == 2 and dst.shape[1]:
        itemsize = dst.shape[1] * dst.itemsize
        vd = dst.view(np.dtype((np.void, itemsize))).reshape(-1)
        vs = np.ascontiguousarray(src).view(np.dtype((np.void, itemsize))).reshape(-1)
        vd[dest] = vs
    else:
        dst[dest] = src
