"""Inverted-list scans: IVF-Flat exact scan and IVF-PQ ADC scan with a top-k heap.

Lists live in one row-major slab: list ``l`` occupies rows
``[list_start[l], list_start[l] + list_size[l])`` of ``ids`` / ``codes`` /
``vectors`` (the 4-bit fast scan reads its codes from 32-row tiles instead,
see ``fastscan.py``). Each query visits its probed lists (``probes``, -1 = skip) and
keeps the ``k`` smallest keys with their slab row positions.

Adaptive probing reaches them as ``bounds``, float32 (nq, nprobe) or None:
a query skips probed list ``p`` when ``bounds[q, p]`` exceeds the k-th best
key it has found so far (in the lists before ``p``, in probe order); None
compiles without the test.

A filter reaches the scans as ``allowed``, uint8 over the slab rows (0: the
row fails the filter and is never scored), or None, which Numba compiles as
a variant without the test (so unfiltered scans run the code they always ran).

Serial and parallel (``prange`` over queries) variants are compiled from one
body (see :func:`~shardann._kernels.serial_and_parallel`), each when first
called. Scans avoid ``fastmath`` so every variant sums in the same order and the
results of one shard, N shards and the local index agree bit for bit.
"""

import numpy as np
from numba import njit, prange

from . import fastscan, fastscan8, serial_and_parallel
from .distances import exact_key
from .pq import unpack_one
from .topk import heap_init, heap_replace_top, heap_sort_into

# The three kinds of ADC table. A scan kernel is told which by the inputs it
# is given (None for the others), so each kind compiles as a specialisation
# of its own, without the other kinds' code (Numba drops a branch on an
# argument that is None before typing it):
#   list_terms given: L2 with precomputed terms, table = list_terms[list] + qlut[q],
#       dis0 = |q - c|^2
#   codebooks given: L2 residual, table = |(q - c)_m - codeword|^2 built per
#       (query, list), dis0 = 0
#   neither: inner product, table = qlut[q], dis0 = -<q, c>

@njit(inline="always")
def _new_heap(k):
    # an empty top-k heap: keys, slab positions, ids
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    hid = np.empty(k, np.int64)
    heap_init(hd, hi, hid)
    return hd, hi, hid


@njit(inline="always")
def _offer(hd, hi, hid, k, s, r, ident):
    if s < hd[0] or (s == hd[0] and ident < hid[0]):
        heap_replace_top(hd, hi, hid, k, s, r, ident)


@njit(inline="always")
def _beyond(bounds, q, p, hd):
    # Adaptive probing's per-list exit (``bounds`` float32 (nq, nprobe) or None,
    # see shardann.index._probing.gap_bounds): list p is skipped when its bound
    # exceeds the heap's top key, the k-th best so far (+inf until k rows are
    # in). The top only falls, so a skipped list would be skipped later too.
    return bounds is not None and bounds[q, p] > hd[0]


def _ivfflat_body(queries, probes, vectors, ids, list_start, list_size, k, ip,
                  out_d, out_pos, allowed=None, bounds=None):
    nq, nprobe = probes.shape
    for q in prange(nq):
        hd, hi, hid = _new_heap(k)
        for p in range(nprobe):
            if _beyond(bounds, q, p, hd):
                continue
            lst = probes[q, p]
            if lst < 0:
                continue
            start = list_start[lst]
            for r in range(start, start + list_size[lst]):
                if allowed is not None and allowed[r] == 0:
                    continue
                s = exact_key(queries[q], vectors[r], ip)
                _offer(hd, hi, hid, k, s, r, ids[r])
        heap_sort_into(hd, hi, hid, out_d[q], out_pos[q])


ivfflat_scan_serial, ivfflat_scan_parallel = serial_and_parallel(_ivfflat_body)


@njit(inline="always")
def _byte_tables(L, nbits, code_size, T):
    # Fold the sub-quantizer tables that share a code byte into one
    # 256-entry table per byte (nbits divides 8), so the scan does one lookup
    # per byte: 4-bit codes read two sub-quantizers per lookup.
    M = L.shape[0]
    per = 8 // nbits
    mask = (1 << nbits) - 1
    for j in range(code_size):
        for b in range(256):
            s = np.float32(0.0)
            for u in range(per):
                m = j * per + u
                if m < M:
                    s += L[m, (b >> (u * nbits)) & mask]
            T[j, b] = s


