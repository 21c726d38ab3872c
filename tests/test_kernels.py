"""Every Numba kernel against a slow NumPy twin.

Kernels get read-only inputs (as Ray's object store and Arrow hand out).
Where the data is integer-valued every float32 sum is exact, so the kernels
must match the twin bit for bit, including ties broken by the smaller id.
Real-valued data is compared with ``allclose``.
"""

import numpy as np
import pytest
from core_support import (
    exact_keys,
    normalized,
    pack_numpy,
    pq_decode_numpy,
    pq_encode_numpy,
    readonly,
    topk_smallest,
    unpack_numpy,
)

from shardann import sq
from shardann._kernels import distances as kd
from shardann._kernels import fastscan as kfs
from shardann._kernels import fastscan8 as kfs8
from shardann._kernels import ivf as kivf
from shardann._kernels import kmeans as kkm
from shardann._kernels import pq as kpq
from shardann._kernels import refine as kref
from shardann._kernels import topk as ktopk
from shardann._kernels import transform as ktr
from shardann.results import merge_results

# ---------------------------------------------------------------------------
# top-k and heaps
# ---------------------------------------------------------------------------


def _run_topk(dist, ids, k):
    """Top-k of precomputed keys: ``0 - (-1) * dist + 0 == dist``; one call per row so
    each row can carry its own ids."""
    nq, n = dist.shape
    out_d = np.empty((nq, k), np.float32)
    out_i = np.empty((nq, k), np.int64)
    ids = np.broadcast_to(ids, dist.shape)
    zeros = readonly(np.zeros(n, np.float32))
    for q in range(nq):
        ktopk.topk_from_dots_serial(dist[q:q + 1], zeros, np.float32(-1), np.zeros(1, np.float32),
                             False, ids[q], k, out_d[q:q + 1], out_i[q:q + 1])
    return out_d, out_i



@pytest.mark.parametrize("ip", [False, True])
def test_exact_search_keys_over_many_blocks_with_a_limit(ip):
    """The running k-th key skips rows in later blocks (and a caller's limit rows above
    it): the top-k over 5+ blocks still equals a full sort, ties by smaller id, and
    with a limit every key above it is left out (padding where fewer than k pass)."""
    from shardann.index.flat import exact_search_keys

    rng = np.random.default_rng(5)
    xb = rng.integers(-2, 3, (20_000, 8)).astype(np.float32)  # many exact ties
    q = rng.integers(-2, 3, (37, 8)).astype(np.float32)
    ids = rng.permutation(10**6)[:20_000].astype(np.int64)
    keys = -(q @ xb.T) if ip else ((q[:, None, :] - xb[None]) ** 2).sum(-1)
    keys = keys.astype(np.float32)
    for k in (1, 50, 130):
        want_d, want_i = topk_smallest(keys, ids, k)
        got_d, got_i = exact_search_keys(*readonly(q, xb, ids), k, ip)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_d, want_d.astype(np.float32))
        limit = want_d[:, k // 2].astype(np.float32)
        got_d, got_i = exact_search_keys(q, xb, ids, k, ip, limit=limit)
        inside = want_d <= limit[:, None]
        np.testing.assert_array_equal(got_i, np.where(inside, want_i, -1))


def test_topk_from_dots_resumes_from_an_earlier_result():
    """``resume=True`` starts each row's heap from the result already in the output:
    two column blocks, the second resumed, equal one pass over all columns (ties by
    smaller id, padding of rows with fewer than k kept)."""
    rng = np.random.default_rng(8)
    dist = rng.integers(0, 6, (9, 300)).astype(np.float32)  # many ties
    ids = rng.permutation(10**5)[:300].astype(np.int64)
    for k in (1, 7, 40, 320):
        want_d, want_i = topk_smallest(dist, ids, k)
        out_d = np.empty((9, k), np.float32)
        out_i = np.empty((9, k), np.int64)
        for s, e, resume in ((0, 120, False), (120, 300, True)):
            ktopk.topk_from_dots_serial(dist[:, s:e].copy(), np.zeros(e - s, np.float32),
                                        np.float32(-1), np.zeros(9, np.float32), False,
                                        ids[s:e].copy(), k, out_d, out_i, None, None, resume)
        np.testing.assert_array_equal(out_i, want_i)
        np.testing.assert_array_equal(out_d, want_d.astype(np.float32))


@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("integer", [True, False])
def test_topk_from_dots_rounds_like_numpy(clamp, integer):
    """Keys formed in the kernel equal NumPy's float32 ``base - 2 * dots + qadd``."""
    rng = np.random.default_rng(11)
    if integer:
        x = rng.integers(-3, 4, (13, 6)).astype(np.float32)
        xb = rng.integers(-3, 4, (70, 6)).astype(np.float32)
        xb[5] = xb[2]  # duplicate row: ties break by the smaller id
    else:
        x = rng.standard_normal((13, 6)).astype(np.float32)
        xb = np.concatenate([x[:3], rng.standard_normal((67, 6)).astype(np.float32)])
    dots = x @ xb.T
    base = (xb * xb).sum(1).astype(np.float32)
    qadd = (x * x).sum(1).astype(np.float32)
    ids = rng.permutation(1000)[:70].astype(np.int64)
    keys = base[None, :] - np.float32(2) * dots
    keys += qadd[:, None]
    if clamp:
        np.maximum(keys, 0, out=keys)
    for k in (1, 7, 70, 80):
        D = np.empty((13, k), np.float32)
        I = np.empty((13, k), np.int64)
        Dr, Ir = topk_smallest(keys, ids, k)
        for fn in (ktopk.topk_from_dots_serial, ktopk.topk_from_dots_parallel):
            fn(*readonly(dots, base), np.float32(2), readonly(qadd), clamp, readonly(ids), k,
               D, I)
            np.testing.assert_array_equal(I, Ir)
            np.testing.assert_array_equal(D, Dr.astype(np.float32))


@pytest.mark.parametrize("filtered", [False, True])
def test_topk_from_dots_over_many_columns(filtered):
    """At least 16 k columns: the strided groups' bound skips most columns
    before the selection; results still equal a full sort (ties by smaller
    id, clamped keys, +inf keys, a filter's skipped columns, a limit), for k
    on both sides of the sorted-run selection's bound and for rows of fewer
    than 16 k columns (no group bound)."""
    rng = np.random.default_rng(12)
    nq, n = 9, 1000
    dots = rng.integers(-4, 5, (nq, n)).astype(np.float32)  # many ties
    dots[0] = 0  # one row of equal keys
    base = rng.integers(0, 6, n).astype(np.float32)
    base[7] = np.inf
    qadd = rng.integers(-3, 4, nq).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    allowed = (rng.random(n) < 0.3).astype(np.uint8) if filtered else None
    small = ktopk._SMALL_K
    for cols, ks in ((n, (1, 10, small - 1, small, small + 1, 62, 300)), (100, (3, 10, 40))):
        d, b, i = dots[:, :cols].copy(), base[:cols].copy(), ids[:cols].copy()
        a = None if allowed is None else allowed[:cols].copy()
        keys = np.maximum(b[None, :] - np.float32(2) * d + qadd[:, None], 0)
        keep = np.ones(cols, bool) if a is None else a.astype(bool)
        for k in ks:
            Dr, Ir = topk_smallest(keys[:, keep], i[keep], k)
            for fn in (ktopk.topk_from_dots_serial, ktopk.topk_from_dots_parallel):
                D = np.empty((nq, k), np.float32)
                I = np.empty((nq, k), np.int64)
                fn(*readonly(d, b), np.float32(2), readonly(qadd), True, readonly(i), k, D, I, a)
                np.testing.assert_array_equal(I, Ir)
                np.testing.assert_array_equal(D, Dr.astype(np.float32))
            limit = Dr[:, k // 2].astype(np.float32)
            ktopk.topk_from_dots_serial(*readonly(d, b), np.float32(2), readonly(qadd), True,
                                        readonly(i), k, D, I, a, limit)
            np.testing.assert_array_equal(I, np.where(Dr <= limit[:, None], Ir, -1))


@pytest.mark.parametrize("k", [1, 5, 37, 50])
def test_topk_random(k):
    rng = np.random.default_rng(1)
    dist = rng.standard_normal((7, 50)).astype(np.float32)
    ids = rng.permutation(1000)[:50].astype(np.int64)
    ids2 = np.broadcast_to(ids, dist.shape)
    d_ro, i_ro = readonly(dist, ids2)
    D, I = _run_topk(d_ro, i_ro, k)
    Dr, Ir = topk_smallest(dist, ids, k)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr.astype(np.float32))


def test_topk_accepts_broadcast_ids():
    rng = np.random.default_rng(2)
    dist = readonly(rng.standard_normal((4, 20)).astype(np.float32))
    ids = np.arange(100, 120, dtype=np.int64)
    D, I = _run_topk(dist, np.broadcast_to(ids, dist.shape), 6)
    Dr, Ir = topk_smallest(dist, ids, 6)
    np.testing.assert_array_equal(I, Ir)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_topk_ties_break_by_smaller_id(k):
    rng = np.random.default_rng(3)
    # few distinct keys: most comparisons are ties
    dist = rng.integers(0, 4, (9, 40)).astype(np.float32)
    ids = np.stack([rng.permutation(40) * 3 + 7 for _ in range(9)]).astype(np.int64)
    D, I = _run_topk(*readonly(dist, ids), k)
    Dr, Ir = topk_smallest(dist, ids, k)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr)
    # within equal keys ids ascend
    for q in range(9):
        for j in range(k - 1):
            assert D[q, j] < D[q, j + 1] or I[q, j] < I[q, j + 1]


