"""Live recall estimates: a calibration set of held-out queries whose exact
neighbours are kept up to date as rows come and go, and the estimate with its
confidence interval.

The set is sampled from the rows an index is built from: while it holds every
row added so far (at most ``size``), each added row joins it; the add that
passes ``size`` rows draws ``size`` of all rows seen so far uniformly (seeded)
and the set is fixed from then on. Every row added before it closes is one of
its queries, so the exact neighbours of each query over all rows are known
without keeping the raw vectors of the index: later adds merge the exact
distances of the queries to each new batch (one BLAS product per batch) into
their running top-``k_max``, and removals drop ids from them. Each query also
keeps a bound: its list holds exactly the live rows within that distance (the
``k_max``-th distance when it was last full), so rows added after a removal
never take the place of older rows the list no longer knows. A query never
counts itself: its own id is left out of its neighbours, and out of the
index's answer when estimating.

The estimate runs the index's own search on the queries (``k + 1`` hits, own
id dropped) and compares with the exact top-``k``; see
:func:`recall_interval` for the interval.
"""

import dataclasses
import logging
import math
import statistics

import numpy as np

from .._kernels.refine import shortlist_keys_serial
from .._validation import as_id_array, check_int
from ..errors import CorruptIndexError
from ..metric import distances_to_keys, keys_to_distances, uses_ip
from ..results import merge_results
from .flat import exact_search_keys

logger = logging.getLogger(__name__)

#: queries a new IVF index samples by default (``calibration=``)
DEFAULT_SIZE = 1000
#: exact neighbours kept per query: estimates for any k <= K_MAX (the slack above
#: k absorbs removals)
K_MAX = 100
#: candidates past ``k_max`` that the BLAS pass of :func:`exact_neighbours` hands
#: to the exact re-keying, so that rows BLAS rounds across the cut still compete
SHORTLIST_SLACK = 8


def exact_neighbours(q, xb, ids, own, k, metric):
    """Exact top-``k`` of prepared queries among rows, each query's own id left out.

    Parameters
    ----------
    q : float32 (m, d), prepared queries. xb : float32 (n, d), prepared rows.
    ids : int64 (n,), the rows' ids. own : int64 (m,), each query's own id
        (left out of its neighbours; -1 for none).
    k : int, neighbours per query. metric : "l2", "ip" or "cosine".

    Returns keys float32 (m, k) (squared L2, or the negated inner product)
    and ids int64 (m, k), best first, ties by smaller id, padded (+inf, -1).

    The same rows get the same neighbours and keys in any batch: BLAS (through
    :func:`~shardann.index.flat.exact_search_keys`) only shortlists ``k + 1 +``
    :data:`SHORTLIST_SLACK` rows, whose keys are then computed from each
    (query, row) pair alone (the refine kernel). So a calibration set's truth
    is the same whether its rows came in one add, many adds, or the blocks of
    an ingest job on other processes.
    """
    m, n = q.shape[0], xb.shape[0]
    if m == 0 or n == 0:
        return (np.full((m, k), np.inf, np.float32), np.full((m, k), -1, np.int64))
    ip = uses_ip(metric)
    _, pos = exact_search_keys(q, xb, np.arange(n, dtype=np.int64),
                               min(k + 1 + SHORTLIST_SLACK, n), ip)
    keys = np.empty(pos.shape, np.float32)
    # float32 rows take no step or constant; +inf where pos is -1
    shortlist_keys_serial(q, xb, np.empty(0, np.float32), np.zeros(m, np.float32), pos, ip, keys)
    found = np.where(pos >= 0, np.asarray(ids, np.int64)[np.maximum(pos, 0)], -1)
    mine = found == np.asarray(own, np.int64)[:, None]
    keys[mine], found[mine] = np.inf, -1
    return merge_results([(keys, found)], k, "l2")


