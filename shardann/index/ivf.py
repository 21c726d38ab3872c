"""Inverted-file indexes: IVF-Flat and IVF-PQ (with optional OPQ and refine)."""

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .._kernels import fastscan, fastscan8
from .._kernels.distances import rerank_exact_parallel, rerank_exact_serial
from .._kernels.ivf import (
    ivfflat_scan_parallel,
    ivfflat_scan_serial,
    ivfpq4_fastscan_parallel,
    ivfpq4_fastscan_serial,
    ivfpq8_fastscan_parallel,
    ivfpq8_fastscan_serial,
    ivfpq8_scan_parallel,
    ivfpq8_scan_serial,
    ivfpq_scan_parallel,
    ivfpq_scan_serial,
)
from .._kernels.pq import pq_dot_tables_parallel, pq_dot_tables_serial
from .._kernels.refine import (
    refine_topk_parallel,
    refine_topk_serial,
    shortlist_keys_parallel,
    shortlist_keys_serial,
)
from .._kernels.topk import topk_from_dots_parallel, topk_from_dots_serial
from .._validation import (
    as_vectors,
    check_bool,
    check_choice,
    check_int,
    check_probe_gap,
    check_probe_ratio,
    check_search_args,
)
from ..drift import DEFAULT_THRESHOLD, baseline, drift_report
from ..drift import stats as error_stats
from ..filters import filter_probes
from ..kmeans import KMeans, largest_norm, nearest_centroids, rounding_margin
from ..metric import keys_to_distances, normalize_rows, uses_ip
from ..pca import PCA, balanced_order
from ..pq import OPQ, ProductQuantizer
from ..results import empty_results
from ..sq import decode as sq_decode
from ..sq import encode as sq_encode
from ..sq import query_frame, train_scale
from ._calibration import DEFAULT_SIZE as DEFAULT_CALIBRATION
from ._calibration import CalibrationSet, estimate_recall, for_add, require, state_bytes
from ._drift import BASELINE_ROWS, new_log, quantization_errors
from ._drift import record as record_drift
from ._drift import section as drift_section
from ._lists import InvertedLists
from ._probing import gap_bounds, prune_probes
from .base import BaseIndex

logger = logging.getLogger(__name__)

_PRECOMPUTE_MAX_BYTES = 256 << 20


def _parallel(nq):
    return nq > 1 and numba.get_num_threads() > 1


_blas = None  # threadpoolctl's controller of the loaded BLAS, made on first use


def _one_blas_thread(batch):
    """Context keeping BLAS on one thread for the coarse product of a batch.

    OpenBLAS's threads cost more than they give on these small products and
    spin for a while afterwards, on the cores Numba's threads (or a node's
    shard actors) then need: measured on 2 cores, a batch on 2 Numba threads
    ran at 0.92x the speed of 1 thread while the coarse product had used both,
    and a probe of 256 queries (d=128, 1024 lists) took 6.4 ms with two BLAS
    threads, 1.7 ms with one. A single query (``batch`` False) skips the
    limit's few microseconds: OpenBLAS keeps a one-row product on one thread.
    """
    global _blas
    if not batch:
        return contextlib.nullcontext()
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def _mask_arg(allowed, bounds=None):
    """The scan kernels' trailing ``allowed`` (and ``bounds``) arguments: none
    without a filter or adaptive bounds, so a plain scan runs the variant
    compiled without the tests."""
    if bounds is not None:
        return (allowed, bounds)
    return () if allowed is None else (allowed,)


#: a scan of a selective filter's passing rows (8-bit PQ) scores a list with fewer
#: rows than this without building its L2 table (M * 256 entries)
_DIRECT_ROWS = np.int64(32)
#: the refine kernels' per-dimension steps for float kept vectors (their key has none)
_NO_STEP = np.empty(0, np.float32)

#: the fewest queries a thread of a split probe takes (see ``IVFIndex.probe_threads``)
_SPLIT_ROWS = 32

_split_pools = {}  # workers -> the split probe's thread pool, made on first use
_split_lock = threading.Lock()


def _split_workers(n):
    """A pool of ``n`` threads, kept for the process: idle workers wait on a
    queue and use no CPU."""
    with _split_lock:
        if n not in _split_pools:
            _split_pools[n] = ThreadPoolExecutor(n, thread_name_prefix="shardann-probe")
        return _split_pools[n]


def _on_one_thread(fn, *args):
    """``fn(*args)`` with this thread's Numba kernels on one thread (Numba's
    thread count is per calling thread: a pool thread starts with every core)."""
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(old)


#: candidates beyond ``nprobe`` that the coarse quantizer re-ranks with exact keys
_PROBE_SPARE = 8


