"""``shardann bench distributed``: the sharded index against the local one.

Builds an IVF-PQ index on structured synthetic data, saves it, then measures
on the same queries: the local single-process index, and ``ShardedIndex``
with 1, 2 and 4 shards in local Ray mode — QPS for batches of 256 queries and
p50/p99 latency of single queries — and prints each sharded figure as a
ratio of the local one. Results are also checked to be identical.

Writes ``OUT/distributed.json`` and, when matplotlib is installed
(``pip install -e ".[bench]"``), ``OUT/distributed.png``: QPS and latency
against the number of shards, with the local index beside each.
"""

import argparse
import functools
import json
import logging
import os
import tempfile
import textwrap
import time

import numpy as np

from . import _timing
from .core import positive_int_list

logger = logging.getLogger(__name__)

JSON_NAME = "distributed.json"
PNG_NAME = "distributed.png"
DEFAULTS = {"n": 200_000, "nlist": 1024, "nq": 1024, "single": 300}
QUICK = {"n": 30_000, "nlist": 128, "nq": 512, "single": 100}


def add_arguments(p):
    """Add the ``bench distributed`` options to an ``argparse`` parser."""
    p.epilog = (f"The PNG needs matplotlib (the bench extra: {_timing.BENCH_EXTRA}); "
                "without it the run says so and writes the JSON alone.")
    p.add_argument("--n", type=int, default=None,
                   help=f"database vectors, synthetic (default {DEFAULTS['n']})")
    p.add_argument("--d", type=int, default=128, help="vector dimension (default 128)")
    p.add_argument("--nq", type=int, default=None,
                   help=f"queries for the batch runs (default {DEFAULTS['nq']})")
    p.add_argument("--nlist", type=int, default=None,
                   help=f"IVF lists (default {DEFAULTS['nlist']})")
    p.add_argument("--M", type=int, default=32, help="PQ sub-quantizers (default 32)")
    p.add_argument("--nbits", type=int, default=8, help="bits per PQ code, 1..8 (default 8)")
    p.add_argument("--nprobe", type=int, default=16, help="lists probed per query (default 16)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--batch", type=int, default=256,
                   help="queries per search call in the QPS runs (default 256)")
    p.add_argument("--single", type=int, default=None,
                   help=f"single-query latency samples (default {DEFAULTS['single']})")
    p.add_argument("--shards", type=positive_int_list, default=[1, 2, 4],
                   help="comma-separated shard counts, one sharded setup each (default 1,2,4)")
    p.add_argument("--num-cpus", type=int, default=2,
                   help="ray.init(num_cpus=...) for local Ray mode (default 2)")
    p.add_argument("--path", default=None,
                   help="index directory to write and open (default: a temporary directory)")
    p.add_argument("--out", default="bench-results",
                   help=f"output directory for {JSON_NAME} and {PNG_NAME} "
                        "(default bench-results/)")
    p.add_argument("--no-plot", action="store_true",
                   help=f"skip the PNG (written only when matplotlib is installed: "
                        f"{_timing.BENCH_EXTRA})")
    p.add_argument("--shard-threads", type=int, default=None,
                   help="kernel threads per shard (default: CPUs / shards)")
    p.add_argument("--reps", type=int, default=5,
                   help="batch passes per setup, taking turns with the local index (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test preset: n=30000, nlist=128, nq=512, single=100 "
                        "(explicit options still win)")
    return p


def _batch_qps(searches, xq, batch, reps):
    """Best QPS of each search function over ``reps`` passes through ``xq``
    in batches; the functions take turns pass by pass, so a stall of this
    shared machine hits them alike and their ratio holds."""
    best = [np.inf] * len(searches)
    for _ in range(reps):
        for j, search in enumerate(searches):
            t0 = time.perf_counter()
            for s in range(0, len(xq), batch):
                search(xq[s:s + batch])
            best[j] = min(best[j], time.perf_counter() - t0)
    return [len(xq) / b for b in best]


def _latencies(searches, xq, n, turn=20):
    """(p50, p99) ms of single-query searches, each function in turn for
    ``turn`` queries at a time, ``n`` queries each."""
    lat = [[] for _ in searches]
    for start in range(0, n, turn):
        for j, search in enumerate(searches):
            for i in range(start, min(n, start + turn)):
                q = xq[i % len(xq):i % len(xq) + 1]
                t0 = time.perf_counter()
                search(q)
                lat[j].append(time.perf_counter() - t0)
    out = []
    for one in lat:
        ms = np.array(one) * 1e3
        out.append((float(np.percentile(ms, 50)), float(np.percentile(ms, 99))))
    return out