@njit(inline="always")
def _residual_table(query, centroid, codebooks, L):
    M, ksub, dsub = codebooks.shape
    for m in range(M):
        for j in range(ksub):
            s = np.float32(0.0)
            for t in range(dsub):
                u = query[m * dsub + t] - centroid[m * dsub + t] - codebooks[m, j, t]
                s += u * u
            L[m, j] = s


@njit(inline="always")
def _fill_table(have_table, qlut_q, list_terms, lst, query, centroids, codebooks, L):
    # ADC table of one (query, list) into the first M rows of L; False when
    # the table already there is still right (the inner product's does not
    # depend on the list). The kind follows from which of list_terms and
    # codebooks is not None (see above).
    M, ksub = qlut_q.shape
    if list_terms is not None:
        for m in range(M):
            for j in range(ksub):
                L[m, j] = list_terms[lst, m, j] + qlut_q[m, j]
    elif codebooks is not None:
        _residual_table(query, centroids[lst], codebooks, L)
    elif have_table:
        return False
    else:
        for m in range(M):
            for j in range(ksub):
                L[m, j] = qlut_q[m, j]
    return True


@njit(inline="always")
def _scan_bytes(T, codes, ids, start, end, base, hd, hi, hid, k):
    # One 256-entry table lookup per code byte. Four rows are summed side by
    # side: each row still adds its terms in the same order (results are
    # bit-identical to one row at a time), but the four chains of dependent
    # adds overlap instead of waiting on each other.
    code_size = codes.shape[1]
    r = start
    while r + 4 <= end:
        s0 = base
        s1 = base
        s2 = base
        s3 = base
        for j in range(code_size):
            t = T[j]
            s0 += t[codes[r, j]]
            s1 += t[codes[r + 1, j]]
            s2 += t[codes[r + 2, j]]
            s3 += t[codes[r + 3, j]]
        _offer(hd, hi, hid, k, s0, r, ids[r])
        _offer(hd, hi, hid, k, s1, r + 1, ids[r + 1])
        _offer(hd, hi, hid, k, s2, r + 2, ids[r + 2])
        _offer(hd, hi, hid, k, s3, r + 3, ids[r + 3])
        r += 4
    while r < end:
        s = base
        for j in range(code_size):
            s += T[j, codes[r, j]]
        _offer(hd, hi, hid, k, s, r, ids[r])
        r += 1


@njit(inline="always")
def _scan_bytes_allowed(T, codes, ids, start, end, base, hd, hi, hid, k, allowed):
    # _scan_bytes over the rows a filter lets through, one at a time: each row
    # adds the same terms in the same order, so its key is the unfiltered one
    code_size = codes.shape[1]
    for r in range(start, end):
        if allowed[r] == 0:
            continue
        s = base
        for j in range(code_size):
            s += T[j, codes[r, j]]
        _offer(hd, hi, hid, k, s, r, ids[r])


@njit(inline="always")
def _scan_rows(T, codes, ids, start, end, base, hd, hi, hid, k, allowed):
    if allowed is None:
        _scan_bytes(T, codes, ids, start, end, base, hd, hi, hid, k)
    else:
        _scan_bytes_allowed(T, codes, ids, start, end, base, hd, hi, hid, k, allowed)


@njit(inline="always")
def _block_allowed(allowed, first, n):
    # int64 with bit i set where row first + i passes the filter (i < n <= 64)
    bits = np.int64(0)
    for i in range(n):
        if allowed[first + i] != 0:
            bits |= np.int64(1) << i
    return bits


@njit(inline="always")
def _rows_to_score(allowed, start, end):
    # rows of [start, end) a filter lets through (all of them without one)
    if allowed is None:
        return end - start
    n = 0
    for r in range(start, end):
        n += allowed[r] != 0
    return n


@njit(inline="always")
def _direct_key(qlut_q, list_terms, lst, query, centroid, codebooks, code, base):
    # The key _scan_rows gives an 8-bit row, without the list's table: each
    # entry it reads is computed as _fill_table computes it, and added in the
    # same order, so the key is the same bit for bit. Inner product: the table
    # is the query's own (no list cost); not called for it.
    M = code.shape[0]
    s = base
    if list_terms is not None:
        for m in range(M):
            c = code[m]
            s += list_terms[lst, m, c] + qlut_q[m, c]
    elif codebooks is not None:
        dsub = codebooks.shape[2]
        for m in range(M):
            c = code[m]
            v = np.float32(0.0)
            for t in range(dsub):
                u = query[m * dsub + t] - centroid[m * dsub + t] - codebooks[m, c, t]
                v += u * u
            s += v
    return s


