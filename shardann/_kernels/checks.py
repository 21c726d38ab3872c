"""Input checks in one pass over the values (no (n, d) temporaries)."""

import numpy as np
from numba import njit

#: a float32's bits without its sign bit are those of ``|v|``
_ABS_MASK = np.int32(0x7FFFFFFF)
#: ``|v|``'s bits are at least these exactly when v is inf or NaN
_INF_BITS = np.int32(0x7F800000)


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
    # the bit reinterpretations happen here: ``.view`` inside a kernel costs
    # a second of compilation
    return np.int32(_finite_rows_bits(x.view(np.int32), ok)).view(np.float32)


@njit(cache=True, nogil=True)
def _finite_rows_bits(bits, ok):
    # finite_rows of the float32 rows whose bits are ``bits`` int32 (n, d);
    # returns the bits of the largest finite |value|
    n, d = bits.shape
    # Without its sign bit a float32 orders as an int32 does, and is at least
    # the bits of +inf exactly when it is inf or NaN: one integer max per row
    # answers both questions, and unlike a float max (which needs fastmath's
    # no-NaN promise) LLVM vectorizes it.
    top = np.int32(0)
    for i in range(n):
        m = np.int32(0)
        for j in range(d):
            b = bits[i, j] & _ABS_MASK
            m = b if b > m else m
        ok[i] = m < _INF_BITS
        if ok[i] and m > top:
            top = m
    return top
