"""``shardann bench filter``: filtered search at several selectivities, shardann
against FAISS's ``IDSelector`` and LanceDB's ``where`` pre-filter, one thread
each, in one run.

The data get one categorical attribute, ``category``, independent of the
vectors: for each selectivity s below 100% a category holding exactly s of the
rows (``category = 's1'`` passes 1%), and a filter passing every row for 100%
(see :mod:`._filter`). Each system builds one IVF-PQ index of the same
configuration (nlist, M, nbits; no refine) and answers, at every nprobe of the
sweep, the queries without a filter and under each filter:

- shardann: ``index.search(q, k, nprobe=p, filter="category = 's1'")``;
- FAISS (when installed): ``IVF{nlist},PQ{M}x8np`` (``x4fs`` for 4 bits), a batch
  search with ``SearchParametersIVF(sel=IDSelectorBitmap(mask), nprobe=p)``;
- LanceDB (when installed): an ``IVF_PQ`` index and a BITMAP scalar index on the
  attribute, ``table.search(q).where(filter, prefilter=True).nprobes(p)``, one
  query per call (LanceDB has no batch search), on the first ``--lancedb-nq``
  queries. Its CPU pool is limited to one thread (``LANCE_CPU_THREADS=1``, set
  before LanceDB is imported unless the environment sets it).

Recall@k is measured against brute force over the rows that pass the filter.
Every point is timed best-of-``reps``, the repetitions interleaved across all
systems. The report gives recall and QPS by filter and nprobe, the recall kept
under each filter (filtered / unfiltered recall of the same system at the same
nprobe), the best QPS at recall >= a fraction of the unfiltered recall, and
each FAISS / LanceDB point against the QPS shardann needs for the same recall;
it is written to ``filter.json`` and plotted to ``filter-recall-qps.png``.

Usage::

    shardann bench filter --n 200000 --d 128 --nlist 1024
    shardann bench filter --quick --json
"""

import argparse
import os
import sys

from . import _timing
from ._cli import add_data_arguments, check_settings, pq_list, resolve_settings, run_comparison
from ._filter import run_filter
from ._report import (
    FILTER_JSON,
    FILTER_PNG,
    filter_figure,
    format_filter,
)
from .core import positive_int_list

DEFAULTS = {"n": 200_000, "d": 128, "nq": 1000, "train_size": 100_000, "nlist": 1024}
QUICK = {"n": 20_000, "d": 64, "nq": 200, "train_size": 20_000, "nlist": 128}
SELECTIVITIES = (1.0, 0.5, 0.1, 0.01, 0.001)


def _pq(text):
    """argparse type: one NBITSxM pair, e.g. ``8x32``."""
    pairs = pq_list(text)
    if len(pairs) != 1:
        raise argparse.ArgumentTypeError(f"expected one NBITSxM pair; got {text!r}")
    return pairs[0]


def _fractions(text):
    """argparse type: comma-separated numbers in (0, 1], largest first."""
    try:
        vals = sorted({float(v) for v in text.split(",") if v.strip()}, reverse=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}") \
            from None
    if not vals or vals[-1] <= 0 or vals[0] > 1:
        raise argparse.ArgumentTypeError(f"expected numbers in (0, 1]; got {text!r}")
    return vals


def add_arguments(parser):
    """Add the ``bench filter`` options to an ``argparse`` parser."""
    parser.epilog = ("FAISS, LanceDB, matplotlib and threadpoolctl are optional (FAISS and "
                     f"matplotlib: the bench extra, {_timing.BENCH_EXTRA}; LanceDB: pip "
                     "install lancedb); a system that is not installed is left out, and the "
                     "run says so.")
    data = add_data_arguments(parser, DEFAULTS, "FAISS and LanceDB",
                              "training sample of shardann and FAISS; LanceDB samples "
                              "train-size/nlist rows per list itself")
    data.add_argument("--selectivities", type=_fractions, default=list(SELECTIVITIES),
                      help="fractions of the rows the filters pass; those below 1 are "
                           "categories of their own and must add up to at most 1 "
                           "(default 1,0.5,0.1,0.01,0.001)")

    idx = parser.add_argument_group("index")
    idx.add_argument("--nlist", type=int, default=None,
                     help=f"IVF lists / LanceDB partitions (default {DEFAULTS['nlist']})")
    idx.add_argument("--pq", type=_pq, default=None,
                     help="NBITSxM of every system's PQ (default 8x(d/4))")
    idx.add_argument("--no-faiss", action="store_true", help="leave FAISS out")
    idx.add_argument("--no-lancedb", action="store_true", help="leave LanceDB out")

    srch = parser.add_argument_group("search")
    srch.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    srch.add_argument("--nprobe-sweep", type=lambda t: sorted(set(positive_int_list(t))),
                      default=[1, 2, 4, 8, 16, 32, 64, 128],
                      help="nprobe values (default 1,2,4,8,16,32,64,128; shardann may probe "
                           "more lists under a selective filter)")
    srch.add_argument("--reps", type=int, default=3,
                      help="timed repetitions per point, interleaved (default 3)")
    srch.add_argument("--lancedb-nq", type=int, default=200,
                      help="queries LanceDB answers (one call each; the first of the "
                           "query set; default 200)")
    srch.add_argument("--targets", type=_fractions, default=[0.8, 0.9, 0.95],
                      help="recall targets as fractions of shardann's best unfiltered "
                           "recall, for the best-QPS table (default 0.8,0.9,0.95)")

    run_ = parser.add_argument_group("run")
    run_.add_argument("--quick", action="store_true",
                      help="smoke-test preset: n=20000, d=64, nq=200, train-size=20000, "
                           "nlist=128 (explicit options still win)")
    run_.add_argument("--out", default="bench-results",
                      help=f"output directory for {FILTER_JSON} and {FILTER_PNG} "
                           "(default bench-results/)")
    run_.add_argument("--no-plot", action="store_true", help=f"skip {FILTER_PNG}")
    run_.add_argument("--json", action="store_true",
                      help="print the report as JSON instead of the tables")
    return parser


def _validate(cfg):
    err = check_settings(cfg, ("n", "d", "nq", "train_size", "nlist", "k", "reps",
                               "lancedb_nq"))
    below = [s for s in cfg["selectivities"] if s < 1.0]
    if not err and sum(below) > 1.0 + 1e-9:
        err = (f"the selectivities below 1 are disjoint categories and add up to "
               f"{sum(below):g} > 1; got {cfg['selectivities']}")
    return err


def run(args):
    """Run ``bench filter`` with parsed ``args``; print the summary. Returns an exit code."""
    if not args.no_lancedb:
        # its CPU pool takes its size when LanceDB first starts it
        os.environ.setdefault("LANCE_CPU_THREADS", "1")
    return run_comparison(
        "shardann bench filter", resolve_settings(args, DEFAULTS, QUICK), _validate,
        [("faiss", "FAISS", "no_faiss"), ("lancedb", "LanceDB", "no_lancedb")], run_filter,
        (FILTER_JSON, FILTER_PNG), filter_figure, format_filter)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m shardann.bench.filter",
        description="Filtered search at several selectivities: shardann against FAISS's "
                    "IDSelector and LanceDB's where pre-filter, single-threaded, in one run.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