def _ivfpq8_body(qlut, list_terms, dis0, probes, codes, ids, list_start, list_size,
                 k, queries, centroids, codebooks, out_d, out_pos, allowed=None, direct=0,
                 bounds=None):
    # _ivfpq_body for nbits=8 (a code byte is a sub-code: the ADC table is the
    # byte table), without the other widths' paths: it compiles in less time.
    # ``direct`` > 0 (a filtered search): a list with fewer rows to score than
    # that is scored entry by entry instead of building its L2 table, which
    # costs M * 256 entries however few rows pass (same keys either way)
    nq, nprobe = probes.shape
    M = qlut.shape[1]
    ksub = qlut.shape[2]
    per_list = list_terms is not None or codebooks is not None
    for q in prange(nq):
        hd, hi, hid = _new_heap(k)
        L = np.empty((M, ksub), np.float32)
        have_table = False
        for p in range(nprobe):
            if _beyond(bounds, q, p, hd):
                continue
            lst = probes[q, p]
            if lst < 0 or list_size[lst] == 0:
                continue
            start = list_start[lst]
            end = start + list_size[lst]
            if per_list and direct > 0 and _rows_to_score(allowed, start, end) < direct:
                for r in range(start, end):
                    if allowed is not None and allowed[r] == 0:
                        continue
                    s = _direct_key(qlut[q], list_terms, lst, queries[q], centroids[lst],
                                    codebooks, codes[r], dis0[q, p])
                    _offer(hd, hi, hid, k, s, r, ids[r])
                continue
            _fill_table(have_table, qlut[q], list_terms, lst, queries[q],
                        centroids, codebooks, L)
            have_table = True
            _scan_rows(L, codes, ids, start, end, dis0[q, p], hd, hi, hid, k, allowed)
        heap_sort_into(hd, hi, hid, out_d[q], out_pos[q])


ivfpq8_scan_serial, ivfpq8_scan_parallel = serial_and_parallel(_ivfpq8_body)


def _ivfpq_body(qlut, list_terms, dis0, probes, codes, ids, list_start, list_size,
                k, nbits, queries, centroids, codebooks, out_d, out_pos, allowed=None,
                bounds=None):
    nq, nprobe = probes.shape
    M = qlut.shape[1]
    ksub = qlut.shape[2]
    code_size = codes.shape[1]
    bytewise = (8 % nbits) == 0
    mask = np.uint32((1 << nbits) - 1)
    for q in prange(nq):
        hd, hi, hid = _new_heap(k)
        L = np.empty((M, ksub), np.float32)
        T = np.empty((code_size, 256), np.float32)
        have_table = False
        for p in range(nprobe):
            if _beyond(bounds, q, p, hd):
                continue
            lst = probes[q, p]
            if lst < 0 or list_size[lst] == 0:
                continue
            fresh = _fill_table(have_table, qlut[q], list_terms, lst, queries[q],
                                centroids, codebooks, L)
            if bytewise and nbits != 8 and fresh:
                _byte_tables(L, nbits, code_size, T)
            have_table = True
            base = dis0[q, p]
            start = list_start[lst]
            end = start + list_size[lst]
            if bytewise:
                _scan_rows(L if nbits == 8 else T, codes, ids, start, end, base,
                           hd, hi, hid, k, allowed)
            else:
                for r in range(start, end):
                    if allowed is not None and allowed[r] == 0:
                        continue
                    s = base
                    for m in range(M):
                        s += L[m, unpack_one(codes[r], m, nbits, mask)]
                    _offer(hd, hi, hid, k, s, r, ids[r])
        heap_sort_into(hd, hi, hid, out_d[q], out_pos[q])


ivfpq_scan_serial, ivfpq_scan_parallel = serial_and_parallel(_ivfpq_body)


