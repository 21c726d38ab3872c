"""``shardann bench frontier``: the recall-QPS frontier of shardann's
configurations against FAISS's and ScaNN's, one thread each, in one run.

Users pick an index by the recall they need. This sweeps, on one dataset:

- shardann: IVF-PQ with 4- and 8-bit codes at several M, with and without
  refine on kept float32 / float16 / int8 vectors (one training per (nbits, M);
  the kept-vector variants share it), over nprobe and refine factors; with
  ``--pca``, the same again behind a PCA to fewer dimensions (refine on the
  original vectors); with ``--opq``, each of those with an OPQ rotation too;
- FAISS (when installed): ``IVF…,PQ{M}x8np`` and ``IVF…,PQ{M}x4fs``, each alone
  and under ``RFlat`` refine (``k_factor`` = refine factor);
- ScaNN (when installed): a tree of ``nlist`` leaves, anisotropic hashing with
  2 dimensions per 4-bit block, exact re-ordering of k × refine factor.

With several ``--nlist`` values every system is built at each (the best
nlist depends on the recall: fewer, longer lists probe cheaper at low nprobe).

Every point is timed best-of-``reps``, the repetitions interleaved across all
systems. It prints each system's Pareto frontier, the best QPS of each system at
recall 0.7 / 0.8 / 0.9 / 0.95 with the ratio shardann / system, and which
shardann configuration to pick for each target; writes ``frontier.json`` and the
plot ``frontier-recall-qps.png``. The data: generated (as ``bench core``), or
``--base``/``--queries`` files (.npy, .fvecs, .bvecs, Parquet) with optional
``--gt`` ground truth (.ivecs or .npy ids).

Usage::

    shardann bench frontier --n 200000 --d 128
    shardann bench frontier --base base.npy --queries q.npy --metric cosine
"""

import argparse
import sys

from . import _timing
from ._cli import add_data_arguments, check_settings, pq_list, resolve_settings, run_comparison
from ._frontier import run_frontier
from ._report import FRONTIER_JSON, FRONTIER_PNG, format_frontier, frontier_figure
from .core import positive_int_list

DEFAULTS = {"n": 200_000, "d": 128, "nq": 1000, "train_size": 100_000, "nlist": 1024}
QUICK = {"n": 20_000, "d": 64, "nq": 200, "train_size": 20_000, "nlist": 128}
KEEPS = ("float32", "float16", "int8")


def _dim_list(text):
    """argparse type: comma-separated dimensions >= 1, sorted (``none``: [])."""
    return [] if text.strip().lower() == "none" else sorted(set(positive_int_list(text)))


def keep_list(text):
    """argparse type: comma-separated kept-vector types (float32, float16, int8), or none."""
    keeps = [v.strip() for v in text.split(",") if v.strip()]
    if text.strip().lower() == "none":
        return []
    bad = [k for k in keeps if k not in KEEPS]
    if bad or not keeps:
        raise argparse.ArgumentTypeError(f"choose from {','.join(KEEPS)} (or none); got {text!r}")
    return list(dict.fromkeys(keeps))


def _factor_list(text):
    try:
        vals = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}") \
            from None
    if not vals or vals[0] < 0:
        raise argparse.ArgumentTypeError(f"expected integers >= 0; got {text!r}")
    return vals


