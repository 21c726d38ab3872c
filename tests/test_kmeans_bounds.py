"""Exact Lloyd with Hamerly's bounds (shardann.kmeans._BoundedAssignment) against
plain Lloyd: the same labels at every iteration, so the same centroids, bit for bit."""

import numpy as np
import pytest

import shardann
from shardann._kernels.kmeans import centroid_sums
from shardann.kmeans import (
    _BoundedAssignment,
    nearest_centroids,
    rounding_margin,
    split_empty_clusters,
)
from shardann.metric import normalize_rows, uses_ip


def _plain_lloyd(x, k, niter, seed, metric):
    """The Lloyd loop of KMeans without bounds: every row through
    nearest_centroids at every iteration. Returns centroids, objectives and the
    labels of each iteration."""
    ip = uses_ip(metric)
    rng = np.random.default_rng(seed)
    if metric == "cosine":
        x = normalize_rows(x.copy())
    C = x[rng.choice(x.shape[0], k, replace=False)].copy()
    if metric == "cosine":
        normalize_rows(C)
    xsq = 0.0 if ip else float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    objs, history = [], []
    for _ in range(niter):
        labels, keys = nearest_centroids(x, C, ip=ip)
        history.append(labels.copy())
        objs.append(float(keys.sum(dtype=np.float64)) + xsq)
        sums, counts = centroid_sums(x, labels, k)
        nz = counts > 0
        C[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
        split_empty_clusters(C, counts, rng)
        if metric == "cosine":
            normalize_rows(C)
    return C, objs, history


def _blobs(n, d, centers, spread, offset, seed):
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centers, d)) * 4
    x = mu[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, d))
    return (x + offset).astype(np.float32)


DATASETS = {
    # well separated blobs: most rows settle after a few iterations
    "blobs": lambda: _blobs(3000, 32, 40, 1.0, 0.0, 1),
    # one Gaussian: no structure, many rows near a boundary at every iteration
    "gaussian": lambda: np.random.default_rng(2).standard_normal((2500, 48)).astype(
        np.float32),
    # far from the origin: BLAS keys lose digits to |x|^2, the margins are wide
    "offset": lambda: _blobs(2000, 24, 30, 1.0, 300.0, 3),
    # duplicated rows and coordinates on a coarse grid: exact ties between centroids
    "ties": lambda: np.repeat(np.random.default_rng(4).integers(-3, 4, (600, 20)), 3,
                              axis=0).astype(np.float32),
    # more centroids than natural clusters, wide rows (the coarse quantizer's case)
    "wide": lambda: _blobs(4000, 130, 20, 2.0, 1.0, 5),
}


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bounded_lloyd_equals_plain_lloyd(name, metric):
    x = DATASETS[name]()
    k, niter, seed = 64, 12, 7
    km = shardann.KMeans(x.shape[1], k, niter=niter, seed=seed, metric=metric).train(x)
    C, objs, _ = _plain_lloyd(x, k, niter, seed, metric)
    np.testing.assert_array_equal(km.centroids, C)
    # the objectives add exact float64 distances where plain Lloyd adds BLAS
    # keys: equal within the keys' rounding
    xs = normalize_rows(x.copy()) if metric == "cosine" else x
    slack = float(rounding_margin(xs, C, uses_ip(metric)).sum(dtype=np.float64))
    np.testing.assert_allclose(km.obj, objs, rtol=1e-6, atol=slack)


@pytest.mark.parametrize("name", ["blobs", "offset", "wide"])
def test_bounded_assignment_labels_and_skips(name):
    """The labels of every iteration equal nearest_centroids' over the whole
    set, and the bounds spare most rows once the centroids settle."""
    x = DATASETS[name]()
    C, _, history = _plain_lloyd(x, 50, 10, 3, "l2")
    rng = np.random.default_rng(3)
    C = x[rng.choice(x.shape[0], 50, replace=False)].copy()
    bounded = _BoundedAssignment(x, False, C.shape[0])
    recomputed = []
    for it in range(10):
        labels, obj = bounded.assign(C)
        np.testing.assert_array_equal(labels, history[it])
        full, keys = nearest_centroids(x, C)
        np.testing.assert_array_equal(labels, full)
        sse = float(((x.astype(np.float64) - C[labels]) ** 2).sum())
        # recomputed rows add BLAS keys: exact within their rounding
        assert obj == pytest.approx(sse, rel=1e-6,
                                    abs=float(rounding_margin(x, C, False).sum()))
        recomputed.append(bounded.recomputed / (x.shape[0] * bounded.groups))
        sums, counts = centroid_sums(x, labels, 50)
        nz = counts > 0
        C[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
        split_empty_clusters(C, counts, rng)
    assert recomputed[0] == 1.0
    if name != "offset":  # there the margins keep many groups in
        assert recomputed[-1] < 0.3, recomputed


def test_bounded_assignment_single_centroid():
    x = np.random.default_rng(0).standard_normal((300, 20)).astype(np.float32)
    for ip in (False, True):
        bounded = _BoundedAssignment(x, ip, 1)
        C = x[:1].copy()
        for _ in range(3):
            labels, _ = bounded.assign(C)
            assert (labels == 0).all()
            C = C + np.float32(0.5)
        assert bounded.recomputed == 0


def test_bounded_assignment_catches_moved_centroids():
    """A centroid moved right next to rows of another cluster takes them: the
    bounds must not hide the change."""
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.standard_normal((500, 40)) - 5,
                        rng.standard_normal((500, 40)) + 5]).astype(np.float32)
    C = np.stack([x[:500].mean(0), x[500:].mean(0), x[:500].mean(0) + 20]).astype(np.float32)
    bounded = _BoundedAssignment(x, False, C.shape[0])
    labels, _ = bounded.assign(C)
    assert set(np.unique(labels)) == {0, 1}
    C[2] = x[0]  # now the nearest of rows around x[0]
    labels, _ = bounded.assign(C)
    np.testing.assert_array_equal(labels, nearest_centroids(x, C)[0])
    assert labels[0] == 2