def test_topk_all_equal_keys():
    dist = np.zeros((2, 10), np.float32)
    ids = np.array([[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]] * 2, np.int64)
    D, I = _run_topk(*readonly(dist, ids), 4)
    np.testing.assert_array_equal(I, [[0, 1, 2, 3]] * 2)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_topk_pads_when_fewer_than_k(n):
    rng = np.random.default_rng(4)
    dist = rng.standard_normal((3, n)).astype(np.float32)
    ids = np.broadcast_to(np.arange(n, dtype=np.int64)[::-1].copy(), dist.shape)
    D, I = _run_topk(*readonly(dist, np.ascontiguousarray(ids)), 5)
    Dr, Ir = topk_smallest(dist, ids, 5)
    np.testing.assert_array_equal(I, Ir)
    assert (I[:, n:] == -1).all()
    assert np.isposinf(D[:, n:]).all()
    np.testing.assert_array_equal(D[:, :n], Dr[:, :n].astype(np.float32))


def test_topk_infinite_keys_rank_last_but_are_kept():
    dist = np.array([[np.inf, 1.0, np.inf, 0.5]], np.float32)
    ids = np.array([[5, 6, 2, 7]], np.int64)
    D, I = _run_topk(*readonly(dist, ids), 6)
    np.testing.assert_array_equal(I, [[7, 6, 2, 5, -1, -1]])
    np.testing.assert_array_equal(D[0, :2], [0.5, 1.0])
    assert np.isposinf(D[0, 2:]).all()


def test_heap_push_and_sort_stream():
    """The bounded heap keeps the k best of a stream, whatever the arrival order."""
    rng = np.random.default_rng(5)
    k = 8
    keys = rng.integers(0, 6, 200).astype(np.float32)
    ids = rng.permutation(200).astype(np.int64)
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    hid = np.empty(k, np.int64)
    ktopk.heap_init(hd, hi, hid)
    assert np.isposinf(hd).all() and (hi == -1).all()
    for j in range(200):
        # payload = position, tie-break id = ids[j]
        ktopk.heap_push(hd, hi, hid, k, keys[j], j, ids[j])
        # the root is always the worst kept element
        worst = max(range(k), key=lambda t: (hd[t], hid[t]))
        assert hd[0] == hd[worst] and hid[0] == hid[worst]
    out_d = np.empty(k, np.float32)
    out_p = np.empty(k, np.int64)
    ktopk.heap_sort_into(hd, hi, hid, out_d, out_p)
    Dr, Ir = topk_smallest(keys[None], ids[None], k)
    np.testing.assert_array_equal(ids[out_p], Ir[0])
    np.testing.assert_array_equal(out_d, Dr[0])


def test_heap_sort_into_partial_heap_pads():
    k = 5
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    hid = np.empty(k, np.int64)
    ktopk.heap_init(hd, hi, hid)
    for key, ident in [(3.0, 30), (1.0, 10)]:
        ktopk.heap_push(hd, hi, hid, k, key, ident, ident)
    out_d = np.empty(k, np.float32)
    out_i = np.empty(k, np.int64)
    ktopk.heap_sort_into(hd, hi, hid, out_d, out_i)
    np.testing.assert_array_equal(out_i, [10, 30, -1, -1, -1])
    np.testing.assert_array_equal(out_d[:2], [1.0, 3.0])
    assert np.isposinf(out_d[2:]).all()


# ---------------------------------------------------------------------------
# exact distances
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ip", [False, True])
def test_pairwise_keys(ip):
    rng = np.random.default_rng(6)
    x, y = readonly(rng.standard_normal((6, 13)).astype(np.float32),
                    rng.standard_normal((9, 13)).astype(np.float32))
    got = kd.pairwise_keys(x, y, ip)
    ref = exact_keys(x, y, "ip" if ip else "l2")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert kd.l2sq(x[0], y[0]) == pytest.approx(((x[0] - y[0]).astype(float) ** 2).sum(),
                                                 rel=1e-5)
    assert kd.neg_dot(x[0], y[0]) == pytest.approx(-float(x[0] @ y[0]), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("ip", [False, True])
def test_nearest_exact(ip):
    rng = np.random.default_rng(17)
    x = rng.integers(-3, 4, (40, 5)).astype(np.float32)
    c = rng.integers(-3, 4, (9, 5)).astype(np.float32)
    c[6] = c[1]  # duplicate centroid: the smaller index must win
    rows = np.array([0, 3, 4, 39, 20], np.int64)
    labels = np.full(40, -7, np.int64)
    kd.nearest_exact(*readonly(x, rows, c), ip, labels)
    ref = np.argmin(exact_keys(x, c, "ip" if ip else "l2"), axis=1)  # first minimum
    np.testing.assert_array_equal(labels[rows], ref[rows])
    untouched = np.setdiff1d(np.arange(40), rows)
    assert (labels[untouched] == -7).all()


@pytest.mark.parametrize("ip", [False, True])
@pytest.mark.parametrize("fn", [kd.rerank_exact_serial, kd.rerank_exact_parallel])
def test_rerank_exact(ip, fn):
    rng = np.random.default_rng(18)
    q = rng.integers(-3, 4, (6, 5)).astype(np.float32)
    c = rng.integers(-3, 4, (12, 5)).astype(np.float32)
    c[9] = c[2]  # duplicate centroid: ties by the smaller number
    cand = np.array([[0, 2, 9, 5, -1], [11, 10, 1, 3, 4], [-2, 0, 0, 0, 0],
                     [7, -1, -1, -1, -1], [9, 2, 3, 1, 0], [-1, -1, -1, -1, -1]], np.int64)
    nkeep = 3
    keys = np.empty((6, nkeep), np.float32)
    lists = np.empty((6, nkeep), np.int64)
    fn(*readonly(q, c, cand), ip, keys, lists)
    full = exact_keys(q, c, "ip" if ip else "l2")
    for i in range(6):
        ids = np.arange(12) if cand[i, 0] == -2 else np.unique(cand[i][cand[i] >= 0])
        want_k, want_i = topk_smallest(full[i:i + 1, ids], ids, nkeep)
        np.testing.assert_array_equal(lists[i], want_i[0])
        np.testing.assert_array_equal(keys[i], want_k[0].astype(np.float32))


def test_normalize_rows_same_in_any_batch():
    rng = np.random.default_rng(19)
    x = rng.standard_normal((500, 37)).astype(np.float32) * 3
    x[7] = 0  # a zero row stays zero
    whole = x.copy()
    ktr.normalize_rows(whole)
    np.testing.assert_allclose(whole, normalized(x), rtol=1e-6, atol=1e-7)
    assert (whole[7] == 0).all()
    parts = x.copy()
    for s in range(0, 500, 33):
        ktr.normalize_rows(parts[s:s + 33])
    np.testing.assert_array_equal(parts, whole)


def test_rotate_rows_same_in_any_batch():
    rng = np.random.default_rng(20)
    x, R = readonly(rng.standard_normal((300, 24)).astype(np.float32),
                    rng.standard_normal((24, 24)).astype(np.float32))
    whole = np.empty_like(x)
    ktr.rotate_rows(x, R, whole)
    np.testing.assert_allclose(whole, x.astype(np.float64) @ R, rtol=1e-5, atol=1e-5)
    # integer data: every sum is exact, so the result is NumPy's bit for bit
    xi, Ri = readonly(np.round(x * 3), np.round(R * 3))
    out = np.empty_like(xi)
    ktr.rotate_rows(xi, Ri, out)
    np.testing.assert_array_equal(out, (xi.astype(np.float64) @ Ri).astype(np.float32))
    for step in (1, 7, 100):
        parts = np.empty_like(x)
        for s in range(0, 300, step):
            ktr.rotate_rows(x[s:s + step], R, parts[s:s + step])
        np.testing.assert_array_equal(parts, whole)


# ---------------------------------------------------------------------------
# k-means steps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ip", [False, True])
def test_argmin_from_dots(ip):
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, (50, 6)).astype(np.float32)
    c = rng.integers(-3, 4, (11, 6)).astype(np.float32)
    c[5] = c[2]  # duplicate centroid: the smaller index must win
    dots = (x @ c.T).astype(np.float32)
    cn = (c * c).sum(1).astype(np.float32)
    dots_t, cn = readonly(np.ascontiguousarray(dots.T), cn)
    labels = np.empty(50, np.int64)
    keys = np.empty(50, np.float32)
    second = np.empty(50, np.float32)
    kkm.argmin_from_dots(dots_t, cn, ip, labels, keys, second)
    ref = -dots.astype(np.float64) if ip else cn[None] - 2.0 * dots.astype(np.float64)
    np.testing.assert_array_equal(labels, np.argmin(ref, axis=1))  # first minimum on ties
    np.testing.assert_array_equal(keys, ref.min(axis=1).astype(np.float32))
    # the second smallest key (of another centroid; equal to the best on a tie)
    np.testing.assert_array_equal(second, np.sort(ref, axis=1)[:, 1].astype(np.float32))
    assert not (labels == 5).any()


