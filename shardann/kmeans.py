"""k-means clustering (Lloyd and mini-batch) on the Numba kernels."""

import logging
import time

import numpy as np

from ._kernels.distances import nearest_exact
from ._kernels.kmeans import (
    BOUND_SLACK,
    argmin_from_dots,
    argmin_l2_lowdim,
    centroid_sums,
    finish_rows,
    gather_rows,
    group_bounds,
    merge_group_keys,
)
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


def _margin_gamma(d):
    """Relative rounding bound of :func:`rounding_margin` for dimension ``d``."""
    return 8.0 * (d + 4) * 2.0 ** -24


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
    size = xn * cmax if ip else (xn + cmax) ** 2
    return (_margin_gamma(d) * size).astype(np.float32)


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
    if cnorms is None:
        cnorms = np.einsum("ij,ij->i", centroids, centroids).astype(np.float32)
    if assigns_without_blas(x.shape[1], ip):
        labels = np.empty(x.shape[0], np.int64)
        keys = np.empty(x.shape[0], np.float32)
        # a fixed sequence of operations per row: the same label in any batch
        argmin_l2_lowdim(x, 0, centroids, cnorms, labels, keys)
        return labels, keys
    labels, keys, _, _, _ = _nearest_blas(x, centroids, ip, cnorms)
    return labels, keys


def _nearest_blas(x, centroids, ip, cnorms):
    """:func:`nearest_centroids` by BLAS products; also returns the second
    smallest BLAS key float32 (n,), the rounding margin float32 (n,) and the rows
    decided by exact keys int64 (m,) (whose label need not be the BLAS argmin)."""
    n = x.shape[0]
    labels = np.empty(n, np.int64)
    keys = np.empty(n, np.float32)
    second = np.empty(n, np.float32)
    step = _block_rows(centroids.shape[0], x.shape[1])
    for s in range(0, n, step):
        e = min(n, s + step)
        argmin_from_dots(centroids @ x[s:e].T, cnorms, ip, labels[s:e], keys[s:e], second[s:e])
    margin = rounding_margin(x, centroids, ip)
    near = np.flatnonzero(second - keys <= margin)
    if near.size:
        nearest_exact(x, near, centroids, ip, labels)
    return labels, keys, second, margin, near


#: centroids per group of the bounded assignment's lower bounds: small enough
#: that most groups are ruled out per row, large enough for BLAS to run well
_GROUP_SIZE = 32
#: memory for the bounded assignment's per-row, per-group lower bounds
_BOUNDS_BYTES = 1 << 28
#: rows per block of the bounded assignment: each group's product takes the
#: block whole when it needs most of it, else gathers the rows that need it
_SPARSE_BLOCK = 4096


