"""The ``shardann bench probing`` run: fixed ``nprobe`` against adaptive
probing (``probe_ratio``, ``probe_gap``) on one index, single-threaded, at
equal recall.

Every point (a fixed nprobe, or a (cap nprobe, probe_ratio) or (cap nprobe,
probe_gap) pair) is timed by
``_measure.sweep_interleaved`` (best of ``reps`` interleaved repetitions, so a
change of machine load hits both methods alike). QPS at a target recall is
that of the best mix of two measured settings of a method
(``_measure.qps_at_recall_mixed``: running part of the queries with each
averages their recall and time per query), so both methods are read off the
same kind of achievable curve; the best measured point is reported too.

The report also bounds what any per-query choice of lists could gain: the
"list coverage" of a query is the share of its true neighbours whose lists it
scans; the oracle gives each query the prefix of its coarse order that
maximises total coverage for an average number of lists (a Lagrangian
allocation over the per-query coverage curves). No rule that scans a prefix of
the coarse order, adaptive or not, covers as much with fewer lists on average.
"""

import gc
import logging
import time

import numpy as np

from ..metric import normalize_rows
from . import _timing
from ._frontier import _read_gt
from ._measure import (
    SweepPoint,
    best_at_recall,
    qps_at_recall_mixed,
    sweep_interleaved,
)
from ._runners import as_f32
from ._suite import environment, ground_truth, load_data

logger = logging.getLogger(__name__)


def build_index(cfg, xt, xb):
    """The index of ``cfg`` (IVF-Flat, or IVF-PQ with kept vectors for refine),
    trained on ``xt`` and filled with ``xb``, on one thread."""
    from .. import IVFFlatIndex, IVFPQIndex

    d = xb.shape[1]
    if cfg["index"] == "ivfflat":
        index = IVFFlatIndex(d, cfg["nlist"], cfg["metric"], seed=cfg["seed"], num_threads=1)
    else:
        index = IVFPQIndex(d, cfg["nlist"], cfg["M"] or d // 2, cfg["nbits"], cfg["metric"],
                           seed=cfg["seed"], keep_vectors=cfg["keep"] or False, num_threads=1)
    index.train(xt)
    index.add(xb)
    return index


def list_coverage(index, xq, xb, gt, cap):
    """Rank, in each query's coarse order, of the list holding each true neighbour:
    int64 (nq, k), ``cap`` when it is not among the ``cap`` closest lists. ``gt``
    holds row numbers of ``xb`` (the ids ``add`` gave)."""
    q = index.prepare(xq)
    _, probes = index.probe(q, cap)
    nq = q.shape[0]
    rank = np.full((nq, index.nlist), cap, np.int64)
    rank[np.arange(nq)[:, None], probes] = np.arange(probes.shape[1])[None, :]
    lists = index.assign(xb[gt.ravel()]).reshape(gt.shape)
    return np.take_along_axis(rank, lists, axis=1)


def coverage_bounds(ranks, k, targets, cap):
    """Lists per query needed for each target list coverage: fixed nprobe, and the
    per-query oracle (see the module doc). ``ranks`` int64 (nq, k), as
    :func:`list_coverage` gives for the true neighbours (``cap``: not among the
    ``cap`` closest lists). Returns ``{target: {"fixed": lists or None,
    "oracle": lists or None}}`` (None: not reached within ``cap`` lists)."""
    nq = ranks.shape[0]
    gains = np.zeros((nq, cap + 1))
    np.add.at(gains, (np.repeat(np.arange(nq), ranks.shape[1]), ranks.ravel()), 1.0 / k)
    cum = np.cumsum(gains[:, :cap], axis=1)  # coverage when scanning 1..cap lists
    fixed = [{"recall": float(cum[:, p].mean()), "qps": 1.0 / (p + 1)} for p in range(cap)]
    oracle = []
    for lam in np.geomspace(1e-4, 1.0, 200):
        p = np.argmax(cum - lam * np.arange(1, cap + 1), axis=1)
        oracle.append({"recall": float(cum[np.arange(nq), p].mean()),
                       "qps": 1.0 / float((p + 1).mean())})
    out = {}
    for t in targets:
        row = {}
        for name, curve in (("fixed", fixed), ("oracle", oracle)):
            inv, _ = qps_at_recall_mixed(curve, t)  # qps here is 1 / lists
            row[name] = None if inv is None else 1.0 / inv
        out[t] = row
    return out


METHODS = ("ratio", "gap")  # the adaptive methods, compared with "fixed"


def _data(cfg):
    """``load_data``'s ``(xb, xq, xt, description)``, or a draw of
    :func:`.datasets.mixture` with ``--dataset mixture`` (no ``--base``)."""
    if cfg.get("base") or cfg.get("dataset", "synthetic") == "synthetic":
        return load_data(cfg)
    from .datasets import mixture

    n, nq, nt = cfg["n"], cfg["nq"], cfg["train_size"]
    x = mixture(n + nq + nt, cfg["d"], seed=cfg["seed"])
    xb, xq, xt = (as_f32(a) for a in (x[:n], x[n:n + nq], x[n + nq:]))
    desc = {"source": "shardann.bench.datasets.mixture", "seed": cfg["seed"],
            "train": f"{nt} separate points from the same mixture", "n": n,
            "d": int(xb.shape[1]), "nq": nq, "ntrain": nt}
    return xb, xq, xt, desc