def coarse_probe(q, centroids, cnorms, nprobe, ip, parallel=False, cmax=None):
    """The ``nprobe`` closest lists of each query.

    BLAS picks ``nprobe`` + a few candidates; their exact keys (the kernels'
    :func:`~shardann._kernels.distances.exact_key`) decide the order, and a
    query whose candidates were too close to tell apart through BLAS's
    rounding is ranked against every list. So a query gets the same lists and
    distances in any batch (BLAS rounds a row differently by the product's
    shape and the row's place in it).

    ``parallel`` splits the queries over Numba's threads (same results).
    ``cmax``: :func:`~shardann.kmeans.largest_norm` of ``centroids``, when
    the caller keeps it (None: computed here).

    Returns ``dis0`` float32 (nq, nprobe) — squared L2 to the centroid, or its
    negated inner product — and ``probes`` int64 (nq, nprobe), closest first
    (ties by the smaller list number).
    """
    topk_from_dots = topk_from_dots_parallel if parallel else topk_from_dots_serial
    rerank_exact = rerank_exact_parallel if parallel else rerank_exact_serial
    nq = q.shape[0]
    nlist = centroids.shape[0]
    kk = min(nlist, nprobe + _PROBE_SPARE)
    approx = np.empty((nq, kk), np.float32)
    cand = np.empty((nq, kk), np.int64)
    lists = np.arange(nlist, dtype=np.int64)
    step = max(1, (1 << 24) // max(nlist, 1))  # bound the (nq, nlist) block
    for s in range(0, nq, step):
        e = min(nq, s + step)
        dots = q[s:e] @ centroids.T
        if ip:  # 0 - 1 * dot + 0 = -dot
            topk_from_dots(dots, np.zeros(nlist, np.float32), np.float32(1),
                           np.zeros(e - s, np.float32), False, lists, kk,
                           approx[s:e], cand[s:e])
        else:
            topk_from_dots(dots, cnorms, np.float32(2),
                           np.einsum("ij,ij->i", q[s:e], q[s:e]).astype(np.float32, copy=False),
                           False, lists, kk, approx[s:e], cand[s:e])
    if kk > nprobe:
        # the lists past the candidates rank after the nprobe-th for sure only when
        # the last candidate's key is more than the rounding margin above it
        margin = rounding_margin(q, centroids, ip, cmax)
        unsure = approx[:, kk - 1] - approx[:, nprobe - 1] <= margin
        cand[unsure, 0] = -2  # rank every list
    dis0 = np.empty((nq, nprobe), np.float32)
    probes = np.empty((nq, nprobe), np.int64)
    rerank_exact(q, centroids, cand, ip, dis0, probes)
    return dis0, probes


class _TrainingLabels:
    """The coarse labels of an index's training rows, each row assigned at
    most once while ``train`` runs (the payload's sample and the drift
    baseline's overlap: for 8-bit PQ they are the same rows).
    :func:`~shardann.kmeans.nearest_centroids` gives a row the same label in
    any batch, so the labels equal a full assignment's."""

    def __init__(self, index, xr):
        self.index, self.xr = index, xr
        self.known = np.full(xr.shape[0], -1, np.int64)

    def invalidate(self):
        """The centroids' and rows' columns were reordered (which rounds
        differently): callers assign afresh."""
        self.xr = None

    def __call__(self, rows=None):
        """Labels int64 (m,) of the rows ``rows`` int64 (m,) (all rows: None)."""
        if rows is None:
            rows = np.arange(self.xr.shape[0])
        missing = rows[self.known[rows] < 0]
        if missing.size:
            self.known[missing] = self.index._assign(self.xr[missing])
        return self.known[rows]


class IVFIndex(BaseIndex):
    """Shared inverted-file machinery: coarse quantizer, lists, nprobe.

    Subclasses define the payload (``_columns``, ``_train_payload``,
    ``_payload``, ``_scan``, ``_decode_rows``).

    With ``pca``, prepared vectors (:meth:`prepare`) stay in the original
    space and :meth:`_reduce` projects them into the ``pca``-dimensional space
    of the centroids and the payload's scan: probe, scan and encode each
    project what they are given, so every caller (a shard, an ingest worker)
    passes prepared vectors as before.
    """

    def __init__(self, d, nlist, metric="l2", *, nprobe=1, seed=0, niter=25,
                 max_points_per_centroid=256, verbose=False, num_threads=None, pca=None,
                 calibration=DEFAULT_CALIBRATION):
        super().__init__(d, metric)
        self.calibration = check_int("calibration", calibration, low=0)
        self.num_threads = num_threads
        self.pca = None if pca is None else check_int("pca", pca, low=1, high=self.d)
        self._pca = None  # the trained shardann.pca.PCA when pca is set
        self.nlist = check_int("nlist", nlist, low=1)
        self.seed = check_int("seed", seed)
        self.niter = check_int("niter", niter, low=0)
        self.max_points_per_centroid = check_int(
            "max_points_per_centroid", max_points_per_centroid, low=0)
        self.verbose = bool(verbose)
        self.centroids = None
        self._cnorms = None
        self._cmax = None  # the largest centroid norm (kmeans.largest_norm)
        self._drift = None  # drift bookkeeping (see _drift.py), set by train
        self.nprobe = nprobe

    # -- parameters ------------------------------------------------------------
    @property
    def nprobe(self):
        """Default number of lists scanned per query (FAISS's ``index.nprobe``)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value):
        self._nprobe = check_int("nprobe", value, low=1, high=self.nlist)

    @property
    def num_threads(self):
        """Threads a batch search uses (None: Numba's current setting, by default
        every core). A single query always runs on one thread; results do not
        depend on the thread count. Not saved with the index (it is about the
        machine, not the data)."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value):
        self._num_threads = None if value is None else check_int("num_threads", value, low=1)

    _probe_threads = None  # (a class default: indexes opened or unpickled have it too)

    @property
    def probe_threads(self):
        """Python threads that split a batch's :meth:`probe` by rows (None or 1:
        none), each running the serial kernels with the GIL released.

        For a coordinator whose shards wait on its probe: Numba's parallel
        kernels leave their workers spinning afterwards on the cores the shards
        scan on next (see :mod:`shardann.distributed.coordinator`), these
        threads just wait on a queue. A query's lists and distances do not
        depend on its batch, so the results are the same. Only :meth:`probe`
        uses them (not :meth:`search`); not saved with the index.
        """
        return self._probe_threads

    @probe_threads.setter
    def probe_threads(self, value):
        self._probe_threads = (None if value is None
                               else check_int("probe_threads", value, low=1))

    @contextlib.contextmanager
    def _threads(self):
        # Numba's thread count is per calling thread: set it for this search only
        n = self._num_threads
        if n is None:
            yield
            return
        old = numba.get_num_threads()
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            numba.set_num_threads(old)

    @property
    def is_trained(self):
        return self.centroids is not None

    @property
    def _ip(self):
        return uses_ip(self.metric)

    # -- training --------------------------------------------------------------
    def train(self, x):
        """Train the coarse centroids (and the payload quantizer) on float32
        (n, d) ``x``, n >= nlist. A sample of the data is enough. Returns self."""
        if self.ntotal:
            raise ValueError(
                f"train() on an index holding {self.ntotal} vectors would orphan them; "
                "train a new index (or remove every vector first)")
        x = as_vectors(x, self.d, allow_empty=False)
        if x.shape[0] < self.nlist:
            raise ValueError(
                f"training needs at least nlist={self.nlist} vectors; got {x.shape[0]}")
        if self.metric == "cosine":
            x = normalize_rows(x.copy())
        x, xr = self._train_transform(x)
        km = KMeans(self.space_d, self.nlist, niter=self.niter, seed=self.seed,
                    metric=self.metric, max_points_per_centroid=self.max_points_per_centroid,
                    verbose=self.verbose)
        self._set_centroids(km.train(xr).centroids)
        labels_of = _TrainingLabels(self, xr)
        self._train_payload(x, xr, labels_of)
        self._drift = new_log(self._training_baseline(x, labels_of))
        self._lists = self._new_lists()
        self._sorted_ids = None
        self._on_mutation()
        self._posmap = None
        self._next_id = 0
        self._changes = None  # a new model: nothing since the origin can be replayed
        self._cal = None
        return self

    def _training_baseline(self, x, labels_of):
        """Drift baseline (:func:`shardann.drift.baseline`) of prepared training
        rows ``x``, on a seeded sample of at most BASELINE_ROWS of them;
        ``labels_of``, a :class:`_TrainingLabels` of them."""
        n = x.shape[0]
        rows = np.arange(n)
        if n > BASELINE_ROWS:
            rng = np.random.default_rng(self.seed)
            rows = np.sort(rng.choice(n, BASELINE_ROWS, replace=False))
            x = x[rows]
        xr = self._reduce(x)
        labels = self._assign(xr) if labels_of.xr is None else labels_of(rows)
        payload = self._payload(x, xr, labels)
        return baseline(self.quantization_errors(x, labels, payload), labels, self.nlist,
                        ksub=getattr(getattr(self, "pq", None), "ksub", None))

    def _set_centroids(self, centroids):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._cnorms = np.einsum("ij,ij->i", self.centroids, self.centroids).astype(np.float32)
        self._cmax = largest_norm(self.centroids)

    @property
    def space_d(self):
        """Dimension of the space the centroids and the scan work in: ``pca``
        when set, else ``d``."""
        return self.d if self.pca is None else self.pca

    def _train_transform(self, x):
        """Train the transforms on prepared-space float32 (n, d) ``x``; return
        ``(x, xr)``: the rows in the prepared space and in the reduced one."""
        if self.pca is None:
            return x, x
        self._pca = PCA(self.d, self.pca, seed=self.seed).train(x)
        return x, self._pca.apply(x)

    def _reduce(self, x):
        """Prepared float32 (n, d) -> (n, space_d) rows of the centroids' space."""
        return x if self._pca is None else self._pca.apply(x)

    def _expand(self, y):
        """The inverse of :meth:`_reduce` (its best approximation with ``pca``)."""
        return y if self._pca is None else self._pca.reverse(y)

    def _train_payload(self, x, xr, labels_of):
        pass

    def _new_lists(self):
        return InvertedLists(self.nlist, self._columns(), tiled=self._tiled_columns())

    def _tiled_columns(self):
        """Payload columns to hold in the fast scan's block layout."""
        return ()

    # -- add ---------------------------------------------------------------------
    def assign(self, x):
        """List number, int64 (n,), of each float32 (n, d) vector."""
        self._require_trained("assign")
        return self._assign(self._reduce(self.prepare(x)))

    def _assign(self, xr):
        """List numbers of reduced (n, space_d) rows."""
        return nearest_centroids(xr, self.centroids, ip=self._ip, cnorms=self._cnorms)[0]

    def _encode(self, x):
        xr = self._reduce(x)
        labels = self._assign(xr)
        return labels, self._payload(x, xr, labels)

    # -- drift -------------------------------------------------------------------
    def _drift_codes(self, payload):
        """``(pq, codes)`` of the PQ error, or ``(None, None)`` without PQ."""
        return None, None

    def quantization_errors(self, x, list_no, payload):
        """Quantization errors of prepared rows encoded by :meth:`encode`.

        Parameters
        ----------
        x : float32 (n, d), prepared. list_no : int64 (n,).
        payload : dict, the rows' payload columns as :meth:`encode` made them.

        Returns ``{"coarse": float32 (n,)[, "pq": float32 (n,)]}``: squared L2
        distance to the centroid of the row's list and, for IVF-PQ, of the
        residual to its decoded code — in the centroids' space (after PCA /
        OPQ).
        """
        pq, codes = self._drift_codes(payload)
        return quantization_errors(self._reduce(x), self.centroids, list_no, pq, codes)

    def drift_stats(self, x, list_no, payload):
        """Drift stats (:func:`shardann.drift.stats`, mergeable) of prepared rows
        ``x`` encoded as ``(list_no, payload)`` by :meth:`encode`, for a
        coordinator or an ingest worker that adds them elsewhere; None when the
        index has no drift baseline."""
        if self._drift is None or not len(list_no):
            return None
        return error_stats(self.quantization_errors(x, list_no, payload),
                           self._drift["baseline"])

    def _record_drift(self, x, list_no, payload):
        st = self.drift_stats(x, list_no, payload)
        if st is not None:
            record_drift(self._drift, st)

    def drift(self, threshold=None):
        """How far the vectors added since training drifted from the training
        data: :func:`shardann.drift.drift_report` of this index.

        Returns a dict: ``"training"`` (mean/std/p50/p90 of the coarse and PQ
        errors on the training sample), ``"since_training"`` and ``"latest"``
        (the vectors added since training, and those of the newest commit —
        or added since the last save; ``{"n", "coarse": {"mean", "std",
        "ratio", "over_train_p90"}, "pq": ...}``), ``"lists"`` (list-size
        imbalance: max/mean, cv, empty lists), ``"retrain_recommended"`` and
        ``"reasons"``. ``threshold`` (default
        :data:`shardann.drift.DEFAULT_THRESHOLD`, 1.25): the error ratio
        above which a retrain is recommended. None when the index has no
        drift baseline (untrained, or trained by a shardann before 0.1 kept
        one).
        """
        if self._drift is None:
            return None
        return drift_report(drift_section(self._drift), self.list_sizes(),
                            DEFAULT_THRESHOLD if threshold is None else threshold)

    # -- search --------------------------------------------------------------------
    def check_search(self, k, nprobe=None, refine_factor=0):
        """Validate search arguments; return ``(k, nprobe, refine_factor)`` as ints.

        ``nprobe=None`` becomes ``self.nprobe``; nprobe must be in 1..nlist and
        ``refine_factor > 0`` needs kept vectors when the index refines (IVF-PQ;
        IVF-Flat accepts and ignores it). Raises ``ValueError`` / ``TypeError``
        saying what was expected and given.
        """
        if nprobe is None:
            nprobe = self.nprobe
        k, nprobe, refine_factor = check_search_args(k, nprobe, self.nlist, refine_factor)
        if refine_factor and self._refines and "vectors" not in self._columns():
            raise ValueError(
                "refine_factor > 0 needs an index built with keep_vectors=True "
                f"(got refine_factor={refine_factor})")
        if refine_factor and not self._refines and self.pca is not None:
            raise ValueError(
                f"refine_factor > 0 needs the original vectors; this {type(self).__name__} "
                f"with pca={self.pca} holds the reduced ones only (IVFPQIndex with pca and "
                f"keep_vectors re-ranks on the originals; got refine_factor={refine_factor})")
        return k, nprobe, refine_factor

    @property
    def refines(self):
        """True when ``refine_factor > 0`` re-ranks the ADC candidates with exact
        distances on kept vectors (IVF-PQ with ``keep_vectors``); IVF-Flat
        scans exact vectors already and has nothing to refine."""
        return bool(self._refines and "vectors" in self._columns())

    def search(self, queries, k=10, *, nprobe=None, refine_factor=0, filter=None,
               columns=None, probe_ratio=None, probe_gap=None):
        """k nearest neighbours of each query, scanning ``nprobe`` lists.

        Parameters
        ----------
        queries : float32 (nq, d).
        k : int >= 1.
        nprobe : int in 1..nlist, lists scanned per query (default ``self.nprobe``).
        refine_factor : int, re-rank ``k * refine_factor`` candidates with exact
            distances on kept vectors (0 = off; needs ``keep_vectors``).
        filter : None, a SQL-like string or a ``pyarrow.compute.Expression`` on
            the attribute columns: only passing rows are scanned.
        columns : attribute columns to return with the hits.
        probe_ratio : float in (0, 1] or None, adaptive probing: of the
            ``nprobe`` closest lists scan only those nearly as close as the
            closest one (see :meth:`probe`); None scans all ``nprobe``.
        probe_gap : float > 0 or None, adaptive probing by the running k-th
            distance: a query scans its lists closest first and skips list
            ``j`` once ``d(q, c_j) - d(q, c_1) > probe_gap * D_k``, ``D_k`` the
            squared L2 distance of the k-th best row found so far (with
            ``refine_factor``, of the ``k * refine_factor``-th candidate);
            smaller is faster and less accurate, ``inf`` scans all ``nprobe``
            (see :func:`shardann.index._probing.gap_bounds`). l2 and cosine
            only; may be combined with ``probe_ratio``. A sharded index refuses
            it (its shards scan their lists in parallel, without the running
            k-th distance of the others).

        Returns
        -------
        D float32 (nq, k), I int64 (nq, k)[, A pyarrow.Table] — see
        :meth:`BaseIndex.search`.
        """
        self._gap_rule(probe_gap)  # refused before any work (an empty index included)
        return super().search(queries, k, nprobe=nprobe, refine_factor=refine_factor,
                              filter=filter, columns=columns, probe_ratio=probe_ratio,
                              probe_gap=probe_gap)

    def _calibration_for_add(self):
        return for_add(self)

    def _calibration_bytes(self):
        return state_bytes(self._cal)

    def _calibration_removed(self, ids):
        if isinstance(self._cal, CalibrationSet):  # (a stored one is filtered when read)
            self._cal.remove(ids)

    def estimate_recall(self, k=10, nprobe=None, refine_factor=0, *, probe_ratio=None,
                        confidence=0.95, probe_gap=None):
        """Estimate recall@k of :meth:`search` at these settings, with a
        confidence interval, from the index's calibration set.

        The calibration queries (``calibration`` rows sampled from the data
        the index was built from, see :mod:`shardann.index._calibration`) are
        searched with the index's own search (``k + 1`` hits, each query's own
        id dropped) and compared with their exact top-``k`` among the index's
        current rows, kept up to date through ``add`` and ``remove_ids``
        without keeping raw vectors.

        Parameters
        ----------
        k : int in 1..100. nprobe, refine_factor, probe_ratio, probe_gap : as
            for :meth:`search`. confidence : float in (0, 1), of the interval.

        Returns a :class:`~shardann.index.RecallEstimate` (``recall``,
        ``lower``, ``upper``, ``n_queries``, ...). Raises ``ValueError`` when
        the index has no calibration set (built with ``calibration=0``, or its
        rows came from ``add_preassigned`` / ``set_lists``). A
        stored set is read from the store on the first call (opening an index
        never reads it).
        """
        k, nprobe, refine_factor = self.check_search(k, nprobe, refine_factor)
        self._gap_rule(probe_gap)  # refused before the calibration set is read
        cal = require(self._cal, self.contains)
        self._cal = cal
        return estimate_recall(
            cal, lambda q, kk: self.search(q, kk, nprobe=nprobe, refine_factor=refine_factor,
                                           probe_ratio=probe_ratio, probe_gap=probe_gap),
            self.contains, k, nprobe=nprobe, refine_factor=refine_factor,
            probe_ratio=probe_ratio, confidence=confidence,
            probe_gap=None if probe_gap is None else float(probe_gap))

    def probe_gap_for(self, target_recall, k=10, nprobe=None, refine_factor=0, *,
                      probe_ratio=None, steps=12):
        """The smallest ``probe_gap`` whose estimated recall@k (on the index's
        calibration set, :meth:`estimate_recall`) reaches ``target_recall`` at
        these settings: a bisection on ``log(probe_gap)`` over [1e-3, 1e3].

        Parameters
        ----------
        target_recall : float in (0, 1).
        k, nprobe, refine_factor, probe_ratio : as for :meth:`search`; ``nprobe``
            is the most lists a query may scan, so it caps what ``probe_gap``
            can reach.
        steps : int >= 1, bisection steps (each one search of the calibration
            queries; 12 pin the gap within a factor 1.6 of 2**-12 in the log).

        Returns
        -------
        probe_gap : float, or ``inf`` when even 1e3 (nearly all ``nprobe``
            lists) misses the target (raise ``nprobe``).
        estimate : :class:`~shardann.index.RecallEstimate` at that gap.

        The estimate is of the calibration queries (rows of the data, not
        your queries) and recall is only nearly monotone in the gap (a larger
        gap scans more lists before a given one, so its k-th distance is
        smaller there): check the answer with your queries where it matters.
        """
        target = float(target_recall)
        if not 0 < target < 1:
            raise ValueError(f"target_recall must be in (0, 1); got {target_recall!r}")
        steps = check_int("steps", steps, low=1)

        def est(g):
            return self.estimate_recall(k, nprobe, refine_factor, probe_ratio=probe_ratio,
                                        probe_gap=g)

        lo, hi = np.log(1e-3), np.log(1e3)
        best = est(float(np.exp(hi)))
        if best.recall < target:
            return np.inf, est(np.inf)
        best_g = float(np.exp(hi))
        for _ in range(steps):
            mid = (lo + hi) / 2
            e = est(float(np.exp(mid)))
            if e.recall >= target:
                hi, best, best_g = mid, e, float(np.exp(mid))
            else:
                lo = mid
        return best_g, best

    def probe(self, q, nprobe, probe_ratio=None, *, lists=None):
        """Coarse quantization of prepared queries (the output of ``prepare``).

        Parameters
        ----------
        q : float32 (nq, d), prepared.
        nprobe : int in 1..nlist.
        probe_ratio : float in (0, 1] or None. Of the ``nprobe`` closest lists,
            keep those whose closeness reaches ``probe_ratio`` times the
            closest one's, as FastIVF's ``ratio_threshold``: cosine / inner
            product similarity ``s >= probe_ratio * s_best``, squared L2
            ``probe_ratio * dist <= dist_best`` (details in
            :func:`shardann.index._probing.prune_probes`). Larger is faster
            and less accurate.
        lists : sorted int64 array of list numbers, or None (all): rank only
            these (nprobe at most their number). The ranking is the full one
            with the other lists left out (same keys, ties by the smaller
            list) — what the selectivity rule of a filtered search ranks
            (:func:`shardann.filters.filter_probes`).

        Returns
        -------
        dis0 : float32 (nq, nprobe), squared L2 to each probed centroid, or the
            negated inner product (ip, cosine) — with ``pca``, in the reduced space.
        probes : int64 (nq, nprobe), list numbers, closest first. With
            ``probe_ratio`` both are (nq, w), w <= nprobe the most lists a query
            keeps, and the skipped lists are -1.
        """
        with self._threads(), _one_blas_thread(q.shape[0] > 1):
            qr = self._reduce(q)
            parts = min(self._probe_threads or 1, qr.shape[0] // _SPLIT_ROWS)
            if parts < 2:
                return self._probe(qr, nprobe, probe_ratio, lists)
            probe_ratio = check_probe_ratio(probe_ratio)
            cuts = np.linspace(0, qr.shape[0], parts + 1).astype(np.int64).tolist()
            # the parts run under this thread's BLAS limit (one thread): a limit
            # set and restored by each part would race with the others'
            pending = [_split_workers(parts - 1).submit(
                _on_one_thread, self._probe, qr[cuts[i]:cuts[i + 1]], nprobe, None, lists)
                for i in range(1, parts)]
            first = [_on_one_thread(self._probe, qr[:cuts[1]], nprobe, None, lists)]
            done = first + [f.result() for f in pending]
            dis0 = np.concatenate([d for d, _ in done])
            probes = np.concatenate([p for _, p in done])
            if probe_ratio is None:
                return dis0, probes
            # pruned on the whole batch: its width is the widest row's
            return prune_probes(dis0, probes, probe_ratio)

    def _probe(self, qr, nprobe, probe_ratio=None, lists=None):
        """:meth:`probe` of reduced (nq, space_d) queries."""
        probe_ratio = check_probe_ratio(probe_ratio)
        if lists is None:
            dis0, probes = coarse_probe(qr, self.centroids, self._cnorms, nprobe, self._ip,
                                        parallel=_parallel(qr.shape[0]),
                                        cmax=getattr(self, "_cmax", None))
        else:
            lists = np.asarray(lists, np.int64)
            dis0, at = coarse_probe(qr, np.ascontiguousarray(self.centroids[lists]),
                                    self._cnorms[lists], nprobe, self._ip,
                                    parallel=_parallel(qr.shape[0]))
            probes = lists[at]
        if probe_ratio is None:
            return dis0, probes
        return prune_probes(dis0, probes, probe_ratio)

    def _search_keys(self, q, k, nprobe, refine_factor=0, filter=None,
                     probe_ratio=None, probe_gap=None):
        bounds_of = self._gap_rule(probe_gap)
        with self._threads():
            qr = self._reduce(q)
            with _one_blas_thread(q.shape[0] > 1):
                dis0, probes = self._probe(qr, nprobe, probe_ratio)
                if filter is not None and probe_ratio is None:
                    # (probe_ratio chose the lists itself: they are scanned as chosen)
                    dis0, probes = filter_probes(
                        dis0, probes, self._passing(filter)[1], self._lists.size,
                        lambda depth, lists: self._probe(qr, depth, lists=lists))
            allowed, probes, lists = self._filtered(filter, probes, plan=True)
            return self._scan_keys(q, qr, dis0, probes, k, refine_factor, allowed, lists,
                                   bounds_of(dis0))

    def _gap_rule(self, probe_gap):
        """The function of ``dis0`` giving the scans' per-list bounds for
        ``probe_gap`` (None: none; see :meth:`search`)."""
        probe_gap = check_probe_gap(probe_gap)
        if probe_gap is None or probe_gap == np.inf:
            return lambda dis0: None
        if self.metric == "ip":
            raise ValueError("probe_gap needs distances (metric 'l2' or 'cosine'); an inner "
                             "product index has none: use probe_ratio")
        shift = 1.0 if self.metric == "cosine" else 0.0
        return lambda dis0: gap_bounds(dis0, probe_gap, shift)

    def _filtered(self, expr, probes, plan=False):
        """(allowed, probes, lists) of a compiled filter: the slab mask (None
        without a filter), the probes with lists no passing row is in set to -1
        (their tables are not even built), and the lists to scan: with
        ``plan`` and a sparse filter, a compact copy of the passing rows (then
        no mask), else None (the index's own)."""
        if expr is None:
            return None, probes, None
        allowed, counts = self._passing(expr)
        safe = np.clip(probes, 0, self.nlist - 1)
        probes = np.where((probes >= 0) & (counts[safe] > 0), probes, -1)
        if plan and self._is_sparse(counts):
            return None, probes, self._passing_lists(expr)
        return allowed, probes, None

    def search_preassigned(self, q, dis0, probes, k, refine_factor=0, *, filter=None):
        """Search prepared queries in the given lists: the scan half of
        :meth:`search` (``prepare`` and ``probe`` being the other half).

        Parameters
        ----------
        q : float32 (nq, d), prepared.
        dis0 : float32 (nq, nprobe), from :meth:`probe`.
        probes : int64 (nq, nprobe), from :meth:`probe`; a list this index does
            not hold (a shard's partial index) is empty here, and -1 is skipped.
        k : int >= 1.
        refine_factor : int >= 0; with :attr:`refines`, the ``k * refine_factor``
            best ADC candidates are re-ranked by exact distance.
        filter : None, or a filter (compiled by :meth:`compile_filter`, or a
            string): only rows that pass are scanned. The probes are scanned
            as given (no selectivity strategy: that is :meth:`search`'s).

        Returns
        -------
        D float32 (nq, k), I int64 (nq, k): as :meth:`search` returns them
        (distances or similarities by metric, best first, padded with id -1).
        """
        self._require_trained("search_preassigned")
        k, _, refine_factor = self.check_search(k, refine_factor=refine_factor)
        expr = self.compile_filter(filter)
        q = np.asarray(q)
        dis0, probes = np.asarray(dis0), np.asarray(probes)
        nq = q.shape[0] if q.ndim == 2 else -1
        if (q.ndim != 2 or q.shape[1] != self.d or q.dtype != np.float32
                or dis0.ndim != 2 or dis0.shape[0] != nq or probes.shape != dis0.shape
                or dis0.dtype != np.float32 or probes.dtype != np.int64):
            raise ValueError(
                f"search_preassigned takes q float32 (nq, {self.d}), dis0 float32 and probes "
                f"int64 (nq, nprobe); got q {q.dtype} {q.shape}, dis0 {dis0.dtype} "
                f"{dis0.shape}, probes {probes.dtype} {probes.shape}")
        if nq == 0 or self.ntotal == 0:
            return empty_results(nq, k, self.metric)
        allowed, probes, lists = self._filtered(expr, np.ascontiguousarray(probes), plan=True)
        with self._threads():
            q = np.ascontiguousarray(q)
            keys, ids = self._scan_keys(q, self._reduce(q), np.ascontiguousarray(dis0),
                                        probes, k, refine_factor, allowed, lists)
        return keys_to_distances(keys, self.metric), ids

    def _scan_keys(self, q, qr, dis0, probes, k, refine_factor=0, allowed=None, lists=None,
                   bounds=None):
        """(keys, ids) (nq, k) of the given lists; keys are smaller-is-better."""
        if refine_factor and self.refines:
            L = self._lists if lists is None else lists
            _, pos = self._scan(qr, dis0, probes, k * refine_factor, allowed, L, bounds)
            out_d = np.empty((q.shape[0], k), np.float32)
            out_i = np.empty((q.shape[0], k), np.int64)
            fn = refine_topk_parallel if _parallel(q.shape[0]) else refine_topk_serial
            fn(*self._refine_args(q, L.data["vectors"]), pos, L.ids, self._ip, k, out_d, out_i)
            return out_d, out_i
        keys, ids, _ = self._candidates(q, qr, dis0, probes, k, False, allowed, lists, bounds)
        return keys, ids

    def scan_candidates(self, q, dis0, probes, kk, *, exact=False, filter=None):
        """The ``kk`` best rows of the given lists by scan key, for a coordinator
        that merges (and refines) across shards.

        Parameters
        ----------
        q, dis0, probes : as for :meth:`search_preassigned`.
        kk : int >= 1, candidates per query.
        exact : also compute the exact keys of the candidates (needs kept vectors).
        filter : None or a filter (as for :meth:`search_preassigned`): only
            passing rows are candidates.

        Returns
        -------
        keys : float32 (nq, kk), smaller is better: squared L2, or the negated
            inner product; ``+inf`` pads.
        ids : int64 (nq, kk), -1 pads.
        exact_keys : float32 (nq, kk) of the same rows, or None unless ``exact``
            (with ``pca``: on the kept original vectors, in the original space).
        """
        allowed, probes, lists = self._filtered(self.compile_filter(filter), probes, plan=True)
        return self._candidates(q, self._reduce(q), dis0, probes, kk, exact, allowed, lists)

    def _candidates(self, q, qr, dis0, probes, kk, exact, allowed, lists=None, bounds=None):
        L = self._lists if lists is None else lists
        keys, pos = self._scan(qr, dis0, probes, kk, allowed, L, bounds)
        vectors = L.data.get("vectors")
        if exact and vectors is None:
            raise ValueError("refine_factor > 0 needs an index built with keep_vectors=True")
        if len(L.ids) == 0:  # a shard whose lists are all empty: no row to gather
            none = np.full(pos.shape, -1, np.int64)
            return keys, none, np.full(pos.shape, np.inf, np.float32) if exact else None
        safe = np.maximum(pos, 0)
        ids = np.where(pos >= 0, L.ids[safe], -1)
        if not exact:
            return keys, ids, None
        return keys, ids, self._shortlist_keys(q, vectors, pos)

    def _shortlist_keys(self, q, vectors, pos):
        """Exact keys float32 (nq, c) of the slab rows ``pos`` int64 (nq, c)
        (-1: +inf) on the kept ``vectors``, read in place (no gathered copy)."""
        out = np.empty(pos.shape, np.float32)
        fn = shortlist_keys_parallel if _parallel(q.shape[0]) else shortlist_keys_serial
        fn(*self._refine_args(q, vectors), pos, self._ip, out)
        return out

    def _refine_args(self, q, vectors):
        """The refine kernels' ``(queries, rows, step, const)`` for the kept
        ``vectors``: float16 rows as their uint16 bits; for int8 rows (with a
        per-dimension scale) the queries in the codes' frame."""
        if vectors.dtype == np.int8:
            u, const = query_frame(q, self._vector_scale, self._ip)
            return u, vectors, np.ascontiguousarray(self._vector_scale[1]), const
        rows = vectors.view(np.uint16) if vectors.dtype == np.float16 else vectors
        return q, rows, _NO_STEP, np.zeros(q.shape[0], np.float32)

    def get_config(self):
        # "pca" only when set: stores without it stay readable by older versions
        return {**super().get_config(), "nlist": self.nlist, "nprobe": self.nprobe,
                "seed": self.seed, "niter": self.niter,
                "max_points_per_centroid": self.max_points_per_centroid,
                **({"pca": self.pca} if self.pca is not None else {}),
                **({"calibration": self.calibration}
                   if self.calibration != DEFAULT_CALIBRATION else {})}

    def _trained_arrays(self):
        if not self.is_trained:
            return {}
        out = {"centroids": self.centroids}
        if self._pca is not None:
            out["pca_matrix"], out["pca_mean"] = self._pca.matrix, self._pca.mean
        return out

    def _trained_arrays_names(self):
        return ("centroids",) + (("pca_matrix", "pca_mean") if self.pca is not None else ())

    def _set_trained_arrays(self, arrays):
        if self.pca is not None:
            self._pca = PCA(self.d, self.pca, seed=self.seed).set_arrays(
                arrays["pca_matrix"], arrays["pca_mean"])
        self._set_centroids(arrays["centroids"])
        self._lists = self._new_lists()
        self._changes = None
        self._on_mutation()

    def __repr__(self):
        return (f"{type(self).__name__}(d={self.d}, nlist={self.nlist}, metric={self.metric!r}, "
                f"ntotal={self.ntotal}, is_trained={self.is_trained})")


class IVFFlatIndex(IVFIndex):
    """Inverted file with exact vectors in the lists (FAISS ``IndexIVFFlat``).

    Parameters
    ----------
    d, nlist : dimension and number of lists.
    metric : "l2", "ip" or "cosine".
    nprobe : default lists scanned per query. seed, niter : coarse k-means.
    num_threads : threads of a batch search (None: Numba's setting; see
        :attr:`num_threads`).
    pca : int in 1..d or None. Project vectors onto their ``pca`` principal
        directions (learnt by ``train``, see :class:`shardann.pca.PCA`): the
        centroids and the lists hold ``pca``-dimensional vectors and the scan
        is exact in that space only. ``refine_factor`` is refused (the original
        vectors are not kept); ``reconstruct`` maps the reduced vectors back.
    calibration : int >= 0, calibration queries sampled from the added rows
        for :meth:`estimate_recall` (default 1000; 0: none). Saved with the index.

    Examples
    --------
    >>> index = IVFFlatIndex(d=128, nlist=256).train(xt)   # doctest: +SKIP
    >>> index.add(xb); D, I = index.search(xq, 10, nprobe=8)  # doctest: +SKIP
    """

    kind = "ivfflat"
    _refines = False  # lists hold exact vectors: the scan is already exact

    def _columns(self):
        return {"vectors": (self.space_d, np.float32)}

    def _payload(self, x, xr, labels):
        return {"vectors": xr}

    def _scan(self, q, dis0, probes, k, allowed=None, lists=None, bounds=None):
        L = self._lists if lists is None else lists
        out_d = np.empty((q.shape[0], k), np.float32)
        out_p = np.empty((q.shape[0], k), np.int64)
        fn = ivfflat_scan_parallel if _parallel(q.shape[0]) else ivfflat_scan_serial
        fn(q, probes, L.data["vectors"], L.ids, L.start, L.size, k, self._ip, out_d, out_p,
           *_mask_arg(allowed, bounds))
        return out_d, out_p

    def _decode_rows(self, pos):
        return self._expand(self._lists.data["vectors"][pos].copy())


class IVFPQIndex(IVFIndex):
    """Inverted file with product-quantized residuals (FAISS ``IndexIVFPQ``), or
    with ``by_residual=False`` product-quantized vectors.

    Parameters
    ----------
    d : int, dimension (a multiple of ``M``).
    nlist : int, number of lists.
    M : int, sub-quantizers; codes take ``ceil(M * nbits / 8)`` bytes.
    nbits : int in 1..8 (8 and 4 have the fastest scans).
    metric : "l2", "ip" or "cosine".
    seed : int, seeds all training.
    opq : bool, learn an OPQ rotation in front of the index.
    keep_vectors : False, True/"float32", "float16" or "int8" — keep the vectors so
        ``search(..., refine_factor=r)`` can re-rank ``k * r`` candidates by their
        distance to them. "float16" halves them, "int8" quarters them (each
        dimension scaled by its range in the training sample, see
        :mod:`shardann.sq`; the scale is saved with the codebooks); re-ranking
        then uses those approximations.
    nprobe : default lists scanned per query.
    niter, pq_niter : k-means iterations for the coarse centroids and codebooks.
    precompute_max_bytes : largest L2 precomputed-term table (nlist * M *
        2**nbits floats) to keep; above it tables are built per (query, list).
    by_residual : bool (default True). True: the codes are of each vector's
        residual to its list centroid (better codes: the PQ only has to hold what
        the centroid misses). False: of the vector itself (FAISS's ``by_residual
        = False``, e.g. index_factory's ``PQ{M}x4fs``): a query's distance table
        does not depend on the list, so a search builds (and, for the fast scan,
        quantizes) one table per query instead of one per (query, list) -
        faster per probed list, lower recall at the same ``nprobe``.
        Saved with the index.
    fast_scan : bool, for ``nbits=4`` on CPUs with AVX2 and ``nbits=8`` on CPUs
        with AVX-512 VBMI: hold the codes in 32-row blocks and scan them with
        the SIMD pre-filter (same results, faster; lists are padded to whole
        blocks). False keeps them row-major for the scalar scan.
    num_threads : threads of a batch search (None: Numba's setting, every core
        by default); results do not depend on it.
    pca : int in 1..d (a multiple of ``M``) or None. Project vectors onto their
        ``pca`` principal directions (learnt by ``train``, see
        :class:`shardann.pca.PCA`; with ``opq`` the rotation is learnt after
        it): the coarse quantizer and the PQ work in that space, kept vectors
        stay in the original one, so ``refine_factor`` re-ranks on the original
        vectors. ``reconstruct`` returns the kept vectors, or without them the
        decoded codes mapped back to ``d`` dimensions.
    calibration : int >= 0, calibration queries sampled from the added rows
        for :meth:`estimate_recall` (default 1000; 0: none): their exact
        neighbours are kept up to date at every ``add`` (one matrix product
        per batch) and saved with the index (``calibration/`` in the store).

    Examples
    --------
    >>> index = IVFPQIndex(d=128, nlist=1024, M=32, nbits=8, metric="l2")  # doctest: +SKIP
    >>> index.train(sample); index.add(xb)                                 # doctest: +SKIP
    >>> D, I = index.search(xq, k=10, nprobe=16)                           # doctest: +SKIP
    """

    kind = "ivfpq"
    _refines = True

    def __init__(self, d, nlist, M, nbits=8, metric="l2", *, seed=0, opq=False,
                 keep_vectors=False, nprobe=1, niter=25, pq_niter=25,
                 max_points_per_centroid=256, precompute_max_bytes=_PRECOMPUTE_MAX_BYTES,
                 fast_scan=True, verbose=False, num_threads=None, pca=None,
                 calibration=DEFAULT_CALIBRATION, by_residual=True):
        super().__init__(d, nlist, metric, nprobe=nprobe, seed=seed, niter=niter,
                         max_points_per_centroid=max_points_per_centroid, verbose=verbose,
                         num_threads=num_threads, pca=pca, calibration=calibration)
        self._fast_scan = check_bool("fast_scan", fast_scan)
        self._by_residual = check_bool("by_residual", by_residual)
        M = check_int("M", M, low=1)
        if self.pca is not None and self.pca % M:
            raise ValueError(f"pca must be a multiple of M; got pca={self.pca}, M={M}")
        self.pq = ProductQuantizer(self.space_d, M, nbits, niter=pq_niter, seed=self.seed,
                                   max_points_per_centroid=max_points_per_centroid,
                                   verbose=verbose)
        self.M, self.nbits = self.pq.M, self.pq.nbits
        self.opq = (OPQ(self.space_d, self.M, nbits=self.nbits, seed=self.seed) if opq
                    else None)
        if keep_vectors is True:
            keep_vectors = "float32"
        self.keep_vectors = (check_choice("keep_vectors", keep_vectors,
                                          ("float32", "float16", "int8"))
                             if keep_vectors else None)
        self._vector_scale = None  # (2, d) int8 scale of kept vectors (keep_vectors="int8")
        self.precompute_max_bytes = check_int("precompute_max_bytes", precompute_max_bytes,
                                              low=0)
        self._list_terms = None

    @property
    def fast_scan(self):
        """Whether 4-bit and 8-bit codes are held for the SIMD fast scan (set at construction)."""
        return self._fast_scan

    @property
    def by_residual(self):
        """Whether the codes are of residuals to the list centroids (set at construction)."""
        return self._by_residual

    @property
    def is_trained(self):
        return self.centroids is not None and self.pq.is_trained

    @property
    def code_size(self):
        return self.pq.code_size

    # -- training ------------------------------------------------------------------
    def _train_transform(self, x):
        x, xr = super()._train_transform(x)
        if self.opq is None:
            return x, xr
        self.opq.train(xr)
        if self._pca is None:  # the rotation is part of the prepared space
            x = self.opq.apply(x)
            return x, x
        self._pca.set_rotation(self.opq.rotation)  # one (d, pca) map: projection, rotation
        return x, self._pca.apply(x)

    def _transform(self, x):
        return x if self.opq is None or self.pca is not None else self.opq.apply(x)

    def _untransform(self, x):
        """Prepared-space rows back to the input space (undo the OPQ rotation)."""
        return x if self.opq is None or self.pca is not None else self.opq.reverse(x)

    def _train_payload(self, x, xr, labels_of):
        if not self._by_residual:
            self._train_codes(x, xr, labels_of)
            return
        if self._pca is not None and self.opq is None:
            residuals = xr - self.centroids[labels_of()]
            # PCA's directions come by decreasing variance: spread them over the
            # sub-quantizers by the variance the codes will have to hold
            order = balanced_order(residuals.var(axis=0), self.M)
            self._pca.reorder(order)
            self._set_centroids(self.centroids[:, order])
            labels_of.invalidate()  # reordered columns round differently
            residuals = np.ascontiguousarray(residuals[:, order])
        else:
            # only the rows the codebooks train on (FAISS samples first too)
            rows = self.pq.training_rows(xr.shape[0])
            sample = xr if rows is None else xr[rows]
            residuals = sample - self.centroids[labels_of(rows)]
        self.pq.train(residuals)
        self._precompute()
        if self.keep_vectors == "int8":
            self._vector_scale = train_scale(x)

    def _train_codes(self, x, xr, labels_of):
        """The codebooks of ``by_residual=False``: trained on the rows themselves."""
        if self._pca is not None and self.opq is None:
            # spread PCA's directions over the sub-quantizers by the variance the
            # codes hold (the rows' own here, not their residuals')
            order = balanced_order(xr.var(axis=0), self.M)
            self._pca.reorder(order)
            self._set_centroids(self.centroids[:, order])
            labels_of.invalidate()  # reordered columns round differently
            sample = np.ascontiguousarray(xr[:, order])
        else:
            rows = self.pq.training_rows(xr.shape[0])
            sample = xr if rows is None else xr[rows]
        self.pq.train(sample)
        self._precompute()
        if self.keep_vectors == "int8":
            self._vector_scale = train_scale(x)

    def _precompute(self):
        """L2 precomputed term per (list, sub-quantizer, code):
        ``|c_mj|^2 + 2 <centroid_l,m, c_mj>`` (FAISS's "term 1")."""
        self._list_terms = None
        self._codebooks_t = self.pq.codebooks_t  # the query-table kernel's layout
        if not self._by_residual:
            # the L2 table is |q_m|^2 + |c_mj|^2 - 2 <q_m, c_mj>: the codeword norms
            self._code_norms = np.einsum("mkd,mkd->mk", self.pq.codebooks, self.pq.codebooks)
            return
        if self._ip:
            return
        M, ksub, dsub = self.pq.codebooks.shape
        if self.nlist * M * ksub * 4 > self.precompute_max_bytes:
            logger.info("precomputed L2 tables would take %d bytes > %d; building tables "
                        "per (query, list)", self.nlist * M * ksub * 4, self.precompute_max_bytes)
            return
        cb = self.pq.codebooks
        norms = np.einsum("mkd,mkd->mk", cb, cb)
        terms = np.empty((self.nlist, M, ksub), np.float32)
        for m in range(M):  # one small matrix product per sub-quantizer (BLAS)
            sub = self.centroids[:, m * dsub:(m + 1) * dsub]
            terms[:, m, :] = norms[m][None, :] + np.float32(2.0) * (sub @ cb[m].T)
        self._list_terms = terms

    # -- add -------------------------------------------------------------------------
    def _tiled_columns(self):
        # decided when lists are made, so a machine without AVX2 that opens an
        # index gets the row-major layout its scalar scan reads
        if not self._fast_scan:
            return ()
        if self.nbits == 4:
            usable = fastscan.AVAILABLE and 2 * self.code_size <= fastscan.MAX_SUBQ
        else:
            usable = self.nbits == 8 and fastscan8.AVAILABLE and self.M <= fastscan8.MAX_SUBQ
        return ("codes",) if usable else ()

    def _columns(self):
        cols = {"codes": (self.code_size, np.uint8)}
        if self.keep_vectors:
            cols["vectors"] = (self.d, np.dtype(self.keep_vectors))
        return cols

    def _payload(self, x, xr, labels):
        cols = {"codes": (self.pq._encode(xr, self.centroids, labels) if self._by_residual
                          else self.pq._encode(xr))}
        if self.keep_vectors == "int8":
            cols["vectors"] = sq_encode(x, self._vector_scale)
        elif self.keep_vectors:
            cols["vectors"] = x.astype(self.keep_vectors, copy=False)
        return cols

    # -- search ------------------------------------------------------------------------
    def _scan(self, q, dis0, probes, k, allowed=None, lists=None, bounds=None):
        L = self._lists if lists is None else lists
        nq = q.shape[0]
        mask = _mask_arg(allowed, bounds)
        cb = self.pq.codebooks
        # the table kind is told by which of list_terms / codebooks is given
        # (see shardann._kernels.ivf): each compiles without the others' code
        pq_dot_tables = pq_dot_tables_parallel if _parallel(nq) else pq_dot_tables_serial
        if not self._by_residual:
            # one table per query: the kernels build (and quantize) it once and
            # keep it for every list; dis0 is the part the table leaves out
            qlut = pq_dot_tables(q, self._codebooks_t)
            if self._ip:
                np.negative(qlut, out=qlut)
                dis0 = np.zeros_like(dis0)
            else:
                qlut *= -2.0
                qlut += self._code_norms
                qnorm = np.einsum("ij,ij->i", q, q).astype(np.float32)
                dis0 = np.ascontiguousarray(np.broadcast_to(qnorm[:, None], dis0.shape))
            terms = books = None
        elif self._ip:
            qlut = pq_dot_tables(q, self._codebooks_t)
            np.negative(qlut, out=qlut)
            terms = books = None
        elif self._list_terms is not None:
            qlut = pq_dot_tables(q, self._codebooks_t)
            qlut *= -2.0
            terms, books = self._list_terms, None
        else:  # L2 residual tables, built per (query, list)
            qlut = np.empty((nq, self.M, self.pq.ksub), np.float32)
            terms, books = None, cb
            dis0 = np.zeros_like(dis0)
        out_d = np.empty((nq, k), np.float32)
        out_p = np.empty((nq, k), np.int64)
        if "codes" in L.tiled:
            if self.nbits == 8:
                fn = ivfpq8_fastscan_parallel if _parallel(nq) else ivfpq8_fastscan_serial
            else:
                fn = ivfpq4_fastscan_parallel if _parallel(nq) else ivfpq4_fastscan_serial
            # its SIMD table code reads whole rows: C-contiguous tables (no copy here)
            fn(np.ascontiguousarray(qlut), None if terms is None else np.ascontiguousarray(terms),
               dis0, probes, L.data["codes"].tiles, L.ids, L.start, L.size, k, q,
               self.centroids, books, out_d, out_p, *mask)
        elif self.nbits == 8:  # its own kernel: compiles in less time than any width's
            fn = ivfpq8_scan_parallel if _parallel(nq) else ivfpq8_scan_serial
            # the passing rows' copy of a selective filter: lists with few rows skip
            # their table (the keys are the same; with a mask, building the table
            # measured faster than reading each passing row's entries)
            direct = _mask_arg(allowed) if L is self._lists else (None, _DIRECT_ROWS)
            if bounds is not None:
                direct = (allowed, np.int64(0) if L is self._lists else _DIRECT_ROWS, bounds)
            fn(qlut, terms, dis0, probes, L.data["codes"], L.ids, L.start, L.size, k,
               q, self.centroids, books, out_d, out_p, *direct)
        else:
            fn = ivfpq_scan_parallel if _parallel(nq) else ivfpq_scan_serial
            fn(qlut, terms, dis0, probes, L.data["codes"], L.ids, L.start, L.size, k,
               self.nbits, q, self.centroids, books, out_d, out_p, *mask)
        return out_d, out_p

    def __setstate__(self, state):
        self.__dict__.setdefault("_by_residual", True)  # pickled before the option
        self.__dict__.update(state)
        lists = self.__dict__.get("_lists")
        if lists is not None and lists.tiled != frozenset(self._tiled_columns()):
            # unpickled on a CPU that scans another layout
            self._lists = InvertedLists.from_sorted(
                self.nlist, lists.columns, *lists.packed(), tiled=self._tiled_columns())

    def get_config(self):
        # (pca, when set, comes from IVFIndex.get_config)
        return {**super().get_config(), "M": self.M, "nbits": self.nbits,
                "opq": self.opq is not None, "keep_vectors": self.keep_vectors or False,
                "pq_niter": self.pq.niter, "precompute_max_bytes": self.precompute_max_bytes,
                "fast_scan": self.fast_scan, "by_residual": self.by_residual}

    def _trained_arrays(self):
        if not self.is_trained:
            return {}
        out = {**super()._trained_arrays(), "codebooks": self.pq.codebooks}
        if self.opq is not None:
            out["opq_rotation"] = self.opq.rotation
        if self.keep_vectors == "int8":
            out["vector_scale"] = self._vector_scale
        return out

    def _trained_arrays_names(self):
        return (super()._trained_arrays_names() + ("codebooks",)
                + (("opq_rotation",) if self.opq is not None else ())
                + (("vector_scale",) if self.keep_vectors == "int8" else ()))

    def _drift_codes(self, payload):
        return self.pq, payload["codes"]

    def quantization_errors(self, x, list_no, payload):
        if self._by_residual:
            return super().quantization_errors(x, list_no, payload)
        # the PQ error of a code of the vector itself: its residual to a zero "centroid"
        xr = self._reduce(x)
        coarse = quantization_errors(xr, self.centroids, list_no)
        pq_err = quantization_errors(xr, np.zeros((1, xr.shape[1]), np.float32),
                                     np.zeros(len(list_no), np.int64), self.pq,
                                     payload["codes"])["pq"]
        return {**coarse, "pq": pq_err}

    def _set_trained_arrays(self, arrays):
        self.pq.codebooks = np.ascontiguousarray(arrays["codebooks"], dtype=np.float32)
        self.pq._derived = None
        if self.opq is not None:
            self.opq.rotation = np.ascontiguousarray(arrays["opq_rotation"], dtype=np.float32)
        if self.keep_vectors == "int8":
            self._vector_scale = np.ascontiguousarray(arrays["vector_scale"], dtype=np.float32)
        super()._set_trained_arrays(arrays)
        if self._pca is not None and self.opq is not None:
            self._pca.set_rotation(self.opq.rotation)
        self._precompute()

    def _decode_rows(self, pos):
        L = self._lists
        if self.keep_vectors == "int8":
            x = sq_decode(L.data["vectors"][pos], self._vector_scale)
        elif self.keep_vectors:
            x = L.data["vectors"][pos].astype(np.float32)
        else:
            x = self.pq.decode(L.data["codes"][pos])
            if self._by_residual:
                x += self.centroids[L.owners(pos)]
            x = self._expand(x)
        return self._untransform(x)