class CalibrationSet:
    """Held-out queries (rows of the index, by id) and their exact ``k_max``
    nearest neighbours among the index's other rows.

    Attributes: ``ids`` int64 (m,), ``vectors`` float32 (m, d) as added,
    ``live`` bool (m,) (the query's row is still in the index),
    ``truth_keys`` float32 (m, k_max) (squared L2, or the negated inner
    product), ``truth_ids`` int64 (m, k_max), best first, -1 padding;
    ``bound`` float32 (m,): the list holds every live row whose key is at most
    this (+inf until it has been full);
    ``rows_seen`` rows added while the set was open, ``closed``.
    """

    def __init__(self, d, metric, size=DEFAULT_SIZE, k_max=K_MAX, seed=0):
        self.d, self.metric = int(d), metric
        self.size = check_int("calibration", size, low=1)
        self.k_max = check_int("k_max", k_max, low=1)
        self.seed = int(seed)
        self.ids = np.zeros(0, np.int64)
        self.vectors = np.zeros((0, self.d), np.float32)
        self.live = np.zeros(0, bool)
        self.truth_keys = np.zeros((0, self.k_max), np.float32)
        self.truth_ids = np.zeros((0, self.k_max), np.int64)
        self.bound = np.zeros(0, np.float32)
        self.rows_seen = 0
        self.closed = False

    @property
    def nqueries(self):
        return int(self.ids.size)

    def copy(self):
        out = CalibrationSet(self.d, self.metric, self.size, self.k_max, self.seed)
        for name in ("ids", "vectors", "live", "truth_keys", "truth_ids", "bound"):
            setattr(out, name, getattr(self, name).copy())
        out.rows_seen, out.closed = self.rows_seen, self.closed
        return out

    # -- storage -----------------------------------------------------------------------
    def to_bytes(self):
        """The calibration file's bytes (see docs/format.md)."""
        from ..storage import encode_calibration

        arrays = {"ids": self.ids, "vectors": self.vectors, "live": self.live,
                  "truth_ids": self.truth_ids,
                  # (copies: the conversion negates ip keys in place)
                  "truth_distances": keys_to_distances(self.truth_keys.copy(), self.metric),
                  "truth_bound": keys_to_distances(self.bound.copy(), self.metric)}
        meta = {"metric": self.metric, "size": self.size, "seed": self.seed,
                "rows_seen": self.rows_seen, "closed": self.closed}
        return encode_calibration(arrays, meta)

    @classmethod
    def from_file(cls, arrays, meta):
        """The set a calibration file holds (``(arrays, meta)`` as read by
        :meth:`shardann.storage.IndexStore.read_calibration`)."""
        out = cls(meta["d"], meta["metric"], meta["size"], meta["k_max"], meta["seed"])
        out.ids = arrays["ids"]
        out.vectors = arrays["vectors"]
        out.live = arrays["live"]
        out.truth_ids = arrays["truth_ids"]
        keys = distances_to_keys(arrays["truth_distances"], out.metric)
        keys[out.truth_ids < 0] = np.inf
        out.truth_keys = np.ascontiguousarray(keys, np.float32)
        out.bound = np.ascontiguousarray(
            distances_to_keys(arrays["truth_bound"], out.metric), np.float32)
        out.rows_seen, out.closed = int(meta["rows_seen"]), bool(meta["closed"])
        return out

    # -- upkeep ------------------------------------------------------------------------
    def _top(self, q, xb, ids, own):
        """Exact top-k_max of prepared queries ``q`` against rows ``xb`` (ids),
        each query's ``own`` id left out (:func:`exact_neighbours`)."""
        return exact_neighbours(q, xb, ids, own, self.k_max, self.metric)

    def draw(self, n):
        """The queries that stay and the rows that join when a batch of ``n``
        rows is added next: ``(keep, new)``, int64 positions among the set's
        queries and among the batch's rows, ascending. The set is not changed
        (:meth:`absorb` does that).

        While the set is open every row joins; the batch that passes ``size``
        rows draws ``size`` of all rows seen so far uniformly, seeded by the
        set's seed, the rows seen before and ``n``, so the same batches give the
        same queries whoever computes their neighbours.
        """
        n = int(n)
        if self.closed:
            return np.arange(self.nqueries), np.zeros(0, np.int64)
        total = self.rows_seen + n
        if total <= self.size:
            return np.arange(self.nqueries), np.arange(n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.rows_seen, n])
        pick = np.sort(rng.choice(total, self.size, replace=False))
        return pick[pick < self.rows_seen], pick[pick >= self.rows_seen] - self.rows_seen

    def add(self, raw, prepared, ids, prepare, contains):
        """Take in a batch of rows added to the index (before they are).

        Parameters
        ----------
        raw : float32 (n, d), the rows as given to ``add``.
        prepared : float32 (n, d), the same rows as the index prepares them
            (normalised for cosine, rotated by OPQ).
        ids : int64 (n,), their ids.
        prepare : callable, float32 (m, d) raw -> prepared rows.
        contains : callable, int64 ids -> bool, which are in the index (asked
            before the batch is added).
        """
        n = ids.size
        if n == 0:
            return
        keep, new = self.draw(n)
        q = prepared[new]
        if keep.size:
            q = np.concatenate([prepare(self.vectors[keep]), q])
        found = self._top(q, prepared, ids, np.concatenate([self.ids[keep], ids[new]]))
        self.absorb(keep, raw[new], ids[new], found, n, prepare, contains)

    def absorb(self, keep, raw_new, ids_new, found, n, prepare, contains):
        """Finish adding a batch of ``n`` rows whose queries were chosen by
        :meth:`draw` and whose neighbours were found elsewhere (an ingest job's
        workers, block by block).

        Parameters
        ----------
        keep : int64, the queries that stay (:meth:`draw`).
        raw_new : float32 (j, d), the batch rows that join as queries, as given
            (those of :meth:`draw`'s ``new`` that were added: rows an ingest
            skipped as bad are left out).
        ids_new : int64 (j,), their ids.
        found : ``(keys float32 (len(keep) + j, k_max), ids int64)``, the exact
            top-``k_max`` of the kept queries, then the new ones, among the
            batch's rows, own ids left out (:func:`exact_neighbours`, merged
            over parts with :func:`~shardann.results.merge_results`).
        n : the batch's rows, as given to :meth:`draw`.
        prepare, contains : as for :meth:`add`.
        """
        keys_found, ids_found = found
        nkeep = keep.size
        if self.closed:
            if self.nqueries:
                self.truth_keys, self.truth_ids, self.bound = _settle(
                    *merge_results([(self.truth_keys, self.truth_ids), found], self.k_max,
                                   "l2"), self.bound)
            return
        # open: every row seen so far is a query, so the rows before this batch are
        # known exactly (those still in the index: ``live``)
        if self.nqueries:
            self.live = np.asarray(contains(self.ids), bool)
        before_vec = self.vectors[self.live]
        before_ids = self.ids[self.live]
        total = self.rows_seen + int(n)
        if total > self.size:  # the draw closed the set (see :meth:`draw`)
            self.closed = True
            logger.info("calibration set closed: %d queries drawn from %d rows",
                        nkeep + ids_new.size, total)
        old_ids = self.ids[keep]
        keys_old, ids_old, bound_old = _settle(*merge_results(
            [(self.truth_keys[keep], self.truth_ids[keep]),
             (keys_found[:nkeep], ids_found[:nkeep])], self.k_max, "l2"), self.bound[keep])
        parts = [(keys_found[nkeep:], ids_found[nkeep:])]
        if before_ids.size and ids_new.size:
            parts.append(self._top(prepare(raw_new), prepare(before_vec), before_ids, ids_new))
        keys_new, ids_new_truth, bound_new = _settle(
            *merge_results(parts, self.k_max, "l2"), np.full(ids_new.size, np.inf, np.float32))
        self.ids = np.concatenate([old_ids, np.asarray(ids_new, np.int64)])
        self.vectors = np.ascontiguousarray(np.concatenate(
            [self.vectors[keep], np.asarray(raw_new, np.float32).reshape(-1, self.d)]))
        self.live = np.concatenate([self.live[keep], np.ones(ids_new.size, bool)])
        self.truth_keys = np.ascontiguousarray(np.concatenate([keys_old, keys_new]))
        self.truth_ids = np.ascontiguousarray(np.concatenate([ids_old, ids_new_truth]))
        self.bound = np.concatenate([bound_old, bound_new])
        # while open, every row seen is a query (the draw's positions count on it):
        # rows of the batch that were not added (an ingest's bad rows) are not seen
        self.rows_seen = total if self.closed else self.rows_seen + int(ids_new.size)

    def remove(self, ids):
        """Rows ``ids`` (int64) left the index: drop them from every query's
        neighbours (the queries themselves stay)."""
        ids = as_id_array(ids)
        if ids.size == 0 or self.nqueries == 0:
            return
        self.live &= ~np.isin(self.ids, ids)
        gone = np.isin(self.truth_ids, ids)
        if gone.any():
            keys, tid = self.truth_keys.copy(), self.truth_ids.copy()
            keys[gone], tid[gone] = np.inf, -1
            self.truth_keys, self.truth_ids = merge_results([(keys, tid)], self.k_max, "l2")

    def forget_dead(self, contains):
        """Drop neighbours no longer in the index (a set read from a store, whose
        removals since were not applied to it); ``contains`` as in :meth:`add`."""
        if self.nqueries == 0:
            return
        ids = np.unique(self.truth_ids[self.truth_ids >= 0])
        dead = ids[~np.asarray(contains(ids), bool)] if ids.size else ids
        self.remove(dead)
        self.live = np.asarray(contains(self.ids), bool)


