"""The one top-k merge: metric direction, ties, padding, split/merge identity."""

import numpy as np
import pytest
from core_support import topk_smallest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardann import merge_results
from shardann.results import empty_results, recall_at_k


def _result(keys, ids, k, metric):
    """A valid (D, I) result from keys (smaller better) and ids."""
    d, i = topk_smallest(keys, ids, k)
    if metric != "l2":
        d = -d
    return d.astype(np.float32), i


def test_l2_smaller_is_better():
    a = (np.array([[1.0, 5.0]], np.float32), np.array([[10, 11]]))
    b = (np.array([[2.0, 3.0]], np.float32), np.array([[20, 21]]))
    D, I = merge_results([a, b], 3, "l2")
    np.testing.assert_array_equal(I, [[10, 20, 21]])
    np.testing.assert_array_equal(D, [[1.0, 2.0, 3.0]])
    assert D.dtype == np.float32 and I.dtype == np.int64


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_similarity_larger_is_better(metric):
    a = (np.array([[0.9, 0.1]], np.float32), np.array([[10, 11]]))
    b = (np.array([[0.5, 0.4]], np.float32), np.array([[20, 21]]))
    D, I = merge_results([a, b], 3, metric)
    np.testing.assert_array_equal(I, [[10, 20, 21]])
    np.testing.assert_allclose(D, [[0.9, 0.5, 0.4]])


def test_negative_similarities():
    a = (np.array([[-0.1, -2.0]], np.float32), np.array([[1, 2]]))
    b = (np.array([[-0.5]], np.float32), np.array([[3]]))
    D, I = merge_results([a, b], 3, "ip")
    np.testing.assert_array_equal(I, [[1, 3, 2]])


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_ties_break_by_smaller_id(metric):
    a = (np.array([[1.0, 1.0]], np.float32), np.array([[7, 3]]))
    b = (np.array([[1.0, 1.0]], np.float32), np.array([[5, 1]]))
    D, I = merge_results([a, b], 3, metric)
    np.testing.assert_array_equal(I, [[1, 3, 5]])
    # and regardless of the order of the parts
    D2, I2 = merge_results([b, a], 3, metric)
    np.testing.assert_array_equal(I2, I)


@pytest.mark.parametrize("metric,pad", [("l2", np.inf), ("ip", -np.inf), ("cosine", -np.inf)])
def test_padding(metric, pad):
    a = (np.array([[1.0]], np.float32), np.array([[4]]))
    b = (np.array([[pad, pad]], np.float32), np.array([[-1, -1]]))
    D, I = merge_results([a, b], 5, metric)
    np.testing.assert_array_equal(I, [[4, -1, -1, -1, -1]])
    assert D[0, 0] == 1.0
    assert (D[0, 1:] == pad).all()


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_padding_never_outranks_a_hit(metric):
    # a padded slot carrying a "good" distance must still rank after real hits
    bad = -1.0 if metric == "l2" else 1e9
    a = (np.array([[bad, 3.0]], np.float32), np.array([[-1, 8]]))
    D, I = merge_results([a], 2, metric)
    np.testing.assert_array_equal(I, [[8, -1]])
    assert D[0, 1] == (np.inf if metric == "l2" else -np.inf)


def test_empty_results():
    for metric, pad in [("l2", np.inf), ("ip", -np.inf), ("cosine", -np.inf)]:
        D, I = empty_results(3, 4, metric)
        assert D.shape == I.shape == (3, 4)
        assert (I == -1).all() and (D == pad).all()
        assert D.dtype == np.float32 and I.dtype == np.int64


def test_no_parts_raises():
    with pytest.raises(ValueError):
        merge_results([], 3, "l2")


def test_bad_metric_raises():
    a = (np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64))
    with pytest.raises(ValueError, match="metric"):
        merge_results([a], 1, "hamming")


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("nparts", [1, 2, 5])
def test_merge_of_shuffled_splits_equals_whole(metric, nparts):
    rng = np.random.default_rng(nparts)
    nq, n, k = 6, 60, 10
    keys = rng.integers(0, 20, (nq, n)).astype(np.float32)  # many ties
    ids = rng.permutation(1000)[:n].astype(np.int64)
    whole = _result(keys, np.broadcast_to(ids, keys.shape), k, metric)
    # split the columns at random into parts; each part is the top-k of its slice,
    # with its columns shuffled (parts need not be sorted)
    owner = rng.integers(0, nparts, n)
    parts = []
    for p in range(nparts):
        cols = np.flatnonzero(owner == p)
        kp = min(k, len(cols)) if len(cols) else 1
        d, i = _result(keys[:, cols], np.broadcast_to(ids[cols], (nq, len(cols))), kp, metric)
        perm = rng.permutation(kp)
        parts.append((d[:, perm], i[:, perm]))
    D, I = merge_results(parts, k, metric)
    np.testing.assert_array_equal(I, whole[1])
    np.testing.assert_array_equal(D, whole[0])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 4),
    st.integers(1, 12),
    st.sampled_from(["l2", "ip"]),
    st.integers(0, 2**32 - 1),
)
def test_merge_property(n, nparts, k, metric, seed):
    """Merging the per-part top-k of any partition gives the global top-k."""
    rng = np.random.default_rng(seed)
    nq = 3
    keys = rng.integers(0, 5, (nq, n)).astype(np.float32)
    ids = rng.permutation(4 * n)[:n].astype(np.int64)
    whole = _result(keys, np.broadcast_to(ids, keys.shape), k, metric)
    owner = rng.integers(0, nparts, n)
    parts = []
    for p in range(nparts):
        cols = np.flatnonzero(owner == p)
        # each part padded to its own k (fewer hits than k -> -1 / inf)
        parts.append(_result(keys[:, cols], np.broadcast_to(ids[cols], (nq, len(cols))),
                             k, metric))
    D, I = merge_results(parts, k, metric)
    np.testing.assert_array_equal(I, whole[1])
    np.testing.assert_array_equal(D, whole[0])
    assert D.shape == I.shape == (nq, k)