def run_probing(cfg, faiss=None, skipped=()):
    """Build, sweep and reduce; return the report dict (see :mod:`.probing`)."""
    xb, xq, xt, desc = _data(cfg)
    k, nq = cfg["k"], xq.shape[0]
    if cfg["gt"]:
        gt, gt_info = _read_gt(cfg["gt"], nq, k), {"method": f"read from {cfg['gt']}"}
    elif cfg["metric"] == "cosine":  # exact neighbours by inner product of normalised rows
        gt, gt_info = ground_truth(faiss, as_f32(normalize_rows(xb.copy())),
                                   as_f32(normalize_rows(xq.copy())), k, "ip")
    else:
        gt, gt_info = ground_truth(faiss, xb, xq, k, cfg["metric"])
    report = {"benchmark": "shardann bench probing",
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": dict(cfg),
              "dataset": desc, "ground_truth": gt_info, "environment": environment(faiss),
              "skipped": [{"what": w, "why": y} for w, y in skipped]}
    with _timing.single_thread(faiss):
        wall, _, index = _timing.timed(build_index, cfg, xt, xb)
        report["build_s"] = wall
        gc.collect()
        rf = cfg["refine_factor"] if index.refines else 0
        q = index.prepare(xq)

        def point(method, nprobe, ratio=None, gap=None):
            def search(queries, k_):
                return index.search(queries, k_, nprobe=nprobe, refine_factor=rf,
                                    probe_ratio=ratio, probe_gap=gap)
            label = (f"nprobe {nprobe}" + ("" if ratio is None else f", probe_ratio {ratio:g}")
                     + ("" if gap is None else f", probe_gap {gap:g}"))
            pt = SweepPoint(method, method, search, xq, gt, label, nprobe=nprobe,
                            probe_ratio=ratio, probe_gap=gap)
            # lists the coarse probe hands the scan (probe_gap skips some of them
            # inside the scan: not counted here)
            pt.params["lists"] = float((index.probe(q, nprobe, ratio)[1] >= 0).sum(1).mean())
            return pt

        points = [point("fixed", p) for p in cfg["nprobe_sweep"]]
        points += [point("ratio", c, ratio=r) for c in cfg["caps"] for r in cfg["ratios"]]
        points += [point("gap", c, gap=g) for c in cfg["caps"] for g in cfg.get("gaps", ())]
        report["load_avg_start"], report["load_avg_end"] = sweep_interleaved(
            points, k, cfg["reps"])
        cap = max(cfg["nprobe_sweep"] + cfg["caps"])
        ranks = list_coverage(index, xq, xb, gt, cap)
    report["refine_factor"] = rf
    report["points"] = [{"method": r.pop("system"), **r} for r in
                        (pt.result() for pt in points)]
    report["summary"] = summarize(report["points"], cfg["targets"])
    report["coverage"] = coverage_bounds(ranks, k, cfg["targets"], cap)
    return report


def summarize(points, targets):
    """Per target recall: each method's QPS (best mix of two measured settings)
    and best measured point, and each adaptive method's ratio to fixed
    (``<method>_over_fixed``; methods without points are left out)."""
    rows = []
    for t in targets:
        row = {"target": t}
        for m in ("fixed", *METHODS):
            mine = [p for p in points if p["method"] == m]
            if not mine:
                continue
            qps, how = qps_at_recall_mixed(mine, t)
            row[m] = {"qps": qps, "how": how, "best_point": best_at_recall(mine, t)}
        f = row["fixed"]["qps"]
        for m in METHODS:
            if m in row:
                a = row[m]["qps"]
                row[f"{m}_over_fixed"] = a / f if a and f else None
        rows.append(row)
    return rows


def format_probing(report):
    """The printed summary of a ``bench probing`` report (a string)."""
    c, ds = report["config"], report["dataset"]
    idx = (c["index"] if c["index"] == "ivfflat" else
           f"ivfpq {c['nbits']}-bit M={c['M'] or ds['d'] // 2}"
           + (f", {c['keep']} kept, refine {report['refine_factor']}" if c["keep"] else ""))
    lines = [f"shardann bench probing: n={ds['n']:,} d={ds['d']} nq={ds['nq']} "
             f"metric={c['metric']} nlist={c['nlist']} k={c['k']}, {idx}; 1 thread; best of "
             f"{c['reps']} interleaved repetitions", f"data: {ds['source']}", ""]
    head = (f"{'method':<9} {'nprobe':>6} {'ratio':>6} {'gap':>6} {'lists':>7} {'recall':>7} "
            f"{'QPS':>9}")
    lines += [head, "-" * len(head)]
    for p in report["points"]:
        ratio = "-" if p["probe_ratio"] is None else f"{p['probe_ratio']:.2f}"
        gap = "-" if p.get("probe_gap") is None else f"{p['probe_gap']:g}"
        lines.append(f"{p['method']:<9} {p['nprobe']:>6} {ratio:>6} {gap:>6} "
                     f"{p['lists']:>7.2f} {p['recall']:>7.4f} {p['qps']:>9,.0f}")
    lines += ["", "QPS at equal recall (best mix of two measured settings of each method) "
              "and the list coverage bound (lists: as the coarse probe hands them to the "
              "scan; probe_gap skips more inside it):"]
    for row, t in zip(report["summary"], c["targets"], strict=True):
        f, cov = row["fixed"], report["coverage"][t]
        parts = [f"fixed {_num(f['qps'])} ({f['how']})"]
        for m in METHODS:
            if m in row:
                ratio = row[f"{m}_over_fixed"]
                parts.append(f"{m} {_num(row[m]['qps'])} ({row[m]['how']}) "
                             f"{'-' if ratio is None else f'{ratio:.2f}x'}")
        lines.append(f"  recall {t:.2f}: " + ", ".join(parts) + "; lists for that list "
                     f"coverage: fixed {_num(cov['fixed'], '.2f')}, oracle "
                     f"{_num(cov['oracle'], '.2f')}")
    return "\n".join(lines)


def _num(v, spec=",.0f"):
    return "not reached" if v is None else format(v, spec)