def run(args):
    import ray

    import shardann
    from shardann.bench.datasets import synthetic_split
    from shardann.distributed import ShardedIndex

    for key, val in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    mpl = None
    if not args.no_plot:
        mpl, why = _timing.optional_import("matplotlib")
        if mpl is None:
            print(_timing.skip_note("shardann bench distributed", [(f"the plot {PNG_NAME}",
                                                                    why)]), flush=True)
    xb, xq, xt = synthetic_split(args.n, args.nq, args.d, nt=min(args.n, 100 * args.nlist),
                                 seed=0)
    tmp = None
    path = args.path
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="shardann-bench-")
        path = os.path.join(tmp.name, "index")
    logger.info("building the index (%d x %d)", args.n, args.d)
    index = shardann.IVFPQIndex(args.d, args.nlist, args.M, args.nbits, seed=0)
    index.train(xt)
    index.add(xb)
    index.save(path)
    kw = dict(k=args.k, nprobe=args.nprobe)
    index.search(xq[:4], **kw)  # compile / warm
    rows = []
    expected = index.search(xq, **kw)
    local = functools.partial(index.search, **kw)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        for shards in args.shards:
            with ShardedIndex.open(path, num_shards=shards,
                                   shard_threads=args.shard_threads) as sharded:
                got = sharded.search(xq, **kw)
                same = bool(np.array_equal(got[1], expected[1])
                            and np.array_equal(got[0], expected[0]))
                remote = functools.partial(sharded.search, **kw)
                local_qps, qps = _batch_qps([local, remote], xq, args.batch, args.reps)
                (local_p50, local_p99), (p50, p99) = _latencies([local, remote], xq,
                                                                 args.single)
                held = sharded.stats()["shards"]
                ntotal = max(1, sum(st["ntotal"] for st in held))
                rss = [st["load_rss_bytes"] for st in held]
                rows.append({"setup": f"{shards} shard(s)", "shards": shards, "qps": qps,
                             "local_qps": local_qps, "local_p50_ms": local_p50,
                             "local_p99_ms": local_p99,
                             "p50_ms": p50, "p99_ms": p99, "identical": same,
                             "held_bytes_per_vector":
                                 sum(st["allocated_bytes"] for st in held) / ntotal,
                             "load_rss_bytes_per_vector":
                                 None if None in rss else sum(rss) / ntotal})
    finally:
        ray.shutdown()
        if tmp is not None:
            tmp.cleanup()
    print(f"shardann bench distributed: n={args.n} d={args.d} nlist={args.nlist} M={args.M} "
          f"nbits={args.nbits} nprobe={args.nprobe} k={args.k}, batch={args.batch}, "
          f"ray num_cpus={args.num_cpus}")
    print("each row times the local index and the sharded one taking turns, so 'xlocal' and "
          "'p50-local' compare the same moments of this machine")
    print(f"{'setup':<12} {'QPS@batch':>10} {'local':>8} {'xlocal':>7} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'p50-local':>10} {'same (D,I)':>10} {'B/vec held':>10} "
          f"{'B/vec RSS':>10}")
    for r in rows:
        held, rss = r.get("held_bytes_per_vector"), r.get("load_rss_bytes_per_vector")
        print(f"{r['setup']:<12} {r['qps']:>10.0f} {r['local_qps']:>8.0f} "
              f"{r['qps'] / r['local_qps']:>7.2f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['p50_ms'] - r['local_p50_ms']:>10.2f} {str(r['identical']):>10} "
              f"{'' if held is None else f'{held:.1f}':>10} "
              f"{'' if rss is None else f'{rss:.1f}':>10}")
    code_bytes = index.code_size
    print(f"budget per vector held by shards: code {code_bytes} + id 8 + 10% = "
              f"{(code_bytes + 8) * 1.1:.1f} B ('B/vec RSS' is the shard processes' RSS growth "
              "while loading their lists, over the vectors they hold)")
    os.makedirs(args.out, exist_ok=True)
    out = [os.path.join(args.out, JSON_NAME)]
    params = {k: v for k, v in vars(args).items()
              if isinstance(v, (int, float, str, bool)) or k == "shards"}
    with open(out[0], "w") as f:
        json.dump({"args": params, "rows": rows}, f, indent=1)
    if mpl is not None:
        out.append(os.path.join(args.out, PNG_NAME))
        plot(rows, params, out[1])
    print("wrote " + ", ".join(out))
    return 0 if all(r["identical"] for r in rows) else 1


def shards_figure(rows, params):
    """The matplotlib figure of :func:`plot` (needs matplotlib)."""
    from matplotlib.figure import Figure

    shards = [r["shards"] for r in rows]
    fig = Figure(figsize=(11, 4.4))
    ax_qps, ax_lat = fig.subplots(1, 2)
    ax_qps.plot(shards, [r["qps"] for r in rows], "o-", color="tab:orange",
                label="sharded (Ray)")
    ax_qps.plot(shards, [r["local_qps"] for r in rows], "s--", color="tab:blue",
                label="local index (timed in turn)")
    ax_qps.set_ylim(bottom=0)
    ax_qps.set_ylabel(f"QPS (batches of {params.get('batch')})")
    ax_qps.set_title("batch throughput", fontsize=9)
    for pct, style in (("p50", "-"), ("p99", ":")):
        ax_lat.plot(shards, [r[f"{pct}_ms"] for r in rows], "o" + style, color="tab:orange",
                    label=f"sharded {pct}")
        ax_lat.plot(shards, [r[f"local_{pct}_ms"] for r in rows], "s" + style,
                    color="tab:blue", label=f"local {pct}")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("ms per single-query search")
    ax_lat.set_title("single-query latency", fontsize=9)
    for ax in (ax_qps, ax_lat):
        ax.set_xlabel("shards")
        ax.set_xticks(shards)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    p = params
    title = (f"shardann bench distributed: n={p.get('n'):,} d={p.get('d')} "
             f"nlist={p.get('nlist')} M={p.get('M')} nbits={p.get('nbits')} "
             f"nprobe={p.get('nprobe')} k={p.get('k')}, ray num_cpus={p.get('num_cpus')}")
    fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())), fontsize=10)
    fig.tight_layout()
    return fig


def plot(rows, params, path):
    """QPS and latency against the shard count, the local index beside them;
    a PNG at ``path``."""
    shards_figure(rows, params).savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(prog="shardann bench distributed", description=__doc__)
    add_arguments(p)
    logging.basicConfig(level=logging.INFO)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
