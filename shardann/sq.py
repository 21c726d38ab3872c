"""int8 scalar quantization with a per-dimension scale, for compact refine vectors.

Dimension ``j`` of a vector is kept as an int8 ``c_j`` in ``[-127, 127]`` with
``x_j ~ off_j + step_j * c_j``; ``off`` and ``step`` come from the range of
each dimension over a training sample (values outside it are clipped). A
quarter of float32's bytes, and exact re-ranking on these rows keeps nearly
all the recall of float32 rows (ScaNN re-ranks on such codes too).

The scale is one float32 (2, d) array: row 0 ``off``, row 1 ``step``.
"""

import numpy as np

#: largest code magnitude (symmetric, so -128 is never used)
_LEVELS = 127


def train_scale(x):
    """The (2, d) float32 scale of float32 (n >= 1, d) ``x``: per-dimension
    offset (mid-range) and step (half-range / 127; 1 for a constant dimension)."""
    lo = x.min(axis=0).astype(np.float64)
    hi = x.max(axis=0).astype(np.float64)
    step = (hi - lo) / (2 * _LEVELS)
    step[step <= 0] = 1.0
    return np.stack([(hi + lo) / 2, step]).astype(np.float32)


def encode(x, scale):
    """int8 (n, d) codes of float32 (n, d) ``x`` with a :func:`train_scale` scale."""
    c = np.rint((x - scale[0]) / scale[1])
    np.clip(c, -_LEVELS, _LEVELS, out=c)
    return c.astype(np.int8)


def decode(codes, scale):
    """float32 (n, d) approximations ``off + step * codes`` of int8 (n, d) codes."""
    return (scale[0] + scale[1] * codes.astype(np.float32)).astype(np.float32)


def query_frame(q, scale, ip):
    """Queries float32 (nq, d) mapped into the codes' frame for the refine kernel:
    ``(u, const)`` with ``u = q - off`` (l2) or ``u = q * step`` and
    ``const = <q, off>`` (ip); float32 (nq, d) and (nq,)."""
    if ip:
        # a row-wise sum, not BLAS: a query's constant must not depend on its batch
        const = (q.astype(np.float64) * scale[0]).sum(axis=1)
        return (q * scale[1]).astype(np.float32), const.astype(np.float32)
    return (q - scale[0]).astype(np.float32), np.zeros(q.shape[0], np.float32)