def _settle(keys, ids, bound):
    """Merged neighbour lists cut at each query's bound (rows farther than it may
    have older rows before them that the list no longer knows), and the bound
    tightened to the last key of the lists that are full."""
    over = keys > bound[:, None]
    keys[over], ids[over] = np.inf, -1
    full = ids[:, -1] >= 0
    return keys, ids, np.where(full, keys[:, -1], bound).astype(np.float32)


# -- the estimate ------------------------------------------------------------------------
@dataclasses.dataclass
class RecallEstimate:
    """Estimated recall@k of an index at one setting, with its interval.

    ``recall``: the mean over the calibration queries of the fraction of each
    query's exact top-k found in the index's top-k; ``lower`` / ``upper``: its
    ``confidence`` interval (see :func:`recall_interval`); ``n_queries``
    queries used, ``n_skipped`` left out (fewer than k exact neighbours left
    after removals); the search settings ``k``, ``nprobe``,
    ``refine_factor``, ``probe_ratio``, ``probe_gap``.
    """

    recall: float
    lower: float
    upper: float
    n_queries: int
    n_skipped: int
    k: int
    nprobe: int | None
    refine_factor: int
    probe_ratio: float | None
    confidence: float
    method: str = "wilson (kish effective n)"
    probe_gap: float | None = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        pr = "" if self.probe_ratio is None else f" probe_ratio={self.probe_ratio}"
        pr += "" if self.probe_gap is None else f" probe_gap={self.probe_gap:g}"
        return (f"recall@{self.k} = {self.recall:.4f} [{self.lower:.4f}, {self.upper:.4f}] "
                f"({self.confidence:.0%} interval; {self.n_queries} calibration queries; "
                f"nprobe={self.nprobe} refine_factor={self.refine_factor}{pr})")


