"""Adaptive probing (``probe_ratio``) on the local indexes: the rule against a
slow twin for every metric sign, results equal to a search of the kept lists,
bit-identical results when it is off, and argument checks."""

import numpy as np
import pytest
from core_support import NLIST, K

from shardann.index._probing import prune_probes
from shardann.results import recall_at_k

IVF = [("ivfflat", {}), ("ivfflat", {"metric": "ip"}), ("ivfpq", {"metric": "cosine"}),
       ("ivfpq", {"nbits": 4, "keep_vectors": True})]
IVF_IDS = ["ivfflat-l2", "ivfflat-ip", "ivfpq-cosine", "ivfpq4-keep"]


def _slow_keep(key_row, ratio):
    """The rule on the similarity / distance itself (float64, per list)."""
    best = float(key_row[0])
    out = []
    for key in key_row.astype(np.float64):
        if best >= 0:  # squared L2, or a best inner product <= 0: closeness 1 / key
            out.append(ratio * key <= best)
        else:  # similarity s = -key > 0: FastIVF's s >= ratio * s_best
            out.append(-key >= ratio * -best)
    return np.array(out)


def test_prune_probes_follows_the_rule_for_both_signs():
    dis0 = np.array([[1.0, 1.5, 2.0, 4.0],       # l2: keep d <= 1 / 0.5
                     [0.0, 0.0, 1e-3, 5.0],      # l2 query on a centroid: ties only
                     [-0.8, -0.5, -0.39, -0.1],  # similarities .8 .5 .39 .1: keep >= .4
                     [0.2, 0.3, 0.45, 0.9]],     # best similarity -0.2: keep >= -0.4
                    np.float32)
    probes = np.arange(16, dtype=np.int64).reshape(4, 4)
    d, p = prune_probes(dis0, probes, 0.5)
    want = np.array([[0, 1, 2, -1], [4, 5, -1, -1], [8, 9, -1, -1], [12, 13, -1, -1]])
    np.testing.assert_array_equal(p, want[:, :3])  # trimmed to the widest kept prefix
    np.testing.assert_array_equal(d, dis0[:, :3])
    assert p.flags.c_contiguous and d.flags.c_contiguous
    for row in range(4):
        np.testing.assert_array_equal(p[row] >= 0, _slow_keep(dis0[row], 0.5)[:3])


@pytest.mark.parametrize("kind,kw", IVF, ids=IVF_IDS)
def test_probe_keeps_the_lists_the_rule_keeps(data, built, kind, kw):
    _, xq, _ = data
    index = built(kind, **kw)
    q = index.prepare(xq)
    dis0, probes = index.probe(q, 12)
    for ratio in (0.3, 0.7, 0.95, 1.0):
        d, p = index.probe(q, 12, probe_ratio=ratio)
        w = p.shape[1]
        keep = np.array([_slow_keep(row, ratio) for row in dis0])
        assert w == keep.sum(1).max()
        np.testing.assert_array_equal(p, np.where(keep, probes, -1)[:, :w])
        np.testing.assert_array_equal(d, dis0[:, :w])
    # some queries keep more lists than others at a middle ratio: it adapts
    kept = (index.probe(q, 12, probe_ratio=0.7)[1] >= 0).sum(1)
    assert kept.min() < kept.max()


@pytest.mark.parametrize("kind,kw", IVF, ids=IVF_IDS)
def test_search_with_ratio_is_a_search_of_the_kept_lists(data, built, kind, kw):
    _, xq, _ = data
    index = built(kind, **kw)
    rf = 3 if index.refines else 0
    q = index.prepare(xq)
    d, p = index.probe(q, 10, probe_ratio=0.6)
    want = index.search_preassigned(q, d, p, K, refine_factor=rf)
    got = index.search(xq, K, nprobe=10, refine_factor=rf, probe_ratio=0.6)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    # ratio 1 keeps the closest list alone (no ties on this data): nprobe=1's answer
    one = index.search(xq, K, nprobe=10, refine_factor=rf, probe_ratio=1.0)
    np.testing.assert_array_equal(one[1], index.search(xq, K, nprobe=1, refine_factor=rf)[1])


