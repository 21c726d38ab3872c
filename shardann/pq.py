"""Product quantization (PQ) and the OPQ rotation.

A :class:`ProductQuantizer` splits a d-dimensional vector into ``M``
sub-vectors of ``d // M`` dimensions and replaces each with the index of its
nearest of ``2**nbits`` sub-centroids, giving codes of ``ceil(M * nbits / 8)``
bytes. Codes are packed least-significant-bit first (see
:mod:`shardann._kernels.pq`).
"""

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ._kernels.pq import (
    pack_codes,
    pq_assign,
    pq_assign_residual,
    pq_decode,
    pq_dot_tables_serial,
    pq_l2_tables,
    unpack_codes,
)
from ._kernels.transform import rotate_rows
from ._matrix_io import read_matrix, write_matrix
from ._validation import as_vectors, check_int
from .errors import NotTrainedError
from .kmeans import KMeans, assigns_without_blas

logger = logging.getLogger(__name__)

_ENCODE_BLOCK = 65536


class ProductQuantizer:
    """Train sub-quantizer codebooks, encode vectors to codes and decode them.

    Parameters
    ----------
    d : int, vector dimension; must be a multiple of ``M``.
    M : int, number of sub-quantizers.
    nbits : int in 1..8, bits per sub-code (``2**nbits`` centroids each).
    niter : int, k-means iterations per sub-quantizer.
    seed : int.
    max_points_per_centroid : int, training sample cap per sub-centroid.

    Attributes
    ----------
    codebooks : float32 (M, 2**nbits, d // M) after ``train``.
    code_size : int, bytes per code.

    Examples
    --------
    >>> pq = ProductQuantizer(d=128, M=16, nbits=8).train(sample)   # doctest: +SKIP
    >>> codes = pq.compute_codes(batch)       # uint8 (n, 16)         doctest: +SKIP
    >>> approx = pq.decode(codes)             # float32 (n, 128)      doctest: +SKIP
    """

    def __init__(self, d, M, nbits=8, *, niter=25, seed=0, max_points_per_centroid=256,
                 verbose=False):
        self.d = check_int("d", d, low=1)
        self.M = check_int("M", M, low=1)
        self.nbits = check_int("nbits", nbits, low=1, high=8)
        if self.d % self.M:
            raise ValueError(f"d must be a multiple of M; got d={self.d}, M={self.M}")
        self.niter = check_int("niter", niter, low=0)
        self.seed = check_int("seed", seed)
        self.max_points_per_centroid = check_int(
            "max_points_per_centroid", max_points_per_centroid, low=0)
        self.verbose = bool(verbose)
        self.codebooks = None
        self._derived = None

    # -- properties --------------------------------------------------------
    @property
    def dsub(self):
        return self.d // self.M

    @property
    def ksub(self):
        return 1 << self.nbits

    @property
    def code_size(self):
        return math.ceil(self.M * self.nbits / 8)

    @property
    def is_trained(self):
        return self.codebooks is not None

    def _check_trained(self, what):
        if not self.is_trained:
            raise NotTrainedError(f"ProductQuantizer.{what} called before train")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_derived"] = None  # codeword norms are rebuilt on demand
        return state

    def _codeword_norms(self):
        if self._derived is None:
            norms = np.einsum("mkd,mkd->mk", self.codebooks, self.codebooks)
            self._derived = np.ascontiguousarray(norms, dtype=np.float32)
        return self._derived

    # -- training ------------------------------------------------------------
    def training_rows(self, n):
        """The rows int64 (m,), ascending, of an n-row training set that
        :meth:`train` trains on, or None for all of them (a caller may pass
        just those rows: the same codebooks)."""
        cap = self.ksub * self.max_points_per_centroid
        if not self.max_points_per_centroid or n <= cap:
            return None
        # one sample shared by all sub-quantizers, as a sample of vectors
        return np.sort(np.random.default_rng(self.seed).choice(n, cap, replace=False))

    def train(self, x, *, init_codebooks=None, niter=None):
        """Train the codebooks on float32 (n, d) ``x`` (n >= 2**nbits). Returns self."""
        x = as_vectors(x, self.d, allow_empty=False)
        n = x.shape[0]
        if n < self.ksub:
            raise ValueError(
                f"PQ training needs at least 2**nbits={self.ksub} vectors; got {n}")
        rows = self.training_rows(n)
        if rows is not None:
            x = x[rows]
        niter = self.niter if niter is None else niter
        books = np.empty((self.M, self.ksub, self.dsub), np.float32)

        def train_one(m):
            sub = np.ascontiguousarray(x[:, m * self.dsub:(m + 1) * self.dsub])
            km = KMeans(self.dsub, self.ksub, niter=niter, seed=self.seed + m,
                        max_points_per_centroid=0, min_points_per_centroid=0,
                        verbose=self.verbose)
            init = None if init_codebooks is None else init_codebooks[m]
            books[m] = km.train(sub, init_centroids=init).centroids

        # the sub-quantizers are independent (each has its own seed), so they train
        # side by side on Numba's thread budget when their kernels release the GIL
        # (BLAS, used for wider sub-vectors, has threads of its own)
        threads = max(1, min(self.M, numba.get_num_threads()))
        if not assigns_without_blas(self.dsub):
            threads = 1
        if threads == 1:
            for m in range(self.M):
                train_one(m)
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="shardann-pq-train") as pool:
                list(pool.map(train_one, range(self.M)))
        self.codebooks = books
        self._derived = None
        return self

    # -- codes -------------------------------------------------------------
    def compute_codes(self, x):
        """Encode float32 (n, d) into packed uint8 (n, code_size) codes."""
        self._check_trained("compute_codes")
        x = as_vectors(x, self.d)
        return self._encode(x)

    def _encode(self, x, base=None, labels=None):
        """Encode already validated float32 (n, d); no checks.

        With ``base`` float32 (nlist, d) and ``labels`` int64 (n,), encode the
        residuals ``x - base[labels]`` (same codes) without forming them.
        """
        norms = self._codeword_norms()
        out = np.empty((x.shape[0], self.code_size), np.uint8)
        raw = None if self.nbits == 8 else np.empty((min(_ENCODE_BLOCK, x.shape[0]), self.M),
                                                    np.uint8)
        for s in range(0, x.shape[0], _ENCODE_BLOCK):
            e = min(x.shape[0], s + _ENCODE_BLOCK)
            r = out[s:e] if raw is None else raw[: e - s]
            if base is None:
                pq_assign(x[s:e], self.codebooks, norms, r)
            else:
                pq_assign_residual(x[s:e], base, labels[s:e], self.codebooks, norms, r)
            if raw is not None:
                out[s:e] = pack_codes(r, self.nbits, self.code_size)
        return out

    def unpack(self, codes):
        """Packed uint8 (n, code_size) → one byte per sub-code, uint8 (n, M)."""
        codes = self._check_codes(codes)
        return codes if self.nbits == 8 else unpack_codes(codes, self.M, self.nbits)

    def decode(self, codes):
        """Reconstruct float32 (n, d) from packed uint8 (n, code_size) codes."""
        self._check_trained("decode")
        return pq_decode(self.unpack(codes), self.codebooks)

    def _check_codes(self, codes):
        codes = np.asarray(codes)
        if codes.dtype != np.uint8:
            raise TypeError(f"codes must be uint8; got {codes.dtype}")
        if codes.ndim == 1 and codes.shape[0] == self.code_size:
            codes = codes.reshape(1, -1)
        if codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise ValueError(
                f"codes must have shape (n, {self.code_size}); got {codes.shape}")
        return np.ascontiguousarray(codes)

    @property
    def codebooks_t(self):
        """The codebooks transposed, float32 (M, dsub, 2**nbits) C-contiguous:
        the layout the inner-product table kernel reads."""
        return np.ascontiguousarray(self.codebooks.transpose(0, 2, 1))

    # -- distance tables ---------------------------------------------------
    def distance_tables(self, queries, kind="l2"):
        """Per-query lookup tables float32 (nq, M, 2**nbits).

        ``kind="l2"``: squared distance from each query sub-vector to each
        sub-centroid; ``kind="ip"``: their inner products. The ADC distance of
        a code is the sum over sub-quantizers of the table entries it names.
        """
        self._check_trained("distance_tables")
        q = as_vectors(queries, self.d, "queries")
        if kind == "l2":
            return pq_l2_tables(q, self.codebooks)
        if kind == "ip":
            return pq_dot_tables_serial(q, self.codebooks_t)
        raise ValueError(f"kind must be 'l2' or 'ip'; got {kind!r}")

    # -- persistence -------------------------------------------------------
    def params(self):
        return {"kind": "pq", "d": self.d, "M": self.M, "nbits": self.nbits,
                "niter": self.niter, "seed": self.seed}

    def save(self, path):
        """Write codebooks and parameters to a Parquet file (rows = sub-centroids,
        sub-quantizer major)."""
        self._check_trained("save")
        write_matrix(path, self.codebooks.reshape(-1, self.dsub), self.params())

    @classmethod
    def from_codebooks(cls, codebooks, nbits=None, **kwargs):
        """Build a trained quantizer from float32 (M, ksub, dsub) codebooks."""
        codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        M, ksub, dsub = codebooks.shape
        nbits = int(round(math.log2(ksub))) if nbits is None else nbits
        if 1 << nbits != ksub:
            raise ValueError(f"codebooks must hold 2**nbits rows per sub-quantizer; got {ksub}")
        pq = cls(M * dsub, M, nbits, **kwargs)
        pq.codebooks = codebooks
        return pq

    @classmethod
    def load(cls, path):
        """Read a quantizer written by :meth:`save`."""
        flat, p = read_matrix(path)
        pq = cls(p["d"], p["M"], p["nbits"], niter=p["niter"], seed=p["seed"])
        pq.codebooks = np.ascontiguousarray(flat.reshape(pq.M, pq.ksub, pq.dsub))
        return pq


