"""Bounded max-heaps keyed by (distance, id) and row-wise top-k selection."""

import numpy as np
from numba import njit, prange

from . import serial_and_parallel


@njit(inline="always")
def _worse(d1, i1, d2, i2):
    # (d1, i1) ranks after (d2, i2): larger key, or equal key and larger id.
    return d1 > d2 or (d1 == d2 and i1 > i2)


@njit(cache=True)
def heap_replace_top(hd, hi, hid, k, d, i, ident):
    """Replace the worst element of a full max-heap of size ``k`` and sift down.

    ``hd``/``hi`` hold keys and payloads (row positions), ``hid`` the ids used
    to break ties (``ident`` is the id of the new element).
    """
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= k:
            break
        right = left + 1
        child = left
        if right < k and _worse(hd[right], hid[right], hd[left], hid[left]):
            child = right
        if _worse(hd[child], hid[child], d, ident):
            hd[pos] = hd[child]
            hi[pos] = hi[child]
            hid[pos] = hid[child]
            pos = child
        else:
            break
    hd[pos] = d
    hi[pos] = i
    hid[pos] = ident


@njit(cache=True)
def heap_push(hd, hi, hid, k, d, i, ident):
    """Offer (d, ident) with payload ``i`` to a max-heap holding the ``k`` best.

    A heap starts filled with (+inf, -1, int64 max) sentinels, so it is
    always "full" and the root is the current worst kept element.
    """
    if _worse(d, ident, hd[0], hid[0]):
        return
    heap_replace_top(hd, hi, hid, k, d, i, ident)


@njit(cache=True)
def heap_init(hd, hi, hid):
    """Fill a heap with sentinels: key +inf, payload -1, id int64 max."""
    for j in range(hd.shape[0]):
        hd[j] = np.inf
        hi[j] = -1
        hid[j] = np.iinfo(np.int64).max


@njit(cache=True)
def heap_sort_into(hd, hi, hid, out_d, out_i):
    """Write heap contents best-first into ``out_d``/``out_i`` (payloads).

    The heap is consumed. Sentinel entries come out as (+inf, -1).
    """
    k = hd.shape[0]
    n = k
    while n > 0:
        # root is worst: move it to the back
        out_d[n - 1] = hd[0]
        out_i[n - 1] = hi[0]
        n -= 1
        if n == 0:
            break
        d = hd[n]
        i = hi[n]
        ident = hid[n]
        heap_replace_top(hd, hi, hid, n, d, i, ident)


@njit(inline="always")
def _group_minima(keys, G, low):
    # low[c] = min over t < 16 of keys[t G + c]: the 16 strided groups' minima
    low[:] = keys[:G]
    for t in range(1, 16):
        for c in range(G):  # a vector loop
            v = keys[t * G + c]
            if v < low[c]:
                low[c] = v


@njit(inline="always")
def _run_insert(sd, si, cnt, k, v, i):
    # offer (v, i) to the sorted run sd/si holding the cnt (<= k) best; returns
    # the new count
    if cnt == k and _worse(v, i, sd[k - 1], si[k - 1]):
        return cnt
    p = cnt if cnt < k else k - 1
    while p > 0 and _worse(sd[p - 1], si[p - 1], v, i):
        sd[p] = sd[p - 1]
        si[p] = si[p - 1]
        p -= 1
    sd[p] = v
    si[p] = i
    return cnt + 1 if cnt < k else cnt