# 4-, 8-, 12- and 16-wide register kernels, wider
@pytest.mark.parametrize("dsub", [1, 4, 5, 8, 11, 12, 13, 16, 17])
@pytest.mark.parametrize("n", [1, 60, 128, 300])
def test_argmin_l2_lowdim_exact_on_integers(n, dsub):
    rng = np.random.default_rng(8)
    col0 = 4  # the kernel reads columns [col0, col0 + dsub) of x
    x = rng.integers(-3, 4, (n, col0 + dsub + 2)).astype(np.float32)
    c = rng.integers(-3, 4, (9, dsub)).astype(np.float32)
    c[7] = c[1]  # duplicate centroid: the smaller index must win
    cn = (c * c).sum(1).astype(np.float32)
    labels = np.empty(n, np.int64)
    keys = np.empty(n, np.float32)
    kkm.argmin_l2_lowdim(readonly(x), col0, *readonly(c, cn), labels, keys)
    sub = x[:, col0:col0 + dsub].astype(np.float64)
    ref = cn[None].astype(np.float64) - 2.0 * (sub @ c.T)
    np.testing.assert_array_equal(labels, np.argmin(ref, axis=1))  # first minimum on ties
    np.testing.assert_array_equal(keys, ref.min(axis=1))
    assert not (labels == 7).any()


@pytest.mark.parametrize("dsub", [9, 12, 13, 16])
def test_argmin_register_kernels_equal_the_row_block_kernel(dsub):
    # 9..16 dimensions moved from _argmin_any to the zero-padded register
    # kernels: the same keys bit for bit, so trained models do not change
    rng = np.random.default_rng(20 + dsub)
    n = 1000  # not a multiple of the 32-row block
    x = (rng.standard_normal((n, dsub + 3)) * 3).astype(np.float32)
    c = x[:256, 2:2 + dsub] + rng.standard_normal((256, dsub)).astype(np.float32) * 0.1
    cn = np.einsum("ij,ij->i", c, c).astype(np.float32)
    want = np.empty(n, np.int64), np.empty(n, np.float32)
    kkm._argmin_any(x, 2, c, cn, *want)
    got = np.empty(n, np.int64), np.empty(n, np.float32)
    kkm.argmin_l2_lowdim(readonly(x), 2, *readonly(c, cn), *got)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_argmin_l2_lowdim_real_data():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    cn = (c * c).sum(1).astype(np.float32)
    labels = np.empty(200, np.int64)
    keys = np.empty(200, np.float32)
    kkm.argmin_l2_lowdim(readonly(x), 0, *readonly(c, cn), labels, keys)
    full = exact_keys(x, c, "l2")
    best = full.min(axis=1)
    # the chosen centroid is (numerically) a nearest one
    chosen = full[np.arange(200), labels]
    np.testing.assert_allclose(chosen, best, rtol=1e-5, atol=1e-5)
    assert (labels == np.argmin(full, axis=1)).mean() > 0.99
    np.testing.assert_allclose(keys + (x.astype(float) ** 2).sum(1), best, rtol=1e-4, atol=1e-4)


def test_centroid_sums():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((100, 7)).astype(np.float32)
    labels = rng.integers(0, 6, 100).astype(np.int64)
    labels[labels == 4] = 3  # cluster 4 empty
    sums, counts = kkm.centroid_sums(*readonly(x, labels), 6)
    assert sums.dtype == np.float64 and counts.dtype == np.int64
    for c in range(6):
        np.testing.assert_allclose(sums[c], x[labels == c].astype(np.float64).sum(0),
                                   rtol=1e-12, atol=1e-12)
        assert counts[c] == (labels == c).sum()
    assert counts[4] == 0 and (sums[4] == 0).all()


# ---------------------------------------------------------------------------
# product quantization
# ---------------------------------------------------------------------------


def _int_codebooks(rng, M, ksub, dsub, lo=-3, hi=4):
    return rng.integers(lo, hi, (M, ksub, dsub)).astype(np.float32)


@pytest.mark.parametrize("dsub", [3, 8, 10, 16, 17])
@pytest.mark.parametrize("nbits", [1, 2, 4, 6, 8])
def test_pq_assign_exact_on_integers(nbits, dsub):
    rng = np.random.default_rng(11 + nbits)
    M, ksub = 5, 1 << nbits
    cb = _int_codebooks(rng, M, ksub, dsub)
    x = rng.integers(-4, 5, (80, M * dsub)).astype(np.float32)
    cn = np.einsum("mkd,mkd->mk", cb, cb).astype(np.float32)
    out = np.empty((80, M), np.uint8)
    kpq.pq_assign(*readonly(x, cb, cn), out)
    # integer data: many ties, and the smaller sub-centroid index must win
    np.testing.assert_array_equal(out, pq_encode_numpy(x, cb))


@pytest.mark.parametrize("dsub", [2, 5, 8, 12, 16, 20])
def test_pq_assign_residual_equals_assign_of_residuals(dsub):
    # real-valued data: the residual must be the same float32 subtraction as
    # NumPy's, or near-ties would flip codes; 1100 rows cross the 1024-row tile
    rng = np.random.default_rng(13 + dsub)
    M, ksub, nlist, n = 3, 64, 17, 1100
    cb = rng.standard_normal((M, ksub, dsub)).astype(np.float32)
    cn = np.einsum("mkd,mkd->mk", cb, cb).astype(np.float32)
    base = rng.standard_normal((nlist, M * dsub)).astype(np.float32) * 3
    labels = rng.integers(0, nlist, n).astype(np.int64)
    x = (base[labels] + rng.standard_normal((n, M * dsub)).astype(np.float32))
    want = np.empty((n, M), np.uint8)
    kpq.pq_assign(x - base[labels], cb, cn, want)
    got = np.empty((n, M), np.uint8)
    kpq.pq_assign_residual(*readonly(x, base, labels, cb, cn), got)
    np.testing.assert_array_equal(got, want)


def test_pq_assign_real_data():
    rng = np.random.default_rng(12)
    M, dsub, ksub = 4, 4, 256
    cb = rng.standard_normal((M, ksub, dsub)).astype(np.float32)
    x = rng.standard_normal((300, M * dsub)).astype(np.float32)
    cn = np.einsum("mkd,mkd->mk", cb, cb).astype(np.float32)
    out = np.empty((300, M), np.uint8)
    kpq.pq_assign(*readonly(x, cb, cn), out)
    ref = pq_encode_numpy(x, cb)
    mism = out != ref
    assert mism.mean() < 0.005
    # any disagreement is a numerical near-tie
    for i, m in zip(*np.nonzero(mism), strict=True):
        sub = x[i, m * dsub:(m + 1) * dsub].astype(np.float64)
        d = ((cb[m].astype(np.float64) - sub) ** 2).sum(1)
        assert d[out[i, m]] - d[ref[i, m]] < 1e-4 * max(1.0, d[ref[i, m]])


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("M", [1, 3, 8, 13])
def test_pack_unpack_round_trip(nbits, M):
    rng = np.random.default_rng(100 * nbits + M)
    raw = rng.integers(0, 1 << nbits, (25, M)).astype(np.uint8)
    raw[0] = (1 << nbits) - 1  # all ones
    raw[1] = 0
    code_size = -(-M * nbits // 8)
    packed = kpq.pack_codes(readonly(raw), nbits, code_size)
    assert packed.shape == (25, code_size) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, pack_numpy(raw, nbits))
    back = kpq.unpack_codes(readonly(packed), M, nbits)
    np.testing.assert_array_equal(back, raw)
    np.testing.assert_array_equal(unpack_numpy(packed, M, nbits), raw)


