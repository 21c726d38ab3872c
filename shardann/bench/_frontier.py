"""The ``shardann bench frontier`` run: build every configuration of every
system, time every (configuration, nprobe, refine factor) point, interleaved,
and reduce the points to each system's recall-QPS Pareto frontier.

Builds go through the runners of :mod:`._runners` (the ones ``bench core``
uses); data and ground truth through :mod:`._suite`; the interleaved timing,
the frontier and the best point at a recall through :mod:`._measure`
(:func:`._measure.sweep_interleaved`). A point's QPS is the best of its
repetitions.
"""

import gc
import logging
import time

import numpy as np

from ..metric import normalize_rows
from . import _timing
from ._measure import SweepPoint, best_at_recall, pareto_frontier, sweep_interleaved
from ._runners import (
    FAISS_TRAIN_FALLBACK,
    FaissRunner,
    ScannRunner,
    ShardannRunner,
    as_f32,
    faiss_defaults,
)
from ._suite import environment, ground_truth, load_data

logger = logging.getLogger(__name__)

SYSTEMS = ("shardann", "faiss", "scann")
SYSTEM_LABELS = {"shardann": "shardann", "faiss": "FAISS", "scann": "ScaNN"}
TARGETS = (0.7, 0.8, 0.9, 0.95)


