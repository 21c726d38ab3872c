"""Shared parameters and slow NumPy references for the core tests.

Imported as ``core_support`` (a unique name: other test directories have their
own conftest.py, so nothing is imported from ``conftest``).

Everything here is deliberately simple and slow: float64 arithmetic, Python
loops where clearer, ties broken by the smaller id exactly as the kernels do.
"""

import numpy as np

# the shared data set and index shapes (see conftest.py)
D = 32  # dimension
NB = 3000  # database size
NQ = 100  # queries
NT = 2000  # training set
NLIST = 32
M = 8
K = 10
SEED = 0


def readonly(*arrays):
    """Return read-only C-contiguous copies (Ray and Arrow hand out such arrays)."""
    out = []
    for a in arrays:
        a = np.array(a, copy=True, order="C")
        a.flags.writeable = False
        out.append(a)
    return out[0] if len(out) == 1 else tuple(out)


def topk_smallest(keys, ids, k):
    """Row-wise k smallest ``keys`` (ties by smaller id), padded with (+inf, -1).

    keys : (nq, n) float; ids : (nq, n) or (n,) int64.
    """
    keys = np.asarray(keys, dtype=np.float64)
    nq, n = keys.shape
    ids = np.broadcast_to(np.asarray(ids, dtype=np.int64), keys.shape)
    out_d = np.full((nq, k), np.inf, np.float64)
    out_i = np.full((nq, k), -1, np.int64)
    for q in range(nq):
        order = np.lexsort((ids[q], keys[q]))[:k]
        out_d[q, : order.size] = keys[q, order]
        out_i[q, : order.size] = ids[q, order]
    return out_d, out_i


def exact_keys(xq, xb, metric):
    """float64 key matrix (nq, n): squared L2 or negated inner product."""
    xq = np.asarray(xq, np.float64)
    xb = np.asarray(xb, np.float64)
    if metric == "l2":
        return ((xq[:, None, :] - xb[None, :, :]) ** 2).sum(-1)
    return -(xq @ xb.T)


def normalized(x):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return (x / n).astype(np.float32)


def numpy_knn(xb, xq, k, metric="l2", ids=None):
    """Brute-force ``(D, I)`` with shardann's public conventions."""
    if metric == "cosine":
        xb, xq = normalized(xb), normalized(xq)
    if ids is None:
        ids = np.arange(len(xb), dtype=np.int64)
    keys = exact_keys(xq, xb, "l2" if metric == "l2" else "ip")
    D, I = topk_smallest(keys, ids, k)
    if metric != "l2":
        D = -D
    return D.astype(np.float32), I


def recall_at(I, I_gt, k):
    """Mean fraction of the true top-k found in the returned top-k."""
    hits = 0
    for a, b in zip(I[:, :k], I_gt[:, :k], strict=True):
        hits += len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist()))
    return hits / (I_gt.shape[0] * k)


def unpack_numpy(codes, M, nbits):
    """Bit-by-bit LSB-first unpacking: sub-code m is bits [m*nbits, (m+1)*nbits)."""
    codes = np.asarray(codes, np.uint8)
    bits = np.unpackbits(codes, axis=1, bitorder="little")
    out = np.zeros((codes.shape[0], M), np.int64)
    for m in range(M):
        for b in range(nbits):
            out[:, m] |= bits[:, m * nbits + b].astype(np.int64) << b
    return out.astype(np.uint8)


def pack_numpy(raw, nbits):
    """Inverse of :func:`unpack_numpy`."""
    raw = np.asarray(raw, np.int64)
    n, M = raw.shape
    code_size = -(-M * nbits // 8)
    bits = np.zeros((n, code_size * 8), np.uint8)
    for m in range(M):
        for b in range(nbits):
            bits[:, m * nbits + b] = (raw[:, m] >> b) & 1
    return np.packbits(bits, axis=1, bitorder="little")


def pq_encode_numpy(x, codebooks):
    """Nearest sub-centroid per sub-vector (ties by smaller index): uint8 (n, M)."""
    x = np.asarray(x, np.float64)
    M, ksub, dsub = codebooks.shape
    out = np.empty((x.shape[0], M), np.uint8)
    for m in range(M):
        sub = x[:, m * dsub:(m + 1) * dsub]
        d = ((sub[:, None, :] - codebooks[m][None].astype(np.float64)) ** 2).sum(-1)
        out[:, m] = np.argmin(d, axis=1)
    return out


def pq_decode_numpy(raw, codebooks):
    M = codebooks.shape[0]
    return np.concatenate([codebooks[m][raw[:, m]] for m in range(M)], axis=1)
