"""``shardann search INDEX --queries q.npy``: k nearest neighbours of query vectors,
with a filter on the attribute columns and the hits' columns, from a saved index
(in this process, or sharded over Ray actors with ``--shards``) or from a
running service (``--url``). Prints one JSON object per query."""

import json
import os

import numpy as np

from ._common import EXIT_OK, CommandError, UsageError, common_options, is_debug, start_ray

HELP = ("Search a saved index (or a service) for the neighbours of query vectors, optionally "
        "filtered on attribute columns.")


def add_arguments(parser):
    common_options(parser, in_subcommand=True)
    parser.add_argument("index", metavar="INDEX", nargs="?", default=None,
                        help="index directory or URI (omit with --url)")
    parser.add_argument("--url", default=None,
                        help="search a running service instead (token in $SHARDANN_TOKEN)")
    parser.add_argument("--queries", required=True, metavar="PATH",
                        help=".npy file of float32 (nq, d) query vectors (or one (d,) vector)")
    parser.add_argument("-k", "--k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--nprobe", type=int, default=None,
                        help="lists scanned per query (default: the index's)")
    parser.add_argument("--probe-ratio", type=float, default=None, metavar="R",
                        help="adaptive probing: of the nprobe closest lists scan only those "
                             "whose closeness reaches R (in (0, 1]) times the closest one's")
    parser.add_argument("--probe-gap", type=float, default=None, metavar="G",
                        help="adaptive probing: skip list j once d(q, c_j) - d(q, c_1) > G "
                             "x the k-th best distance found so far (l2/cosine; not with "
                             "--shards)")
    parser.add_argument("--refine-factor", type=int, default=0,
                        help="re-rank k x this many candidates exactly (kept vectors)")
    parser.add_argument("--filter", default=None, metavar="CONDITION",
                        help="only hits whose attributes pass this SQL-like condition, e.g. "
                             "\"lang = 'en' AND year >= 2023 AND tags CONTAINS 'news'\"")
    parser.add_argument("--columns", default=None, metavar="COL,COL",
                        help="attribute columns to print with each hit")
    parser.add_argument("--shards", type=int, default=None,
                        help="search the index sharded over this many Ray actors (local Ray)")
    return parser


def _json_value(v):
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def run(args):
    """Handler of ``shardann search``: print ``{"ids", "distances"[, "attributes"]}``
    per query, one JSON line each; returns 0."""
    if (args.index is None) == (args.url is None):
        raise UsageError("give INDEX or --url (one of them)")
    if args.url is not None and args.shards is not None:
        raise UsageError("--shards applies to INDEX, not to --url")
    columns = None
    if args.columns is not None:
        columns = [c.strip() for c in args.columns.split(",") if c.strip()]
        if not columns:
            raise UsageError(f"--columns takes column names separated by commas; got "
                             f"{args.columns!r}")
    try:
        queries = np.load(args.queries, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--queries {args.queries}: cannot read a .npy array ({exc})") \
            from None
    kwargs = {"nprobe": args.nprobe, "refine_factor": args.refine_factor,
              "probe_ratio": args.probe_ratio, "probe_gap": args.probe_gap,
              "filter": args.filter, "columns": columns}
    try:
        res = _search(args, queries, kwargs)
    except (ValueError, TypeError) as exc:  # a bad filter, column or parameter
        raise UsageError(str(exc)) from None
    D, I = res[0], res[1]
    rows = res[2].to_pylist() if columns is not None else None
    k = I.shape[1]
    for i in range(I.shape[0]):
        out = {"ids": I[i].tolist(),
               "distances": [float(x) if np.isfinite(x) else None for x in D[i]]}
        if rows is not None:
            out["attributes"] = [rows[i * k + j] if I[i, j] >= 0 else None for j in range(k)]
        print(json.dumps(out, default=_json_value))
    return EXIT_OK


def _search(args, queries, kwargs):
    if args.url is not None:
        from shardann.service import Client

        with Client(args.url, os.environ.get("SHARDANN_TOKEN")) as client:
            return client.search(queries, args.k, **kwargs)
    if args.shards is None:
        import shardann

        return shardann.open_index(args.index).search(queries, args.k, **kwargs)
    import ray

    from shardann.distributed import ShardedIndex

    started = not ray.is_initialized()
    if started:
        start_ray(configure_logging=False, debug=is_debug(args))
    try:
        with ShardedIndex.open(args.index, num_shards=args.shards) as index:
            return index.search(queries, args.k, **kwargs)
    finally:
        if started:
            ray.shutdown()