class OPQ:
    """Optimised product quantization: a learned orthogonal rotation that makes
    the sub-spaces easier to quantize (Ge et al., 2013).

    ``apply(x)`` returns ``x @ R``; distances and inner products are preserved,
    so an index can rotate vectors and queries alike and search unchanged.

    Parameters
    ----------
    d, M : dimension and number of sub-quantizers of the PQ that follows.
    nbits : bits per sub-code used while learning the rotation.
    niter : alternating optimisation rounds.
    niter_pq : k-means iterations of the inner PQ per round (the first round
        uses ``niter_pq_0``).
    max_train_points : subsample the training set to this many vectors.
    """

    def __init__(self, d, M, *, nbits=8, niter=25, niter_pq=4, niter_pq_0=25, seed=0,
                 max_train_points=65536, verbose=False):
        self.d = check_int("d", d, low=1)
        self.M = check_int("M", M, low=1)
        if self.d % self.M:
            raise ValueError(f"d must be a multiple of M; got d={self.d}, M={self.M}")
        self.nbits = check_int("nbits", nbits, low=1, high=8)
        self.niter = check_int("niter", niter, low=0)
        self.niter_pq = check_int("niter_pq", niter_pq, low=1)
        self.niter_pq_0 = check_int("niter_pq_0", niter_pq_0, low=1)
        self.seed = check_int("seed", seed)
        self.max_train_points = check_int("max_train_points", max_train_points, low=1)
        self.verbose = bool(verbose)
        self.rotation = None

    @property
    def is_trained(self):
        return self.rotation is not None

    def train(self, x):
        """Learn the rotation from float32 (n, d) ``x``. Returns ``self``."""
        x = as_vectors(x, self.d, allow_empty=False)
        rng = np.random.default_rng(self.seed)
        if x.shape[0] > self.max_train_points:
            x = x[np.sort(rng.choice(x.shape[0], self.max_train_points, replace=False))]
        # start from a random rotation so sub-spaces mix from the first round
        R, _ = np.linalg.qr(rng.standard_normal((self.d, self.d)))
        R = R.astype(np.float32)
        pq = ProductQuantizer(self.d, self.M, self.nbits, seed=self.seed,
                              max_points_per_centroid=0)
        books = None
        for it in range(self.niter):
            xr = x @ R
            pq.train(xr, init_codebooks=books,
                     niter=self.niter_pq_0 if books is None else self.niter_pq)
            books = pq.codebooks
            y = pq.decode(pq._encode(xr))
            if self.verbose or logger.isEnabledFor(logging.DEBUG):
                err = float(((xr - y) ** 2).sum(axis=1).mean())
                logger.log(logging.INFO if self.verbose else logging.DEBUG,
                           "OPQ round %d/%d: mean reconstruction error %.6g",
                           it + 1, self.niter, err)
            # orthogonal Procrustes: the rotation that best maps x onto y
            u, _, vt = np.linalg.svd(x.T.astype(np.float64) @ y.astype(np.float64))
            R = (u @ vt).astype(np.float32)
        self.rotation = np.ascontiguousarray(R)
        return self

    def apply(self, x):
        """Rotate float32 (n, d) vectors: ``x @ R``, each row the same in any batch
        (stored vectors and codes are made from it; see :mod:`shardann._kernels.transform`)."""
        if not self.is_trained:
            raise NotTrainedError("OPQ.apply called before train")
        x = as_vectors(x, self.d)
        out = np.empty_like(x)
        rotate_rows(x, self.rotation, out)
        return out

    def reverse(self, y):
        """Undo :meth:`apply`: ``y @ R.T``."""
        if not self.is_trained:
            raise NotTrainedError("OPQ.reverse called before train")
        y = as_vectors(y, self.d, "y")
        out = np.empty_like(y)
        rotate_rows(y, np.ascontiguousarray(self.rotation.T), out)
        return out

    def save(self, path):
        if not self.is_trained:
            raise NotTrainedError("OPQ.save called before train")
        write_matrix(path, self.rotation, {"kind": "opq", "d": self.d, "M": self.M,
                                           "nbits": self.nbits, "niter": self.niter,
                                           "seed": self.seed})

    @classmethod
    def load(cls, path):
        R, p = read_matrix(path)
        opq = cls(p["d"], p["M"], nbits=p["nbits"], niter=p["niter"], seed=p["seed"])
        opq.rotation = R
        return opq
