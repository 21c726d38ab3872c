"""What ``shardann plan`` measures on the sample: recall and search cost of
IVF-PQ indexes at a few list counts, database sizes, code layouts, kept-vector
types, nprobe and refine factors.

One coarse k-means per list count (the other code layouts share its
centroids, :func:`._runners.model_twin`); each layout is filled once with the
whole sample database, and the smaller databases (the first half, the first
quarter) are read off the same scans by dropping the rows beyond them, so a
scan answers every database size, refine factor and kept-vector type at once.

Recall is split in two as the planner's model uses it (:mod:`._plan_model`):
``coarse`` is the fraction of the true top-k that lies in the probed lists,
``recall`` the fraction the full search returns (ADC scan, then re-ranking of
``k * refine_factor`` candidates on kept vectors when ``refine_factor > 0``).
``ranks`` keeps, per true neighbour rank j (1..k), the share of the probed
neighbours of that rank whose ADC position is within a shortlist of L, for a
grid of L (:func:`shortlist_grid`): what the model thins to databases larger
than the sample (:mod:`._plan_model`).

Times are CPU seconds on one thread (:mod:`._timing`): the coarse step by list
count, the scan by codes and lists visited, the re-ranking by candidate.
"""

import dataclasses
import functools
import logging
import time

import numpy as np

from .. import IVFPQIndex, brute_force_knn
from ..results import recall_at_k
from . import _timing
from ._runners import model_twin

logger = logging.getLogger(__name__)

#: nprobe values measured (those up to the list count)
NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
#: fewest rows per list k-means trains well on; the largest list count measured keeps to it
MIN_POINTS_PER_LIST = 39
#: a measured recall this close to 1 says nothing more: larger nprobe is not scanned
_SATURATED = 0.9995


@dataclasses.dataclass
class Measurements:
    """What one sample measured (plain values, JSON-able through ``to_dict``).

    Attributes
    ----------
    d, metric, k : the data and the neighbours per query.
    n_sample : database rows of the sample; ``sizes`` the database sizes
        measured (``n_sample`` and its half and quarter).
    nq : queries (held-out rows of the sample).
    nlists : list counts measured.
    coarse : rows ``{"n", "nlist", "nprobe", "recall", "by_rank"}`` (``by_rank``: per
        true neighbour rank 1..k).
    recall : rows ``{"n", "nlist", "nbits", "M", "keep", "refine", "nprobe", "recall"}``.
    ranks : rows ``{"n", "nlist", "nbits", "M", "nprobe", "shortlists", "survival"}``:
        ``survival[j][i]`` is the share of the probed true neighbours of rank
        ``j + 1`` whose position by ADC key is below ``shortlists[i]`` (a
        shortlist of that many candidates keeps them).
    timing : ``{"coarse": [{"nlist", "s"}], "scan": [{"nbits", "M", "nlist", "nprobe",
        "codes", "s"}], "refine": [{"nbits", "M", "keep", "candidates", "s"}]}``: CPU
        seconds per query on one thread.
    list_skew : mean codes a probe scans over the mean list size (queries fall
        in dense regions), per list count.
    source : where the sample came from; ``seconds``: how long measuring took.
    """

    d: int
    metric: str
    k: int
    n_sample: int
    sizes: list
    nq: int
    nlists: list
    coarse: list
    recall: list
    timing: dict
    list_skew: dict
    source: str
    seconds: float = 0.0
    ranks: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)