class _BoundedAssignment:
    """The assignments of exact Lloyd iterations over one training set, with
    per-group lower bounds (Yinyang k-means, Ding et al., ICML 2015): after
    the first, each row computes its keys only to the groups of centroids
    its bounds cannot rule out (and its own centroid's group), by one BLAS
    product per group over the rows that need it.

    :meth:`assign` returns the labels :func:`nearest_centroids` would return
    for the whole set, which are the argmin of the exact keys (first on ties):
    rows whose BLAS keys are more than :func:`rounding_margin` apart are
    ranked the same by exact keys, the others are decided by them. A group is
    skipped only when its lower bound exceeds the row's exact float64 key to
    its own centroid by more than that margin; then by the margin's own
    argument no centroid of the group has an exact key below the own one.
    Among the computed groups the same rule as :func:`nearest_centroids`
    picks the label (BLAS keys from any product shape round within the
    margin). The bounds round the safe way: one from BLAS keys takes off the
    full margin (more than their rounding), each float64 step loses a
    relative :data:`BOUND_SLACK` (far above its rounding).
    """

    def __init__(self, x, ip, k):
        self.x, self.ip = x, ip
        n = x.shape[0]
        self.xnorms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        self.groups = min(-(-k // _GROUP_SIZE), max(1, _BOUNDS_BYTES // (8 * n)))
        self.group_of = self.members = None
        self.labels = np.zeros(n, np.int64)
        self.lower = None
        self.previous = None
        self.recomputed = 0  # (row, group) pairs through BLAS at the last assign

    def _group(self, centroids):
        """Groups of nearby centroids (a small k-means of the centroids, as
        Yinyang k-means does): a row far from a group is far from all of it,
        so the group's bound holds while its centroids move."""
        k = centroids.shape[0]
        if self.groups > 1:
            km = KMeans(centroids.shape[1], self.groups, niter=5, seed=0, metric="l2",
                        max_points_per_centroid=0, min_points_per_centroid=0)
            _, group_of = np.unique(km.train(centroids).assign(centroids), return_inverse=True)
        else:
            group_of = np.zeros(k, np.int64)
        self.group_of = group_of.astype(np.int64)
        self.members = [np.flatnonzero(self.group_of == g)
                        for g in range(int(self.group_of.max()) + 1)]
        self.groups = len(self.members)
        self.lower = np.empty((self.x.shape[0], self.groups), np.float64)

    def assign(self, centroids):
        """Labels int64 (n,) of the rows and the objective (the sum of the
        squared distances, or of the keys ``-x.c`` for ip) under float32 (k, d)
        ``centroids``."""
        x, ip = self.x, self.ip
        n, d = x.shape
        if self.group_of is None:
            self._group(centroids)
        cnorms = np.einsum("ij,ij->i", centroids, centroids).astype(np.float32)
        cmax = float(np.sqrt(cnorms.astype(np.float64).max())) * (1 + BOUND_SLACK)
        gamma = _margin_gamma(d)
        margin = gamma * (self.xnorms * cmax if ip else (self.xnorms + cmax) ** 2)
        best = np.full(n, np.inf, np.float32)
        second = np.full(n, np.inf, np.float32)
        best_second = np.full(n, np.inf, np.float32)
        arg = np.zeros(n, np.int64)
        args = (ip, self.xnorms, margin, best, arg, second, best_second, self.lower)
        parts = [(m, centroids[m], cnorms[m]) for m in self.members]
        own = need = None
        if self.previous is not None:
            drift = np.sqrt(((centroids.astype(np.float64) - self.previous) ** 2).sum(axis=1))
            gdrift = np.zeros(self.groups)
            np.maximum.at(gdrift, self.group_of, drift)
            own = np.empty(n, np.float64)
            need = np.empty((n, self.groups), np.bool_)
            group_bounds(x, self.labels, centroids, self.group_of, gdrift * (1 + BOUND_SLACK),
                         self.lower, self.xnorms, gamma, cmax, ip, own, need)
        step = _block_rows(centroids.shape[0], d) if need is None else _SPARSE_BLOCK
        buf = np.empty((step, d), np.float32)
        self.recomputed = 0
        for s in range(0, n, step):
            e = min(n, s + step)
            block = np.arange(e - s)
            if need is None:  # every pair: one product for the block
                dots = centroids @ x[s:e].T
                for g, (m, _, cn) in enumerate(parts):
                    merge_group_keys(dots[m], block, cn, m, s + block, g, *args)
                self.recomputed += (e - s) * self.groups
                continue
            for g, (m, cg, cn) in enumerate(parts):
                cols = np.flatnonzero(need[s:e, g])
                self.recomputed += cols.size
                if 2 * cols.size > e - s:  # most of the block: no gather
                    merge_group_keys(cg @ x[s:e].T, cols, cn, m, s + cols, g, *args)
                elif cols.size:
                    merge_group_keys(cg @ gather_rows(x, s + cols, buf).T, block[:cols.size],
                                     cn, m, s + cols, g, *args)
        rows = np.arange(n) if need is None else np.flatnonzero(need.any(axis=1))
        near = finish_rows(rows, best, arg, second, best_second, self.xnorms, margin, ip,
                           self.group_of, self.labels, self.lower)
        if near.size:
            nearest_exact(x, near, centroids, ip, self.labels)
        keys = best[rows].astype(np.float64)
        if not ip:
            keys += self.xnorms[rows] ** 2
        total = float(keys.sum())
        if own is not None:
            kept = np.ones(n, np.bool_)
            kept[rows] = False
            total += float(own.sum(where=kept))
        self.previous = centroids.astype(np.float64)
        return self.labels, total


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
        # bounds need the BLAS path's second keys; the direct kernel is cheap anyway
        bounded = None if assigns_without_blas(self.d, ip) else _BoundedAssignment(x, ip, self.k)
        xnorm_sum = 0.0 if ip or bounded else float(np.einsum("ij,ij->", x, x,
                                                              dtype=np.float64))
        for it in range(self.niter):
            if bounded is None:
                labels, keys = nearest_centroids(x, C, ip=ip)
                self.obj.append(float(keys.sum(dtype=np.float64)) + xnorm_sum)
            else:
                labels, obj = bounded.assign(C)
                self.obj.append(obj)
            sums, counts = centroid_sums(x, labels, self.k)
            nz = counts > 0
            C[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
            nsplit = split_empty_clusters(C, counts, rng)
            if self.spherical:
                normalize_rows(C)
            self._log("k-means iter %d/%d: objective %.6g, %.3g of the keys computed, %d "
                      "empty clusters split, %.2fs", it + 1, self.niter, self.obj[-1],
                      1.0 if bounded is None else bounded.recomputed / (x.shape[0] *
                                                                         bounded.groups),
                      nsplit, time.perf_counter() - t0)
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
