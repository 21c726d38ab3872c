"""Adaptive probing by the running k-th distance (``probe_gap``): every scan
kernel's per-list exit against the rule played out in NumPy, ``inf`` (or a
gap too large to skip anything) bit-identical to fixed nprobe, and the
refusals (inner product, bad values; a sharded index's in
tests/distributed/test_probing_sharded.py)."""

import numpy as np
import pytest
from core_support import NLIST, K

import shardann
from shardann._kernels import fastscan, fastscan8
from shardann.index._probing import gap_bounds
from shardann.results import recall_at_k

NPROBE = 12

# (id, metric, constructor kwargs): every scan path — IVF-Flat, 8-bit PQ scalar and
# fast scan, 4-bit PQ scalar and fast scan, L2 residual tables (no precomputed
# terms), cosine, and refine on kept vectors
KINDS = [
    ("flat-l2", "l2", None),
    ("flat-cosine", "cosine", None),
    ("pq8-scalar", "l2", {"nbits": 8, "fast_scan": False}),
    ("pq8-fast", "l2", {"nbits": 8}),
    ("pq8-residual", "l2", {"nbits": 8, "fast_scan": False, "precompute_max_bytes": 0}),
    ("pq4-scalar", "l2", {"nbits": 4, "fast_scan": False}),
    ("pq4-fast", "l2", {"nbits": 4}),
    ("pq4-fast-residual", "l2", {"nbits": 4, "precompute_max_bytes": 0}),
    ("pq4-fast-cosine-keep", "cosine", {"nbits": 4, "keep_vectors": True}),
    ("pq8-fast-keep", "l2", {"nbits": 8, "keep_vectors": "float16"}),
]


@pytest.fixture(scope="module")
def indexes(data):
    xb, _, xt = data
    cache = {}

    def get(name):
        if name not in cache:
            _, metric, kw = next(k for k in KINDS if k[0] == name)
            d = xb.shape[1]
            if kw is None:
                index = shardann.IVFFlatIndex(d, NLIST, metric, seed=0)
            else:
                index = shardann.IVFPQIndex(d, NLIST, 16, metric=metric, seed=0, **kw)
            index.train(xt)
            index.add(xb)
            cache[name] = index
        return cache[name]

    return get


def _path_available(index):
    """False for a fast-scan index on a CPU whose lists fell back to row-major."""
    if not getattr(index, "fast_scan", False):
        return True
    return fastscan.AVAILABLE if index.nbits == 4 else fastscan8.AVAILABLE


def _slow_gap_lists(index, q, dis0, probes, kk, gap):
    """The lists the rule scans, played out in NumPy: per query, visit the probed
    lists in order, skip list p when its bound exceeds the kk-th smallest key of
    the lists scanned so far. Each list's keys come from a scan of that list
    alone, asking for all its rows (no heap limit)."""
    bounds = gap_bounds(dis0, gap, 1.0 if index.metric == "cosine" else 0.0)
    nq, w = probes.shape
    per_list = []
    for p in range(w):
        rows = int(index._lists.size[probes[:, p]].max())
        keys, _, _ = index.scan_candidates(q, np.ascontiguousarray(dis0[:, p:p + 1]),
                                           np.ascontiguousarray(probes[:, p:p + 1]),
                                           max(rows, 1))
        per_list.append(keys)
    scanned = np.full(probes.shape, -1, np.int64)
    for i in range(nq):
        seen = np.empty(0)
        for p in range(w):
            kth = np.sort(seen)[kk - 1] if seen.size >= kk else np.inf
            if bounds[i, p] > kth:
                continue
            scanned[i, p] = probes[i, p]
            keys = per_list[p][i]
            seen = np.concatenate([seen, keys[np.isfinite(keys)]])
    return scanned


def test_gap_bounds_by_hand():
    dis0 = np.array([[1.0, 1.5, 3.0], [0.2, 0.2, np.inf]], np.float32)
    got = gap_bounds(dis0, 0.5)
    np.testing.assert_array_equal(got, [[-np.inf, 1.0, 4.0], [-np.inf, 0.0, np.inf]])
    cos = gap_bounds(np.array([[-0.9, -0.7]], np.float32), 2.0, 1.0)
    np.testing.assert_allclose(cos, [[-np.inf, 0.1 - 1.0]], rtol=1e-6)
    assert got.dtype == np.float32 and got.flags.c_contiguous


# the residual-table variants (precompute_max_bytes=0) are opt-in (-m slow) to keep
# the default suite under 10 minutes: each compiles its kernels afresh, ~10 s
# apiece on a cold cache
_SLOW_KINDS = {"pq8-residual", "pq4-fast-residual"}


@pytest.mark.parametrize("name", [pytest.param(k[0], marks=pytest.mark.slow)
                                  if k[0] in _SLOW_KINDS else k[0] for k in KINDS])
