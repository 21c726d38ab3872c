"""``shardann plan``: IVF-PQ parameters and a cluster layout for a target
recall, measured on a sample and extrapolated (:func:`shardann.bench.plan`)."""

import argparse
import json

from ._common import EXIT_OK, CommandError, UsageError, common_options

HELP = ("Plan nlist / M / nbits / nprobe / refine, shards, replicas and nodes for a target "
        "recall, measured on a sample.")


def _count(text):
    from .._text import parse_count
    try:
        return parse_count(text, "--vectors")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bytes(text):
    from .._text import parse_bytes
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _factors(text):
    from ..bench.core import positive_int_list
    return sorted(set(positive_int_list(text)))


def add_arguments(parser):
    from ..bench.frontier import keep_list, pq_list

    common_options(parser, in_subcommand=True)
    want = parser.add_argument_group("what to plan for")
    want.add_argument("--vectors", type=_count, required=True, metavar="N",
                      help="number of vectors (e.g. 1e9)")
    want.add_argument("--d", type=int, default=None,
                      help="dimension (default: the sample's; required without --sample)")
    want.add_argument("--metric", choices=("l2", "ip", "cosine"), default="l2",
                      help="l2, ip or cosine (default l2)")
    want.add_argument("--target-recall", type=float, default=0.9,
                      help="recall@k the plan must reach (default 0.9)")
    want.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    want.add_argument("--memory-per-node", type=_bytes, default="64GiB", metavar="BYTES",
                      help="memory of a node, e.g. 64GiB or 500GB (default 64GiB)")
    want.add_argument("--cores-per-node", type=int, default=16,
                      help="cores of a node (default 16)")
    want.add_argument("--qps", type=float, default=None,
                      help="queries per second to serve (adds replicas); default: no target")
    want.add_argument("--min-replicas", type=int, default=1,
                      help="replicas of each shard at least (default 1)")
    want.add_argument("--memory-headroom", type=float, default=0.25,
                      help="share of each node's memory left free (default 0.25)")
    meas = parser.add_argument_group("measurement")
    meas.add_argument("--sample", metavar="PATH",
                      help="vectors like the planned ones (.npy / .fvecs / .bvecs / .parquet); "
                           "default: generated (shardann.bench.datasets.synthetic)")
    meas.add_argument("--sample-size", type=int, default=100_000,
                      help="largest database drawn from the sample (default 100000)")
    meas.add_argument("--queries", type=int, default=1000,
                      help="held-out sample rows used as queries (default 1000)")
    meas.add_argument("--pq", type=pq_list, default=None, metavar="NBITSxM,...",
                      help="code layouts to measure (default 4x(d/2),4x(d/4),8x(d/4))")
    meas.add_argument("--keep", type=keep_list, default=["int8", "float16"],
                      help="kept-vector types to measure for refine (default int8,float16; "
                           "'none': no refine)")
    meas.add_argument("--refine-factors", type=_factors, default=[2, 4, 8],
                      help="refine factors to measure (default 2,4,8)")
    meas.add_argument("--seed", type=int, default=0, help="sample and training seed")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def run(args):
    """Handler of ``shardann plan``: measure, plan, print."""
    from ..bench import plan

    if args.d is None and args.sample is None:
        raise UsageError("give --d (generated data) or --sample")
    if args.d is not None and args.d < 1:
        raise UsageError(f"--d must be >= 1; got {args.d}")
    if not 0 < args.target_recall < 1:
        raise UsageError(f"--target-recall must be in (0, 1); got {args.target_recall}")
    try:
        result = plan(args.vectors, args.d, metric=args.metric,
                      target_recall=args.target_recall, memory_per_node=args.memory_per_node,
                      sample=args.sample, qps=args.qps, k=args.k,
                      cores_per_node=args.cores_per_node, min_replicas=args.min_replicas,
                      memory_headroom=args.memory_headroom, sample_size=args.sample_size,
                      queries=args.queries, pq_configs=args.pq, keeps=args.keep,
                      refine_factors=args.refine_factors, seed=args.seed)
    except ValueError as exc:  # bad values or a sample that cannot be planned on
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format())
    return EXIT_OK