def add_arguments(parser):
    """Add the ``bench frontier`` options to an ``argparse`` parser."""
    parser.epilog = ("FAISS, ScaNN and matplotlib are optional (the bench "
                     f"extra: {_timing.BENCH_EXTRA}); a system that is not installed is left "
                     "out, and the run says so.")
    data = add_data_arguments(parser, DEFAULTS, "FAISS and ScaNN",
                              "training sample, the same for every system")
    data.add_argument("--gt", metavar="PATH",
                      help="ground-truth neighbour ids of the queries (.ivecs / .npy), at "
                           "least k per query; default: exact search")

    idx = parser.add_argument_group("configurations")
    idx.add_argument("--nlist", type=lambda t: sorted(set(positive_int_list(t))), default=None,
                     help="IVF lists / ScaNN leaves; several (e.g. 512,1024) build every "
                          f"system at each (default {DEFAULTS['nlist']})")
    idx.add_argument("--shardann-pq", type=pq_list, default=None,
                     help="shardann NBITSxM configurations (default for dimension d: "
                          "4x(d/2),4x(d/4),8x(d/4))")
    idx.add_argument("--pca", type=_dim_list, default=[],
                     help="also sweep the shardann configurations behind a PCA to each of these "
                          "dimensions (e.g. 192 or 96,192; 'none'), at the same dimensions per "
                          "sub-quantizer (M scaled by pca/d); refine re-ranks on the original "
                          "vectors (default: none)")
    idx.add_argument("--opq", action="store_true",
                     help="also build each shardann configuration with an OPQ rotation "
                          "(learnt after the projection with --pca)")
    idx.add_argument("--faiss-pq", type=pq_list, default=None,
                     help="FAISS NBITSxM configurations: 8 -> PQ{M}x8np, 4 -> PQ{M}x4fs "
                          "(default 8x(d/4),4x(d/2))")
    idx.add_argument("--keep", type=keep_list, default=list(KEEPS),
                     help="kept-vector types shardann refines on (default "
                          f"{','.join(KEEPS)}; 'none': no refine)")
    idx.add_argument("--refine-factors", type=_factor_list, default=[0, 2, 4, 8],
                     help="refine factors (shortlist k*r; 0 = no refine) for every system "
                          "(default 0,2,4,8; ScaNN uses those > 0)")
    idx.add_argument("--no-faiss", action="store_true", help="leave FAISS out")
    idx.add_argument("--no-scann", action="store_true", help="leave ScaNN out")

    srch = parser.add_argument_group("search")
    srch.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    srch.add_argument("--nprobe-sweep", type=lambda t: sorted(set(positive_int_list(t))),
                      default=[4, 8, 16, 32, 64, 128],
                      help="nprobe / leaves_to_search values (default 4,8,16,32,64,128)")
    srch.add_argument("--reps", type=int, default=3,
                      help="timed repetitions per point, interleaved (default 3)")

    run_ = parser.add_argument_group("run")
    run_.add_argument("--quick", action="store_true",
                      help="smoke-test preset: n=20000, d=64, nq=200, train-size=20000, "
                           "nlist=128 (explicit options still win)")
    run_.add_argument("--out", default="bench-results",
                      help=f"output directory for {FRONTIER_JSON} and {FRONTIER_PNG} "
                           "(default bench-results/)")
    run_.add_argument("--no-plot", action="store_true", help=f"skip {FRONTIER_PNG}")
    return parser


def _validate(cfg):
    nlist = cfg["nlist"]
    cfg["nlists"] = list(nlist) if isinstance(nlist, list) else [nlist]
    # (the nprobe values above the largest nlist are dropped here, above a
    # smaller one per build)
    view = {**cfg, "nlist": max(cfg["nlists"])}
    err = check_settings(view, ("n", "d", "nq", "train_size", "nlist", "k", "reps"))
    cfg["nprobe_sweep"] = view["nprobe_sweep"]
    if not err and min(cfg["nlists"]) < 1:
        err = f"--nlist must be >= 1; got {min(cfg['nlists'])}"
    if not cfg["keep"]:
        cfg["refine_factors"] = [0]
    if not err and cfg["pca"] and not cfg["base"] and max(cfg["pca"]) > cfg["d"]:
        # (with files the dimension is known when they are loaded)
        err = f"--pca must be at most d={cfg['d']}; got {max(cfg['pca'])}"
    return err


def run(args):
    """Run ``bench frontier`` with parsed ``args``; print the summary. Returns an exit code."""
    return run_comparison(
        "shardann bench frontier", resolve_settings(args, DEFAULTS, QUICK), _validate,
        [("faiss", "FAISS", "no_faiss"), ("scann", "ScaNN", "no_scann")], run_frontier,
        (FRONTIER_JSON, FRONTIER_PNG), frontier_figure, format_frontier)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m shardann.bench.frontier",
        description="The recall-QPS frontier of shardann against FAISS and ScaNN, "
                    "single-threaded, in one run.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