def test_metric_aliases_keep_their_direction():
    # shardann.metric.check_metric accepts "L2" for l2 and "inner_product" for ip;
    # the merge must rank them the same way as their canonical names
    a = (np.array([[1.0, 5.0]], np.float32), np.array([[10, 11]]))
    b = (np.array([[2.0, 3.0]], np.float32), np.array([[20, 21]]))
    for alias, canon in [("L2", "l2"), ("inner_product", "ip"), ("IP", "ip")]:
        D, I = merge_results([a, b], 4, alias)
        Dc, Ic = merge_results([a, b], 4, canon)
        np.testing.assert_array_equal(I, Ic, err_msg=f"metric {alias!r}")


def test_merge_return_source():
    a = (np.array([[1.0, 4.0], [0.5, np.inf]], np.float32), np.array([[10, 11], [12, -1]]))
    b = (np.array([[2.0], [0.1]], np.float32), np.array([[20], [21]]))
    D, I, src = merge_results([a, b], 4, "l2", return_source=True)
    np.testing.assert_array_equal(I, [[10, 20, 11, -1], [21, 12, -1, -1]])
    catI = np.concatenate([a[1], b[1]], axis=1)
    catD = np.concatenate([a[0], b[0]], axis=1)
    hit = src >= 0
    np.testing.assert_array_equal(np.take_along_axis(catI, np.maximum(src, 0), 1)[hit], I[hit])
    np.testing.assert_array_equal(np.take_along_axis(catD, np.maximum(src, 0), 1)[hit], D[hit])
    assert (src[:, 3] == -1).all()  # k=4 > 3 columns: padding has no source


def test_merge_k_must_be_positive():
    a = (np.zeros((1, 2), np.float32), np.array([[1, 2]]))
    with pytest.raises(ValueError, match="k"):
        merge_results([a], 0, "l2")


# -- recall@k ----------------------------------------------------------------------------
def _recall_by_sets(I, gt, k):
    hits = total = 0
    for row, truth in zip(I, gt, strict=True):
        t = {int(v) for v in truth[:k] if v >= 0}
        hits += len(t & {int(v) for v in row[:k] if v >= 0})
        total += len(t)
    return hits / total


def test_recall_at_k_counts_true_ids_found_in_any_order():
    gt = np.array([[1, 2, 3], [4, 5, 6]])
    I = np.array([[3, 1, 9], [6, 5, 4]])
    assert recall_at_k(I, gt) == pytest.approx(5 / 6)
    assert recall_at_k(gt, gt) == 1.0
    assert recall_at_k(I, gt, k=1) == pytest.approx(0.0)  # 3 vs 1, 6 vs 4


def test_recall_at_k_padding():
    # padding in I never counts; padding in gt (fewer true neighbours) is not asked for
    gt = np.array([[1, 2, -1], [3, -1, -1]])
    I = np.array([[-1, 1, -1], [3, 7, -1]])
    assert recall_at_k(I, gt) == pytest.approx(2 / 3)
    assert np.isnan(recall_at_k(I, np.full((2, 3), -1)))
    # columns missing from I or gt count as padding
    assert recall_at_k(I[:, :1], gt) == pytest.approx(1 / 3)
    assert recall_at_k(I, gt[:, :1], k=3) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 12), st.integers(1, 12), st.integers(0, 10_000))
def test_recall_at_k_matches_set_counting(nq, k_I, k_gt, seed):
    rng = np.random.default_rng(seed)
    I = rng.integers(-1, 40, size=(nq, k_I))
    gt = np.stack([rng.permutation(40)[:k_gt] for _ in range(nq)])
    gt[rng.random(gt.shape) < 0.1] = -1
    k = min(k_I, k_gt)
    if not (gt[:, :k] >= 0).any():
        return
    assert recall_at_k(I, gt, k) == pytest.approx(_recall_by_sets(I, gt, k))


def test_recall_at_k_checks_its_arguments():
    with pytest.raises(ValueError, match="same queries"):
        recall_at_k(np.zeros((2, 3), np.int64), np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64), k=0)