@pytest.mark.parametrize("kind,kw", IVF + [("flat", {})], ids=IVF_IDS + ["flat"])
def test_unset_or_pruning_nothing_is_bit_identical(data, built, kind, kw):
    _, xq, _ = data
    index = built(kind, **kw)
    base = index.search(xq, K, nprobe=8)
    for ratio in (None, 1e-9):  # 1e-9 keeps every one of the 8 lists
        got = index.search(xq, K, nprobe=8, probe_ratio=ratio)
        np.testing.assert_array_equal(got[1], base[1])
        np.testing.assert_array_equal(got[0], base[0])


def test_recall_and_work_fall_as_the_ratio_rises(data, built, ground_truth):
    _, xq, _ = data
    index = built("ivfflat")
    gt = ground_truth["l2"][1]
    q = index.prepare(xq)
    lists, recalls = [], []
    for ratio in (0.2, 0.5, 0.7, 0.9):
        lists.append((index.probe(q, NLIST, probe_ratio=ratio)[1] >= 0).sum())
        recalls.append(recall_at_k(index.search(xq, K, nprobe=NLIST, probe_ratio=ratio)[1],
                                   gt, K))
    assert lists == sorted(lists, reverse=True) and lists[0] > lists[-1]
    assert recalls == sorted(recalls, reverse=True)
    assert recalls[0] > 0.99  # observed 1.0: 0.2 keeps nearly every list


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-0.5, ValueError), (1.5, ValueError),
                                     (float("nan"), ValueError), (float("inf"), ValueError),
                                     ("0.5", TypeError), (True, TypeError)])
def test_bad_ratio_is_refused(data, built, bad, exc):
    _, xq, _ = data
    for index in (built("ivfflat"), built("flat")):
        with pytest.raises(exc, match="probe_ratio"):
            index.search(xq, K, probe_ratio=bad)
    with pytest.raises(exc, match="probe_ratio"):
        built("ivfflat").probe(built("ivfflat").prepare(xq), 4, probe_ratio=bad)


def test_integer_ratio_one_is_accepted(data, built):
    _, xq, _ = data
    index = built("ivfflat")
    got = index.search(xq, K, nprobe=4, probe_ratio=1)
    np.testing.assert_array_equal(got[1], index.search(xq, K, nprobe=4, probe_ratio=1.0)[1])


def test_probe_ratio_with_a_filter(data, fresh):
    xb, xq, _ = data
    index = fresh("ivfflat")
    index.add(xb, attributes={"even": np.arange(len(xb)) % 2 == 0})
    q = index.prepare(xq)
    d, p = index.probe(q, 10, probe_ratio=0.6)
    want = index.search_preassigned(q, d, p, K, filter=index.compile_filter("even = true"))
    got = index.search(xq, K, nprobe=10, probe_ratio=0.6, filter="even = true")
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert (got[1] % 2 == 0).all()


@pytest.mark.parametrize("kind,kw", IVF, ids=IVF_IDS)
def test_probe_split_over_threads_is_the_same(data, built, kind, kw):
    # the coordinator's split probe (probe_threads): the same lists and distances
    # as one thread, with and without a ratio, over all lists or some
    import copy

    _, xq, _ = data
    index = copy.copy(built(kind, **kw))  # (the shared index keeps its setting)
    q = index.prepare(np.concatenate([xq, xq[::-1], xq[:37]]))  # 237 rows: uneven parts
    lists = np.arange(0, NLIST, 2, dtype=np.int64)
    for ratio, sub in ((None, None), (0.7, None), (None, lists)):
        want = index.probe(q, 6, probe_ratio=ratio, lists=sub)
        for threads in (2, 3, 16):
            index.probe_threads = threads
            got = index.probe(q, 6, probe_ratio=ratio, lists=sub)
            index.probe_threads = None
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(ValueError):
        index.probe_threads = 0
