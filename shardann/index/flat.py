"""Exact (brute-force) search: the ground truth for every other index."""

import numpy as np

from .._kernels.topk import topk_from_dots_serial as topk_from_dots
from ..metric import uses_ip
from ._lists import InvertedLists
from .base import BaseIndex

_Q_BLOCK = 1024
_DOTS_BLOCK_BYTES = 1 << 20


def _db_block(nq):
    """Database rows per BLAS product in :func:`exact_search_keys`: the (nq, rows)
    dot products stay near 1 MB, so the top-k pass reads them from cache and BLAS
    works on a block it handles well (100 queries, d=128: 4096 rows take 0.76
    us/vector for product and top-k, 65536 rows 1.1), but at least 4096 rows so
    that per-block overhead and the final merge stay small. 4096..65536."""
    rows = _DOTS_BLOCK_BYTES // (4 * max(int(nq), 1))
    return int(min(65536, max(4096, 1 << (rows - 1).bit_length())))


def exact_search_keys(q, xb, ids, k, ip, xb_norms=None, allowed=None, limit=None):
    """Exact top-k keys of ``q`` float32 (nq, d) against ``xb`` float32 (n, d).

    Distances come from BLAS matrix products in blocks; keys are squared L2
    (clamped at 0) or the negated inner product. ``allowed`` uint8 (n,) (or
    None): rows where it is 0 are never ranked (a filter). ``limit`` float32
    (nq,) (or None): keys above it are not wanted (a caller's running k-th key),
    so they are left out. Returns keys float32 (nq, k) and ids int64 (nq, k),
    best first, ties by smaller id, padded with (+inf, -1).
    """
    nq = q.shape[0]
    if ip:
        q_zero = np.zeros(nq, np.float32)
    else:
        if xb_norms is None:
            xb_norms = np.einsum("ij,ij->i", xb, xb)
        xb_norms = np.asarray(xb_norms, np.float32)
        q_norms = np.einsum("ij,ij->i", q, q).astype(np.float32, copy=False)
    ids = np.ascontiguousarray(ids, np.int64)
    out_keys = np.empty((nq, k), np.float32)
    out_ids = np.empty((nq, k), np.int64)
    for qs in range(0, nq, _Q_BLOCK):
        qe = min(nq, qs + _Q_BLOCK)
        step = _db_block(qe - qs)
        # one running top-k per query (each block's heap starts from it): no merge of
        # per-block partial results at the end
        # a key above the k-th of an earlier block cannot make the top-k: later
        # blocks skip those rows before their heaps (most rows, once k are found)
        lim = np.full(qe - qs, np.inf, np.float32)
        if limit is not None:
            np.minimum(lim, np.asarray(limit, np.float32)[qs:qe], out=lim)
        kd, ki = out_keys[qs:qe], out_ids[qs:qe]
        for s in range(0, xb.shape[0], step):
            e = min(xb.shape[0], s + step)
            dots = q[qs:qe] @ xb[s:e].T
            resume = s > 0
            # the filter's mask only when there is one: None runs the unfiltered kernel
            mask = None if allowed is None else allowed[s:e]
            if ip:  # 0 - 1 * dot + 0 = -dot
                topk_from_dots(dots, np.zeros(e - s, np.float32), np.float32(1), q_zero[qs:qe],
                               False, ids[s:e], k, kd, ki, mask, lim, resume)
            else:
                topk_from_dots(dots, xb_norms[s:e], np.float32(2), q_norms[qs:qe], True,
                               ids[s:e], k, kd, ki, mask, lim, resume)
            np.minimum(lim, kd[:, -1], out=lim)
        if xb.shape[0] == 0:
            kd.fill(np.inf)
            ki.fill(-1)
    return out_keys, out_ids


class FlatIndex(BaseIndex):
    """Exact search over stored float32 vectors (FAISS ``IndexFlatL2`` /
    ``IndexFlatIP``).

    Parameters
    ----------
    d : int, dimension. metric : "l2", "ip" or "cosine".

    Examples
    --------
    >>> index = FlatIndex(d=64)                       # doctest: +SKIP
    >>> index.add(xb); D, I = index.search(xq, k=5)   # doctest: +SKIP
    """

    kind = "flat"

    def __init__(self, d, metric="l2"):
        super().__init__(d, metric)
        self._lists = InvertedLists(1, self._columns())
        self._norms = None

    def train(self, x=None):
        """No-op: an exact index needs no training (kept for a uniform API)."""
        return self

    def _encode(self, x):
        return np.zeros(x.shape[0], np.int64), {"vectors": x}

    def _on_mutation(self, list_nos=None):
        self._norms = None

    def _rows(self):
        lists = self._lists
        if lists.start[0] != 0 or lists.used != lists.size[0]:
            lists.compact()
        n = lists.ntotal
        return lists.data["vectors"][:n], lists.ids[:n]

    def _search_keys(self, q, k, nprobe=None, refine_factor=0, filter=None, probe_ratio=None,
                     probe_gap=None):
        xb, ids = self._rows()
        ip = uses_ip(self.metric)
        if not ip and self._norms is None:
            self._norms = np.einsum("ij,ij->i", xb, xb)
        if filter is None:
            return exact_search_keys(q, xb, ids, k, ip, self._norms)
        entry = self._passing_entry(filter)
        if self._is_sparse(entry["counts"]):  # few rows pass: products with those only
            rows = entry["rows"]
            if rows.size == 0:
                return (np.full((q.shape[0], k), np.inf, np.float32),
                        np.full((q.shape[0], k), -1, np.int64))
            return exact_search_keys(q, xb[rows], ids[rows], k, ip,
                                     None if ip else self._norms[rows])
        return exact_search_keys(q, xb, ids, k, ip, self._norms, entry["allowed"][:len(ids)])

    def _decode_rows(self, pos):
        return self._lists.data["vectors"][pos].copy()


def brute_force_knn(xq, xb, k, metric="l2", ids=None):
    """Exact ``(D, I)`` of queries ``xq`` against database ``xb`` without keeping
    an index — argument order as ``faiss.knn(xq, xb, k)``.

    Convenience for ground truth: same conventions as ``FlatIndex.search``;
    ``ids`` int64 (len(xb),) names the database rows (default 0..n-1).
    """
    index = FlatIndex(np.asarray(xb).shape[1], metric)
    index.add(xb, ids)
    return index.search(xq, k)
