"""``shardann bench core``: shardann against FAISS, same data, same parameters,
one thread each.

For every index kind (IVF-Flat, IVF-PQ 8-bit, IVF-PQ 4-bit, IVF-PQ + refine)
both libraries build an index with the same nlist / M / nbits / metric, trained
on the same sample with the same k-means iteration counts (read from FAISS's
defaults), and report recall@k, batch QPS, single-query latency, train
seconds, add vectors/second and first-call latency, plus the shardann/FAISS
ratio. An nprobe sweep gives a recall-QPS curve per kind and library (plotted
to a PNG) and an equal-recall comparison. Everything lands in a JSON file.

``--fresh-process-latency`` instead saves indexes and times the first search
in brand-new Python processes (Numba's on-disk cache vs a cold cache).

FAISS and matplotlib are optional (``pip install -e ".[bench]"``).
Without them shardann is still measured; the run says in one line what it
skipped: the FAISS columns, ratios and ground truth (exact search uses
``shardann.FlatIndex``; training iterations fall back to FAISS's usual
defaults), the PNG, or the one-thread limit of the BLAS pools.

The work is split by job: :mod:`._runners` (the two libraries behind one
interface), :mod:`._measure` (timing one index, comparing two),
:mod:`._suite` (data, ground truth, the run over every kind), :mod:`._report`
(printed summary, plot, JSON) and :mod:`._fresh` (the fresh-process mode);
this module holds the command-line options and the entry points.

Usage::

    python -m shardann.bench.core --quick
    python -m shardann.bench.core --base base.fvecs --queries query.fvecs
"""

import argparse
import logging
import sys

from . import _timing
from ._cli import resolve_settings
from ._fresh import format_fresh, run_fresh_latency, write_fresh
from ._report import JSON_NAME, PNG_NAME, format_report, write_outputs
from ._runners import KINDS
from ._suite import optional_packages, run_benchmark

DEFAULTS = {"n": 500_000, "nlist": 1024, "nq": 1000, "train_size": 262_144}
QUICK = {"n": 50_000, "nlist": 256, "nq": 200, "train_size": 65_536}