def _ivfpq4_fastscan_body(qlut, list_terms, dis0, probes, tiles, ids, list_start, list_size,
                          k, queries, centroids, codebooks, out_d, out_pos, allowed=None,
                          bounds=None):
    # The 4-bit scan of _ivfpq_body with the SIMD pre-filter of fastscan.py:
    # a row is scored (exactly as there: base + byte terms in byte order) only
    # when its quantized lower bound can still enter the heap. The codes are
    # tiles (ntiles, code_size, 32) in block layout and every list starts on a
    # tile, so block b of a list is the tile holding its row b.
    nq, nprobe = probes.shape
    M = qlut.shape[1]
    code_size = tiles.shape[1]
    bcodes = tiles.reshape(tiles.size)
    for q in prange(nq):
        hd, hi, hid = _new_heap(k)
        L = np.zeros((fastscan.table_rows(code_size), 16), np.float32)  # rows past M stay 0
        lows = np.empty(L.shape[0], np.float32)
        Q = np.empty(fastscan.qlut_size(code_size), np.uint8)
        S = np.empty(fastscan.BLOCK, np.float32)  # the keys of a block's passing rows
        offset = np.float32(0.0)
        scale = np.float32(0.0)
        slack = np.float32(0.0)
        have_table = False
        quantized = False
        for p in range(nprobe):
            if _beyond(bounds, q, p, hd):
                continue
            lst = probes[q, p]
            if lst < 0 or list_size[lst] == 0:
                continue
            if list_terms is not None:  # L2 precomputed, the common case, in SIMD
                fastscan.add_rows(L, list_terms[lst], qlut[q])
                fresh = True
            else:
                fresh = _fill_table(have_table, qlut[q], list_terms, lst, queries[q],
                                    centroids, codebooks, L)
            if fresh:
                offset, scale, magnitude = fastscan.table_bounds(L, lows)
                # float sums of <= 2 * code_size + 1 terms round by far less
                slack = np.float32(2.0 ** -14) * magnitude
                quantized = False
            have_table = True
            base = dis0[q, p]
            bound_slack = slack + np.float32(2.0 ** -14) * abs(base)
            thr = fastscan.block_threshold(hd[0], base, offset, scale, bound_slack)
            if thr < 0:
                continue  # not even the smallest sum of this list can enter
            if not quantized:
                fastscan.quantize_tables(L, M, lows, scale, Q)
                quantized = True
            start = list_start[lst]
            n = list_size[lst]
            for b in range(0, n, fastscan.BLOCK):
                at = (start + b) * code_size
                if allowed is not None:
                    passing = _block_allowed(allowed, start + b, min(fastscan.BLOCK, n - b))
                    if passing == 0:
                        continue  # no row of the block passes the filter: skip its SIMD pass
                    mask = fastscan.block_mask(bcodes, at, Q, code_size, thr) & passing
                else:
                    mask = fastscan.block_mask(bcodes, at, Q, code_size, thr)
                if mask == 0:
                    continue
                fastscan.score_block(bcodes, at, L, code_size, base, mask, S)
                for i in range(min(fastscan.BLOCK, n - b)):
                    if (mask >> i) & 1:
                        r = start + b + i
                        _offer(hd, hi, hid, k, S[i], r, ids[r])
                # only scoring moves the heap top, so only then can the threshold fall
                thr = fastscan.block_threshold(hd[0], base, offset, scale, bound_slack)
                if thr < 0:
                    break  # the heap top only falls: no later row can enter either
        heap_sort_into(hd, hi, hid, out_d[q], out_pos[q])


ivfpq4_fastscan_serial, ivfpq4_fastscan_parallel = serial_and_parallel(_ivfpq4_fastscan_body)


@njit(cache=True)
def scatter_rows(dst, dst_rows, src):
    """dst[dst_rows[i]] = src[i] for 2-D arrays (append into the list slab)."""
    for i in range(src.shape[0]):
        r = dst_rows[i]
        for j in range(src.shape[1]):
            dst[r, j] = src[i, j]


