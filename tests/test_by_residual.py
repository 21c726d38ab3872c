"""IVFPQIndex(by_residual=False): codes of the vectors themselves, one distance
table per query. The scan keys are the ADC distances to the decoded codes
(no centroid added), every scan kernel (4-bit / 8-bit fast scan, scalar) gives
the same results, and the option survives save/open and pickling."""

import pickle

import numpy as np
import pytest
from core_support import NB, NLIST, D, K

import shardann
from shardann._kernels import fastscan, fastscan8

FAST = {4: fastscan.AVAILABLE, 8: fastscan8.AVAILABLE}


def _raw(data, metric, nbits, **kw):
    xb, _, xt = data
    index = shardann.IVFPQIndex(D, NLIST, 8, nbits, metric, seed=1, by_residual=False, **kw)
    index.train(xt)
    index.add(xb)
    return index


def _adc_reference(index, xq, nprobe):
    """float64 brute force over the probed lists: |q - decode(code)|^2 (l2) or
    -<q, decode(code)> (ip, cosine on prepared rows), ties by smaller id."""
    q = index.prepare(xq)
    _, probes = index.probe(q, nprobe)
    ids = np.arange(NB)
    decoded = index.reconstruct(ids).astype(np.float64)
    L = index._lists
    owner = np.empty(NB, np.int64)
    for lst in range(NLIST):
        owner[L.ids[L.start[lst]:L.start[lst] + L.size[lst]]] = lst
    out_d = np.full((len(q), K), np.inf)
    out_i = np.full((len(q), K), -1)
    for i, row in enumerate(q.astype(np.float64)):
        rows = ids[np.isin(owner, probes[i])]
        if index.metric == "l2":
            keys = ((decoded[rows] - row) ** 2).sum(1)
        else:
            keys = -(decoded[rows] @ row)
        order = np.lexsort((rows, keys))[:K]
        out_d[i, :len(order)] = keys[order]
        out_i[i, :len(order)] = rows[order]
    return out_d, out_i


@pytest.mark.parametrize("metric,nbits", [("l2", 4), ("ip", 4), ("l2", 8)])
def test_keys_are_distances_to_the_decoded_codes(data, metric, nbits):
    _, xq, _ = data
    index = _raw(data, metric, nbits)
    assert index.by_residual is False and index._list_terms is None
    D_, I = index.search(xq, K, nprobe=5)
    want_d, want_i = _adc_reference(index, xq, 5)
    keys = D_ if metric == "l2" else -D_
    np.testing.assert_allclose(keys, want_d, rtol=1e-4, atol=1e-3 * np.abs(want_d).max())
    # float32 vs float64 keys may swap near-ties: nearly all ids agree
    assert (I == want_i).mean() > 0.97


# 8 bits: opt-in (-m slow) to keep the default suite under 10 minutes; its codes'
# keys are checked against float64 in test_keys_are_distances_to_the_decoded_codes
@pytest.mark.parametrize("nbits", [4, pytest.param(8, marks=pytest.mark.slow)])
def test_every_scan_kernel_gives_the_same_results(data, nbits):
    _, xq, _ = data
    fast = _raw(data, "l2", nbits)
    plain = _raw(data, "l2", nbits, fast_scan=False)
    np.testing.assert_array_equal(fast.pq.codebooks, plain.pq.codebooks)
    for nprobe in (1, 6):
        for q in (xq, xq[:1]):  # batch (parallel kernels) and one query (serial)
            a, b = fast.search(q, K, nprobe=nprobe), plain.search(q, K, nprobe=nprobe)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    if not FAST[nbits]:
        pytest.skip("no SIMD fast scan on this CPU: both indexes ran the scalar scan")


def test_saved_opened_and_pickled(data, tmp_path):
    _, xq, _ = data
    index = _raw(data, "l2", 4)
    want = index.search(xq, K, nprobe=6)
    index.save(tmp_path / "raw")
    opened = shardann.open_index(tmp_path / "raw")
    assert opened.by_residual is False and opened.get_config()["by_residual"] is False
    for other in (opened, pickle.loads(pickle.dumps(index))):
        got = other.search(xq, K, nprobe=6)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(AttributeError):
        index.by_residual = True  # the codes were made one way
    with pytest.raises(TypeError, match="by_residual"):
        shardann.IVFPQIndex(D, NLIST, 8, 4, by_residual="no")


def test_recall_and_drift(data, ground_truth):
    """Codes of the raw vectors still find neighbours, and the drift baseline's
    PQ error is the error of those codes (larger than of residual codes)."""
    _, xq, _ = data
    raw = _raw(data, "l2", 8)
    res = shardann.IVFPQIndex(D, NLIST, 8, 8, seed=1)
    res.train(data[2])
    res.add(data[0])
    _, gt = ground_truth["l2"]

    def recall(index):
        _, I = index.search(xq, K, nprobe=NLIST)
        return np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(I, gt, strict=True)])

    assert recall(raw) > 0.3
    err = {name: index.drift()["training"]["pq"]["mean"] for name, index in
           (("raw", raw), ("res", res))}
    assert err["raw"] > err["res"] > 0
    # the coarse error does not depend on how the codes were made
    np.testing.assert_allclose(raw.drift()["training"]["coarse"]["mean"],
                               res.drift()["training"]["coarse"]["mean"], rtol=1e-5)


def test_with_pca(data, tmp_path):
    """PCA's directions are spread over the sub-quantizers by the rows' own
    variance; decoded rows map back to the original space."""
    xb, xq, xt = data
    index = shardann.IVFPQIndex(D, NLIST, 4, 4, seed=1, pca=16, by_residual=False)
    index.train(xt)
    index.add(xb)
    want = index.search(xq, K, nprobe=6)
    # the codes are of the projected rows themselves: decoding needs no centroid
    approx = index.reconstruct(np.arange(NB))
    assert approx.shape == (NB, D)
    err = ((approx - xb) ** 2).sum(1).mean() / (xb ** 2).sum(1).mean()
    assert err < 0.5
    index.save(tmp_path / "pca")
    got = shardann.open_index(tmp_path / "pca").search(xq, K, nprobe=6)
    np.testing.assert_array_equal(got[1], want[1])
