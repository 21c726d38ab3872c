"""A vector is stored, assigned and searched the same whatever batch it comes in.

BLAS rounds a row of a matrix product differently by the product's shape and
the row's place in it, so anything computed with it for a row can differ in
its last bits between batches. What an index stores (vectors, codes, lists)
and returns (lists probed, distances) must not: an ingest worker, a shard,
the service's micro-batcher and the local index see the same vectors in
different batches and must agree bit for bit.
"""

import numpy as np
import pytest
from core_support import NLIST, D, K

import shardann
from shardann.kmeans import nearest_centroids


def _pieces(n, sizes=(1, 7, 33, 700)):
    """Cut range(n) into consecutive pieces of cycling sizes."""
    out, s, i = [], 0, 0
    while s < n:
        e = min(n, s + sizes[i % len(sizes)])
        out.append(slice(s, e))
        s, i = e, i + 1
    return out


@pytest.mark.parametrize("ip", [False, True])
def test_nearest_centroids_same_in_any_batch(data, ip):
    xb, _, xt = data
    C = np.ascontiguousarray(xt[:NLIST] * 1.0001)
    whole, _ = nearest_centroids(xb, C, ip=ip)
    parts = np.concatenate([nearest_centroids(xb[s], C, ip=ip)[0] for s in _pieces(len(xb))])
    np.testing.assert_array_equal(parts, whole)
    # exact ties (a duplicated centroid) go to the smaller number
    C2 = np.concatenate([C, C[:1]])
    assert not (nearest_centroids(xb, C2, ip=ip)[0] == NLIST).any()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_opq_index_stores_and_finds_the_same_in_any_batch(data, trained, metric):
    import copy

    xb, xq, _ = data
    base = trained("ivfpq", metric=metric, opq=True, keep_vectors=True)
    one, many = copy.deepcopy(base), copy.deepcopy(base)
    one.add(xb)
    for s in _pieces(len(xb)):
        many.add(xb[s], ids=np.arange(s.start, s.stop))
    a, b = one._lists.packed(), many._lists.packed()
    np.testing.assert_array_equal(a[0], b[0])  # list sizes
    oa, ob = np.argsort(a[1], kind="stable"), np.argsort(b[1], kind="stable")
    for name in a[2]:
        np.testing.assert_array_equal(a[2][name][oa], b[2][name][ob])
    # a query alone finds exactly what it finds in a batch
    Dw, Iw = one.search(xq, K, nprobe=4, refine_factor=2)
    for s in _pieces(len(xq), (1, 5)):
        Dp, Ip = one.search(xq[s], K, nprobe=4, refine_factor=2)
        np.testing.assert_array_equal(Ip, Iw[s])
        np.testing.assert_array_equal(Dp, Dw[s])


def test_probe_ranks_near_ties_exactly(trained):
    """Centroids at equal distance from a query are ranked by list number, and the
    distances are the exact keys, whatever the batch."""
    index = shardann.IVFFlatIndex(D, 8, seed=0)
    rng = np.random.default_rng(3)
    index.train(rng.standard_normal((400, D)).astype(np.float32))
    c = index.centroids.copy()
    q = np.zeros((3, D), np.float32)
    q[1] = c[2]
    q[2] = (c[5] + c[6]) / 2
    dis0, probes = index.probe(q, 8)
    assert (np.diff(dis0, axis=1) >= 0).all()
    assert probes[1, 0] == 2 and dis0[1, 0] == 0
    for i in range(3):
        d1, p1 = index.probe(q[i:i + 1], 8)
        np.testing.assert_array_equal(p1[0], probes[i])
        np.testing.assert_array_equal(d1[0], dis0[i])


def test_probe_keeps_the_largest_centroid_norm(tmp_path):
    """The rounding margin's largest centroid norm is computed once per set of
    centroids (trained, loaded, unpickled), and the probe gives the same lists
    and keys as with the norm computed per call."""
    import pickle

    from shardann.index.ivf import coarse_probe
    from shardann.kmeans import largest_norm, rounding_margin

    rng = np.random.default_rng(5)
    index = shardann.IVFFlatIndex(D, 8, seed=0)
    index.train(rng.standard_normal((400, D)).astype(np.float32))
    c = index.centroids
    q = np.concatenate([rng.standard_normal((6, D)).astype(np.float32), c[2:3],
                        (c[5:6] + c[6:7]) / 2])  # on a centroid, between two
    index.add(rng.standard_normal((200, D)).astype(np.float32))
    index.save(tmp_path / "ix")
    for held in (index, shardann.open_index(tmp_path / "ix"), pickle.loads(pickle.dumps(index))):
        assert held._cmax == largest_norm(held.centroids) > 0
        np.testing.assert_array_equal(rounding_margin(q, held.centroids, False, held._cmax),
                                      rounding_margin(q, held.centroids, False))
        for nprobe in (1, 3, 8):
            got = held.probe(q, nprobe)
            ref = coarse_probe(q, held.centroids, held._cnorms, nprobe, False)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[0], ref[0])
