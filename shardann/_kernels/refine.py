"""Re-ranking a shortlist on the kept vectors, read in place from the list slab.

The refine step scores ``c = k * refine_factor`` candidate rows per query with
exact keys. Gathering them first (``vectors[pos]`` as a float32 (nq, c, d)
array, 123 MB for 2,000 queries at d=384 and c=40) costs a copy of every
candidate row and its allocation; these kernels read each candidate row
straight from the slab by position instead, in its stored dtype
(:func:`row_key`):

- float32 rows: :func:`~shardann._kernels.distances.exact_key`, the same
  key as a gathered copy gave;
- float16 rows (passed as their uint16 bit patterns: Numba has no float16):
  widened to float32 in registers (LLVM ``fpext half``: one ``vcvtph2ps`` per
  8 or 16 values on F16C CPUs);
- int8 rows with a per-dimension affine scale (``x_j ~ off_j + step_j * c_j``,
  see :mod:`shardann.sq`): the query is mapped once into the code's frame
  (``u = q - off`` for l2, ``u = q * step`` plus a constant ``<q, off>`` for ip),
  so a row costs one multiply-add per dimension.

The candidate rows are random rows of a slab far larger than the caches, so a
row's key waits on memory longer than it computes: a query asks for all its
rows before scoring the first (:func:`_prefetch_rows`). Measured on 200k x 128
float16 rows, 1000 queries of 20 rows, one thread: 1.76 -> 1.59 us a query
(asking one query ahead, while the previous one is scored, was slower: 2.15).

:func:`shortlist_keys_serial` writes the keys (for a coordinator that merges
shortlists across shards); :func:`refine_topk_serial` keeps only the ``k``
best of each query (ties by smaller id), the local search's re-ranking
without the (nq, c) keys and ids and their sort.

A key is computed per (query, row) from that row alone, so it is the same in
any batch, shard or thread count (results stay equal between the local and the
sharded index). Rows at position -1 get ``+inf`` (and are not candidates).
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload

from . import serial_and_parallel
from .distances import exact_key
from .fastscan8 import prefetch
from .topk import heap_init, heap_push, heap_sort_into


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


def row_key(qi, row, step, ci, ip):
    """The exact key of one kept ``row`` (float32, float16 bits as uint16, or
    int8 codes) to the query ``qi`` (for int8: the query in the codes' frame,
    with ``step`` the per-dimension steps and ``ci`` its constant; both unused
    for the float rows). Chosen by the row's dtype at compile time."""
    raise NotImplementedError("row_key is compiled into the kernels only")


@overload(row_key)
def _row_key(qi, row, step, ci, ip):
    if row.dtype == types.float32:
        return lambda qi, row, step, ci, ip: exact_key(qi, row, ip)
    if row.dtype == types.uint16:
        return lambda qi, row, step, ci, ip: _half_key(qi, row, ip)
    if row.dtype == types.int8:
        return lambda qi, row, step, ci, ip: _int8_key(qi, row, step, ci, ip)
    return None


@njit(inline="always")
def _prefetch_rows(rows, pos, i):
    # every row of query i at once, so their cache misses overlap
    d = rows.shape[1]
    for j in range(pos.shape[1]):
        r = pos[i, j]
        if r >= 0:
            prefetch(rows, r * d, d)


def _keys_body(q, rows, step, const, pos, ip, out):
    """Keys float32 (nq, c) of the slab ``rows`` (n, d) at ``pos`` int64 (nq, c)."""
    nq, c = pos.shape
    for i in prange(nq):
        _prefetch_rows(rows, pos, i)
        for j in range(c):
            r = pos[i, j]
            out[i, j] = np.inf if r < 0 else row_key(q[i], rows[r], step, const[i], ip)


def _topk_body(q, rows, step, const, pos, ids, ip, k, out_d, out_i):
    """The ``k`` smallest keys of each query's rows ``pos`` int64 (nq, c):
    keys float32 and ids int64 (``ids[pos]``) (nq, k), best first, ties by
    smaller id, padded with (+inf, -1)."""
    nq, c = pos.shape
    for i in prange(nq):
        _prefetch_rows(rows, pos, i)
        hd = np.empty(k, np.float32)
        hi = np.empty(k, np.int64)
        hid = np.empty(k, np.int64)
        heap_init(hd, hi, hid)
        for j in range(c):
            r = pos[i, j]
            if r < 0 or ids[r] < 0:
                continue
            v = row_key(q[i], rows[r], step, const[i], ip)
            heap_push(hd, hi, hid, k, v, ids[r], ids[r])
        heap_sort_into(hd, hi, hid, out_d[i], out_i[i])


shortlist_keys_serial, shortlist_keys_parallel = serial_and_parallel(_keys_body)
refine_topk_serial, refine_topk_parallel = serial_and_parallel(_topk_body)