def test_scan_stops_where_the_numpy_rule_does(data, indexes, name):
    _, xq, _ = data
    index = indexes(name)
    if not _path_available(index):
        pytest.skip("this CPU has no fast scan of that width")
    rf = 3 if index.refines else 0
    q = index.prepare(xq)
    dis0, probes = index.probe(q, NPROBE)
    skipped = 0
    for gap in (0.05, 0.3, 1.0):
        scanned = _slow_gap_lists(index, q, dis0, probes, K * rf if rf else K, gap)
        skipped += int((scanned < 0).sum())
        want = index.search_preassigned(q, dis0, scanned, K, refine_factor=rf)
        got = index.search(xq, K, nprobe=NPROBE, refine_factor=rf, probe_gap=gap)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    assert skipped > 0  # the rule did skip lists (else this proves little)


@pytest.mark.parametrize("name", [pytest.param(k[0], marks=pytest.mark.slow)
                                  if k[0] in _SLOW_KINDS else k[0] for k in KINDS])
def test_infinite_gap_is_fixed_nprobe(data, indexes, name):
    _, xq, _ = data
    index = indexes(name)
    rf = 3 if index.refines else 0
    base = index.search(xq, K, nprobe=NPROBE, refine_factor=rf)
    for gap in (np.inf, 1e30):
        got = index.search(xq, K, nprobe=NPROBE, refine_factor=rf, probe_gap=gap)
        np.testing.assert_array_equal(got[1], base[1])
        np.testing.assert_array_equal(got[0], base[0])


def test_batch_and_single_queries_agree(data, indexes):
    # the rule is per query: a query's answer does not depend on its batch or threads
    _, xq, _ = data
    index = indexes("pq4-fast")
    batch = index.search(xq, K, nprobe=NPROBE, probe_gap=0.3)
    one = [index.search(xq[i:i + 1], K, nprobe=NPROBE, probe_gap=0.3)[1][0]
           for i in range(0, len(xq), 17)]
    np.testing.assert_array_equal(np.array(one), batch[1][::17])


def test_recall_rises_with_the_gap(data, indexes, ground_truth):
    _, xq, _ = data
    index = indexes("flat-l2")
    gt = ground_truth["l2"][1]
    recalls = [recall_at_k(index.search(xq, K, nprobe=NLIST, probe_gap=g)[1], gt, K)
               for g in (0.02, 0.1, 0.5, 5.0)]
    assert recalls == sorted(recalls) and recalls[0] < recalls[-1]
    assert recalls[-1] > 0.99  # observed 1.0


def test_with_probe_ratio_and_filter(data, fresh):
    xb, xq, _ = data
    index = fresh("ivfflat")
    index.add(xb, attributes={"even": np.arange(len(xb)) % 2 == 0})
    got = index.search(xq, K, nprobe=NPROBE, probe_ratio=0.5, probe_gap=0.3,
                       filter="even = true")
    assert (got[1][got[1] >= 0] % 2 == 0).all()
    q = index.prepare(xq)
    d, p = index.probe(q, NPROBE, probe_ratio=0.5)
    expr = index.compile_filter("even = true")
    base = index.search_preassigned(q, d, p, K, filter=expr)
    # the gap rule only skips lists: each hit is at least as far as the full scan's
    assert (got[0] >= base[0] - 1e-6).all()


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1.0, ValueError),
                                     (float("nan"), ValueError), ("1", TypeError),
                                     (True, TypeError)])
def test_bad_gap_is_refused(data, built, bad, exc):
    _, xq, _ = data
    for index in (built("ivfflat"), built("flat")):
        with pytest.raises(exc, match="probe_gap"):
            index.search(xq, K, probe_gap=bad)


def test_inner_product_is_refused(data, built):
    _, xq, _ = data
    with pytest.raises(ValueError, match="probe_gap needs distances"):
        built("ivfflat", metric="ip").search(xq, K, probe_gap=0.5)
    # an exact index checks the value, then ignores it (as nprobe)
    flat = built("flat")
    np.testing.assert_array_equal(flat.search(xq, K, probe_gap=0.5)[1], flat.search(xq, K)[1])



def test_probe_gap_for_a_target_recall(built):
    index = built("ivfflat")
    g, est = index.probe_gap_for(0.9, K, nprobe=NLIST, steps=8)
    assert 0 < g < np.inf and est.recall >= 0.9 and est.probe_gap == g
    assert index.estimate_recall(K, NLIST, probe_gap=g).recall == est.recall
    # a gap much below it misses the target (observed ~0.6 at g / 16)
    assert index.estimate_recall(K, NLIST, probe_gap=g / 16).recall < 0.9
    # one list cannot reach it whatever the gap
    g1, est1 = index.probe_gap_for(0.99, K, nprobe=1, steps=2)
    assert g1 == np.inf and est1.recall < 0.99
    with pytest.raises(ValueError, match="target_recall"):
        index.probe_gap_for(1.0)
