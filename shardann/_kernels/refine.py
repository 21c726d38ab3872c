"""Re-ranking a shortlist on the kept vectors, read in place from the list slab.

The refine step scores ``c = k * refine_factor`` candidate rows per query with
exact keys. Gathering them first (``vectors[pos]`` as a float32 (nq, c, d)
array, 123 MB for 2,000 queries at d=384 and c=40) costs a copy of every
candidate row and its allocation; these kernels read each candidate row
straight from the slab by position instead, in its stored dtype:

- float32 rows: :func:`~shardann._kernels.distances.exact_key`, the same
  key as a gathered copy gave;
- float16 rows (passed as their uint16 bit patterns: Numba has no float16):
  widened to float32 in registers (LLVM ``fpext half``: one ``vcvtph2ps`` per
  8 or 16 values on F16C CPUs);
- int8 rows with a per-dimension affine scale (``x_j ~ off_j + step_j * c_j``,
  see :mod:`shardann.sq`): the query is mapped once into the code's frame
  (``u = q - off`` for l2, ``u = q * step`` plus a constant ``<q, off>`` for ip),
  so a row costs one multiply-add per dimension.

A key is computed per (query, row) from that row alone, so it is the same in
any batch, shard or thread count (results stay equal between the local and the
sharded index). Rows at position -1 get ``+inf``.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from . import serial_and_parallel
from .distances import exact_key


@intrinsic
def half_to_float(typingctx, h):
    """float32 of the IEEE half whose bits are the uint16 ``h``."""
    if h != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@njit(cache=True, fastmath=True)
def _half_key(a, b, ip):
    s = np.float32(0.0)
    if ip:
        for j in range(a.shape[0]):
            s += a[j] * half_to_float(b[j])
        return -s
    for j in range(a.shape[0]):
        t = a[j] - half_to_float(b[j])
        s += t * t
    return s


@njit(cache=True, fastmath=True)
def _int8_key(u, b, step, const, ip):
    s = np.float32(0.0)
    if ip:
        for j in range(u.shape[0]):
            s += u[j] * np.float32(b[j])
        return -(const + s)
    for j in range(u.shape[0]):
        t = u[j] - step[j] * np.float32(b[j])
        s += t * t
    return s


def _float32_body(q, vectors, pos, ip, out):
    nq, c = pos.shape
    for i in prange(nq):
        for j in range(c):
            r = pos[i, j]
            out[i, j] = np.inf if r < 0 else exact_key(q[i], vectors[r], ip)


def _float16_body(q, bits, pos, ip, out):
    nq, c = pos.shape
    for i in prange(nq):
        for j in range(c):
            r = pos[i, j]
            out[i, j] = np.inf if r < 0 else _half_key(q[i], bits[r], ip)


def _int8_body(u, const, codes, step, pos, ip, out):
    nq, c = pos.shape
    for i in prange(nq):
        for j in range(c):
            r = pos[i, j]
            out[i, j] = np.inf if r < 0 else _int8_key(u[i], codes[r], step, const[i], ip)


float32_keys_serial, float32_keys_parallel = serial_and_parallel(_float32_body)
float16_keys_serial, float16_keys_parallel = serial_and_parallel(_float16_body)
int8_keys_serial, int8_keys_parallel = serial_and_parallel(_int8_body)
