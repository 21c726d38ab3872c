"""Measuring one index of ``shardann bench core``, and comparing two; the
interleaved sweeps of ``bench frontier`` and ``bench filter``.

:func:`measure` builds, times and sweeps one (library, kind) through a runner
of :mod:`._runners`; :func:`equal_recall` and :func:`ratios` compare the two
libraries' results. :class:`SweepPoint` and :func:`sweep_interleaved` time many
searchable settings of several systems against each other; :func:`pareto_frontier`
and :func:`best_at_recall` reduce them.
"""

import logging
import math

import numpy as np

from ..results import recall_at_k
from . import _timing

logger = logging.getLogger(__name__)


# untimed warm-up index: small enough to build in about a second
_WARM_NLIST = 32
_WARM_POINTS = 10_240


def _warm_up(runner, xt, xb, xq, k, nprobe):
    """Untimed tiny index of the same kind (one k-means iteration): loads or
    compiles every kernel the timed run uses. Returns the wall seconds of its
    first single-query search."""
    nw = min(_WARM_POINTS, xt.shape[0])
    nlist = max(1, min(_WARM_NLIST, runner.nlist, nw // 39))
    tiny = runner.make(nlist=nlist, warm_up=True)
    runner.train(tiny, xt[:nw])
    runner.add(tiny, xb[:min(2048, xb.shape[0])])
    t_first, _, _ = _timing.timed(runner.search, tiny, xq[:1], k, min(nprobe, nlist))
    runner.search(tiny, xq[:min(16, xq.shape[0])], k, min(nprobe, nlist))
    return t_first


def measure(runner, xb, xq, xt, gt, cfg):
    """Build, time and sweep one (library, kind). Returns a result dict."""
    k, nprobe, reps = cfg["k"], cfg["nprobe"], cfg["reps"]
    nq = xq.shape[0]
    res = {"lib": runner.lib, "kind": runner.kind, "load_avg_start": _timing.load_average()}
    tag = f"{runner.kind}/{runner.lib}"

    res["first_call_ms"] = _warm_up(runner, xt, xb, xq, k, nprobe) * 1e3
    logger.info("%s: warm-up done (first single-query search %.1f ms)", tag,
                res["first_call_ms"])

    index = runner.make()
    res["train_s"], res["train_cpu_s"], _ = _timing.timed(runner.train, index, xt)
    logger.info("%s: trained on %d vectors in %.2f s (%.2f s CPU)", tag, xt.shape[0],
                res["train_s"], res["train_cpu_s"])

    res["add_s"], res["add_cpu_s"], _ = _timing.timed(runner.add, index, xb)
    res["add_vps"] = xb.shape[0] / res["add_s"]
    res["add_vps_cpu"] = xb.shape[0] / res["add_cpu_s"]
    logger.info("%s: added %d vectors in %.2f s (%.0f vec/s; %.2f s CPU)", tag, xb.shape[0],
                res["add_s"], res["add_vps"], res["add_cpu_s"])
    res["params"] = runner.describe(index)

    runner.search(index, xq[:min(32, nq)], k, nprobe)  # untimed: touch the lists
    walls, cpus, (_, ids) = _timing.repeat(lambda: runner.search(index, xq, k, nprobe), reps)
    res["search_s"] = _timing.summarize(walls, cpus)
    res["qps"] = nq / res["search_s"]["best"]
    res["qps_median"] = nq / res["search_s"]["median"]
    res["qps_cpu"] = nq / res["search_s"]["cpu_best"]
    res["recall"] = recall_at_k(ids, gt, k)
    logger.info("%s: nprobe=%d recall@%d=%.4f QPS=%.0f (CPU-time QPS %.0f)", tag, nprobe, k,
                res["recall"], res["qps"], res["qps_cpu"])

    lat = _timing.latencies(lambda q: runner.search(index, q, k, nprobe), xq,
                            cfg["latency_queries"])
    res["latency_ms"] = _timing.percentiles_ms(lat)
    res["latency_queries"] = int(lat.size)

    splits = [runner.split(index, xq, k, nprobe) for _ in range(reps)]
    if splits[0] is not None:
        res["time_split_cpu_s"] = {part: min(sp[part] for sp in splits) for part in splits[0]}

    sweep = []
    for p in cfg["nprobe_sweep"]:
        walls, cpus, (_, ids) = _timing.repeat(lambda p=p: runner.search(index, xq, k, p),
                                               cfg["sweep_reps"])
        sweep.append({"nprobe": p, "recall": recall_at_k(ids, gt, k),
                      "qps": nq / min(walls), "qps_cpu": nq / min(cpus)})
        logger.info("%s: sweep nprobe=%d recall=%.4f QPS=%.0f (CPU-time QPS %.0f)", tag, p,
                    sweep[-1]["recall"], sweep[-1]["qps"], sweep[-1]["qps_cpu"])
    res["sweep"] = sweep
    res["load_avg_end"] = _timing.load_average()
    return res


# --------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------
def qps_at_recall(sweep, target, key="qps"):
    """QPS (``sweep[i][key]``) a sweep curve reaches at ``target`` recall.

    Recall is made monotone in nprobe (running max); between the two sweep
    points that bracket ``target`` log(QPS) is interpolated linearly in recall.
    Returns ``(qps, how)``: how is "interpolated", "exact", "lower bound" (the
    smallest nprobe already exceeds the target: at least this QPS) or
    "not reached" (qps None).
    """
    pts = sorted(sweep, key=lambda s: s["nprobe"])
    rec = np.maximum.accumulate([s["recall"] for s in pts])
    qps = [s[key] for s in pts]
    eps = 1e-12
    if target > rec[-1] + eps:
        return None, "not reached"
    if target < rec[0] - eps:
        return qps[0], "lower bound"
    i = int(np.argmax(rec >= target - eps))
    if i == 0 or abs(rec[i] - target) <= eps:
        return qps[i], "exact"
    f = (target - rec[i - 1]) / (rec[i] - rec[i - 1])
    return (float(math.exp((1 - f) * math.log(qps[i - 1]) + f * math.log(qps[i]))),
            "interpolated")


def recall_se(recall, nq, k):
    """Standard error of a recall@k estimate from nq queries (binomial)."""
    return math.sqrt(max(recall * (1.0 - recall), 0.0) / max(nq * k, 1))


def equal_recall(fres, sres, nprobe, nq, k):
    """Both directions of the equal-recall comparison at ``nprobe``.

    Row 1: the recall FAISS reaches at ``nprobe``; FAISS's QPS there against
    the QPS shardann needs to reach the same recall (interpolated on its
    sweep). Row 2: the same with the roles swapped. Only sweep points are
    used (the sweep always includes ``nprobe``), for wall and CPU-time QPS.

    Where a curve is flat (recall saturated by PQ error) a strict target a
    hair above the other library's plateau sends the interpolation to a much
    larger nprobe, so each row also gives the comparison "within one standard
    error": the other library's smallest sweep nprobe whose recall is at least
    ``target - SE`` (SE = binomial standard error of recall@k over nq queries).
    """
    def at(sweep):
        return next(s for s in sweep if s["nprobe"] == nprobe)

    out = []
    for ref_lib, ref, other in (("faiss", fres, sres), ("shardann", sres, fres)):
        point = at(ref["sweep"])
        se = recall_se(point["recall"], nq, k)
        row = {"recall": point["recall"], "recall_se": se, "reached_by": ref_lib,
               "at_nprobe": nprobe,
               "interpolated_lib": "shardann" if ref_lib == "faiss" else "faiss"}
        for key in ("qps", "qps_cpu"):
            q_other, how = qps_at_recall(other["sweep"], point["recall"], key)
            q_f, q_s = (point[key], q_other) if ref_lib == "faiss" else (q_other, point[key])
            sfx = "" if key == "qps" else "_cpu"
            row[f"faiss_qps{sfx}"] = q_f
            row[f"shardann_qps{sfx}"] = q_s
            row[f"ratio_shardann_over_faiss{sfx}"] = (q_s / q_f) if q_s and q_f else None
            row["interpolation"] = how
        near = [s for s in sorted(other["sweep"], key=lambda s: s["nprobe"])
                if s["recall"] >= point["recall"] - se]
        if near:
            o = near[0]
            q_f, q_s = ((point["qps_cpu"], o["qps_cpu"]) if ref_lib == "faiss"
                        else (o["qps_cpu"], point["qps_cpu"]))
            row["within_se"] = {"nprobe": o["nprobe"], "recall": o["recall"],
                                "ratio_shardann_over_faiss_cpu": q_s / q_f}
        else:
            row["within_se"] = None
        out.append(row)
    return out


def ratios(fres, sres):
    """shardann / FAISS of each reported figure."""
    def r(a, b):
        return a / b if a is not None and b else None
    lat_f, lat_s = fres["latency_ms"], sres["latency_ms"]
    return {key: r(sres[key], fres[key]) for key in (
        "recall", "qps", "qps_cpu", "train_s", "train_cpu_s", "add_vps", "add_vps_cpu",
        "first_call_ms")} | {"latency_p50": r(lat_s["p50"], lat_f["p50"]),
                             "latency_p99": r(lat_s["p99"], lat_f["p99"])}


def pareto_frontier(points):
    """The points no other point beats on both recall and QPS.

    ``points``: dicts with ``recall`` and ``qps``. Returns those on the
    frontier, highest recall first (QPS then rises down the list).
    """
    best = -math.inf
    out = []
    for p in sorted(points, key=lambda p: (-p["recall"], -p["qps"])):
        if p["qps"] > best:
            out.append(p)
            best = p["qps"]
    return out


def best_at_recall(points, target):
    """The fastest point whose recall is at least ``target`` (None if none is):
    a measured point, never interpolated."""
    ok = [p for p in points if p["recall"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def qps_at_recall_mixed(points, target):
    """QPS a mix of two measured settings reaches at ``target`` recall.

    Running a fraction ``f`` of the queries with one setting and the rest with
    another averages their recall and their time per query, so any point on a
    segment between two measured points, in (recall, seconds per query), is
    achievable; this returns the best such point at ``target``, a measured one
    included. ``points``: dicts with ``recall`` and ``qps``. Returns ``(qps,
    how)``: how is "measured", "mixed" or "not reached" (qps None).
    """
    above = [p for p in points if p["recall"] >= target]
    if not above:
        return None, "not reached"
    best, how = max(p["qps"] for p in above), "measured"
    for lo in (p for p in points if p["recall"] < target):
        for hi in above:
            f = (target - lo["recall"]) / (hi["recall"] - lo["recall"])
            qps = 1.0 / ((1.0 - f) / lo["qps"] + f / hi["qps"])
            if qps > best:
                best, how = qps, "mixed"
    return best, how


class SweepPoint:
    """One searchable setting of one system, for :func:`sweep_interleaved`.

    ``search(queries, k) -> (D, I)`` runs it (its parameters bound); ``gt`` is the
    int64 (nq, >= k) ground truth its recall is measured against; ``params``
    (e.g. ``nprobe=16``) land in :meth:`result` between ``config`` and ``recall``.
    """

    def __init__(self, system, config, search, queries, gt, label, **params):
        self.system, self.config, self.search = system, config, search
        self.queries, self.gt, self.label, self.params = queries, gt, label, params
        self.walls, self.cpus, self.recall = [], [], None

    def result(self):
        """``{system, config, **params, recall, qps, qps_cpu, label}``: QPS = nq over
        the best wall (CPU) seconds of the timed calls."""
        nq = self.queries.shape[0]
        return {"system": self.system, "config": self.config, **self.params,
                "recall": self.recall, "qps": nq / min(self.walls),
                "qps_cpu": nq / min(self.cpus), "label": self.label}


def sweep_interleaved(points, k, reps):
    """Search every point once untimed (kernels compiled or loaded, lists touched;
    this gives the recall), then ``reps`` times: each repetition visits every
    point once, in the same order, so a change of machine load during the run
    hits all systems alike. Fills the points' ``recall``, ``walls`` and ``cpus``;
    returns the 1-minute load averages ``(before, after)`` the timed passes."""
    logger.info("%d points; %d repetitions, interleaved", len(points), reps)
    for pt in points:
        _, ids = pt.search(pt.queries, k)
        pt.recall = recall_at_k(np.asarray(ids), pt.gt, k)
    before = _timing.load_average()
    for rep in range(reps):
        for pt in points:
            w, c, _ = _timing.timed(pt.search, pt.queries, k)
            pt.walls.append(w)
            pt.cpus.append(c)
        logger.info("repetition %d of %d done", rep + 1, reps)
    return before, _timing.load_average()