# --------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------
def positive_int_list(text):
    """argparse type: comma-separated integers >= 1, in the order given."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _int_list(text):
    return sorted(set(positive_int_list(text)))


def _kind_list(text):
    kinds = [v.strip() for v in text.split(",") if v.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {bad or text!r}; choose from {','.join(KINDS)}")
    return list(dict.fromkeys(kinds))


def add_arguments(parser):
    """Add the ``bench core`` options to an ``argparse`` parser."""
    parser.epilog = (
        "FAISS and matplotlib are optional (the bench extra: "
        f"{_timing.BENCH_EXTRA}); without them shardann is measured alone, with no PNG and "
        "no 1-thread limit on the BLAS pools, and the run says in one line what it skipped.")
    data = parser.add_argument_group("data")
    data.add_argument("--base", metavar="PATH",
                      help="database vectors (.npy / .fvecs / .bvecs); default: generate "
                           "structured synthetic data")
    data.add_argument("--queries", metavar="PATH", help="query vectors (with --base)")
    data.add_argument("--train", metavar="PATH",
                      help="training vectors (default: a random sample of --base)")
    data.add_argument("--n", type=int, default=None,
                      help=f"synthetic database size (default {DEFAULTS['n']})")
    data.add_argument("--d", type=int, default=128, help="synthetic dimension (default 128)")
    data.add_argument("--nq", type=int, default=None,
                      help=f"number of queries (default {DEFAULTS['nq']})")
    data.add_argument("--train-size", type=int, default=None,
                      help=f"training sample, the same for both libraries "
                           f"(default {DEFAULTS['train_size']})")
    data.add_argument("--seed", type=int, default=0, help="data and training seed")

    idx = parser.add_argument_group("index")
    idx.add_argument("--kinds", type=_kind_list, default=list(KINDS),
                     help=f"comma-separated index kinds (default {','.join(KINDS)})")
    idx.add_argument("--nlist", type=int, default=None,
                     help=f"IVF lists (default {DEFAULTS['nlist']})")
    idx.add_argument("--M", type=int, default=32, help="PQ sub-quantizers (default 32)")
    idx.add_argument("--metric", choices=("l2", "ip"), default="l2",
                     help="distance: l2 (squared Euclidean) or ip (inner product); default l2")
    idx.add_argument("--refine-factor", type=int, default=4,
                     help="ivfpq8-refine: shortlist k*refine_factor (FAISS k_factor); default 4")
    idx.add_argument("--faiss-fs-residual", action="store_true",
                     help="ivfpq4: use FAISS 'PQ{M}x4fsr' (by_residual=True) instead of the "
                          "factory default 'PQ{M}x4fs' (by_residual=False)")
    idx.add_argument("--shardann-no-residual", action="store_true",
                     help="IVF-PQ kinds: shardann with by_residual=False (codes of the vectors, "
                          "one table per query, like FAISS's 'PQ{M}x4fs') instead of residual "
                          "codes")

    srch = parser.add_argument_group("search")
    srch.add_argument("--nprobe", type=int, default=16, help="lists probed (default 16)")
    srch.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    srch.add_argument("--nprobe-sweep", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64],
                      help="nprobe values for the recall-QPS curve (default 1,2,4,8,16,32,64)")
    srch.add_argument("--reps", type=int, default=3,
                      help="repetitions of the timed batch search (best is reported); default 3")
    srch.add_argument("--sweep-reps", type=int, default=2,
                      help="repetitions per sweep point (default 2)")
    srch.add_argument("--latency-queries", type=int, default=200,
                      help="queries searched one at a time for latency percentiles (default 200)")

    run = parser.add_argument_group("run")
    run.add_argument("--quick", action="store_true",
                     help="smoke-test preset: n=50000, nlist=256, nq=200, train-size=65536 "
                          "(explicit options still win)")
    run.add_argument("--out", default="bench-results",
                     help=f"output directory for {JSON_NAME} and {PNG_NAME} "
                          "(default bench-results/)")
    run.add_argument("--no-plot", action="store_true",
                     help=f"skip the PNG (written only when matplotlib is installed: "
                          f"{_timing.BENCH_EXTRA})")
    run.add_argument("--fresh-process-latency", action="store_true",
                     help="instead of the benchmark: save indexes, then time import, open and "
                          "the first searches in new Python processes (Numba on-disk cache "
                          "vs an empty cache)")
    run.add_argument("--fresh-runs", type=int, default=3,
                     help="fresh processes per index with the normal Numba cache (default 3)")
    return parser


def _resolve(args):
    """Fill preset-dependent defaults; return a plain dict of the settings."""
    return resolve_settings(args, DEFAULTS, QUICK)


def _validate(cfg):
    """Return an error message or None."""
    if cfg["base"] and not cfg["queries"]:
        return "--base needs --queries"
    if cfg["queries"] and not cfg["base"]:
        return "--queries needs --base"
    for name in ("n", "d", "nq", "train_size", "nlist", "M", "nprobe", "k", "reps",
                 "sweep_reps", "fresh_runs"):
        if cfg[name] < 1:
            return f"--{name.replace('_', '-')} must be >= 1; got {cfg[name]}"
    if cfg["refine_factor"] < 1:
        return f"--refine-factor must be >= 1; got {cfg['refine_factor']}"
    if cfg["nprobe"] > cfg["nlist"]:
        return f"--nprobe {cfg['nprobe']} is larger than --nlist {cfg['nlist']}"
    return None


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------
def run(args):
    """Run ``bench core`` with parsed ``args``; print the summary. Returns an exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = _resolve(args)
    err = _validate(cfg)
    if err:
        print(f"shardann bench core: error: {err}", file=sys.stderr)
        return 2
    faiss, skipped = optional_packages(cfg)
    note = _timing.skip_note("shardann bench core", skipped)
    if note:
        print(note, flush=True)
    try:
        if cfg["fresh_process_latency"]:
            report = run_fresh_latency(cfg, faiss, skipped)
            path = write_fresh(report, cfg["out"])
            print(format_fresh(report))
            print(f"\nwrote {path}")
            return 0
        report = run_benchmark(cfg, faiss, skipped)
    except (ValueError, OSError) as exc:
        print(f"shardann bench core: error: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(report, cfg["out"], make_plot=not cfg["no_plot"])
    print(format_report(report))
    print("\nwrote " + ", ".join(paths.values()))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m shardann.bench.core",
        description="Compare shardann with FAISS (recall, QPS, train and add speed), "
                    "single-threaded, on the same data and parameters.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