@njit(inline="always")
def _prefetch_next(probes, q, p, list_terms, tiles, list_start, list_size):
    # the next list this query (or the next query) scans: its precomputed terms
    # (M * 256 floats, read whole to build the table) and its codes
    nq, nprobe = probes.shape
    if p + 1 < nprobe:
        nxt = probes[q, p + 1]
    elif q + 1 < nq:
        nxt = probes[q + 1, 0]
    else:
        return
    if nxt < 0:
        return
    if list_terms is not None:
        per = list_terms.shape[1] * list_terms.shape[2]
        fastscan8.prefetch(list_terms, nxt * per, per)
    span = tiles.shape[1] * tiles.shape[2]
    fastscan8.prefetch(tiles, list_start[nxt] // fastscan.BLOCK * span,
                       (list_size[nxt] + fastscan.BLOCK - 1) // fastscan.BLOCK * span)


def _ivfpq8_fastscan_body(qlut, list_terms, dis0, probes, tiles, ids, list_start, list_size,
                          k, queries, centroids, codebooks, out_d, out_pos, allowed=None,
                          bounds=None):
    # The 8-bit scan of _ivfpq8_body with the AVX-512 VBMI pre-filter of
    # fastscan8.py: a row is scored (exactly as there: base + table entries in
    # sub-quantizer order) only when its quantized lower bound can still enter
    # the heap. The codes are tiles (ntiles, M, 32) in block layout and every
    # list starts on a tile; a 64-row block is two tiles (the second one's
    # lanes ignored at a list's odd end).
    nq, nprobe = probes.shape
    M = qlut.shape[1]
    ksub = qlut.shape[2]
    span = M * fastscan.BLOCK  # bytes of one tile
    bcodes = tiles.reshape(tiles.size)
    for q in prange(nq):
        hd, hi, hid = _new_heap(k)
        L = np.empty((M, ksub), np.float32)
        lo = np.empty(M, np.float32)
        up = np.empty(M, np.float32)
        Q = np.empty(M * ksub, np.uint8)
        offset = np.float32(0.0)
        scale = np.float32(0.0)
        slack = np.float32(0.0)
        have_table = False
        quantized = False
        for p in range(nprobe):
            if _beyond(bounds, q, p, hd):
                continue
            lst = probes[q, p]
            if lst < 0 or list_size[lst] == 0:
                continue
            _prefetch_next(probes, q, p, list_terms, tiles, list_start, list_size)
            if list_terms is not None:  # L2 precomputed, the common case: one SIMD pass
                fastscan8.add_bounds(L, list_terms[lst], qlut[q], lo, up)
                fresh = True
            else:
                fresh = _fill_table(have_table, qlut[q], list_terms, lst, queries[q],
                                    centroids, codebooks, L)
                if fresh:
                    fastscan8.row_bounds(L, lo, up)
            if fresh:
                offset, scale, magnitude = fastscan8.table_bounds(lo, up, M)
                # float sums of <= M + 1 terms round by far less
                slack = np.float32(2.0 ** -14) * magnitude
                quantized = False
            have_table = True
            base = dis0[q, p]
            bound_slack = slack + np.float32(2.0 ** -14) * abs(base)
            start = list_start[lst]
            n = list_size[lst]
            for b in range(0, n, fastscan8.BLOCK):
                # the heap's top falls as rows enter: a tighter limit per block
                thr = fastscan.block_threshold(hd[0], base, offset, scale, bound_slack)
                if thr < 0:
                    break  # not even the smallest sum of this list can enter
                if not quantized:
                    fastscan8.quantize_rows(L, lo, scale, Q)
                    quantized = True
                rest = n - b
                first = (start + b) * M
                second = first + span if rest > fastscan.BLOCK else first
                valid = np.int64(-1) if rest >= 64 else (np.int64(1) << rest) - 1
                if allowed is not None:
                    valid &= _block_allowed(allowed, start + b, min(fastscan8.BLOCK, rest))
                    if valid == 0:
                        continue  # no row of the block passes the filter: skip its SIMD pass
                mask = fastscan8.block_mask(bcodes, first, second, Q, M, thr) & valid
                while mask != 0:
                    i = fastscan8.lowest_bit(mask)
                    mask &= mask - 1
                    at = (first if i < fastscan.BLOCK else second) + (i & (fastscan.BLOCK - 1))
                    s = base
                    for j in range(M):
                        s += L[j, bcodes[at + j * fastscan.BLOCK]]
                    r = start + b + i
                    _offer(hd, hi, hid, k, s, r, ids[r])
        heap_sort_into(hd, hi, hid, out_d[q], out_pos[q])


ivfpq8_fastscan_serial, ivfpq8_fastscan_parallel = serial_and_parallel(_ivfpq8_fastscan_body)