def recall_interval(per_query, k, confidence=0.95):
    """``(mean, lower, upper)`` of per-query recalls (floats in [0, 1], multiples
    of 1/k).

    A Wilson score interval for the mean recall with Kish's effective sample
    size ``n_eff = p (1 - p) / (s^2 / n)``: the k hits of one query are not
    independent, so the binomial interval over ``n * k`` trials would be too
    narrow; scaling by the observed variance of the per-query recall ``s^2``
    turns it into the right width (``n_eff`` lies between ``n`` — hits all or
    nothing per query — and ``n * k`` — independent hits). Wilson rather than
    the normal interval because recall lives near 1, where the normal
    interval leaves [0, 1] and collapses to zero width when every query
    scores 1; then ``n_eff = n`` (the cautious end).
    """
    r = np.asarray(per_query, np.float64)
    n = r.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p = float(r.mean())
    var = float(r.var(ddof=1)) if n > 1 else 0.0
    if var > 0 and 0 < p < 1:
        n_eff = min(max(p * (1 - p) * n / var, n), n * k)
    else:
        n_eff = float(n)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    denom = 1 + z2 / n_eff
    center = (p + z2 / (2 * n_eff)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff * n_eff))
    return p, max(0.0, center - half), min(1.0, center + half)


def estimate_recall(cal, search, contains, k, *, nprobe=None, refine_factor=0,
                    probe_ratio=None, confidence=0.95, probe_gap=None):
    """Estimate recall@k of ``search`` on calibration set ``cal``.

    ``search(queries, kk)`` returns the index's ``(D, I)`` of float32 (m, d)
    queries (the index's own search path, at the settings estimated);
    ``contains(ids)`` says which ids are live (the truth is filtered by it, so
    removals a stored set has not seen yet do not count). Returns a
    :class:`RecallEstimate`.
    """
    k = check_int("k", k, low=1, high=cal.k_max)
    confidence = float(confidence)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    truth = cal.truth_ids
    valid = truth >= 0
    ids = np.unique(truth[valid])
    if ids.size:
        live = np.asarray(contains(ids), bool)
        valid &= np.isin(truth, ids[live])
    enough = valid.sum(axis=1) >= k
    rows = np.flatnonzero(enough)
    # the first k live neighbours of each usable query, in order
    order = np.argsort(~valid[rows], axis=1, kind="stable")[:, :k]
    want = np.take_along_axis(truth[rows], order, axis=1)
    if rows.size:
        _, I = search(cal.vectors[rows], k + 1)
        mine = I == cal.ids[rows][:, None]  # a query is never its own neighbour
        got = np.take_along_axis(I, np.argsort(mine, axis=1, kind="stable"), axis=1)[:, :k]
        hits = (got[:, :, None] == want[:, None, :]).any(axis=2).sum(axis=1)
        per_query = hits / k
    else:
        per_query = np.zeros(0)
    p, lo, hi = recall_interval(per_query, k, confidence)
    return RecallEstimate(recall=p, lower=lo, upper=hi, n_queries=int(rows.size),
                          n_skipped=int(cal.nqueries - rows.size), k=k, nprobe=nprobe,
                          refine_factor=int(refine_factor), probe_ratio=probe_ratio,
                          confidence=confidence, probe_gap=probe_gap)


