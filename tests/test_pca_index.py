"""PCA in front of IVF (``pca=`` on IVFFlatIndex / IVFPQIndex): the transform,
save/open, refine on the original vectors, reconstruct and remove, bad values."""

import numpy as np
import pytest

import shardann
from shardann import PCA, IVFFlatIndex, IVFPQIndex
from shardann.bench.datasets import synthetic_split
from shardann.results import recall_at_k
from shardann.storage import IndexStore

D = 32


@pytest.fixture(scope="module")
def data():
    return synthetic_split(4000, 40, D, nt=2000, seed=5)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pq(xt, xb, metric="l2", **kw):
    kw = {"pca": 16, "keep_vectors": True, "seed": 0, "niter": 6, "pq_niter": 6, **kw}
    index = IVFPQIndex(D, 16, 8, kw.pop("nbits", 4), metric, **kw).train(xt)
    index.add(xb)
    return index


def test_pca_transform_round_trip_and_batch_invariance(tmp_path):
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((24, 6)))[0].T  # 6 orthonormal rows in 24-d
    x = (rng.standard_normal((500, 6)) @ basis + 3.0).astype(np.float32)  # rank 6 + a mean
    pca = PCA(24, 6, max_train_points=400).train(x)
    assert pca.explained > 0.999
    np.testing.assert_allclose(pca.matrix.T @ pca.matrix, np.eye(6), atol=1e-5)
    y = pca.apply(x)
    assert y.shape == (500, 6) and y.dtype == np.float32
    np.testing.assert_allclose(pca.reverse(y), x, atol=1e-4)  # the dropped part is the mean's
    np.testing.assert_array_equal(pca.apply(x[7:8]), y[7:8])  # a row alone = in a batch
    np.testing.assert_array_equal(PCA(24, 6, max_train_points=400).train(x).matrix, pca.matrix)
    pca.save(tmp_path / "pca.parquet")
    back = PCA.load(tmp_path / "pca.parquet")
    np.testing.assert_array_equal(back.apply(x), y)
    with pytest.raises(ValueError, match="d_out"):
        PCA(8, 9)
    with pytest.raises(shardann.NotTrainedError):
        PCA(8, 4).apply(x[:, :8])


def test_balanced_order_spreads_the_largest_variances():
    from shardann.pca import balanced_order

    # the largest with the smallest: products 2, 2, 2
    np.testing.assert_array_equal(balanced_order([8, 4, 2, 1, 0.5, 0.25], 3),
                                  [0, 5, 1, 4, 2, 3])
    with pytest.raises(ValueError, match="multiple of groups=4"):
        balanced_order(np.ones(6), 4)


def test_pca_without_opq_balances_the_sub_quantizers(data):
    xb, xq, xt = data
    index = _pq(xt, xb, keep_vectors=False)
    y = index._reduce(index.prepare(xt))
    r = y - index.centroids[index._assign(y)]
    logs = np.log(r.var(axis=0)).reshape(index.M, -1).sum(1)  # per sub-quantizer
    plain = np.log(np.sort(r.var(axis=0))[::-1]).reshape(index.M, -1).sum(1)  # by variance
    assert np.ptp(logs) < 0.5 * np.ptp(plain)  # observed 0.78 vs 3.28


