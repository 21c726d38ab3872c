"""Product quantization: encode, pack, unpack, decode and lookup tables.

Codes are bit-packed per vector, least significant bit first: sub-quantizer
``m`` occupies bits ``[m * nbits, (m + 1) * nbits)`` of the code, so with
``nbits=8`` byte ``m`` is sub-code ``m`` and with ``nbits=4`` byte ``m // 2``
holds sub-code ``m`` in its low (even ``m``) or high (odd ``m``) nibble.
"""

import numpy as np
from numba import njit, prange

from . import serial_and_parallel
from .kmeans import REGS_MAX_DIM, SIMD_ROWS, _argmin_any, nearest_rows, pad_width


def pq_assign(x, codebooks, cnorms, out_codes):
    """Nearest sub-centroid per sub-vector.

    Parameters
    ----------
    x : float32 (n, d), C-contiguous.
    codebooks : float32 (M, ksub, dsub).
    cnorms : float32 (M, ksub), squared norms of the sub-centroids.
    out_codes : uint8 (n, M), unpacked codes.
    """
    pq_assign_residual(x, np.empty((0, x.shape[1]), np.float32), np.empty(0, np.int64),
                       codebooks, cnorms, out_codes)


def pq_assign_residual(x, base, labels, codebooks, cnorms, out_codes):
    """:func:`pq_assign` of the residuals ``x[i] - base[labels[i]]``, formed a
    few rows at a time (the same float32 subtractions as NumPy's
    ``x - base[labels]``, so the same codes, without the (n, d) temporary).
    Empty ``labels`` encode ``x`` itself.

    x : float32 (n, d). base : float32 (nlist, d). labels : int64 (n,).

    Sub-vectors of up to 16 dimensions and wider ones take separate kernels,
    chosen here, so a process compiles only the one its data needs.
    """
    codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
    cnorms = np.ascontiguousarray(cnorms, dtype=np.float32)
    if codebooks.shape[2] <= REGS_MAX_DIM:
        _assign_regs(x, base, labels, codebooks, cnorms, out_codes)
    else:
        _assign_wide(x, base, labels, codebooks, cnorms, out_codes)


@njit(inline="always")
def _residual_rows(x, base, labels, s, nb, tile):
    # tile[i] = x[s + i] - base[labels[s + i]] for i < nb
    for i in range(nb):
        c = labels[s + i]
        for j in range(x.shape[1]):
            tile[i, j] = x[s + i, j] - base[c, j]


@njit(cache=True, nogil=True)
def _assign_regs(x, base, labels, codebooks, cnorms, out_codes):
    # dsub <= 16: 32 rows at a time through every sub-quantizer while in cache
    # (one sub-quantizer at a time over all rows would reread x M times), the
    # sub-centroids zero padded to 4, 8, 12 or 16 dimensions for the register kernel
    n, d = x.shape
    M, ksub, dsub = codebooks.shape
    residual = labels.shape[0] > 0
    R = SIMD_ROWS
    width = pad_width(dsub)
    padded = np.zeros((M, ksub, width), np.float32)
    for m in range(M):
        for j in range(ksub):
            for t in range(dsub):
                padded[m, j, t] = codebooks[m, j, t]
    tile = np.empty((R if residual else 0, d), np.float32)
    xt = np.zeros((width, R), np.float32)
    best = np.empty(R, np.float32)
    arg = np.empty(R, np.int32)
    for s in range(0, n, R):
        nb = min(R, n - s)
        src = x
        s0 = s
        if residual:
            _residual_rows(x, base, labels, s, nb, tile)
            src = tile
            s0 = 0
        for m in range(M):
            nearest_rows(src, s0, nb, m * dsub, dsub, padded[m], cnorms[m], xt, best, arg)
            for i in range(nb):
                out_codes[s + i, m] = arg[i]


@njit(cache=True, nogil=True)
def _assign_wide(x, base, labels, codebooks, cnorms, out_codes):
    # dsub > 16: one sub-quantizer at a time over a tile of rows (all rows
    # when there is no residual to form)
    n, d = x.shape
    M, ksub, dsub = codebooks.shape
    residual = labels.shape[0] > 0
    T = 1024 if residual else max(n, 1)
    tile = np.empty((T if residual else 0, d), np.float32)
    labs = np.empty(T, np.int64)
    keys = np.empty(T, np.float32)
    for s in range(0, n, T):
        nb = min(T, n - s)
        rows = x[s:s + nb]
        if residual:
            _residual_rows(x, base, labels, s, nb, tile)
            rows = tile[:nb]
        for m in range(M):
            _argmin_any(rows, m * dsub, codebooks[m], cnorms[m], labs, keys)
            for i in range(nb):
                out_codes[s + i, m] = labs[i]


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


def _pq_dot_tables_body(q, cbt):
    """Inner products of query sub-vectors with every sub-centroid.

    q : float32 (nq, d); cbt : float32 (M, dsub, ksub), the codebooks
    transposed (``codebooks.transpose(0, 2, 1)``, C-contiguous).
    Returns float32 (nq, M, ksub).

    The sub-centroids run along the innermost loop (contiguous in ``cbt``), so
    it is vectorised across them while each entry still sums its ``dsub``
    products in order, without fastmath: the same bits in any batch and for
    either twin.
    """
    nq = q.shape[0]
    M, dsub, ksub = cbt.shape
    out = np.empty((nq, M, ksub), np.float32)
    for i in prange(nq):
        for m in range(M):
            o = out[i, m]
            x = q[i, m * dsub]
            for j in range(ksub):
                o[j] = x * cbt[m, 0, j]
            for t in range(1, dsub):
                x = q[i, m * dsub + t]
                for j in range(ksub):
                    o[j] += x * cbt[m, t, j]
    return out


# queries are independent: the parallel twin gives the same tables
pq_dot_tables_serial, pq_dot_tables_parallel = serial_and_parallel(_pq_dot_tables_body)


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



def _residual_errors_body(x, base, labels, codes, codebooks, nbits, out_coarse, out_pq):
    """Quantization errors of PQ-encoded rows, in one pass without temporaries.

    x : float32 (n, d). base : float32 (nlist, d). labels : int64 (n,).
    codes : uint8 (n, code_size), the packed PQ codes of the residuals
    ``x - base[labels]`` with codebooks float32 (M, 2**nbits, d / M).
    out_coarse : float32 (n,) gets ``|x - base[label]|^2``; out_pq : float32
    (n,) gets ``|x - base[label] - decode(code)|^2``.
    """
    n = x.shape[0]
    M, _, dsub = codebooks.shape
    mask = np.uint32((1 << nbits) - 1)
    for i in prange(n):
        c = labels[i]
        sc = np.float32(0)
        sp = np.float32(0)
        for m in range(M):
            k = unpack_one(codes[i], m, nbits, mask)
            for t in range(dsub):
                j = m * dsub + t
                r = x[i, j] - base[c, j]
                sc += r * r
                e = r - codebooks[m, k, t]
                sp += e * e
        out_coarse[i] = sc
        out_pq[i] = sp


# rows are independent: the parallel twin gives the same errors
residual_errors_serial, residual_errors_parallel = serial_and_parallel(_residual_errors_body)
