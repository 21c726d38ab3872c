"""Principal-component projection: the dimension reduction an index can put in
front of its coarse quantizer and product quantizer (FAISS's ``PCAMatrix``
without whitening).

``apply(x)`` is the linear map ``x @ P`` onto the ``d_out`` directions of
largest variance of the training sample. It has no translation: squared L2
distances and inner products between projected rows are those of the original
rows restricted to the kept directions (for inner products, up to a term that
is the same for every database row of a query, so rankings are unaffected by
the data's mean). ``reverse`` maps back, adding the part of the mean the
projection drops, so ``reverse(apply(x))`` is the best rank-``d_out``
approximation of ``x`` around the mean.
"""

import logging

import numpy as np

from ._kernels.transform import rotate_rows
from ._matrix_io import read_matrix, write_matrix
from ._validation import as_vectors, check_int
from .errors import NotTrainedError

logger = logging.getLogger(__name__)


class PCA:
    """Project d-dimensional vectors onto their ``d_out`` principal directions.

    Parameters
    ----------
    d : int, input dimension.
    d_out : int in 1..d, output dimension.
    seed : int, seeds the training subsample.
    max_train_points : subsample the training set to this many vectors.

    Attributes
    ----------
    matrix : float32 (d, d_out) after ``train``, orthonormal columns in
        decreasing order of variance until :meth:`reorder` (each column's
        largest-magnitude entry is positive, so a training run gives one answer).
    mean : float32 (d,), the training sample's mean.
    explained : float (0..1), the share of the training sample's variance the
        kept directions hold.

    Examples
    --------
    >>> pca = PCA(384, 192).train(sample)        # doctest: +SKIP
    >>> y = pca.apply(x)          # float32 (n, 192)  doctest: +SKIP
    >>> x_approx = pca.reverse(y)  # float32 (n, 384)  doctest: +SKIP
    """

    def __init__(self, d, d_out, *, seed=0, max_train_points=65536):
        self.d = check_int("d", d, low=1)
        self.d_out = check_int("d_out", d_out, low=1, high=self.d)
        self.seed = check_int("seed", seed)
        self.max_train_points = check_int("max_train_points", max_train_points, low=1)
        self.matrix = None
        self.mean = None
        self.explained = None
        self._rotation = None  # an orthogonal (d_out, d_out) rotation after the projection
        self._map = None  # (matrix, its transpose, the mean's dropped part), see set_rotation

    @property
    def is_trained(self):
        return self.matrix is not None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_map"] = None  # rebuilt on demand
        return state

    def train(self, x):
        """Learn the directions from float32 (n, d) ``x`` (n >= 2). Returns ``self``."""
        x = as_vectors(x, self.d, allow_empty=False)
        if x.shape[0] < 2:
            raise ValueError(f"PCA training needs at least 2 vectors; got {x.shape[0]}")
        if x.shape[0] > self.max_train_points:
            rng = np.random.default_rng(self.seed)
            x = x[np.sort(rng.choice(x.shape[0], self.max_train_points, replace=False))]
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=0)
        x64 -= mean
        cov = x64.T @ x64 / x64.shape[0]
        vals, vecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(-vals, kind="stable")[: self.d_out]
        vecs = vecs[:, order]
        flip = vecs[np.argmax(np.abs(vecs), axis=0), np.arange(self.d_out)] < 0
        vecs[:, flip] *= -1
        total = float(vals.clip(min=0).sum())
        self.explained = float(vals[order].clip(min=0).sum()) / total if total > 0 else 1.0
        self.set_arrays(vecs, mean)
        logger.info("PCA %d -> %d keeps %.1f%% of the variance", self.d, self.d_out,
                    100 * self.explained)
        return self

    def set_arrays(self, matrix, mean):
        """Set trained arrays: float (d, d_out) ``matrix`` and (d,) ``mean``."""
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        mean = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        if matrix.shape != (self.d, self.d_out) or mean.shape != (self.d,):
            raise ValueError(f"PCA arrays must be ({self.d}, {self.d_out}) and ({self.d},); "
                             f"got {matrix.shape} and {mean.shape}")
        self.matrix, self.mean = matrix, mean
        self._map = None
        return self

    def reorder(self, order):
        """Permute the output dimensions: column ``i`` of the matrix becomes
        column ``order[i]`` of the old one (int (d_out,), a permutation; see
        :func:`balanced_order`). Each projected value stays bit-identical, moved."""
        order = np.asarray(order)
        if order.shape != (self.d_out,) or not np.array_equal(np.sort(order),
                                                             np.arange(self.d_out)):
            raise ValueError(f"order must be a permutation of 0..{self.d_out - 1}")
        if not self.is_trained:
            raise NotTrainedError("PCA.reorder called before train")
        self.set_arrays(self.matrix[:, order], self.mean)

    def set_rotation(self, rotation):
        """Follow the projection by an orthogonal float32 (d_out, d_out) rotation
        (an OPQ rotation learnt on projected rows), or None to stop.

        ``apply`` then maps ``x`` to ``x @ (matrix @ rotation)``, the product
        formed once with each element summed in index order, so every process
        that loads the same arrays maps a row to the same floats.
        """
        if rotation is not None:
            rotation = np.ascontiguousarray(rotation, dtype=np.float32)
            if rotation.shape != (self.d_out, self.d_out):
                raise ValueError(f"rotation must be ({self.d_out}, {self.d_out}); got "
                                 f"{rotation.shape}")
        self._rotation = rotation
        self._map = None

    def _mapping(self):
        if not self.is_trained:
            raise NotTrainedError("PCA used before train")
        if self._map is None:
            m = self.matrix
            if self._rotation is not None:
                m = np.empty_like(self.matrix)
                rotate_rows(self.matrix, self._rotation, m)
            mt = np.ascontiguousarray(m.T)
            mean = self.mean.reshape(1, -1)
            proj = np.empty((1, self.d_out), np.float32)
            rotate_rows(mean, m, proj)
            back = np.empty_like(mean)
            rotate_rows(proj, mt, back)
            self._map = (m, mt, (mean - back).reshape(-1))
        return self._map

    def apply(self, x):
        """Project float32 (n, d) rows: float32 (n, d_out), each row the same in
        any batch (see :mod:`shardann._kernels.transform`)."""
        m = self._mapping()[0]
        x = as_vectors(x, self.d)
        out = np.empty((x.shape[0], self.d_out), np.float32)
        rotate_rows(x, m, out)
        return out

    def reverse(self, y):
        """Map float32 (n, d_out) projected rows back: float32 (n, d), ``y`` on the
        kept directions plus the mean's part on the dropped ones."""
        _, mt, rest = self._mapping()
        y = as_vectors(y, self.d_out, "y")
        out = np.empty((y.shape[0], self.d), np.float32)
        rotate_rows(y, mt, out)
        out += rest
        return out

    def save(self, path):
        """Write the trained arrays to a Parquet file: ``d`` rows, the matrix's
        ``d_out`` columns then the mean (see :mod:`shardann._matrix_io`)."""
        if not self.is_trained:
            raise NotTrainedError("PCA.save called before train")
        write_matrix(path, np.hstack([self.matrix, self.mean[:, None]]),
                     {"kind": "pca", "d": self.d, "d_out": self.d_out, "seed": self.seed,
                      "explained": self.explained})

    @classmethod
    def load(cls, path):
        """Read a PCA written by :meth:`save`."""
        m, p = read_matrix(path)
        pca = cls(p["d"], p["d_out"], seed=p["seed"])
        pca.set_arrays(m[:, :-1], m[:, -1])
        pca.explained = p.get("explained")
        return pca