def measurement_nlists(n, count=3):
    """List counts measured on an ``n``-row sample: the largest power of two
    with at least :data:`MIN_POINTS_PER_LIST` rows per list, then steps of 4x
    down (at least 4 lists)."""
    top = 1 << max(2, int(np.floor(np.log2(max(4, n // MIN_POINTS_PER_LIST)))))
    out = [top >> (2 * i) for i in range(count)]
    return sorted(v for v in out if v >= 4)


def shortlist_grid(k, refine_factors):
    """Shortlist lengths whose per-rank survival is measured: 1, 2, 3, 4, 6, 8,
    12, ... (steps of 1.5x and 2x) up to the longest searched (``k`` times the
    largest refine factor), and the searched ones themselves."""
    top = k * max([1, *refine_factors])
    out = {v for v in NPROBES if v <= top}
    v = NPROBES[-1]
    while v * 1.5 <= top:  # beyond NPROBES' last value, keep the 1.5x / 2x steps
        out |= {w for w in (int(v * 1.5), v * 2) if w <= top}
        v *= 2
    return sorted(out | {k * max(1, r) for r in refine_factors} | {k, top})


def rank_survival(ids, gt, probed, n, shortlists):
    """Per-rank shortlist survival of one scan on the database of the first ``n`` rows.

    Parameters
    ----------
    ids : int64 (nq, c) candidate rows of the whole database, ascending ADC key.
    gt : int64 (nq, k) exact neighbours (rows < n), nearest first.
    probed : bool (nq, k), whether each neighbour's list was probed.
    shortlists : ascending ints, each at most the number of candidates below
        ``n`` that ``ids`` holds for every query.

    Returns float64 (k, len(shortlists)): for rank j and shortlist L, the
    share of the probed rank-j neighbours among the first L candidates.
    """
    valid = (ids >= 0) & (ids < n)
    pos = np.cumsum(valid, axis=1) - 1                           # position within the n rows
    hit = (ids[:, :, None] == gt[:, None, :]) & valid[:, :, None]  # (nq, c, k)
    at = np.where(hit.any(1), np.take_along_axis(pos, hit.argmax(1), 1), np.iinfo(np.int64).max)
    count = np.maximum(probed.sum(0), 1)
    return np.stack([((at < L) & probed).sum(0) / count for L in shortlists], axis=1)


def sample_rows(sample, d, *, n, nq, seed, label="array"):
    """``(xb, xq, source)``: float32 database (at most ``n`` rows) and ``nq``
    held-out queries drawn from the (m, d) array ``sample`` (named ``label`` in
    ``source``), or generated on :func:`.datasets.synthetic`'s manifold when
    ``sample`` is None."""
    from .datasets import synthetic

    if sample is None:
        x = synthetic(n + nq, d, seed=seed)
        return x[:n], x[n:], f"generated: shardann.bench.datasets.synthetic(d={d}, seed={seed})"
    if sample.ndim != 2 or sample.shape[1] != d:
        raise ValueError(f"the sample must be (n, {d}) vectors; got shape {sample.shape}")
    m = sample.shape[0]
    need = nq + 4 * 4 * MIN_POINTS_PER_LIST
    if m < need:
        raise ValueError(f"the sample has {m} rows; it needs at least {need} ({nq} queries "
                         "+ a database)")
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(m, n + nq, replace=False)) if m > n + nq else slice(None)
    rows = np.asarray(sample[take], dtype=np.float32)
    rows = rows[rng.permutation(rows.shape[0])]
    if not np.isfinite(rows).all():
        raise ValueError("the sample holds NaN or infinite values")
    xq, xb = rows[:nq], rows[nq:]
    return (np.ascontiguousarray(xb), np.ascontiguousarray(xq),
            f"{label}: {xb.shape[0]:,} database rows + {nq:,} queries (seed {seed})")


def _prefix(ids, exact, n):
    """The candidates a database of the first ``n`` rows gives, in the same
    order: ``ids`` / ``exact`` (nq, c) with the rows of id >= ``n`` moved to the
    end as -1 / ``+inf`` (``exact`` may be None)."""
    sel = (ids >= 0) & (ids < n)
    order = np.argsort(~sel, axis=1, kind="stable")
    ok = np.take_along_axis(sel, order, 1)
    ids_n = np.where(ok, np.take_along_axis(ids, order, 1), -1)
    if exact is None:
        return ids_n, None
    return ids_n, np.where(ok, np.take_along_axis(exact, order, 1), np.inf)


def _recall_rows(base, ids, exact, gt, k, refine_factors):
    """Recall rows of one scan: ``ids`` / ``exact`` candidates by ADC key
    (ascending), re-ranked on ``exact`` keys for each refine factor > 0."""
    out = []
    for r in refine_factors:
        if r == 0:
            top = ids[:, :k]
        else:
            short = min(k * r, ids.shape[1])
            order = np.argsort(exact[:, :short], axis=1, kind="stable")[:, :k]
            top = np.take_along_axis(ids[:, :short], order, 1)
        out.append({**base, "keep": base["keep"] if r else None, "refine": int(r),
                    "recall": float(recall_at_k(top, gt, k))})
    return out


def coarse_rows(n, nlist, probes, labels, gt, k, nprobes):
    """Fraction of the true top-k whose list is among the first p probes, for each
    p of ``nprobes``: rows ``{"n", "nlist", "nprobe", "recall", "by_rank"}``
    (``by_rank``: the fraction for each rank 1..k).

    probes : int (nq, pmax) lists probed, nearest first (``index.probe``); labels :
    int (n,) list of each database row (``index.assign``); gt : int64 (nq, >= k)
    exact neighbours' rows.
    """
    glists = labels[gt[:, :k]]                                   # (nq, k)
    hit = glists[:, :, None] == probes[:, None, :]               # (nq, k, pmax)
    rank = np.where(hit.any(-1), hit.argmax(-1), np.iinfo(np.int64).max)
    return [{"n": n, "nlist": nlist, "nprobe": int(p), "recall": float((rank < p).mean()),
             "by_rank": (rank < p).mean(0).tolist()} for p in nprobes]


def _best_cpu(fn, reps):
    _, cpus, _ = _timing.repeat(fn, reps)
    return min(cpus)


def _scan_cpu(index, q, dis0, probes, nprobe, k, refine, reps):
    """Best CPU seconds per query of the scan (and re-ranking) of the first
    ``nprobe`` probes of prepared queries ``q``."""
    d0, pr = dis0[:, :nprobe], probes[:, :nprobe]
    return _best_cpu(lambda: index.search_preassigned(q, d0, pr, k, refine), reps) / q.shape[0]


def measure(xb, xq, *, metric, k, pq_configs, keeps, refine_factors, nlists=None,
            seed=0, time_queries=300, reps=2, source=""):
    """Measure recall and cost on the sample; returns :class:`Measurements`.

    Parameters
    ----------
    xb : float32 (n, d) database rows; xq : float32 (nq, d) queries.
    metric : "l2", "ip" or "cosine".
    k : neighbours per query.
    pq_configs : list of (nbits, M).
    keeps : kept-vector types for refine ("int8", "float16", "float32"); may be empty.
    refine_factors : refine factors > 0 measured with each kept-vector type.
    nlists : list counts (default :func:`measurement_nlists`).
    time_queries : queries of each timed search; reps: timed repetitions (best kept).
    """
    t_start = time.perf_counter()
    n, d = xb.shape
    nlists = list(nlists or measurement_nlists(n))
    sizes = sorted({n, n // 2, n // 4} - {0})
    factors = sorted({0, *refine_factors}) if keeps else [0]
    # the shortlist the smallest database needs out of the whole one's scan
    kk = k * max(factors + [1]) * (n // sizes[0] + 2)
    gts = {m: brute_force_knn(xq, xb[:m], k, metric)[1] for m in sizes}
    shortlists = shortlist_grid(k, factors)
    ranks = []
    tq = xq[:min(time_queries, xq.shape[0])]
    coarse, recall = [], []
    timing = {"coarse": [], "scan": [], "refine": []}
    skew = {}
    first_nbits, first_M = pq_configs[0]
    with _timing.single_thread():
        for nlist in nlists:
            base = IVFPQIndex(d, nlist, first_M, first_nbits, metric, seed=seed)
            base.train(xb)
            labels = base.assign(xb)
            q = base.prepare(xq)
            pmax = max(p for p in NPROBES if p <= nlist)
            dis0, probes = base.probe(q, pmax)
            sizes_of = np.bincount(labels, minlength=nlist)
            nprobes = []
            for m in sizes:
                rows = coarse_rows(m, nlist, probes, labels, gts[m], k,
                                    [p for p in NPROBES if p <= pmax])
                coarse += rows
                # scan up to the first nprobe whose coarse recall saturates at every size
                nprobes.append(next((r["nprobe"] for r in rows if r["recall"] >= _SATURATED),
                                    pmax))
            nprobes = [p for p in NPROBES if p <= max(nprobes)]
            ptime = [nprobes[len(nprobes) // 3], nprobes[-1]]
            qt = base.prepare(tq)
            timing["coarse"].append({"nlist": nlist, "s": _best_cpu(
                functools.partial(base.probe, qt, ptime[-1]), reps) / tq.shape[0]})
            dt, pt = base.probe(qt, ptime[-1])
            skew[nlist] = float(sizes_of[probes[:, :ptime[-1]]].sum(1).mean()
                                / (ptime[-1] * n / nlist))
            for nbits, M in pq_configs:
                twins = [(keep, model_twin(base, xb, keep_vectors=keep, M=M, nbits=nbits))
                         for keep in (keeps or [False])]
                for _, twin in twins:
                    twin.add(xb)
                for p in ptime:
                    codes = float(sizes_of[pt[:, :p]].sum(1).mean())
                    timing["scan"].append({"nbits": nbits, "M": M, "nlist": nlist, "nprobe": p,
                                           "codes": codes, "s": _scan_cpu(
                                               twins[0][1], qt, dt, pt, p, k, 0, reps)})
                for keep, twin in twins:
                    for p in nprobes:
                        keys, ids, exact = twin.scan_candidates(q, dis0[:, :p], probes[:, :p],
                                                                kk, exact=bool(keep))
                        order = np.argsort(keys, axis=1, kind="stable")
                        ids = np.take_along_axis(ids, order, 1)
                        if keep == twins[0][0]:  # the ADC order is the code layout's alone
                            for m in sizes:
                                gt = gts[m][:, :k]
                                probed = (labels[gt][:, :, None] == probes[:, None, :p]).any(-1)
                                ranks.append({
                                    "n": m, "nlist": nlist, "nbits": nbits, "M": M,
                                    "nprobe": int(p), "shortlists": shortlists,
                                    "survival": rank_survival(ids, gt, probed, m,
                                                              shortlists).tolist()})
                        if keep:
                            exact = np.take_along_axis(exact, order, 1)
                        for m in sizes:
                            ids_m, ex_m = _prefix(ids, exact, m) if m < n else (ids, exact)
                            row = {"n": m, "nlist": nlist, "nbits": nbits, "M": M,
                                   "keep": keep or None, "nprobe": int(p)}
                            rows = _recall_rows(row, ids_m, ex_m, gts[m], k,
                                                factors if keep else [0])
                            # r = 0 does not depend on the kept vectors: once per layout
                            recall += [r for r in rows if r["refine"] or keep == twins[0][0]]
                    if keep:
                        r = max(factors)
                        p = ptime[0]
                        plain = _scan_cpu(twin, qt, dt, pt, p, k, 0, reps)
                        refined = _scan_cpu(twin, qt, dt, pt, p, k, r, reps)
                        timing["refine"].append({
                            "nbits": nbits, "M": M, "keep": keep, "candidates": k * r,
                            "s": max(0.0, refined - plain)})
                logger.info("plan: measured nlist=%d %d-bit M=%d (%.0f s so far)", nlist,
                            nbits, M, time.perf_counter() - t_start)
                del twins
    return Measurements(d=d, metric=metric, k=k, n_sample=n, sizes=sizes, nq=xq.shape[0],
                        nlists=nlists, coarse=coarse, recall=recall, timing=timing,
                        list_skew=skew, source=source,
                        seconds=time.perf_counter() - t_start, ranks=ranks)