def test_pack_codes_nbits4_layout():
    rng = np.random.default_rng(13)
    M = 7
    raw = rng.integers(0, 16, (10, M)).astype(np.uint8)
    packed = kpq.pack_codes(readonly(raw), 4, 4)
    for m in range(M):
        byte = packed[:, m // 2]
        nib = (byte & 0x0F) if m % 2 == 0 else (byte >> 4)
        np.testing.assert_array_equal(nib, raw[:, m])
    assert (packed[:, 3] >> 4 == 0).all()  # the unused high nibble stays zero


def test_pack_codes_nbits8_is_identity():
    raw = np.arange(24, dtype=np.uint8).reshape(3, 8) * 10
    np.testing.assert_array_equal(kpq.pack_codes(readonly(raw), 8, 8), raw)


@pytest.mark.parametrize("nbits", [2, 4, 8])
def test_pq_decode(nbits):
    rng = np.random.default_rng(14)
    M, dsub = 6, 3
    cb = rng.standard_normal((M, 1 << nbits, dsub)).astype(np.float32)
    raw = rng.integers(0, 1 << nbits, (40, M)).astype(np.uint8)
    out = kpq.pq_decode(*readonly(raw, cb))
    np.testing.assert_array_equal(out, pq_decode_numpy(raw, cb))


@pytest.mark.parametrize("nbits", [4, 8])
def test_pq_tables(nbits):
    rng = np.random.default_rng(15)
    M, dsub = 4, 5
    cb = rng.standard_normal((M, 1 << nbits, dsub)).astype(np.float32)
    q = rng.standard_normal((7, M * dsub)).astype(np.float32)
    qr, cbr = readonly(q, cb)
    cbt = readonly(np.ascontiguousarray(cb.transpose(0, 2, 1)))
    dots = kpq.pq_dot_tables_serial(qr, cbt)
    np.testing.assert_array_equal(kpq.pq_dot_tables_parallel(qr, cbt), dots)
    l2 = kpq.pq_l2_tables(qr, cbr)
    qs = q.reshape(7, M, dsub).astype(np.float64)
    ref_dots = np.einsum("qmd,mkd->qmk", qs, cb.astype(np.float64))
    ref_l2 = ((qs[:, :, None, :] - cb[None].astype(np.float64)) ** 2).sum(-1)
    assert dots.shape == l2.shape == (7, M, 1 << nbits)
    np.testing.assert_allclose(dots, ref_dots, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l2, ref_l2, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# inverted-list scans
# ---------------------------------------------------------------------------


def _slab(rng, nlist, sizes, slack=3):
    """Lists laid out in a slab in shuffled order, with dead rows (-1) between."""
    order = rng.permutation(nlist)
    start = np.zeros(nlist, np.int64)
    pos = slack
    for lst in order:
        start[lst] = pos
        pos += sizes[lst] + slack
    nrows = pos
    ids = np.full(nrows, -1, np.int64)
    owner = np.full(nrows, -1, np.int64)
    live_ids = rng.permutation(10 * nrows)[: sizes.sum()].astype(np.int64)
    j = 0
    for lst in range(nlist):
        for r in range(start[lst], start[lst] + sizes[lst]):
            ids[r] = live_ids[j]
            owner[r] = lst
            j += 1
    return start, sizes.astype(np.int64), ids, owner


def _probes(rng, nq, nlist, nprobe):
    probes = np.stack([rng.permutation(nlist)[:nprobe] for _ in range(nq)]).astype(np.int64)
    probes[0, -1] = -1  # a skipped probe
    probes[1, :] = -1  # a query that probes nothing: all padding
    return probes


def _reference_scan(keys_fn, probes, start, size, ids, k):
    """keys_fn(q, rows) -> float64 keys; returns (keys, ids) best first, padded."""
    nq = probes.shape[0]
    out_d = np.full((nq, k), np.inf)
    out_i = np.full((nq, k), -1, np.int64)
    for q in range(nq):
        rows = np.concatenate([np.arange(start[lst], start[lst] + size[lst])
                               for lst in probes[q] if lst >= 0] + [np.zeros(0, np.int64)])
        if rows.size == 0:
            continue
        keys = keys_fn(q, rows)
        d, i = topk_smallest(keys[None], ids[rows][None], k)
        out_d[q], out_i[q] = d[0], i[0]
    return out_d, out_i


def _pos_to_ids(pos, ids):
    return np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)


@pytest.fixture(scope="module")
def flat_slab():
    rng = np.random.default_rng(20)
    nlist, d = 9, 6
    sizes = rng.integers(0, 30, nlist)
    sizes[3] = 0  # an empty list
    start, size, ids, owner = _slab(rng, nlist, sizes)
    vectors = rng.integers(-3, 4, (ids.size, d)).astype(np.float32)
    vectors[ids < 0] = 1e6  # dead rows must never be read
    queries = rng.integers(-3, 4, (12, d)).astype(np.float32)
    probes = _probes(rng, 12, nlist, 4)
    return queries, probes, vectors, ids, start, size


@pytest.mark.parametrize("ip", [False, True])
@pytest.mark.parametrize("k", [1, 10, 200])
def test_ivfflat_scan(flat_slab, ip, k):
    queries, probes, vectors, ids, start, size = readonly(*flat_slab)
    res = []
    for fn in (kivf.ivfflat_scan_serial, kivf.ivfflat_scan_parallel):
        out_d = np.empty((queries.shape[0], k), np.float32)
        out_p = np.empty((queries.shape[0], k), np.int64)
        fn(queries, probes, vectors, ids, start, size, k, ip, out_d, out_p)
        res.append((out_d, out_p))
    (ds, ps), (dp, pp) = res
    np.testing.assert_array_equal(ds, dp)
    np.testing.assert_array_equal(ps, pp)
    metric = "ip" if ip else "l2"
    Dr, Ir = _reference_scan(
        lambda q, rows: exact_keys(queries[q:q + 1], vectors[rows], metric)[0],
        probes, start, size, ids, k)
    np.testing.assert_array_equal(_pos_to_ids(ps, ids), Ir)  # integer data: exact, ties by id
    np.testing.assert_array_equal(ds, Dr.astype(np.float32))
    assert (ps[1] == -1).all() and np.isposinf(ds[1]).all()


def test_ivfflat_scan_serial_equals_parallel_real_data():
    rng = np.random.default_rng(21)
    nlist, d, nq, k = 16, 24, 40, 15
    sizes = rng.integers(0, 60, nlist)
    start, size, ids, _ = _slab(rng, nlist, sizes)
    vectors = rng.standard_normal((ids.size, d)).astype(np.float32)
    queries = rng.standard_normal((nq, d)).astype(np.float32)
    probes = _probes(rng, nq, nlist, 6)
    args = readonly(queries, probes, vectors, ids, start, size)
    outs = []
    for fn in (kivf.ivfflat_scan_serial, kivf.ivfflat_scan_parallel):
        od = np.empty((nq, k), np.float32)
        op = np.empty((nq, k), np.int64)
        fn(*args, k, False, od, op)
        outs.append((od, op))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    Dr, Ir = _reference_scan(
        lambda q, rows: exact_keys(queries[q:q + 1], vectors[rows], "l2")[0],
        probes, start, size, ids, k)
    np.testing.assert_allclose(outs[0][0], Dr, rtol=1e-4, atol=1e-4)
    assert (_pos_to_ids(outs[0][1], ids) == Ir).mean() > 0.99


def _pq_slab(seed, M, nbits, dsub, integer):
    rng = np.random.default_rng(seed)
    nlist, nq, nprobe = 7, 10, 3
    ksub = 1 << nbits
    d = M * dsub
    sizes = rng.integers(0, 40, nlist)
    sizes[2] = 0
    start, size, ids, owner = _slab(rng, nlist, sizes)
    if integer:
        cb = rng.integers(-2, 3, (M, ksub, dsub)).astype(np.float32)
        centroids = rng.integers(-3, 4, (nlist, d)).astype(np.float32)
        queries = rng.integers(-3, 4, (nq, d)).astype(np.float32)
    else:
        cb = rng.standard_normal((M, ksub, dsub)).astype(np.float32)
        centroids = rng.standard_normal((nlist, d)).astype(np.float32)
        queries = rng.standard_normal((nq, d)).astype(np.float32)
    raw = rng.integers(0, ksub, (ids.size, M)).astype(np.uint8)
    codes = pack_numpy(raw, nbits)
    codes[ids < 0] = 0xFF  # dead rows: garbage that must not be read
    probes = _probes(rng, nq, nlist, nprobe)
    return dict(cb=cb, centroids=centroids, queries=queries, raw=raw, codes=codes,
                probes=probes, ids=ids, owner=owner, start=start, size=size, nbits=nbits)


# the ADC table kinds; a scan kernel is told which by the inputs given (None for
# the others): list_terms for L2 precomputed, codebooks for L2 residual, neither for ip
L2_PRECOMPUTED, IP, L2_RESIDUAL = "l2_precomputed", "ip", "l2_residual"


def _pq_inputs(s, mode):
    """``qlut, list_terms, codebooks, dis0`` of the scan kernels for a table kind."""
    q, c, cb, probes = s["queries"], s["centroids"], s["cb"], s["probes"]
    nq, nprobe = probes.shape
    M, ksub, dsub = cb.shape
    dots = np.einsum("qmd,mkd->qmk", q.reshape(nq, M, dsub).astype(np.float64),
                     cb.astype(np.float64))
    cp = c[np.maximum(probes, 0)].astype(np.float64)  # (nq, nprobe, d)
    qq = q.astype(np.float64)[:, None, :]
    terms = books = None
    if mode == L2_PRECOMPUTED:
        qlut = (-2.0 * dots).astype(np.float32)
        norms = np.einsum("mkd,mkd->mk", cb.astype(np.float64), cb.astype(np.float64))
        cross = np.einsum("lmd,mkd->lmk", c.reshape(-1, M, dsub).astype(np.float64), cb)
        terms = (norms[None] + 2.0 * cross).astype(np.float32)
        dis0 = ((qq - cp) ** 2).sum(-1).astype(np.float32)
    elif mode == IP:
        qlut = (-dots).astype(np.float32)
        dis0 = (-(qq * cp).sum(-1)).astype(np.float32)
    else:
        qlut = np.full((nq, M, ksub), np.nan, np.float32)  # only its shape is read
        books = cb
        dis0 = np.zeros((nq, nprobe), np.float32)
    return qlut, terms, books, dis0


def _readonly_or_none(a):
    return None if a is None else readonly(a)


def _run_pq_scan(fn, s, mode, k):
    qlut, terms, books, dis0 = _pq_inputs(s, mode)
    args = (readonly(qlut), _readonly_or_none(terms),
            *readonly(dis0, s["probes"], s["codes"], s["ids"], s["start"], s["size"]))
    tail = (*readonly(s["queries"], s["centroids"]), _readonly_or_none(books))
    nq = s["probes"].shape[0]
    out_d = np.empty((nq, k), np.float32)
    out_p = np.empty((nq, k), np.int64)
    width = () if fn in (kivf.ivfpq8_scan_serial, kivf.ivfpq8_scan_parallel) else (s["nbits"],)
    fn(*args, k, *width, *tail, out_d, out_p)
    return out_d, out_p


def _check_ivfpq8(s, mode, k, ds, ps):
    # the 8-bit kernels return what the any-width kernel does
    if s["nbits"] == 8:
        for fn in (kivf.ivfpq8_scan_serial, kivf.ivfpq8_scan_parallel):
            d8, p8 = _run_pq_scan(fn, s, mode, k)
            np.testing.assert_array_equal(d8, ds)
            np.testing.assert_array_equal(p8, ps)


def _brute_adc(s, mode, k):
    """Reference ADC: exact key of the query against centroid + decoded residual."""
    recon = pq_decode_numpy(s["raw"], s["cb"]).astype(np.float64)
    recon += s["centroids"][np.maximum(s["owner"], 0)]
    q = s["queries"].astype(np.float64)
    metric = "ip" if mode == IP else "l2"
    return _reference_scan(lambda i, rows: exact_keys(q[i:i + 1], recon[rows], metric)[0],
                           s["probes"], s["start"], s["size"], s["ids"], k)


MODES = [L2_PRECOMPUTED, IP, L2_RESIDUAL]
MODE_NAMES = MODES


@pytest.mark.parametrize("mode", MODES, ids=MODE_NAMES)
@pytest.mark.parametrize("nbits", [8, 4, 6, 2])
@pytest.mark.parametrize("M", [6, 8])
def test_ivfpq_scan_exact_on_integers(mode, nbits, M):
    s = _pq_slab(1000 + 10 * nbits + M, M, nbits, 2, integer=True)
    k = 12
    ds, ps = _run_pq_scan(kivf.ivfpq_scan_serial, s, mode, k)
    dp, pp = _run_pq_scan(kivf.ivfpq_scan_parallel, s, mode, k)
    np.testing.assert_array_equal(ds, dp)
    np.testing.assert_array_equal(ps, pp)
    _check_ivfpq8(s, mode, k, ds, ps)
    Dr, Ir = _brute_adc(s, mode, k)
    np.testing.assert_array_equal(ds, Dr.astype(np.float32))
    np.testing.assert_array_equal(_pos_to_ids(ps, s["ids"]), Ir)
    assert (ps[1] == -1).all()


@pytest.mark.parametrize("mode", MODES, ids=MODE_NAMES)
@pytest.mark.parametrize("nbits", [8, 4, 6, 2])
def test_ivfpq_scan_real_data(mode, nbits):
    s = _pq_slab(2000 + nbits, 8, nbits, 3, integer=False)
    k = 20  # more than some probed lists hold: padding
    ds, ps = _run_pq_scan(kivf.ivfpq_scan_serial, s, mode, k)
    dp, pp = _run_pq_scan(kivf.ivfpq_scan_parallel, s, mode, k)
    np.testing.assert_array_equal(ds, dp)
    np.testing.assert_array_equal(ps, pp)
    _check_ivfpq8(s, mode, k, ds, ps)
    Dr, Ir = _brute_adc(s, mode, k)
    found = _pos_to_ids(ps, s["ids"])
    assert ((found == -1) == (Ir == -1)).all()
    np.testing.assert_allclose(ds[Ir >= 0], Dr[Ir >= 0], rtol=1e-4, atol=1e-4)
    assert (found == Ir).mean() > 0.98


def test_ivfpq_modes_agree_for_l2():
    s = _pq_slab(3000, 8, 8, 3, integer=False)
    a = _run_pq_scan(kivf.ivfpq_scan_serial, s, L2_PRECOMPUTED, 10)
    b = _run_pq_scan(kivf.ivfpq_scan_serial, s, L2_RESIDUAL, 10)
    np.testing.assert_allclose(a[0][2:], b[0][2:], rtol=1e-4, atol=1e-4)
    assert (a[1] == b[1]).mean() > 0.98


# ---------------------------------------------------------------------------
# 4-bit fast scan (SIMD pre-filter, x86 AVX2 only)
# ---------------------------------------------------------------------------

needs_avx2 = pytest.mark.skipif(not kfs.AVAILABLE, reason="fast scan needs x86 AVX2")
needs_vbmi = pytest.mark.skipif(not kfs8.AVAILABLE,
                                reason="8-bit fast scan needs x86 AVX-512 VBMI")


def _tiled(codes, start, size):
    """The lists of a row-major slab re-laid in 32-row tiles, each list on a
    tile boundary: (tiles (ntiles, code_size, 32), tile starts, and the plain
    slab row of each tiled row, -1 for padding)."""
    cap = -(-size // 32) * 32
    tstart = np.concatenate([[0], np.cumsum(cap)[:-1]]).astype(np.int64)
    plain_row = np.full(max(int(cap.sum()), 32), -1, np.int64)
    for lst in range(size.size):
        plain_row[tstart[lst]:tstart[lst] + size[lst]] = np.arange(start[lst],
                                                                   start[lst] + size[lst])
    tiles = np.zeros((plain_row.size // 32, codes.shape[1], 32), np.uint8)
    live = np.flatnonzero(plain_row >= 0)
    kfs.put_rows(tiles, *readonly(live, codes[plain_row[live]]))
    return tiles, tstart, plain_row


def test_tiled_rows_layout():
    rng = np.random.default_rng(30)
    start, size = np.array([5, 0, 50], np.int64), np.array([40, 0, 3], np.int64)
    codes = rng.integers(0, 256, (60, 4), dtype=np.uint8)
    tiles, tstart, plain_row = _tiled(codes, start, size)
    np.testing.assert_array_equal(tstart, [0, 64, 64])
    assert tiles.shape == (3, 4, 32)
    for lst in range(3):
        rows = np.zeros((-(-size[lst] // 32) * 32, 4), np.uint8)  # zero padded
        rows[: size[lst]] = codes[start[lst]:start[lst] + size[lst]]
        ref = rows.reshape(-1, 32, 4).transpose(0, 2, 1).ravel()  # (block, byte, row)
        flat = tiles.ravel()[tstart[lst] * 4:]
        np.testing.assert_array_equal(flat[:ref.size], ref)
    live = np.flatnonzero(plain_row >= 0)
    back = np.empty((live.size, 4), np.uint8)
    kfs.take_rows(readonly(tiles), live, back)
    np.testing.assert_array_equal(back, codes[plain_row[live]])


@pytest.fixture
def quantize():
    from numba import njit

    @njit
    def run(L, M, out):
        rows = kfs.table_rows(-(-M // 2))
        T = np.zeros((rows, 16), np.float32)
        T[:M] = L[:M]
        lows = np.empty(rows, np.float32)
        offset, scale, magnitude = kfs.table_bounds(T, lows)
        kfs.quantize_tables(T, M, lows, scale, out)
        return offset, scale, magnitude

    return run


def _qlut_rows(Q):
    """The (tables, 16) quantized tables of a ``qlut`` (the pair layout of
    block_mask_avx2), checking each table's second lane copy."""
    pair = Q.reshape(-1, 2, 2, 2, 16)  # (pair, nibble, byte in pair, lane copy, entry)
    np.testing.assert_array_equal(pair[:, :, :, 1], pair[:, :, :, 0])
    # sub-quantizer 4p + 2 (byte in pair) + nibble
    return pair[:, :, :, 0].transpose(0, 2, 1, 3).reshape(-1, 16)


MASK_KERNELS = [pytest.param(kfs.block_mask_avx2, id="avx2"),
                pytest.param(kfs.block_mask_avx512, id="avx512", marks=pytest.mark.skipif(
                    not kfs.WIDE, reason="needs AVX-512BW"))]


@needs_avx2
@pytest.mark.parametrize("kernel", MASK_KERNELS)
@pytest.mark.parametrize("code_size", [1, 3, 4, 16, 17])
def test_block_mask(code_size, kernel, quantize):
    from numba import njit

    @njit
    def mask_of(bcodes, offset, qlut, cs, thr):
        return kernel(bcodes, offset, qlut, cs, thr)

    @njit
    def size_of(cs):
        return kfs.qlut_size(cs)

    rng = np.random.default_rng(31)
    n = 75  # three blocks, the last one partial
    codes = rng.integers(0, 256, (n, code_size), dtype=np.uint8)
    tiles, _, _ = _tiled(codes, np.zeros(1, np.int64), np.array([n], np.int64))
    out = tiles.ravel()
    L = rng.standard_normal((2 * code_size, 16)).astype(np.float32)
    Q = np.full(size_of(code_size), 77, np.uint8)  # quantize_tables writes every byte
    assert Q.size == 128 * ((code_size + 1) // 2)
    quantize(L, 2 * code_size, Q)
    q16 = _qlut_rows(Q).astype(np.int64)
    assert (q16[2 * code_size:] == 0).all()
    padded = np.zeros((96, code_size), np.uint8)
    padded[:n] = codes
    even, odd = np.arange(0, 2 * code_size, 2), np.arange(1, 2 * code_size, 2)
    acc = q16[even, padded & 15].sum(1) + q16[odd, padded >> 4].sum(1)
    for thr in (0, int(np.median(acc)), int(acc.max()) - 1, 65535):
        for b in range(3):
            got = mask_of(readonly(out), b * 32 * code_size, Q, code_size, thr)
            want = sum(1 << i for i in range(32) if acc[32 * b + i] <= thr)
            assert got == want, (thr, b)


@pytest.mark.skipif(not kfs.WIDE, reason="needs AVX-512BW")
@pytest.mark.parametrize("code_size", [1, 5, 128])
def test_block_masks_of_both_paths_agree_on_large_sums(code_size):
    # up to 256 sub-quantizers of entries near 255: sums near the uint16
    # limit, where the AVX-512 path's wrapped accumulators must still cancel
    from numba import njit

    @njit
    def masks(bcodes, offset, qlut, cs, thr):
        return (kfs.block_mask_avx2(bcodes, offset, qlut, cs, thr),
                kfs.block_mask_avx512(bcodes, offset, qlut, cs, thr))

    rng = np.random.default_rng(34 + code_size)
    codes = rng.integers(0, 256, (64, code_size), dtype=np.uint8)
    tiles, _, _ = _tiled(codes, np.zeros(1, np.int64), np.array([64], np.int64))
    for trial in range(20):
        Q = rng.integers(200 if trial % 2 else 0, 256, 128 * ((code_size + 1) // 2),
                         dtype=np.uint8)
        Q.reshape(-1, 2, 16)[:, 1] = Q.reshape(-1, 2, 16)[:, 0]
        for thr in rng.integers(0, 65536, 8):
            for b in range(2):
                a, w = masks(readonly(tiles.ravel()), b * 32 * code_size, Q, code_size, thr)
                assert a == w, (trial, thr, b)


@pytest.mark.parametrize("code_size", [1, 3, 32])
def test_score_block(code_size):
    """Every masked row's key is the scalar scan's (base + byte terms in byte
    order), bit for bit; with AVX-512 block_scores gives all 32 rows."""
    from numba import njit

    @njit
    def scores(bcodes, at, L, cs, base, mask, out):
        kfs.score_block(bcodes, at, L, cs, base, mask, out)

    rng = np.random.default_rng(35)
    codes = rng.integers(0, 256, (64, code_size), dtype=np.uint8)
    tiles, _, _ = _tiled(codes, np.zeros(1, np.int64), np.array([64], np.int64))
    L = (rng.standard_normal((2 * code_size, 16)) * 100).astype(np.float32)
    base = np.float32(rng.standard_normal() * 1000)
    for b in range(2):
        rows = codes[32 * b:32 * b + 32]
        want = np.full(32, base, np.float32)
        for j in range(code_size):
            want = want + (L[2 * j, rows[:, j] & 15] + L[2 * j + 1, rows[:, j] >> 4])
        for mask in (np.uint32(0xFFFFFFFF), np.uint32(0x80000005)):
            out = np.full(32, np.nan, np.float32)
            scores(readonly(tiles.ravel()), b * 32 * code_size, L, code_size, base, mask, out)
            bits = np.array([(int(mask) >> i) & 1 for i in range(32)], bool)
            np.testing.assert_array_equal(out[bits], want[bits])
            if kfs.WIDE:
                np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("rows", [16, 64, 256])
def test_row_bounds(rows):
    from numba import njit

    @njit
    def bounds(L, lows):
        return kfs.row_bounds(L, lows)

    rng = np.random.default_rng(36 + rows)
    L = (rng.standard_normal((rows, 16)) * rng.uniform(0.01, 100, (rows, 1))
         + rng.standard_normal((rows, 1)) * 50).astype(np.float32)
    L[-3:] = 0  # rows past the sub-quantizers
    lows = np.empty(rows, np.float32)
    offset, widest, magnitude = bounds(L, lows)
    lo, hi = L.min(1), L.max(1)
    np.testing.assert_array_equal(lows, lo)
    assert widest == (hi - lo).max()
    np.testing.assert_allclose(offset, lo.astype(np.float64).sum(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(magnitude, np.maximum(-lo, hi).astype(np.float64).sum(),
                               rtol=1e-5)


@pytest.mark.parametrize("M", [1, 7, 32])
def test_quantized_tables_bound_every_sum(M, quantize):
    rng = np.random.default_rng(32 + M)
    rows = M + M % 2
    L = np.zeros((rows, 16), np.float32)
    L[:M] = rng.standard_normal((M, 16)) * rng.uniform(0.01, 100, (M, 1))
    Q = np.empty(128 * -(-rows // 4), np.uint8)
    offset, scale, magnitude = quantize(L, M, Q)
    q16 = _qlut_rows(Q)[:rows].astype(np.int64)
    assert (q16[M:] == 0).all() and q16.max() <= 255
    codes = rng.integers(0, 16, (5000, rows))
    codes[0] = L.argmin(1)  # the smallest and largest sums
    codes[1] = L.argmax(1)
    exact = L[np.arange(rows), codes].astype(np.float64).sum(1)
    bound = offset + q16[np.arange(rows), codes].sum(1) / np.float64(scale)
    assert (exact >= bound - 1e-5 * magnitude).all()
    assert (exact - bound).max() <= M / scale * (1 + 1e-3)  # each term loses < 1 step
    assert kfs.block_threshold(np.inf, 0.0, offset, scale, 0.0) == 65535
    assert kfs.block_threshold(offset - 1.0, 0.0, offset, scale, 0.0) == -1


def _run_fastscan(fn, s, mode, k, allowed=None):
    # scans the slab re-laid in tiles (``allowed``: over the row-major slab, as
    # the scalar scan takes it); returns positions in the row-major slab
    qlut, terms, books, dis0 = _pq_inputs(s, mode)
    tiles, tstart, plain_row = _tiled(s["codes"], s["start"], s["size"])
    ids = np.where(plain_row >= 0, s["ids"][np.maximum(plain_row, 0)], -1)
    nq = s["probes"].shape[0]
    out_d = np.empty((nq, k), np.float32)
    out_p = np.empty((nq, k), np.int64)
    mask = ()
    if allowed is not None:
        mask = (readonly(np.where(plain_row >= 0, allowed[np.maximum(plain_row, 0)], 0)
                         .astype(np.uint8)),)
    fn(readonly(qlut), _readonly_or_none(terms),
       *readonly(dis0, s["probes"], tiles, ids, tstart, s["size"]), k,
       *readonly(s["queries"], s["centroids"]), _readonly_or_none(books), out_d, out_p, *mask)
    return out_d, np.where(out_p >= 0, plain_row[np.maximum(out_p, 0)], -1)


@pytest.mark.parametrize("nbits", [pytest.param(4, marks=needs_avx2),
                                   pytest.param(8, marks=needs_vbmi)])
@pytest.mark.parametrize("mode", MODES, ids=MODE_NAMES)
@pytest.mark.parametrize("M", [6, 7, 8])
@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("k", [1, 12, 40])
def test_fastscan_equals_scalar_scan(nbits, mode, M, integer, k):
    # the pre-filter may only skip rows that cannot enter: bit-identical results
    s = _pq_slab(4000 + M + 10 * integer + nbits, M, nbits, 2, integer=integer)
    ref = _run_pq_scan(kivf.ivfpq_scan_serial, s, mode, k)
    fast = ((kivf.ivfpq4_fastscan_serial, kivf.ivfpq4_fastscan_parallel) if nbits == 4
            else (kivf.ivfpq8_fastscan_serial, kivf.ivfpq8_fastscan_parallel))
    for fn in fast:
        got = _run_fastscan(fn, s, mode, k)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


@needs_avx2
def test_fastscan_equals_scalar_scan_on_long_lists():
    # lists of hundreds of rows: the heap fills and most blocks are skipped
    rng = np.random.default_rng(33)
    s = _pq_slab(4100, 16, 4, 2, integer=False)
    sizes = rng.integers(200, 700, s["size"].size)
    start, size, ids, owner = _slab(rng, sizes.size, sizes)
    raw = rng.integers(0, 16, (ids.size, 16)).astype(np.uint8)
    s.update(start=start, size=size, ids=ids, owner=owner, raw=raw, codes=pack_numpy(raw, 4))
    for mode in MODES:
        ref = _run_pq_scan(kivf.ivfpq_scan_serial, s, mode, 10)
        got = _run_fastscan(kivf.ivfpq4_fastscan_serial, s, mode, 10)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


@pytest.fixture
def quantize8():
    from numba import njit

    @njit
    def run(L, A, B, lo, hi, out, add):
        if add:
            kfs8.add_bounds(L, A, B, lo, hi)
        else:
            kfs8.row_bounds(L, lo, hi)
        offset, scale, magnitude = kfs8.table_bounds(lo, hi, L.shape[0])
        kfs8.quantize_rows(L, lo, scale, out)
        return offset, scale, magnitude

    return run


@needs_vbmi
@pytest.mark.parametrize("M", [1, 7, 32])
@pytest.mark.parametrize("add", [True, False])
def test_quantized_8bit_tables_bound_every_sum(M, add, quantize8):
    rng = np.random.default_rng(40 + M)
    A = (rng.standard_normal((M, 256)) * rng.uniform(0.01, 100, (M, 1))).astype(np.float32)
    B = rng.standard_normal((M, 256)).astype(np.float32)
    L = np.empty((M, 256), np.float32) if add else A + B
    lo, hi = np.empty(M, np.float32), np.empty(M, np.float32)
    Q = np.empty(M * 256, np.uint8)
    offset, scale, magnitude = quantize8(L, *readonly(A, B), lo, hi, Q, add)
    # NumPy twin: the same float32 operations give the same bits
    ref = A + B
    np.testing.assert_array_equal(L, ref)
    np.testing.assert_array_equal(lo, ref.min(1))
    np.testing.assert_array_equal(hi, ref.max(1))
    widest = (ref.max(1) - ref.min(1)).max()
    assert scale == np.float32(255.0) / widest
    assert offset == np.float32(sum(ref.min(1).tolist(), np.float32(0)))
    want = np.minimum((ref - ref.min(1)[:, None]) * scale, np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(Q.reshape(M, 256), want)
    codes = rng.integers(0, 256, (5000, M))
    codes[0] = ref.argmin(1)  # the smallest and largest sums
    codes[1] = ref.argmax(1)
    exact = ref[np.arange(M), codes].astype(np.float64).sum(1)
    bound = offset + want.astype(np.int64)[np.arange(M), codes].sum(1) / np.float64(scale)
    assert (exact >= bound - 1e-5 * magnitude).all()
    assert (exact - bound).max() <= M / scale * (1 + 1e-3)  # each term loses < 1 step


@needs_vbmi
@pytest.mark.parametrize("M", [1, 5, 32])
def test_block_mask_8bit(M):
    from numba import njit

    @njit
    def mask_of(bcodes, first, second, qlut, m, thr):
        return kfs8.block_mask(bcodes, first, second, qlut, m, thr)

    rng = np.random.default_rng(41 + M)
    n = 150  # five tiles: two full blocks and an odd tile
    codes = rng.integers(0, 256, (n, M), dtype=np.uint8)
    # the edges of both halves of the table (the top bit picks the half)
    codes[:4, :] = np.array([0, 127, 128, 255], np.uint8)[:, None]
    tiles, _, _ = _tiled(codes, np.zeros(1, np.int64), np.array([n], np.int64))
    out = readonly(tiles.ravel())
    Q = rng.integers(0, 256, M * 256).astype(np.uint8)
    padded = np.zeros((160, M), np.uint8)
    padded[:n] = codes
    acc = Q.reshape(M, 256).astype(np.int64)[np.arange(M), padded].sum(1)
    span = 32 * M
    for thr in (0, int(np.median(acc)), int(acc.max()) - 1, 65535):
        for t in (0, 2, 4):
            second = (t + 1) * span if t < 4 else t * span  # the odd tile: read twice
            got = mask_of(out, t * span, second, readonly(Q), M, thr)
            upper = t + 1 if t < 4 else t
            rows = list(range(32 * t, 32 * t + 32)) + list(range(32 * upper, 32 * upper + 32))
            want = sum(1 << i for i, r in enumerate(rows) if acc[r] <= thr)
            assert got & ((1 << 64) - 1) == want, (thr, t)


def test_lowest_bit():
    from numba import njit

    @njit
    def low(x):
        return kfs8.lowest_bit(x)

    for x in (1, 6, 1 << 40, -(1 << 63), -1, 0):
        want = 64 if x == 0 else (x & -x).bit_length() - 1
        assert low(np.int64(x)) == want


def _long_lists(s, rng, M, low, high):
    sizes = rng.integers(low, high, s["size"].size)
    start, size, ids, owner = _slab(rng, sizes.size, sizes)
    raw = rng.integers(0, 256, (ids.size, M)).astype(np.uint8)
    s.update(start=start, size=size, ids=ids, owner=owner, raw=raw, codes=raw.copy())
    return s


@needs_vbmi
@pytest.mark.parametrize("filtered", [False, True])
def test_fastscan8_equals_scalar_scan_on_long_lists(filtered):
    # lists of hundreds of rows (blocks of 64, odd tiles at the ends): the heap
    # fills and most rows are skipped; a filter's mask is applied per block
    rng = np.random.default_rng(43)
    s = _long_lists(_pq_slab(4300, 16, 8, 2, integer=False), rng, 16, 1, 400)
    allowed = (rng.random(s["ids"].size) < 0.3).astype(np.uint8) if filtered else None
    mask = () if allowed is None else (readonly(allowed),)
    for mode in MODES:
        for k in (1, 10, 100):
            qlut, terms, books, dis0 = _pq_inputs(s, mode)
            nq = s["probes"].shape[0]
            ref_d, ref_p = np.empty((nq, k), np.float32), np.empty((nq, k), np.int64)
            kivf.ivfpq8_scan_serial(
                readonly(qlut), _readonly_or_none(terms),
                *readonly(dis0, s["probes"], s["codes"], s["ids"], s["start"], s["size"]), k,
                *readonly(s["queries"], s["centroids"]), _readonly_or_none(books),
                ref_d, ref_p, *mask)
            got = _run_fastscan(kivf.ivfpq8_fastscan_serial, s, mode, k, allowed)
            np.testing.assert_array_equal(got[0], ref_d)
            np.testing.assert_array_equal(got[1], ref_p)


@pytest.mark.parametrize("ip", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_shortlist_keys(ip, dtype):
    """Refine keys read in place from the slab match NumPy on the decoded rows
    (float16 widened, int8 through its per-dimension scale); -1 gives +inf;
    the serial and parallel twins agree bit for bit. The fused top-k keeps the
    k best of those same keys, ties by smaller id, as merge_results orders them
    (rows whose slab id is -1 are no candidates)."""
    rng = np.random.default_rng(22)
    nq, c, d, n, k = 5, 7, 9, 30, 4
    q = rng.standard_normal((nq, d)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[11] = x[3]  # equal keys: the smaller id must win
    pos = rng.integers(0, n, (nq, c)).astype(np.int64)
    pos[:, :2] = [3, 11]
    pos[rng.random((nq, c)) < 0.3] = -1
    pos[-1] = -1  # a query with no candidate: all padding
    ids = rng.permutation(n).astype(np.int64) + 100
    ids[5] = -1  # a slab row that holds no live vector
    if dtype == "int8":
        scale = sq.train_scale(x)
        stored = sq.encode(x, scale)
        rows = sq.decode(stored, scale)
        u, const = sq.query_frame(q, scale, ip)
        head = readonly(u, stored, np.ascontiguousarray(scale[1]), const)
    else:
        stored = x.astype(dtype)
        rows = stored.astype(np.float32)
        bits = stored.view(np.uint16) if dtype == "float16" else stored
        head = readonly(q, bits, np.empty(0, np.float32), np.zeros(nq, np.float32))
    outs = []
    for fn in (kref.shortlist_keys_serial, kref.shortlist_keys_parallel):
        out = np.empty((nq, c), np.float32)
        fn(*head, readonly(pos), ip, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    out = outs[0]
    metric = "ip" if ip else "l2"
    for i in range(nq):
        ok = pos[i] >= 0
        ref = exact_keys(q[i:i + 1], rows[pos[i][ok]], metric)[0]
        np.testing.assert_allclose(out[i][ok], ref, rtol=1e-4, atol=1e-4)
        assert np.isposinf(out[i][~ok]).all()
    cand = np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
    ref_d, ref_i = merge_results([(out, cand)], k, "l2")
    for fn in (kref.refine_topk_serial, kref.refine_topk_parallel):
        got_d = np.empty((nq, k), np.float32)
        got_i = np.empty((nq, k), np.int64)
        fn(*head, *readonly(pos, ids), ip, k, got_d, got_i)
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_array_equal(got_d, np.where(ref_i >= 0, ref_d, np.inf))


def test_scatter_rows():
    rng = np.random.default_rng(23)
    dst = np.zeros((10, 3), np.float32)
    rows = np.array([7, 2, 5], np.int64)
    src = rng.standard_normal((3, 3)).astype(np.float32)
    kivf.scatter_rows(dst, *readonly(rows, src))
    ref = np.zeros((10, 3), np.float32)
    ref[rows] = src
    np.testing.assert_array_equal(dst, ref)



# ---------------------------------------------------------------------------
# bounded Lloyd steps (shardann.kmeans._BoundedAssignment)
# ---------------------------------------------------------------------------


def _key_lower_bound_np(key, xnorm, margin, ip):
    if np.isinf(key):
        return np.inf
    key = float(key)
    if ip:
        return key - margin - kkm.BOUND_SLACK * (abs(key) + margin)
    sq = key + xnorm ** 2 - margin
    sq -= kkm.BOUND_SLACK * (abs(key) + xnorm ** 2 + margin)
    return np.sqrt(sq) * (1 - kkm.BOUND_SLACK) if sq > 0 else 0.0


@pytest.mark.parametrize("ip", [False, True])
def test_group_bounds(ip):
    rng = np.random.default_rng(31)
    x = rng.standard_normal((40, 9)).astype(np.float32)
    c = rng.standard_normal((7, 9)).astype(np.float32)
    group_of = np.array([0, 1, 0, 2, 1, 2, 2], np.int64)
    labels = rng.integers(0, 7, 40).astype(np.int64)
    drift = rng.uniform(0, 0.5, 3)
    xn = np.sqrt((x.astype(np.float64) ** 2).sum(1))
    start = rng.uniform(-2, 6, (40, 3))
    start[3, 1] = np.inf  # a group without another centroid stays out
    lower = start.copy()
    own = np.empty(40)
    need = np.empty((40, 3), np.bool_)
    gamma, cmax = 1e-3, float(np.sqrt((c.astype(np.float64) ** 2).sum(1)).max())
    active = kkm.group_bounds(*readonly(x, labels, c, group_of, drift), lower,
                              readonly(xn), gamma, cmax, ip, own, need)
    S = kkm.BOUND_SLACK
    xd, cd = x.astype(np.float64), c[labels].astype(np.float64)
    if ip:
        want_own = -(xd * cd).sum(1)
        drop = xn[:, None] * drift[None]
        low = start - drop
        with np.errstate(invalid="ignore"):  # inf - inf in the branch not taken
            low = np.where(np.isinf(low), low, low - S * (np.abs(low) + drop))
        hi = want_own + S * xn * cmax
        stale = ~(low - hi[:, None] > (gamma * xn * cmax * (1 + S))[:, None])
    else:
        want_own = ((xd - cd) ** 2).sum(1)
        low = np.maximum((start - drift[None]) * (1 - S), 0.0)
        margin = gamma * (xn + cmax) ** 2
        rhs = (want_own * (1 + S) + margin) * (1 + S)
        stale = ~(low * low * (1 - S) > rhs[:, None])
    rows = stale.any(1)
    stale[np.flatnonzero(rows), group_of[labels[rows]]] = True
    np.testing.assert_allclose(own, want_own, rtol=1e-12)
    np.testing.assert_allclose(lower, low, rtol=1e-12)
    np.testing.assert_array_equal(need, stale)
    assert active == rows.sum() and 0 < active < 40
    assert not need[3, 1] or group_of[labels[3]] == 1


@pytest.mark.parametrize("ip", [False, True])
def test_merge_group_keys_and_finish_rows(ip):
    rng = np.random.default_rng(32)
    n, d = 30, 5
    x = rng.integers(-3, 4, (n, d)).astype(np.float32)
    c = rng.integers(-3, 4, (8, d)).astype(np.float32)
    c[6] = c[1]  # a tie across groups: decided exactly, not by group order
    group_of = np.array([0, 1, 0, 1, 2, 2, 0, 1], np.int64)
    cn = (c * c).sum(1).astype(np.float32)
    xn = np.sqrt((x.astype(np.float64) ** 2).sum(1))
    margin = np.full(n, 0.5)
    best, second, bsec = (np.full(n, np.inf, np.float32) for _ in range(3))
    arg = np.zeros(n, np.int64)
    lower = np.full((n, 3), -7.0)
    rows = np.arange(0, n, 2)  # the other rows are not asked for
    for g in range(3):
        m = np.flatnonzero(group_of == g)
        dots = np.ascontiguousarray(c[m] @ x.T)
        kkm.merge_group_keys(*readonly(dots, rows, cn[m], m, rows), g, ip, *readonly(xn, margin),
                             best, arg, second, bsec, lower)
    keys = -(x.astype(np.float64) @ c.T) if ip else cn[None] - 2.0 * (x.astype(np.float64)
                                                                      @ c.T)
    for i in range(n):
        if i % 2:
            assert np.isinf(best[i]) and (lower[i] == -7.0).all()
            continue
        order = sorted(range(8), key=lambda j: (keys[i, j], group_of[j], j))
        assert best[i] == keys[i, order[0]] and second[i] == keys[i, order[1]]
        assert arg[i] == order[0]
        same = [keys[i, j] for j in range(8) if group_of[j] == group_of[order[0]]]
        assert bsec[i] == (sorted(same)[1] if len(same) > 1 else np.inf)
        for g in range(3):
            gmin = min(keys[i, j] for j in range(8) if group_of[j] == g)
            assert lower[i, g] == _key_lower_bound_np(np.float32(gmin), xn[i], 0.5, ip)
    labels = np.full(n, -1, np.int64)
    before = lower.copy()
    near = kkm.finish_rows(*readonly(rows, best, arg, second, bsec, xn, margin), ip,
                           readonly(group_of), labels, lower)
    want_near = rows[second[rows].astype(np.float64) - best[rows] <= 0.5]
    np.testing.assert_array_equal(near, want_near)
    np.testing.assert_array_equal(labels[rows], arg[rows])
    assert (labels[1::2] == -1).all()
    for i in rows:
        g = group_of[arg[i]]
        want = before[i].copy()
        if i not in want_near:
            want[g] = _key_lower_bound_np(bsec[i], xn[i], 0.5, ip)
        np.testing.assert_array_equal(lower[i], want)


def test_gather_rows():
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    rows = np.array([5, 0, 5, 7], np.int64)
    buf = np.full((6, 3), -1, np.float32)
    out = kkm.gather_rows(*readonly(x, rows), buf)
    np.testing.assert_array_equal(out, x[rows])
    assert out.shape == (4, 3) and (buf[4:] == -1).all()

# ---------------------------------------------------------------------------
# coverage guard: a new kernel needs a twin here
# ---------------------------------------------------------------------------

# kernels exercised only through another kernel
_INDIRECT = {"heap_replace_top": "heap_push", "unpack_one": "unpack_codes",
             "exact_key": "pairwise_keys", "pad_centroids": "argmin_l2_lowdim",
             "pad_width": "argmin_l2_lowdim", "key_lower_bound": "merge_group_keys",
             "nearest_rows": "pq_assign", "scale_for": "table_bounds"}


def test_every_kernel_has_a_twin():
    import inspect
    import pathlib

    from numba.core.registry import CPUDispatcher

    source = pathlib.Path(__file__).read_text()
    aliases = {kd: "kd", kfs: "kfs", kfs8: "kfs8", kivf: "kivf", kkm: "kkm", kpq: "kpq",
               ktopk: "ktopk", ktr: "ktr", kref: "kref"}
    missing = []
    for mod, alias in aliases.items():
        for name, obj in inspect.getmembers(mod):
            if name.startswith("_") or not isinstance(obj, CPUDispatcher):
                continue
            if getattr(obj, "__module__", mod.__name__) != mod.__name__:
                continue  # imported from another kernel module
            if f"{alias}.{name}" not in source and name not in _INDIRECT:
                missing.append(f"{mod.__name__}.{name}")
    assert not missing, f"kernels without a NumPy twin in {__file__}: {missing}"


def test_serial_and_parallel_kernels_are_cached_apart():
    # Numba's cache key ignores compile options: twins of one function would
    # share an entry, and the first compiled would be loaded for both
    import inspect

    from numba.core.registry import CPUDispatcher

    for mod in (kivf, kref, ktopk, kd, kpq):
        kernels = dict(inspect.getmembers(mod, lambda o: isinstance(o, CPUDispatcher)))
        pairs = [name[:-len("_serial")] for name in kernels if name.endswith("_serial")]
        assert pairs
        for base in pairs:
            serial, parallel = kernels[base + "_serial"], kernels[base + "_parallel"]
            assert parallel.targetoptions.get("parallel") and not serial.targetoptions.get(
                "parallel")
            assert serial._cache._cache_file._index_name != \
                parallel._cache._cache_file._index_name, base


def test_finite_rows_flags_every_non_finite_row_and_returns_the_largest_finite_value():
    from shardann._kernels.checks import finite_rows

    rng = np.random.default_rng(21)
    x = rng.standard_normal((300, 37)).astype(np.float32)
    x[5, 0], x[17, 36], x[200, 11] = np.nan, np.inf, -np.inf
    x[250, :] = np.nan
    x[100, 3] = -7e20  # the largest magnitude among finite rows
    x[17, 0] = 9e30    # in a non-finite row: not counted
    ok = np.empty(300, bool)
    top = finite_rows(x, ok)
    np.testing.assert_array_equal(ok, np.isfinite(x).all(axis=1))
    assert top == np.float32(7e20)
    assert finite_rows(np.zeros((0, 4), np.float32), np.empty(0, bool)) == 0
    # the edges of the bit patterns: the largest finite value, a NaN with its
    # sign bit set, the smallest subnormal, negative zero
    edge = np.zeros((4, 3), np.float32)
    edge[0, 1] = -np.finfo(np.float32).max
    edge[1, 2] = np.array([0xFFC00001], np.uint32).view(np.float32)[0]
    edge[2, 0] = np.float32(1e-45)
    edge[3, 2] = np.float32(-0.0)
    ok = np.empty(4, bool)
    assert finite_rows(edge, ok) == np.finfo(np.float32).max
    np.testing.assert_array_equal(ok, [True, False, True, True])


def test_first_compile_in_a_process_is_logged_once(tmp_path):
    # an INFO record on "shardann.kernels" when a kernel misses the cache (the
    # CLI shows it; library users see nothing unless they ask for INFO), none
    # when every kernel loads from the cache
    import os
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "import numpy as np\n"
        "h = logging.StreamHandler(sys.stdout)\n"
        "log = logging.getLogger('shardann.kernels')\n"
        "log.addHandler(h); log.setLevel(logging.INFO)\n"
        "from shardann._kernels import pq\n"
        "raw = np.zeros((3, 2), np.uint8)\n"
        "pq.pack_codes(raw, 4, 1); pq.unpack_codes(pq.pack_codes(raw, 4, 1), 2, 4)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout for _ in range(2)]
    assert runs[0].count("compiling Numba kernels") == 1, runs[0]
    assert runs[1] == "", runs[1]


@pytest.mark.parametrize("nbits", [8, 4])
def test_residual_errors_and_norms_equal_numpy(nbits):
    """The drift measurement's kernels: coarse |x - c|^2 and PQ |x - c - decode|^2 per
    row, serial and parallel, against NumPy on integer data (exact sums)."""
    rng = np.random.default_rng(21)
    n, d, M, nlist = 300, 12, 4, 7
    x = rng.integers(-4, 5, (n, d)).astype(np.float32)
    base = rng.integers(-2, 3, (nlist, d)).astype(np.float32)
    labels = rng.integers(0, nlist, n).astype(np.int64)
    books = rng.integers(-2, 3, (M, 2 ** nbits, d // M)).astype(np.float32)
    raw = rng.integers(0, 2 ** nbits, (n, M)).astype(np.uint8)
    codes = pack_numpy(raw, nbits)
    r = x - base[labels]
    want_c = (r ** 2).sum(1)
    want_p = ((r - pq_decode_numpy(raw, books)) ** 2).sum(1)
    for fn in (kd.residual_norms_serial, kd.residual_norms_parallel):
        out = np.empty(n, np.float32)
        fn(*readonly(x, base, labels), out)
        np.testing.assert_array_equal(out, want_c)
    for fn in (kpq.residual_errors_serial, kpq.residual_errors_parallel):
        oc, op = np.empty(n, np.float32), np.empty(n, np.float32)
        fn(*readonly(x, base, labels, codes, books), nbits, oc, op)
        np.testing.assert_array_equal(oc, want_c)
        np.testing.assert_array_equal(op, want_p)
