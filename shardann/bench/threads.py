"""``shardann bench threads``: batch QPS and single-query latency of one local
IVF-PQ index at 1, 2, … threads (``index.num_threads``).

One index is built (synthetic data, as ``bench core``), then batch searches
of ``--batch`` queries, the thread counts taking turns (best of ``--reps``
each), then ``--latency-queries`` single-query searches at every thread count
(median and p99), 20 at a time in turn. Every thread count returns the same results; the run checks
that and says so.

Usage::

    shardann bench threads --n 200000 --d 128 --nbits 4 --M 64 --refine-factor 4
"""

import argparse
import functools
import json
import logging
import os
import sys

import numpy as np

from . import _timing
from ._suite import environment, load_data
from .core import positive_int_list

logger = logging.getLogger(__name__)


def add_arguments(parser):
    """Add the ``bench threads`` options to an ``argparse`` parser."""
    parser.add_argument("--n", type=int, default=200_000, help="database size (default 200000)")
    parser.add_argument("--d", type=int, default=128, help="dimension (default 128)")
    parser.add_argument("--train-size", type=int, default=100_000,
                        help="training sample (default 100000)")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (default 1024)")
    parser.add_argument("--M", type=int, default=64, help="PQ sub-quantizers (default 64)")
    parser.add_argument("--nbits", type=int, choices=(4, 8), default=4,
                        help="bits per code (default 4)")
    parser.add_argument("--keep", choices=("float32", "float16", "int8"), default="float32",
                        help="kept vectors for --refine-factor (default float32)")
    parser.add_argument("--refine-factor", type=int, default=0,
                        help="refine factor (0 = none, the default)")
    parser.add_argument("--nprobe", type=int, default=16, help="lists probed (default 16)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--batch", type=int, default=1000,
                        help="queries per batch search (default 1000)")
    parser.add_argument("--threads", type=positive_int_list, default=None,
                        help="thread counts to compare (default 1 and every core)")
    parser.add_argument("--reps", type=int, default=5,
                        help="timed batch searches per thread count (default 5)")
    parser.add_argument("--latency-queries", type=int, default=300,
                        help="single-query searches per thread count (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--out", default="bench-results",
                        help="output directory for threads.json (default bench-results/)")
    return parser


def run_threads(cfg):
    """Build the index, time every thread count; return the report dict."""
    import numba

    from .. import IVFPQIndex

    data = {"base": None, "queries": None, "train": None, "n": cfg["n"], "d": cfg["d"],
            "nq": cfg["batch"], "train_size": cfg["train_size"], "seed": cfg["seed"]}
    xb, xq, xt, desc = load_data(data)
    threads = cfg["threads"] or sorted({1, numba.config.NUMBA_NUM_THREADS})
    index = IVFPQIndex(xb.shape[1], cfg["nlist"], cfg["M"], cfg["nbits"], seed=cfg["seed"],
                       keep_vectors=cfg["keep"] if cfg["refine_factor"] else False)
    index.train(xt)
    index.add(xb)
    kw = {"nprobe": cfg["nprobe"], "refine_factor": cfg["refine_factor"]}

    def search(t, q):
        index.num_threads = t
        return index.search(q, cfg["k"], **kw)

    for t in threads:
        search(t, xq[:64])  # untimed: compile or load the twins
    # the thread counts take turns rep by rep, so a stall of the machine (or the
    # BLAS threads of index.add spinning on for a while) hits them alike
    walls = {t: [] for t in threads}
    cpus = {t: [] for t in threads}
    results = {}
    for _ in range(max(1, int(cfg["reps"]))):
        for t in threads:
            w, c, results[t] = _timing.timed(search, t, xq)
            walls[t].append(w)
            cpus[t].append(c)
    # single queries too, 20 at a time each
    lat = {t: [] for t in threads}
    for s in range(0, min(int(cfg["latency_queries"]), xq.shape[0]), 20):
        for t in threads:
            lat[t].append(_timing.latencies(functools.partial(search, t), xq[s:s + 20], 20))
    rows, first = [], results[threads[0]]
    for t in threads:
        D, ids = results[t]
        same = np.array_equal(ids, first[1]) and np.array_equal(D, first[0])
        rows.append({"threads": t, "qps": xq.shape[0] / min(walls[t]),
                     "cpu_over_wall": min(cpus[t]) / min(walls[t]),
                     "latency_ms": _timing.percentiles_ms(np.concatenate(lat[t])),
                     "identical": bool(same)})
        logger.info("threads=%d: %.0f QPS, single-query p50 %.3f ms", t, rows[-1]["qps"],
                    rows[-1]["latency_ms"]["p50"])
    return {"benchmark": "shardann bench threads", "config": cfg, "dataset": desc,
            "environment": environment(None), "rows": rows}


def format_threads(report):
    c = report["config"]
    env = report["environment"]
    lines = [f"shardann bench threads: n={report['dataset']['n']:,} d={report['dataset']['d']} "
             f"IVF{c['nlist']},PQ{c['M']}x{c['nbits']} nprobe={c['nprobe']} k={c['k']} "
             f"refine={c['refine_factor']}" + (f" ({c['keep']})" if c["refine_factor"] else "")
             + f"; batch of {c['batch']}; {env['cpu']}, {env['os_cpu_count']} CPUs",
             f"{'threads':>8}{'batch QPS':>12}{'speed-up':>10}{'cpu/wall':>10}"
             f"{'1-query p50 ms':>16}{'p99 ms':>9}{'same results':>14}"]
    base = report["rows"][0]["qps"]
    for r in report["rows"]:
        lat = r["latency_ms"]
        lines.append(f"{r['threads']:>8}{r['qps']:>12,.0f}{r['qps'] / base:>9.2f}x"
                     f"{r['cpu_over_wall']:>10.2f}{lat['p50']:>16.3f}{lat['p99']:>9.3f}"
                     f"{'yes' if r['identical'] else 'NO':>14}")
    return "\n".join(lines)


def run(args):
    """Run ``bench threads``; print the table. Returns an exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = {k: getattr(args, k) for k in (
        "n", "d", "train_size", "nlist", "M", "nbits", "keep", "refine_factor", "nprobe", "k",
        "batch", "threads", "reps", "latency_queries", "seed", "out")}
    try:
        report = run_threads(cfg)
    except ValueError as exc:
        print(f"shardann bench threads: error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(cfg["out"], exist_ok=True)
    path = os.path.join(cfg["out"], "threads.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(format_threads(report))
    print(f"\nwrote {path}")
    return 0 if all(r["identical"] for r in report["rows"]) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m shardann.bench.threads",
                                     description="Batch QPS and latency by thread count.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