@pytest.mark.parametrize("metric,opq", [("l2", False), ("cosine", True)])
def test_ivfpq_pca_save_open_and_refine_on_original_vectors(data, tmp_path, metric, opq):
    xb, xq, xt = data
    index = _pq(xt, xb, metric, opq=opq)
    assert index.centroids.shape == (16, 16) and index.pq.d == 16 and index.code_size == 4
    assert index.columns["vectors"] == (D, np.dtype(np.float32))  # kept in the original space
    D0, I0 = index.search(xq, 10, nprobe=4)
    D1, I1 = index.search(xq, 10, nprobe=16, refine_factor=50)  # every list, 500 candidates
    # refined distances are the exact ones on the original vectors
    xs = _unit(xb) if metric == "cosine" else xb
    qs = _unit(xq) if metric == "cosine" else xq
    if metric == "l2":
        exact = ((qs[:, None, :] - xs[I1]) ** 2).sum(-1)
    else:
        exact = np.einsum("qd,qkd->qk", qs, xs[I1])
    np.testing.assert_allclose(D1, exact, rtol=1e-4, atol=1e-4)
    flat = shardann.FlatIndex(D, metric)
    flat.add(xb)
    gt = flat.search(xq, 10)[1]
    assert recall_at_k(I1, gt, 10) >= 0.95  # observed 1.0 (l2) / 0.9975 (cosine)
    # adaptive probing prunes on the reduced space's coarse distances, as probe() gives them
    q = index.prepare(xq)
    dis0, probes = index.probe(q, 8, probe_ratio=0.9)
    assert (probes < 0).any()
    want = index.search_preassigned(q, dis0, probes, 10, refine_factor=4)
    got = index.search(xq, 10, nprobe=8, refine_factor=4, probe_ratio=0.9)
    np.testing.assert_array_equal(got[1], want[1])
    index.save(tmp_path / "idx")
    store = IndexStore.open(tmp_path / "idx")
    assert store.config["pca"] == 16 and store.verify()["ntotal"] == len(xb)
    opened = shardann.open_index(tmp_path / "idx")
    for kw, want in (({"nprobe": 4}, (D0, I0)), ({"nprobe": 16, "refine_factor": 50}, (D1, I1))):
        got = opened.search(xq, 10, **kw)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def test_pca_reconstruct_and_remove(data, tmp_path):
    xb, xq, xt = data
    kept = _pq(xt, xb)
    np.testing.assert_array_equal(kept.reconstruct(np.arange(3)), xb[:3])
    codes_only = _pq(xt, xb, keep_vectors=False)
    rec = codes_only.reconstruct(np.arange(500))
    assert rec.shape == (500, D)  # decoded in 16-d, mapped back to 32-d
    x = xb[:500]
    # error over the variance: observed 0.108 (0.181 without pca: 4 dims per code)
    assert ((rec - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum() < 0.15
    flat = IVFFlatIndex(D, 16, pca=16, seed=0, niter=6).train(xt)
    flat.add(xb)
    assert flat.columns["vectors"] == (16, np.dtype(np.float32))
    back = flat.reconstruct(np.arange(50))
    np.testing.assert_allclose(back, flat._pca.reverse(flat._pca.apply(xb[:50])), atol=1e-5)
    for index in (kept, flat):
        assert index.remove_ids(np.arange(100)) == 100
        _, ids = index.search(xq, 10, nprobe=16)
        assert (ids >= 100).all()
        with pytest.raises(KeyError, match="50"):
            index.reconstruct(50)
    flat.save(tmp_path / "flat")
    opened = shardann.open_index(tmp_path / "flat")
    np.testing.assert_array_equal(opened.search(xq, 5, nprobe=3)[1],
                                  flat.search(xq, 5, nprobe=3)[1])
    np.testing.assert_array_equal(opened.reconstruct(np.arange(100, 105)),
                                  flat.reconstruct(np.arange(100, 105)))


def test_pca_bad_values():
    with pytest.raises(ValueError, match="pca must be >= 1"):
        IVFPQIndex(D, 16, 8, pca=0)
    with pytest.raises(ValueError, match=f"pca must be <= {D}"):
        IVFFlatIndex(D, 16, pca=D + 1)
    with pytest.raises(TypeError, match="pca must be an int"):
        IVFPQIndex(D, 16, 8, pca=16.0)
    with pytest.raises(ValueError, match="pca must be a multiple of M; got pca=12, M=8"):
        IVFPQIndex(D, 16, 8, pca=12)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, D)).astype(np.float32)
    flat = IVFFlatIndex(D, 8, pca=8, niter=2).train(x)
    flat.add(x)
    with pytest.raises(ValueError, match="original vectors"):
        flat.search(x[:2], 3, refine_factor=2)
    assert "pca" not in IVFPQIndex(D, 16, 8).get_config()  # stores without pca unchanged
