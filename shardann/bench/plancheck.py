"""``shardann bench plancheck``: does the planner's predicted recall hold at scale?

Generates ``--n`` database vectors and ``--nq`` held-out queries
(:func:`.datasets.synthetic` or :func:`.datasets.mixture`), plans an index for
all ``--n`` vectors from a sample of ``--sample-size`` of them
(:func:`.planner.plan`), builds the planned index on the whole database,
searches the held-out queries with the planned nprobe and refine factor and
compares recall@k against brute force with the prediction. The nprobe values
either side of the planned one are measured too (same index), with the model's
prediction for each, so the check covers a piece of the recall curve and not a
single point. QPS per core (CPU time of one-thread batch searches, as the
planner measures) is printed beside the predicted figure, for information.

Usage::

    shardann bench plancheck --dataset synthetic --d 128 --metric l2 --n 200000
    shardann bench plancheck --dataset mixture --d 384 --metric cosine --n 200000

The exit status is 1 when the planned point's recall is off by more than
``--tolerance`` (default 0.03, the planner's goal).
"""

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from . import _plan_model, _timing
from ._plan_measure import coarse_rows
from ._suite import environment
from .planner import candidate_nprobes, measure_sample, plan

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "mixture")
#: the planner's goal: predicted recall within this of the measured one
TOLERANCE = 0.03


def add_arguments(parser):
    """Add the ``bench plancheck`` options to an ``argparse`` parser."""
    from .frontier import keep_list, pq_list

    parser.add_argument("--dataset", choices=DATASETS, default="synthetic",
                        help="generated data: synthetic (a curved manifold) or mixture "
                             "(an anisotropic Gaussian mixture); default synthetic")
    parser.add_argument("--n", type=int, default=200_000,
                        help="database size the plan is for and the index is built with "
                             "(default 200000)")
    parser.add_argument("--d", type=int, default=128, help="dimension (default 128)")
    parser.add_argument("--metric", choices=("l2", "ip", "cosine"), default="l2",
                        help="l2, ip or cosine (default l2)")
    parser.add_argument("--nq", type=int, default=1000,
                        help="held-out queries searched on the built index (default 1000)")
    parser.add_argument("--target-recall", type=float, default=0.9,
                        help="the plan's target recall@k (default 0.9)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--sample-size", type=int, default=50_000,
                        help="database rows the planner measures (default 50000)")
    parser.add_argument("--queries", type=int, default=1000,
                        help="held-out sample rows the planner uses as queries (default 1000)")
    parser.add_argument("--pq", type=pq_list, default=None, metavar="NBITSxM,...",
                        help="code layouts the planner measures (default its own)")
    parser.add_argument("--keep", type=keep_list, default=["int8", "float16"],
                        help="kept-vector types the planner measures (default int8,float16)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest accepted |predicted - measured| recall at the planned "
                             f"point (default {TOLERANCE})")
    parser.add_argument("--reps", type=int, default=2,
                        help="timed batch searches for QPS per core (best kept; default 2)")
    parser.add_argument("--seed", type=int, default=0, help="data, sample and training seed")
    parser.add_argument("--out", default="bench-results",
                        help="output directory for plancheck.json (default bench-results/)")
    return parser


def generate(dataset, n, nq, d, seed=0):
    """``(xb, xq)``: float32 (n, d) database and (nq, d) held-out queries of
    one draw of ``dataset`` ("synthetic" or "mixture")."""
    from . import datasets

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}; got {dataset!r}")
    x = getattr(datasets, dataset)(n + nq, d, seed=seed)
    return x[:n], x[n:]


def _nearby(nprobe, nlist):
    """The planned nprobe and the considered values just below and above it."""
    cands = candidate_nprobes(nlist)
    i = cands.index(nprobe) if nprobe in cands else int(np.searchsorted(cands, nprobe))
    return sorted({cands[j] for j in (i - 1, i + 1) if 0 <= j < len(cands)} | {nprobe})


