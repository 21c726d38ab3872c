"""k-means clustering (Lloyd and mini-batch) on the Numba kernels."""

import logging
import time

import numpy as np

from ._kernels.distances import nearest_exact
from ._kernels.kmeans import argmin_from_dots, argmin_l2_lowdim, centroid_sums
from ._matrix_io import read_matrix, write_matrix
from ._validation import as_vectors, check_choice, check_int
from .errors import NotTrainedError
from .metric import check_metric, normalize_rows, uses_ip

logger = logging.getLogger(__name__)

# Below this dimension a direct loop beats a BLAS matrix product.
_DIRECT_MAX_DIM = 16
#: bytes of the (k, rows) block of dot products that the argmin pass reads back: about
#: one core's L2 cache
_DOTS_BLOCK_BYTES = 1 << 20
_SPLIT_EPS = 1.0 / 1024.0


def _block_rows(k, d):
    """Rows of x per BLAS product in :func:`nearest_centroids`.

    Small enough that the (k, rows) dot products stay in L2 cache for the argmin
    pass (k=1024, d=128: 256 rows assign 10-25% faster than 2048 here), but at
    least 2d rows, since for wide vectors the product dominates and BLAS needs
    the width (d=768: 2048 rows beat 256 by 20%). A power of two in 64..4096.
    """
    rows = max(_DOTS_BLOCK_BYTES // (4 * max(k, 1)), 2 * d, 64)
    return min(4096, 1 << (int(rows) - 1).bit_length())


def assigns_without_blas(d, ip=False):
    """Whether :func:`nearest_centroids` takes the direct (single-threaded, GIL-free)
    kernel for dimension ``d``, rather than BLAS products."""
    return not ip and d <= _DIRECT_MAX_DIM


def largest_norm(centroids):
    """The largest row norm of float32 (n, d) ``centroids`` (a float), in float64:
    what :func:`rounding_margin` needs of them; callers that keep their
    centroids compute it once."""
    return float(np.sqrt(np.einsum("ij,ij->i", centroids, centroids, dtype=np.float64).max(
        initial=0.0)))


def rounding_margin(x, centroids, ip, cmax=None):
    """float32 (n,): how far BLAS's rounding can move the key of row ``x[i]`` to
    any centroid, plus how far :func:`~shardann._kernels.distances.exact_key`'s
    can, doubled; two centroids whose BLAS keys are more than this apart rank
    the same by exact keys.

    A dot product of ``d`` terms in float32, summed in any order, is off by at
    most ``(d + 4) * 2**-24 * |x| |c|`` (plus the norms and the final sum for
    L2); the bound uses the largest centroid norm and a factor 2 to spare.
    ``cmax``: :func:`largest_norm` of ``centroids`` when the caller has it
    (computing it reads every centroid: half a single query's search at 1024
    lists x d=128).
    """
    d = x.shape[1]
    xn = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    cmax = largest_norm(centroids) if cmax is None else cmax
    gamma = 8.0 * (d + 4) * 2.0 ** -24
    size = xn * cmax if ip else (xn + cmax) ** 2
    return (gamma * size).astype(np.float32)


def nearest_centroids(x, centroids, *, ip=False, cnorms=None):
    """Nearest centroid of each row.

    The same row gets the same label in any batch: BLAS rounds a row's dot
    products differently by the shape of the product and the row's place in
    it, so rows whose two best centroids are closer than that rounding are
    decided by exact keys (ties by the smaller centroid number).

    Parameters
    ----------
    x : float32 (n, d). centroids : float32 (k, d).
    ip : rank by largest inner product instead of smallest L2.
    cnorms : float32 (k,) squared centroid norms, computed when omitted.

    Returns
    -------
    labels : int64 (n,), keys : float32 (n,) — ``|c|^2 - 2 x.c`` for L2 (add
    ``|x|^2`` for the squared distance) or ``-x.c`` for ip, as BLAS computed
    them (for objectives; the labels are what must not vary).
    """
    n = x.shape[0]
    labels = np.empty(n, np.int64)
    keys = np.empty(n, np.float32)
    if cnorms is None:
        cnorms = np.einsum("ij,ij->i", centroids, centroids).astype(np.float32)
    if assigns_without_blas(x.shape[1], ip):
        # a fixed sequence of operations per row: the same label in any batch
        argmin_l2_lowdim(x, 0, centroids, cnorms, labels, keys)
        return labels, keys
    second = np.empty(n, np.float32)
    step = _block_rows(centroids.shape[0], x.shape[1])
    for s in range(0, n, step):
        e = min(n, s + step)
        argmin_from_dots(centroids @ x[s:e].T, cnorms, ip, labels[s:e], keys[s:e], second[s:e])
    near = np.flatnonzero(second - keys <= rounding_margin(x, centroids, ip))
    if near.size:
        nearest_exact(x, near, centroids, ip, labels)
    return labels, keys


def split_empty_clusters(centroids, counts, rng):
    """Re-seed empty clusters by splitting the largest ones (in place).

    Each empty centroid becomes a slightly perturbed copy of the currently
    largest cluster's centroid, which is nudged the other way; the pair then
    shares that cluster's points at the next assignment. Returns the number of
    splits.
    """
    counts = counts.copy()
    empty = np.flatnonzero(counts == 0)
    d = centroids.shape[1]
    sign = np.where(np.arange(d) % 2 == 0, 1.0, -1.0).astype(np.float32)
    for ci in empty:
        cj = int(np.argmax(counts))
        if counts[cj] < 2:
            break
        # a small random jitter keeps twins apart even for zero centroids
        jitter = rng.standard_normal(d).astype(np.float32) * _SPLIT_EPS * 1e-3
        base = centroids[cj].copy()
        centroids[ci] = base * (1 + sign * _SPLIT_EPS) + jitter
        centroids[cj] = base * (1 - sign * _SPLIT_EPS) - jitter
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
    return len(empty)


class KMeans:
    """k-means clustering of float32 vectors.

    Parameters
    ----------
    d : int, vector dimension.
    k : int, number of centroids.
    niter : int, Lloyd iterations (or mini-batch steps when ``minibatch``).
    seed : int, seeds every random choice (sampling, init, splitting).
    metric : "l2" (default), "ip" or "cosine". Cosine normalises the data and
        keeps centroids on the unit sphere (spherical k-means).
    spherical : bool, normalise centroids after each update (implied by cosine).
    init : "random" (k distinct training points) or "k-means++".
    max_points_per_centroid : int, subsample the training set to
        ``k * max_points_per_centroid`` points (0 = never).
    min_points_per_centroid : int, warn below ``k * min_points_per_centroid``.
    minibatch : bool, use mini-batch k-means (Sculley 2010) — for very large
        training sets; ``batch_size`` points per step.
    verbose : bool, log the objective of every iteration at INFO level.

    Attributes
    ----------
    centroids : float32 (k, d) after ``train``.
    obj : list of float, the objective (sum of keys) after each iteration.

    Examples
    --------
    >>> km = KMeans(d=2, k=2, niter=10, seed=0).train(x)   # doctest: +SKIP
    >>> labels = km.assign(x)                               # doctest: +SKIP
    """

    def __init__(self, d, k, *, niter=25, seed=0, metric="l2", spherical=False,
                 init="random", max_points_per_centroid=256, min_points_per_centroid=39,
                 minibatch=False, batch_size=None, verbose=False):
        self.d = check_int("d", d, low=1)
        self.k = check_int("k", k, low=1)
        self.niter = check_int("niter", niter, low=0)
        self.seed = check_int("seed", seed)
        self.metric = check_metric(metric)
        self.spherical = bool(spherical) or self.metric == "cosine"
        self.init = check_choice("init", init, ("random", "k-means++"))
        self.max_points_per_centroid = check_int(
            "max_points_per_centroid", max_points_per_centroid, low=0)
        self.min_points_per_centroid = check_int(
            "min_points_per_centroid", min_points_per_centroid, low=0)
        self.minibatch = bool(minibatch)
        self.batch_size = (check_int("batch_size", batch_size, low=1)
                           if batch_size is not None else max(1024, 4 * self.k))
        self.verbose = bool(verbose)
        self.centroids = None
        self.obj = []

    @property
    def is_trained(self):
        return self.centroids is not None

    def _log(self, msg, *args):
        logger.log(logging.INFO if self.verbose else logging.DEBUG, msg, *args)

    def train(self, x, *, init_centroids=None):
        """Cluster ``x`` float32 (n, d), n >= k. Returns ``self``.

        ``init_centroids`` float32 (k, d) starts from given centroids instead.
        """
        x = as_vectors(x, self.d, allow_empty=False)
        n = x.shape[0]
        if n < self.k:
            raise ValueError(
                f"k-means needs at least k={self.k} training points; got {n}")
        rng = np.random.default_rng(self.seed)
        if self.max_points_per_centroid and n > self.k * self.max_points_per_centroid:
            m = self.k * self.max_points_per_centroid
            self._log("sampling %d of %d training points", m, n)
            x = x[np.sort(rng.choice(n, m, replace=False))]
            n = m
        elif n < self.k * self.min_points_per_centroid:
            logger.warning("k-means: %d training points for %d centroids; at least %d "
                           "(%d per centroid) give more stable centroids",
                           n, self.k, self.k * self.min_points_per_centroid,
                           self.min_points_per_centroid)
        if self.metric == "cosine":
            x = normalize_rows(x.copy())
        if init_centroids is not None:
            C = as_vectors(init_centroids, self.d, "init_centroids").copy()
            if C.shape[0] != self.k:
                raise ValueError(f"init_centroids must have {self.k} rows; got {C.shape[0]}")
        elif self.init == "k-means++":
            C = self._kmeanspp(x, rng)
        else:
            C = x[rng.choice(n, self.k, replace=False)].copy()
        if self.spherical:
            normalize_rows(C)
        t0 = time.perf_counter()
        self.obj = []
        if self.minibatch:
            C = self._train_minibatch(x, C, rng, t0)
        else:
            C = self._train_lloyd(x, C, rng, t0)
        self.centroids = C
        return self

    def _train_lloyd(self, x, C, rng, t0):
        ip = uses_ip(self.metric)
        xnorm_sum = 0.0 if ip else float(np.einsum("ij,ij->", x, x, dtype=np.float64))
        for it in range(self.niter):
            labels, keys = nearest_centroids(x, C, ip=ip)
            self.obj.append(float(keys.sum(dtype=np.float64)) + xnorm_sum)
            sums, counts = centroid_sums(x, labels, self.k)
            nz = counts > 0
            C[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
            nsplit = split_empty_clusters(C, counts, rng)
            if self.spherical:
                normalize_rows(C)
            self._log("k-means iter %d/%d: objective %.6g, %d empty clusters split, %.2fs",
                      it + 1, self.niter, self.obj[-1], nsplit, time.perf_counter() - t0)
        return C

    def _train_minibatch(self, x, C, rng, t0):
        ip = uses_ip(self.metric)
        n = x.shape[0]
        totals = np.zeros(self.k, np.int64)
        for it in range(self.niter):
            batch = x[rng.integers(0, n, min(self.batch_size, n))]
            labels, keys = nearest_centroids(batch, C, ip=ip)
            self.obj.append(float(keys.sum(dtype=np.float64)))
            sums, counts = centroid_sums(batch, labels, self.k)
            nz = counts > 0
            totals += counts
            lr = (counts[nz] / totals[nz])[:, None]
            C[nz] = ((1 - lr) * C[nz] + lr * (sums[nz] / counts[nz, None])).astype(np.float32)
            if self.spherical:
                normalize_rows(C)
            self._log("mini-batch k-means step %d/%d: batch objective %.6g, %.2fs",
                      it + 1, self.niter, self.obj[-1], time.perf_counter() - t0)
        return C

    def _kmeanspp(self, x, rng):
        n = x.shape[0]
        C = np.empty((self.k, self.d), np.float32)
        C[0] = x[rng.integers(n)]
        best = ((x - C[0]) ** 2).sum(axis=1, dtype=np.float64)
        for i in range(1, self.k):
            total = best.sum()
            j = rng.integers(n) if total <= 0 else rng.choice(n, p=best / total)
            C[i] = x[j]
            np.minimum(best, ((x - C[i]) ** 2).sum(axis=1, dtype=np.float64), out=best)
        return C

    def assign(self, x, *, return_distances=False):
        """Nearest centroid of each row of float32 (n, d) ``x``.

        Returns int64 (n,) labels, and with ``return_distances`` also float32
        (n,) distances (squared L2, or the similarity for ip/cosine).
        """
        if not self.is_trained:
            raise NotTrainedError("KMeans.assign called before train")
        x = as_vectors(x, self.d)
        if self.metric == "cosine":
            x = normalize_rows(x.copy())
        labels, keys = nearest_centroids(x, self.centroids, ip=uses_ip(self.metric))
        if not return_distances:
            return labels
        if uses_ip(self.metric):
            return labels, -keys
        return labels, np.maximum(keys + np.einsum("ij,ij->i", x, x), 0).astype(np.float32)

    def save(self, path):
        """Write the centroids and parameters to a Parquet file."""
        if not self.is_trained:
            raise NotTrainedError("KMeans.save called before train")
        write_matrix(path, self.centroids, {
            "kind": "kmeans", "d": self.d, "k": self.k, "metric": self.metric,
            "spherical": self.spherical, "niter": self.niter, "seed": self.seed})

    @classmethod
    def load(cls, path):
        C, p = read_matrix(path)
        km = cls(p["d"], p["k"], niter=p["niter"], seed=p["seed"], metric=p["metric"],
                 spherical=p["spherical"])
        km.centroids = C
        return km
