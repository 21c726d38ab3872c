"""``shardann bench probing``: adaptive probing (``search(..., probe_ratio=)``
and ``search(..., probe_gap=)``) against fixed ``nprobe`` on one index, one
thread, at equal recall.

Sweeps fixed nprobe values, (cap nprobe, probe_ratio) and (cap nprobe,
probe_gap) pairs on one IVF-Flat or IVF-PQ index, times every point
best-of-``reps`` with the repetitions interleaved, and prints, at each target
recall, the QPS of each method (best mix of two measured settings) and its
ratio to fixed nprobe, with the list-coverage bound of any per-query choice
of lists (see :mod:`._adaptive`). Writes ``probing.json``.

Usage::

    shardann bench probing --n 200000 --d 128 --nlist 1024
    shardann bench probing --dataset mixture --index ivfpq --M 32 --nbits 8
    shardann bench probing --d 384 --metric cosine --index ivfpq --keep float32
"""

import argparse
import sys

from ._adaptive import format_probing, run_probing
from ._cli import add_data_arguments, check_settings, resolve_settings, run_comparison
from .core import positive_int_list
from .frontier import DEFAULTS

PROBING_JSON = "probing.json"
QUICK = {"n": 20_000, "d": 64, "nq": 200, "train_size": 20_000, "nlist": 128}


def _numbers(text, upper=None):
    """Sorted distinct numbers > 0 (and <= ``upper``) of a comma-separated list."""
    try:
        vals = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}") \
            from None
    if not vals or not vals[0] > 0 or (upper is not None and vals[-1] > upper):
        span = "> 0" if upper is None else f"in (0, {upper:g}]"
        raise argparse.ArgumentTypeError(f"expected numbers {span}; got {text!r}")
    return vals


def _ratio_list(text):
    return _numbers(text, 1.0)


def _or_none(parse):
    """``parse``, or [] for "none" (no points of that method)."""
    return lambda text: [] if text.strip().lower() == "none" else parse(text)


def add_arguments(parser):
    """Add the ``bench probing`` options to an ``argparse`` parser."""
    data = add_data_arguments(parser, DEFAULTS, "the FAISS ground truth",
                              "training sample")
    data.add_argument("--dataset", choices=("synthetic", "mixture"), default="synthetic",
                      help="generated data without --base: synthetic (a curved manifold) "
                           "or mixture (an anisotropic Gaussian mixture); default synthetic")
    data.add_argument("--gt", metavar="PATH",
                      help="ground-truth neighbour ids of the queries (.ivecs / .npy; ids are "
                           "row numbers of --base), at least k per query; default: exact "
                           "search")
    idx = parser.add_argument_group("index")
    idx.add_argument("--index", choices=("ivfflat", "ivfpq"), default="ivfflat",
                     help="index kind (default ivfflat)")
    idx.add_argument("--nlist", type=int, default=None,
                     help=f"lists (default {DEFAULTS['nlist']})")
    idx.add_argument("--M", type=int, default=None, help="ivfpq sub-quantizers (default d/2)")
    idx.add_argument("--nbits", type=int, default=4, help="ivfpq bits per code (default 4)")
    idx.add_argument("--keep", choices=("float32", "float16", "int8"), default=None,
                     help="ivfpq: keep vectors of this type and refine on them")
    idx.add_argument("--refine-factor", type=int, default=4,
                     help="refine factor with --keep (default 4)")
    srch = parser.add_argument_group("search")
    srch.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    srch.add_argument("--nprobe-sweep", type=lambda t: sorted(set(positive_int_list(t))),
                      default=[1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64],
                      help="fixed nprobe values (default 1,2,3,4,5,6,8,10,12,16,20,24,32,48,64)")
    srch.add_argument("--caps", type=lambda t: sorted(set(positive_int_list(t))),
                      default=[16, 32],
                      help="nprobe of the adaptive points: the most lists a query may scan "
                           "(default 16,32)")
    srch.add_argument("--ratios", type=_or_none(_ratio_list),
                      default=[0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92,
                               0.94, 0.96, 0.98],
                      help="probe_ratio values (default 0.3,0.4,0.5,0.6,0.65,...,0.8,0.85,0.88,"
                           "0.9,...,0.98: cosine similarities need the high end; none: "
                           "no probe_ratio points)")
    srch.add_argument("--gaps", type=_or_none(_numbers),
                      default=[0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0,
                               1.5, 2.0, 3.0],
                      help="probe_gap values (default 0.01,0.02,0.03,0.05,0.07,0.1,...,3; "
                           "none: no probe_gap points)")
    srch.add_argument("--targets", type=_ratio_list, default=[0.8, 0.9, 0.95],
                      help="recalls to compare at (default 0.8,0.9,0.95)")
    srch.add_argument("--reps", type=int, default=3,
                      help="timed repetitions per point, interleaved (default 3)")
    run_ = parser.add_argument_group("run")
    run_.add_argument("--quick", action="store_true",
                      help="smoke-test preset: n=20000, d=64, nq=200, nlist=128")
    run_.add_argument("--out", default="bench-results",
                      help=f"output directory for {PROBING_JSON} (default bench-results/)")
    run_.add_argument("--no-faiss", action="store_true",
                      help="exact ground truth with shardann.FlatIndex instead of FAISS")
    return parser


def _validate(cfg):
    cfg["caps"] = [p for p in cfg["caps"] if p <= cfg["nlist"]] or [cfg["nlist"]]
    return check_settings(cfg, ("n", "d", "nq", "train_size", "nlist", "k", "reps", "nbits"))


def run(args):
    """Run ``bench probing`` with parsed ``args``; print the summary. Returns an exit code."""
    cfg = resolve_settings(args, DEFAULTS, QUICK)
    cfg["no_plot"] = True  # a table says it: no figure
    return run_comparison("shardann bench probing", cfg, _validate,
                          [("faiss", "FAISS (exact ground truth)", "no_faiss")], run_probing,
                          (PROBING_JSON, None), None, format_probing)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m shardann.bench.probing",
        description="Adaptive probing against fixed nprobe, single-threaded, at equal recall.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