def check_plan(xb, xq, *, metric="l2", k=10, target_recall=0.9, sample_size=50_000,
               queries=1000, pq_configs=None, keeps=("int8", "float16"),
               refine_factors=(2, 4, 8), reps=2, seed=0):
    """Plan for ``xb``'s size from a sample of it, build the plan on all of
    ``xb`` and measure it on the held-out ``xq``.

    Parameters
    ----------
    xb : float32 (n, d) database; xq : float32 (nq, d) queries not in ``xb``.
    metric, k, target_recall : as :func:`.planner.plan`.
    sample_size, queries : the planner's sample: its first ``sample_size +
        queries`` rows of ``xb`` (generated rows are independent draws).
    pq_configs, keeps, refine_factors : the layouts the planner measures
        (:func:`.planner.plan`'s arguments).
    reps : timed batch searches for QPS per core (best kept).

    Returns a JSON-able dict: ``plan`` (:meth:`.planner.Plan.to_dict`), ``rows``
    (``{"nprobe", "planned", "predicted", "measured", "error", "coarse_predicted",
    "coarse_measured"}`` at the planned nprobe and its neighbours; coarse: the
    share of the true top-k in the probed lists), ``error`` (at the planned
    point), ``qps_per_core`` ``{"predicted", "measured"}``, ``seconds`` spent
    measuring, building and searching, and the planner's ``measurements`` (to
    fit other models on them).
    """
    from .. import IVFPQIndex, brute_force_knn
    from ..results import recall_at_k

    n = xb.shape[0]
    sample_size = min(int(sample_size), n - int(queries))
    seconds = {}
    t0 = time.perf_counter()
    sample = xb[:sample_size + queries]
    meas = measure_sample(n, xb.shape[1], metric=metric, k=k, sample=sample,
                          sample_size=sample_size, queries=queries, pq_configs=pq_configs,
                          keeps=keeps, refine_factors=refine_factors, seed=seed)
    p = plan(n, xb.shape[1], metric=metric, k=k, target_recall=target_recall,
             measurements=meas)
    model = _plan_model.RecallModel(meas)
    seconds["plan"] = time.perf_counter() - t0
    logger.info("plancheck: planned nlist=%d nprobe=%d %d-bit M=%d keep=%s refine=%d "
                "(predicted recall %.4f) in %.0f s", p.nlist, p.nprobe, p.nbits, p.M,
                p.keep_vectors, p.refine_factor, p.recall, seconds["plan"])

    t0 = time.perf_counter()
    kwargs = p.index_kwargs()
    index = IVFPQIndex(**kwargs, seed=seed)
    index.train(xb)
    index.add(xb)
    seconds["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gt = brute_force_knn(xq, xb, k, metric)[1]
    seconds["ground_truth"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    layout = (p.nbits, p.M, p.keep_vectors, p.refine_factor)
    probes = _nearby(p.nprobe, p.nlist)
    # the two factors of the model, measured apart: the share of the true top-k in the lists
    coarse = {r["nprobe"]: r["recall"] for r in coarse_rows(
        n, p.nlist, index.probe(index.prepare(xq), probes[-1])[1], index.assign(xb), gt, k,
        probes)}
    rows = []
    for nprobe in probes:
        ids = index.search(xq, k, nprobe=nprobe, refine_factor=p.refine_factor)[1]
        measured = float(recall_at_k(ids, gt, k))
        predicted = (p.recall if nprobe == p.nprobe
                     else model.predict(nprobe, p.nlist, n, *layout))
        rows.append({"nprobe": nprobe, "planned": nprobe == p.nprobe, "predicted": predicted,
                     "measured": measured, "error": predicted - measured,
                     "coarse_predicted": model.coarse(nprobe, p.nlist, n),
                     "coarse_measured": coarse[nprobe]})
    with _timing.single_thread():
        search = lambda: index.search(xq, k, nprobe=p.nprobe,  # noqa: E731
                                      refine_factor=p.refine_factor)
        search()  # untimed: compile or load the kernels
        _, cpus, _ = _timing.repeat(search, reps)
    seconds["search"] = time.perf_counter() - t0
    planned = next(r for r in rows if r["planned"])
    return {"n": n, "d": xb.shape[1], "nq": xq.shape[0], "metric": metric, "k": k,
            "plan": p.to_dict(), "rows": rows, "error": planned["error"],
            "qps_per_core": {"predicted": p.qps_per_core,
                             "measured": xq.shape[0] / min(cpus)},
            "seconds": seconds, "measurements": meas.to_dict()}


def format_check(report, tolerance=TOLERANCE):
    """The check for people: the plan, then predicted against measured."""
    p = report["plan"]
    keep = (f", refine x{p['refine_factor']} on {p['keep_vectors']}" if p["refine_factor"]
            else "")
    c = report["config"]
    s = report["seconds"]
    lines = [f"shardann bench plancheck: {c['dataset']} n={report['n']:,} d={report['d']} "
             f"{report['metric']}, recall@{report['k']} target {p['target_recall']:g}; "
             f"planned from {c['sample_size']:,} sample rows",
             f"plan: IVF-PQ nlist={p['nlist']}, {p['nbits']}-bit M={p['M']}{keep}, "
             f"nprobe={p['nprobe']}",
             f"{'':>8}{'recall@' + str(report['k']):^30}{'coarse (in probed lists)':^26}",
             f"{'nprobe':>8}{'predicted':>11}{'measured':>10}{'error':>9}"
             f"{'predicted':>13}{'measured':>10}"]
    for r in report["rows"]:
        mark = "  <- planned" if r["planned"] else ""
        lines.append(f"{r['nprobe']:>8}{r['predicted']:>11.4f}{r['measured']:>10.4f}"
                     f"{r['error']:>+9.4f}{r['coarse_predicted']:>13.4f}"
                     f"{r['coarse_measured']:>10.4f}{mark}")
    q = report["qps_per_core"]
    ok = abs(report["error"]) <= tolerance
    lines += [f"QPS per core at the planned nprobe: predicted {q['predicted']:,.0f}, measured "
              f"{q['measured']:,.0f} (one-thread batch of {report['nq']:,} queries)",
              f"recall error at the planned point: {report['error']:+.4f} "
              f"({'within' if ok else 'OUTSIDE'} +-{tolerance:g})",
              f"seconds: plan {s['plan']:.0f}, build {s['build']:.0f}, ground truth "
              f"{s['ground_truth']:.0f}, search {s['search']:.0f}"]
    return "\n".join(lines)


def run(args):
    """Run ``bench plancheck``; print the table. Returns an exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = {k: getattr(args, k) for k in (
        "dataset", "n", "d", "metric", "nq", "target_recall", "k", "sample_size", "queries",
        "pq", "keep", "tolerance", "reps", "seed", "out")}
    try:
        xb, xq = generate(cfg["dataset"], cfg["n"], cfg["nq"], cfg["d"], seed=cfg["seed"])
        report = check_plan(xb, xq, metric=cfg["metric"], k=cfg["k"],
                            target_recall=cfg["target_recall"],
                            sample_size=cfg["sample_size"], queries=cfg["queries"],
                            pq_configs=cfg["pq"], keeps=cfg["keep"], reps=cfg["reps"],
                            seed=cfg["seed"])
    except ValueError as exc:
        print(f"shardann bench plancheck: error: {exc}", file=sys.stderr)
        return 2
    report = {"benchmark": "shardann bench plancheck", "config": cfg,
              "environment": environment(None), **report}
    os.makedirs(cfg["out"], exist_ok=True)
    path = os.path.join(cfg["out"], "plancheck.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(format_check(report, cfg["tolerance"]))
    print(f"\nwrote {path}")
    return 0 if abs(report["error"]) <= cfg["tolerance"] else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m shardann.bench.plancheck",
                                     description="The planner's predicted recall against "
                                                 "the planned index's, at scale.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
