"""Input checks in one pass over the values (no (n, d) temporaries)."""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def finite_rows(x, ok):
    """Flag the rows of ``x`` whose values are all finite; return the largest
    absolute finite value.

    Parameters
    ----------
    x : float32 (n, d), C-contiguous. ok : bool (n,) out, True where the row
        holds no NaN or infinity.

    Returns
    -------
    float32, ``max |x|`` over the finite rows (0 when there are none).
    """
    n, d = x.shape
    zero = np.float32(0.0)
    top = zero
    for i in range(n):
        # v * 0 is 0 for finite v and NaN for NaN or +-inf; the sum keeps a NaN
        probe = zero
        m = zero
        for j in range(d):
            v = x[i, j]
            probe += v * zero
            a = abs(v)
            m = a if a > m else m
        ok[i] = probe == zero
        if ok[i] and m > top:
            top = m
    return top
