"""Product quantization: encode, pack, unpack, decode and lookup tables.

Codes are bit-packed per vector, least significant bit first: sub-quantizer
``m`` occupies bits ``[m * nbits, (m + 1) * nbits)`` of the code, so with
``nbits=8`` byte ``m`` is sub-code ``m`` and with ``nbits=4`` byte ``m // 2``
holds sub-code ``m`` in its low (even ``m``) or high (odd ``m``) nibble.
"""

import numpy as np
from numba import njit

from .kmeans import SIMD_ROWS, argmin_l2_lowdim, nearest_rows


@njit(cache=True)
def pq_assign(x, codebooks, cnorms, out_codes):
    """Nearest sub-centroid per sub-vector.

    Parameters
    ----------
    x : float32 (n, d).
    codebooks : float32 (M, ksub, dsub).
    cnorms : float32 (M, ksub), squared norms of the sub-centroids.
    out_codes : uint8 (n, M), unpacked codes.
    """
    n = x.shape[0]
    M, ksub, dsub = codebooks.shape
    if dsub > 8:  # wide sub-vectors: one sub-quantizer at a time over all rows
        labels = np.empty(n, np.int64)
        keys = np.empty(n, np.float32)
        for m in range(M):
            argmin_l2_lowdim(x, m * dsub, codebooks[m], cnorms[m], labels, keys)
            for i in range(n):
                out_codes[i, m] = labels[i]
        return
    # 32 rows at a time through every sub-quantizer: the rows stay in cache
    # (one sub-quantizer at a time over all rows would reread x M times)
    width = 4 if dsub <= 4 else 8
    padded = np.zeros((M, ksub, width), np.float32)
    padded[:, :, :dsub] = codebooks
    cn = np.ascontiguousarray(cnorms)
    R = SIMD_ROWS
    xt = np.zeros((width, R), np.float32)
    best = np.empty(R, np.float32)
    arg = np.empty(R, np.int32)
    for s in range(0, n, R):
        nb = min(R, n - s)
        for m in range(M):
            nearest_rows(x, s, nb, m * dsub, dsub, padded[m], cn[m], xt, best, arg)
            for i in range(nb):
                out_codes[s + i, m] = arg[i]


@njit(cache=True)
def pack_codes(raw, nbits, code_size):
    """Pack unpacked codes uint8 (n, M) into uint8 (n, code_size)."""
    n, M = raw.shape
    out = np.zeros((n, code_size), np.uint8)
    for i in range(n):
        for m in range(M):
            v = np.uint32(raw[i, m])
            bit = m * nbits
            byte = bit >> 3
            shift = bit & 7
            out[i, byte] |= np.uint8((v << shift) & 0xFF)
            if shift + nbits > 8:
                out[i, byte + 1] |= np.uint8(v >> (8 - shift))
    return out


@njit(cache=True, inline="always")
def unpack_one(code, m, nbits, mask):
    bit = m * nbits
    byte = bit >> 3
    shift = bit & 7
    v = np.uint32(code[byte]) >> shift
    if shift + nbits > 8:
        v |= np.uint32(code[byte + 1]) << (8 - shift)
    return v & mask


@njit(cache=True)
def unpack_codes(codes, M, nbits):
    """Unpack uint8 (n, code_size) codes into uint8 (n, M)."""
    n = codes.shape[0]
    mask = np.uint32((1 << nbits) - 1)
    out = np.empty((n, M), np.uint8)
    for i in range(n):
        for m in range(M):
            out[i, m] = unpack_one(codes[i], m, nbits, mask)
    return out


@njit(cache=True)
def pq_decode(raw, codebooks):
    """Reconstruct float32 (n, M * dsub) from unpacked codes uint8 (n, M)."""
    n, M = raw.shape
    dsub = codebooks.shape[2]
    out = np.empty((n, M * dsub), np.float32)
    for i in range(n):
        for m in range(M):
            c = raw[i, m]
            for t in range(dsub):
                out[i, m * dsub + t] = codebooks[m, c, t]
    return out


@njit(cache=True, fastmath=True)
def pq_dot_tables(q, codebooks):
    """Inner products of query sub-vectors with every sub-centroid.

    q : float32 (nq, d); codebooks : float32 (M, ksub, dsub).
    Returns float32 (nq, M, ksub).
    """
    nq = q.shape[0]
    M, ksub, dsub = codebooks.shape
    out = np.empty((nq, M, ksub), np.float32)
    for i in range(nq):
        for m in range(M):
            for j in range(ksub):
                s = np.float32(0.0)
                for t in range(dsub):
                    s += q[i, m * dsub + t] * codebooks[m, j, t]
                out[i, m, j] = s
    return out


@njit(cache=True, fastmath=True)
def pq_l2_tables(q, codebooks):
    """Squared L2 from query sub-vectors to every sub-centroid: (nq, M, ksub)."""
    nq = q.shape[0]
    M, ksub, dsub = codebooks.shape
    out = np.empty((nq, M, ksub), np.float32)
    for i in range(nq):
        for m in range(M):
            for j in range(ksub):
                s = np.float32(0.0)
                for t in range(dsub):
                    u = q[i, m * dsub + t] - codebooks[m, j, t]
                    s += u * u
                out[i, m, j] = s
    return out