# -- an index's calibration set ----------------------------------------------------------
# ``index._cal`` is None, a CalibrationSet, or the store view it is to be read from
# (read when first needed: opening an index never reads it)
NO_SET = ("the index has no calibration set: it was built with calibration=0, or its "
          "rows came from a writer that does not keep one (add_preassigned, set_lists, "
          "a merge that added rows, an ingest with calibration=0 or before ingest kept "
          "one), or it was opened from a store saved without one. Rebuild with "
          "calibration=N (the default, 1000) to estimate recall")


def loaded(index_cal, contains):
    """The CalibrationSet of an ``index._cal`` value, read from its store view if
    need be (removals since applied through ``contains``); None for none."""
    if index_cal is None or isinstance(index_cal, CalibrationSet):
        return index_cal
    found = index_cal.read_calibration()
    if found is None:
        return None
    cal = CalibrationSet.from_file(*found)
    cal.forget_dead(contains)
    return cal


def stored(store):
    """The ``index._cal`` value of an index loaded from ``store`` (an open view):
    the view itself when it has a calibration set (read later), else None."""
    return store if store.calibration_file is not None else None


def state_bytes(index_cal):
    """The calibration file bytes of an ``index._cal`` value (for ``to_state``)."""
    if index_cal is None:
        return None
    if isinstance(index_cal, CalibrationSet):
        return index_cal.to_bytes()
    return index_cal.read_calibration_bytes()


def for_add(index):
    """The CalibrationSet an ``add`` to ``index`` keeps up to date: its own (read
    from its store if need be), or a new one when the index is empty and takes
    ``index.calibration`` queries; else None."""
    cal = index._cal
    if cal is None:
        size = index.calibration
        if size and index.ntotal == 0:  # rows before would be unknown: start empty only
            cal = index._cal = CalibrationSet(index.d, index.metric, size,
                                              seed=getattr(index, "seed", 0))
        return cal
    if not isinstance(cal, CalibrationSet):
        try:
            cal = loaded(cal, index.contains)
        except (CorruptIndexError, OSError) as exc:
            # the set is an aid to estimates: an add must not fail because its file
            # went away (e.g. the store was deleted under an open index); the index
            # goes on without one, and estimate_recall says there is none
            logger.warning("calibration set dropped, it could not be read: %s", exc)
            cal = None
        index._cal = cal
    return cal


def require(index_cal, contains):
    """:func:`loaded`, or ``ValueError`` (:data:`NO_SET`) when there is none."""
    cal = loaded(index_cal, contains)
    if cal is None or cal.nqueries == 0:
        raise ValueError(NO_SET)
    return cal


def load_calibration(source, contains, *, required=False):
    """A coordinator's calibration set from ``source`` (what
    :func:`calibration_source` returned, or a CalibrationSet): the set, read
    from the store if need be, or None — or with ``required``, ``ValueError``
    saying why there is none."""
    return require(source, contains) if required else loaded(source, contains)


#: what a coordinator keeps of a store's calibration set until it is needed
calibration_source = stored