def default_pq_configs(d):
    """(nbits, M) pairs swept by default for dimension ``d``: 4-bit with 2 and 4
    dimensions per sub-quantizer, 8-bit with 4 (each kept only if M divides d)."""
    out = [(4, d // 2), (4, d // 4), (8, d // 4)]
    return [(b, m) for b, m in out if m >= 1 and d % m == 0]


def _read_gt(path, nq, k):
    from .datasets import read_vectors

    gt = np.asarray(read_vectors(path), dtype=np.int64)
    if gt.ndim != 2 or gt.shape[0] < nq or gt.shape[1] < k:
        raise ValueError(f"{path}: ground truth of shape {gt.shape} does not cover {nq} "
                         f"queries x k={k}")
    return gt[:nq, :k]


def _label(config, nprobe, refine_factor):
    rf = f", refine x{refine_factor}" if refine_factor else ""
    return f"{config}, nprobe {nprobe}{rf}"


def shardann_configs(cfg, d):
    """``(nbits, M, pca, opq)`` of every shardann build: each ``--shardann-pq``
    pair without reduction, then with each ``--pca`` dimension p at the same
    dimensions per sub-quantizer (M scaled by p / d; pairs it does not divide
    into whole sub-quantizers are left out); each also with OPQ when ``--opq``."""
    pairs = [(nbits, M, None) for nbits, M in cfg["shardann_pq"]]
    for p in cfg.get("pca") or ():
        pairs += [(nbits, M * p // d, p) for nbits, M in cfg["shardann_pq"]
                  if (M * p) % d == 0 and M * p // d >= 1]
    return [(nbits, M, p, opq) for nbits, M, p in pairs
            for opq in ((False, True) if cfg.get("opq") else (False,))]


def _nlist_tag(cfg):
    # the nlist in the configuration labels only when the run sweeps several
    return f" nlist={cfg['nlist']}" if len(cfg["nlists"]) > 1 else ""


def _shardann_builds(cfg, fd, xt, xb, builds):
    """Train one shardann index per (nbits, M, pca, opq), twins for the other
    kept-vector types, at ``cfg["nlist"]``. Appends build dicts (config label,
    nlist, search fn, refine factors) to builds."""
    keeps = cfg["keep"]
    for nbits, M, pca, opq in shardann_configs(cfg, xb.shape[1]):
        kind = f"ivfpq{nbits}" + ("-refine" if keeps else "")
        runner = ShardannRunner(kind, xb.shape[1], cfg["nlist"], M, cfg["metric"], 0,
                                cfg["seed"], fd["ivf.cp.niter"], fd["pq.cp.niter"],
                                fd["ivf.cp.max_points_per_centroid"],
                                keep_vectors=keeps[0] if keeps else None, pca=pca, opq=opq)
        index = runner.make()
        wall, cpu, _ = _timing.timed(runner.train, index, xt)
        runner.add(index, xb)
        base = (f"{nbits}-bit M={M}" + (f" pca={pca}" if pca else "") + (" opq" if opq else "")
                + _nlist_tag(cfg))
        logger.info("shardann %s: trained in %.1f s (%.1f s CPU)", base, wall, cpu)
        builds.append({"system": "shardann", "config": base, "nlist": cfg["nlist"],
                       "train_s": wall, "train_cpu_s": cpu, "refine": [0],
                       "search": lambda q, k, p, r, ix=index, ru=runner: ru.search(ix, q, k, p, r)})
        for i, keep in enumerate(keeps):
            twin = index if i == 0 else runner.with_kept_vectors(index, keep, xt, xb)
            builds.append({"system": "shardann", "config": f"{base} + {keep}",
                           "nlist": cfg["nlist"], "refine": [r for r in cfg["refine_factors"] if r],
                           "search": lambda q, k, p, r, ix=twin, ru=runner:
                           ru.search(ix, q, k, p, r)})


def _faiss_builds(cfg, faiss, xt, xb, builds):
    metric = "l2" if cfg["metric"] == "l2" else "ip"
    for nbits, M in cfg["faiss_pq"]:
        kind = f"ivfpq{nbits}-refine"
        runner = FaissRunner(faiss, kind, xb.shape[1], cfg["nlist"], M, metric,
                             max(cfg["refine_factors"]))
        index = runner.make()
        wall, cpu, _ = _timing.timed(runner.train, index, xt)
        runner.add(index, xb)
        logger.info("FAISS %s: trained in %.1f s", runner.key, wall)
        builds.append({"system": "faiss", "config": runner.key.replace(",RFlat", ""),
                       "nlist": cfg["nlist"], "train_s": wall, "train_cpu_s": cpu, "refine": [0],
                       "search": lambda q, k, p, r, ix=index, ru=runner: ru.search(ix, q, k, p, r)})
        builds.append({"system": "faiss", "config": runner.key, "nlist": cfg["nlist"],
                       "refine": [r for r in cfg["refine_factors"] if r],
                       "search": lambda q, k, p, r, ix=index, ru=runner: ru.search(ix, q, k, p, r)})


def _scann_builds(cfg, scann, xt, xb, builds):
    runner = ScannRunner(scann, xb.shape[1], cfg["nlist"], cfg["metric"],
                         max(cfg["refine_factors"]), cfg["k"], xt.shape[0])
    wall, cpu, searcher = _timing.timed(runner.build, xb)
    logger.info("ScaNN: built in %.1f s", wall)
    builds.append({"system": "scann", "config": "AH 2-dim + reorder" + _nlist_tag(cfg),
                   "nlist": cfg["nlist"], "build_s": wall,
                   "build_cpu_s": cpu, "describe": runner.describe(),
                   "refine": [r for r in cfg["refine_factors"] if r],
                   "search": lambda q, k, p, r, s=searcher: runner.search(s, q, k, p, r)})


def run_frontier(cfg, faiss=None, scann=None, skipped=()):
    """Build, sweep and reduce; return the report dict (see :mod:`.frontier`)."""
    xb, xq, xt, desc = load_data(cfg)
    d = xb.shape[1]
    if cfg["metric"] == "cosine":  # FAISS and ScaNN rank normalised rows by inner product
        xb_n, xq_n, xt_n = (as_f32(normalize_rows(x.copy())) for x in (xb, xq, xt))
    else:
        xb_n, xq_n, xt_n = xb, xq, xt
    k, nq = cfg["k"], xq.shape[0]
    if cfg["gt"]:
        gt = _read_gt(cfg["gt"], nq, k)
        gt_info = {"method": f"read from {cfg['gt']}"}
    else:
        gt, gt_info = ground_truth(faiss, xb_n, xq_n, k, "l2" if cfg["metric"] == "l2"
                                   else "ip")
    cfg["shardann_pq"] = cfg["shardann_pq"] or default_pq_configs(d)
    # FAISS by default: its 8-bit IVFPQ and its 4-bit fast scan at 2 dims per sub-quantizer
    cfg["faiss_pq"] = cfg["faiss_pq"] or [(8, d // 4), (4, d // 2)]
    for _, M in cfg["shardann_pq"] + cfg["faiss_pq"]:
        if M < 1 or d % M:
            raise ValueError(f"M={M} does not divide d={d}")
    fd = (faiss_defaults(faiss, d, cfg["nlists"][0], cfg["shardann_pq"][0][1],
                         "l2" if cfg["metric"] == "l2" else "ip")
          if faiss is not None else dict(FAISS_TRAIN_FALLBACK))
    report = {"benchmark": "shardann bench frontier",
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "config": dict(cfg), "dataset": desc, "ground_truth": gt_info,
              "environment": environment(faiss),
              "systems": [s for s, m in (("shardann", True), ("faiss", faiss),
                                         ("scann", scann)) if m is not None and m is not False],
              "skipped": [{"what": w, "why": y} for w, y in skipped]}
    builds = []
    with _timing.single_thread(faiss):
        for nlist in cfg["nlists"]:  # every system at each number of lists / leaves
            at = {**cfg, "nlist": nlist}
            _shardann_builds(at, fd, xt, xb, builds)
            gc.collect()
            if faiss is not None:
                _faiss_builds(at, faiss, xt_n, xb_n, builds)
            if scann is not None:
                _scann_builds(at, scann, xt_n, xb_n, builds)
        points = []
        for b in builds:
            q = xq if b["system"] == "shardann" else xq_n
            for p in [p for p in cfg["nprobe_sweep"] if p <= b["nlist"]] or [b["nlist"]]:
                for r in b["refine"]:
                    points.append(SweepPoint(
                        b["system"], b["config"],
                        lambda q_, k_, fn=b["search"], p=p, r=r: fn(q_, k_, p, r), q, gt,
                        _label(b["config"], p, r), nprobe=p, refine_factor=r))
        logger.info("%d points over %d builds", len(points), len(builds))
        report["load_avg_start"], report["load_avg_end"] = sweep_interleaved(
            points, k, cfg["reps"])
    report["builds"] = [{k_: v for k_, v in b.items() if k_ not in ("search", "refine")}
                        for b in builds]
    report["points"] = [pt.result() for pt in points]
    report["frontier"], report["at_recall"] = summarize(report["points"], report["systems"])
    return report


def summarize(points, systems, targets=TARGETS):
    """Each system's Pareto frontier, and at each target recall its fastest
    point with the ratio shardann / that system."""
    frontier = {s: pareto_frontier([p for p in points if p["system"] == s]) for s in systems}
    rows = []
    for t in targets:
        row = {"target": t}
        for s in systems:
            row[s] = best_at_recall([p for p in points if p["system"] == s], t)
        ref = row.get("shardann")
        for s in systems:
            if s != "shardann":
                row[f"shardann_over_{s}"] = (ref["qps"] / row[s]["qps"]
                                             if ref and row[s] else None)
        rows.append(row)
    return frontier, rows