def _topk_from_dots_body(dots, base, scale, qadd, clamp, ids, k, out_d, out_i, allowed=None,
                         limit=None, resume=False):
    """Row-wise k smallest keys ``base[j] - scale * dots[q, j] + qadd[q]``.

    The keys are formed on the fly: one pass over the dot products instead of
    NumPy passes that write and reread a (nq, n) block. Precomputed keys
    ``dist`` are ``dots=dist, base=0, scale=-1, qadd=0``.
    Rounds exactly like ``base[None] - scale * dots + qadd[:, None]`` in
    float32 (no fastmath here, so no fused multiply-add).

    Parameters
    ----------
    dots : float32 (nq, n). base : float32 (n,). scale : float32.
    qadd : float32 (nq,). clamp : bool, keys below 0 become 0 (rounding can
        make a squared distance slightly negative).
    ids : int64 (n,) id of each column; ties break by smaller id.
    k : int, number kept per row.
    out_d : float32 (nq, k), out_i : int64 (nq, k) results (ids), best first,
        padded with (+inf, -1).
    allowed : uint8 (n,) or None; columns where it is 0 are skipped (a filter).
        None compiles a variant without the test.
    limit : float32 (nq,) or None; keys above ``limit[q]`` are skipped before
        they reach the heap. The caller knows they cannot make its final top-k
        (e.g. the k-th key of an earlier block of the same rows): the heap then
        sees few rows after the first block instead of restarting from scratch.
        Rows are padded with (+inf, -1) where fewer than k keys pass.
    resume : bool; True: ``out_d``/``out_i`` already hold a result of this
        form (from earlier columns of the same rows, with ``ids`` as their
        ids) and the heap starts from it, so a caller scanning a database in
        blocks keeps one running top-k instead of merging partial results.
    """
    nq, n = dots.shape
    zero = np.float32(0.0)
    # Columns are split in 16 strided groups of G (j = t G + c): the k-th
    # smallest of the groups' minima is a key of k distinct columns, so it
    # bounds the k-th smallest key from above and columns above it can be
    # skipped without the heap (which sifts far less). Same results.
    G = n // 16 if n >= 16 * k else 0
    small = k <= _SMALL_K and not resume
    for q in prange(nq):
        add = qadd[q]
        lim = np.float32(np.inf) if limit is None else limit[q]
        keys = np.empty(n + (G if small else 0), np.float32)  # + the small path's minima
        for j in range(n):  # a vector loop: no branch but the selects
            v = (base[j] - scale * dots[q, j]) + add
            if clamp and v < zero:
                v = zero
            if allowed is not None and allowed[j] == 0:
                v = np.float32(np.inf)  # (skipped below; never a group's bound)
            keys[j] = v
        if small:
            _select_small(keys, n, ids, allowed, lim, G, k, out_d[q], out_i[q])
            continue
        hd = np.empty(k, np.float32)
        hi = np.empty(k, np.int64)
        hid = np.empty(k, np.int64)
        heap_init(hd, hi, hid)
        if resume:
            for j in range(k):
                if out_i[q, j] >= 0:
                    heap_push(hd, hi, hid, k, out_d[q, j], out_i[q, j], out_i[q, j])
        if G > 0:
            low = np.empty(G, np.float32)
            _group_minima(keys, G, low)
            gd = np.empty(k, np.float32)  # a heap of its own: hd may hold a resumed result
            gi = np.empty(k, np.int64)
            gid = np.empty(k, np.int64)
            heap_init(gd, gi, gid)
            for c in range(G):
                if low[c] < gd[0]:
                    heap_push(gd, gi, gid, k, low[c], c, c)
            lim = min(lim, gd[0])
        for j in range(n):
            v = keys[j]
            if v > lim or v > hd[0]:
                continue  # cannot enter: most columns stop here
            if allowed is not None and allowed[j] == 0:
                continue
            heap_push(hd, hi, hid, k, v, ids[j], ids[j])
        heap_sort_into(hd, hi, hid, out_d[q], out_i[q])


#: up to this k, a row's selection keeps a sorted run instead of a heap (the
#: coarse probe's nprobe + a few): shifting a short run costs less than a
#: heap's unpredictable sift, and the run needs no final sort
_SMALL_K = 32


@njit(cache=True, nogil=True)
def _select_small(keys, n, ids, allowed, lim, G, k, sd, si):
    """The k smallest (key, id) of one row's keys ``keys[:n]`` float32 with
    keys above ``lim`` skipped, best first into ``sd`` float32 (k,) / ``si``
    int64 (k,) (padded with (+inf, -1)). ``G`` > 0: the bound from 16 strided
    groups' minima, as in the heap path, which ``keys[n:n + G]`` holds while
    it is formed. Same results as the heap path."""
    if G > 0:
        low = keys[n:n + G]
        _group_minima(keys, G, low)
        # the k-th smallest of the minima, kept in the sorted run sd (values
        # alone: a tie's order cannot change the k-th value, and the id test
        # of _run_insert cost ~6% of the probe's selection)
        cnt = 0
        for c in range(G):
            v = low[c]
            if cnt == k and not v < sd[k - 1]:
                continue
            p = cnt if cnt < k else k - 1
            while p > 0 and sd[p - 1] > v:
                sd[p] = sd[p - 1]
                p -= 1
            sd[p] = v
            if cnt < k:
                cnt += 1
        if cnt == k and sd[k - 1] < lim:
            lim = sd[k - 1]
    # the columns under the bound (few), gathered without a branch per column
    cand = np.empty(n, np.int32)
    m = 0
    for j in range(n):
        cand[m] = j
        m += keys[j] <= lim
    cnt = 0
    for t in range(m):
        j = cand[t]
        if allowed is None or allowed[j] != 0:
            cnt = _run_insert(sd, si, cnt, k, keys[j], ids[j])
    for t in range(cnt, k):
        sd[t] = np.inf
        si[t] = -1


# rows are independent: the parallel twin (prange over rows) gives the same results
topk_from_dots_serial, topk_from_dots_parallel = serial_and_parallel(_topk_from_dots_body)