def balanced_order(variances, groups):
    """Order dimensions into ``groups`` consecutive blocks of equal size whose
    products of variances are about equal: OPQ's eigenvalue allocation (Ge et
    al., 2013), so that no sub-quantizer of a PQ that follows a PCA gets only
    the directions of largest variance (and most of the error).

    Parameters
    ----------
    variances : float (n,), n a multiple of ``groups``.
    groups : int >= 1.

    Returns
    -------
    int64 (n,): the dimensions, block after block. The largest variances go
    one to a block, then each next one to the open block whose product is the
    smallest (ties by block number).
    """
    v = np.asarray(variances, np.float64)
    groups = check_int("groups", groups, low=1)
    if v.ndim != 1 or v.size % groups:
        raise ValueError(f"variances must be (n,) with n a multiple of groups={groups}; got "
                         f"shape {v.shape}")
    size = v.size // groups
    logs = np.log(np.maximum(v, np.finfo(np.float64).tiny))
    members = [[] for _ in range(groups)]
    total = np.zeros(groups)
    for j in np.argsort(-v, kind="stable"):
        g = min((b for b in range(groups) if len(members[b]) < size),
                key=lambda b: (len(members[b]) > 0, total[b], b))
        members[g].append(int(j))
        total[g] += logs[j]
    return np.array([j for m in members for j in sorted(m)], np.int64)
