"""The ``shardann`` command.

``shardann demo``        build, search, save and reopen an IVF-PQ index on synthetic data,
                         then search it sharded over 2 Ray actors in local mode
``shardann info PATH``   describe an index written by ``index.save(PATH)``
``shardann serve PATH``  serve an index over HTTP with Ray Serve (``shardann.service``)
``shardann ingest PATH INPUT...``  build an index from embeddings on disk (Ray Data)
``shardann bench SUITE`` benchmarks: ``core`` (kernels, local indexes vs FAISS) and
                         ``distributed`` (sharded vs local), from ``shardann.bench.SUITE``

The command prints its results; the library only logs (``--log-level INFO``
shows k-means progress). Exit codes: 0 ok, 1 error (one line; ``--debug``
for the traceback), 2 usage.
"""

import argparse
import importlib
import logging
import os
import sys
import tempfile
import time
import traceback

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# shardann.bench.<name> modules that expose add_arguments(parser) and run(args) -> int
BENCH_SUITES = {
    "core": "kernel and single-process index benchmarks against FAISS",
    "distributed": "the sharded index in Ray local mode against the local index",
}


class UsageError(Exception):
    """Bad command-line values found after parsing; exits with status 2."""


class CommandError(Exception):
    """A failure the command explains itself in one line; exits with status 1."""


# -- parser ------------------------------------------------------------------------------
def _common_options(parser, *, in_subcommand):
    """--log-level and --debug, accepted before or after the subcommand.

    The subcommands' copies default to SUPPRESS so they never overwrite a value
    given before the subcommand.
    """
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        default=argparse.SUPPRESS if in_subcommand else "WARNING",
                        help="log level of shardann's messages (default WARNING; INFO "
                             "also shows each stage's progress)")
    parser.add_argument("--debug", action="store_true",
                        default=argparse.SUPPRESS if in_subcommand else False,
                        help="show the full traceback when a command fails")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="shardann", allow_abbrev=False,
        description="shardann: a sharded IVF-PQ approximate-nearest-neighbour index.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _common_options(parser, in_subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, help_text):
        return sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)

    demo = add("demo", "Build an IVF-PQ index on synthetic data, measure recall@10 against "
                       "exact search, save and reopen it, then search it on 2 Ray shard "
                       "actors in local mode.")
    _common_options(demo, in_subcommand=True)
    demo.add_argument("--n", type=int, default=100_000, help="database vectors (default 100000)")
    demo.add_argument("--d", type=int, default=64, help="dimension (default 64)")
    demo.add_argument("--nq", type=int, default=1000, help="queries (default 1000)")
    demo.add_argument("--nlist", type=int, default=256, help="IVF lists (default 256)")
    demo.add_argument("--M", type=int, default=16, help="PQ sub-quantizers (default 16)")
    demo.add_argument("--nbits", type=int, default=8, help="bits per PQ code (default 8)")
    demo.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    demo.add_argument("--save", metavar="PATH",
                      help="keep the index at PATH (try `shardann info PATH` on it); "
                           "by default it is saved to a temporary directory and removed")
    demo.add_argument("--no-ray", action="store_true",
                      help="skip the Ray local-mode part (the saved index on 2 shard actors)")
    demo.set_defaults(handler=cmd_demo)

    info = add("info", "Describe an index saved with index.save(PATH).")
    _common_options(info, in_subcommand=True)
    info.add_argument("path", metavar="PATH", help="index directory")
    info.set_defaults(handler=cmd_info)

    serve = add("serve", "Serve an index over HTTP (Ray Serve) until interrupted.")
    _common_options(serve, in_subcommand=True)
    from .service.cli import add_serve_arguments, serve_main  # light: Ray loads in serve_main
    add_serve_arguments(serve)
    serve.set_defaults(handler=serve_main)

    ingest = add("ingest", "Build or extend an index from Parquet / .npy / .fvecs files "
                           "with Ray Data (bounded memory, resumable).")
    _common_options(ingest, in_subcommand=True)
    from .distributed.ingest import add_ingest_arguments, ingest_main  # Ray loads when it runs
    add_ingest_arguments(ingest)
    ingest.set_defaults(handler=ingest_main)

    bench = add("bench", "Benchmarks (speed is measured here, not in the tests).")
    bench_sub = bench.add_subparsers(dest="suite", metavar="SUITE", required=True)
    # A suite takes its options from shardann.bench.<suite>, imported only when it runs;
    # everything after the suite's name is handed to that module's own parser.
    for suite, help_text in BENCH_SUITES.items():
        p = bench_sub.add_parser(suite, add_help=False, allow_abbrev=False,
                                 help=f"{help_text} (`shardann bench {suite} --help`)")
        p.set_defaults(handler=cmd_bench, passthrough=True)
    return parser


def _version():
    from . import __version__
    return __version__


# -- main ----------------------------------------------------------------------------------
def main(argv=None):
    """Run the command line; return the exit status (0 ok, 1 error, 2 usage)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    command = "shardann"
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        command = " ".join(["shardann", args.command, getattr(args, "suite", "")]).strip()
        if getattr(args, "passthrough", False):
            args = _parse_bench(args, extra)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        debug = args.debug
        _configure_logging(args.log_level)
        return args.handler(args) or EXIT_OK
    except SystemExit as exc:  # argparse (0 for --help/--version, 2 for usage) or sys.exit
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        print(exc.code, file=sys.stderr)
        return EXIT_ERROR
    except UsageError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        else:
            message = " ".join(str(exc).split()) or "(no message)"
            print(f"{command}: error: {type(exc).__name__}: {message} "
                  "(--debug shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _configure_logging(level_name):
    """Print log records of the chosen level from shardann, WARNING and up from
    everything else (numba, ray)."""
    level = getattr(logging, level_name)
    logging.basicConfig(level=max(level, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("shardann").setLevel(level)


# -- shared helpers -------------------------------------------------------------------------
def recall_at_k(I, gt):
    """Mean fraction of the true ``k`` neighbours (``gt`` int64 (nq, k)) found in
    ``I`` int64 (nq, k')."""
    k = gt.shape[1]
    hits = (I[:, :, None] == gt[:, None, :]) & (gt[:, None, :] >= 0)
    return float(hits.any(axis=1).sum()) / (gt.shape[0] * k)


class _Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def _step(label, text, seconds=None):
    tail = f"{seconds:8.2f} s" if seconds is not None else ""
    print(f"{label:<10} {text:<62}{tail}".rstrip())


# -- demo --------------------------------------------------------------------------------------
def cmd_demo(args):
    import shardann
    from shardann.bench.datasets import synthetic_split

    for name in ("n", "d", "nq", "nlist", "M", "nbits"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.n < args.nlist:
        raise UsageError(f"--n ({args.n}) must be at least --nlist ({args.nlist})")
    try:  # parameter errors are usage errors: check them before any work
        index = shardann.IVFPQIndex(d=args.d, nlist=args.nlist, M=args.M, nbits=args.nbits,
                                    metric="l2", seed=args.seed, keep_vectors=True,
                                    verbose=True)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    k = 10
    nt = min(args.n, max(20_000, 40 * args.nlist))  # about 40+ training points per list
    print(f"shardann {shardann.__version__} demo: IVF-PQ on {args.n:,} x {args.d} structured "
          f"synthetic vectors (seed {args.seed})")
    with _Timer() as t:
        xb, xq, xt = synthetic_split(args.n, args.nq, args.d, nt=nt, seed=args.seed)
    _step("data", f"{args.n:,} base, {args.nq:,} queries, {nt:,} training vectors", t.seconds)

    with _Timer() as t:
        exact = shardann.FlatIndex(args.d)
        exact.add(xb)
        _, gt = exact.search(xq, k)
    _step("exact", f"FlatIndex ground truth, k={k}", t.seconds)

    with _Timer() as t:
        index.train(xt)
    _step("train", f"IVFPQIndex(d={args.d}, nlist={args.nlist}, M={args.M}, "
                   f"nbits={args.nbits}), k-means + PQ", t.seconds)
    with _Timer() as t:
        index.add(xb)
    kept = 4 * args.d  # the demo keeps float32 vectors for refine
    _step("add", f"{index.ntotal:,} vectors: {index.code_size} B code + 8 B id + {kept} B "
                 f"vector = {index.code_size + 8 + kept} B each", t.seconds)
    with _Timer() as t:  # compile (or load from cache) the Numba scan kernels once
        index.search(xq[:2], k, nprobe=1)
        index.search(xq[:2], k, nprobe=1, refine_factor=2)
    _step("warm-up", "Numba kernels compiled or loaded from cache", t.seconds)

    print(f"\nsearch: {args.nq:,} queries, k={k}; recall@10 = share of the exact 10 nearest "
          "found")
    settings = [(p, 0) for p in (1, 4, 16, 64) if p <= args.nlist]
    settings.append((min(16, args.nlist), 10))
    results = _search_table(index.search, xq, k, settings, gt)
    print("  (refine re-ranks k*refine PQ candidates with exact distances on kept vectors)\n")

    with tempfile.TemporaryDirectory(prefix="shardann-demo-") as tmp:
        path = args.save or os.path.join(tmp, "demo-index")
        with _Timer() as t:
            index.save(path)
            reopened = shardann.open_index(path)
            # the largest nprobe reads every code; the refine row reads the kept vectors too
            same = _same_results(reopened.search, xq, k, settings[-2:], results)
        where = path if args.save else "a temporary directory"
        _step("save/open", f"saved to {where}, reopened: (D, I) "
                           f"{'identical' if same else 'DIFFER'}", t.seconds)
        if not same:
            raise CommandError("the reopened index returned different results")
        if args.save:
            print(f"{'':<10} inspect it with: shardann info {path}")
        if args.no_ray:
            _step("ray", "skipped (--no-ray)")
        else:
            _demo_ray(path, xq, k, settings, gt, results)
    return EXIT_OK


def _search_table(search, xq, k, settings, gt, local=None):
    """Run ``search`` for each (nprobe, refine_factor), print recall and speed;
    with ``local`` results also say whether they are identical. Returns the results."""
    same_col = f" {'same as local':>14}" if local is not None else ""
    print(f"  {'nprobe':>6} {'refine':>6} {'recall@10':>9} {'ms/query':>9} {'QPS':>9}{same_col}")
    results = {}
    for nprobe, refine in settings:
        with _Timer() as t:
            D, I = search(xq, k, nprobe=nprobe, refine_factor=refine)
        results[nprobe, refine] = (D, I)
        same = ""
        if local is not None:
            same = f" {'yes' if _equal((D, I), local[nprobe, refine]) else 'NO':>14}"
        print(f"  {nprobe:>6} {refine:>6} {recall_at_k(I, gt):>9.3f} "
              f"{1000 * t.seconds / len(xq):>9.3f} {len(xq) / t.seconds:>9,.0f}{same}")
    return results


def _equal(a, b):
    """Two (D, I) results are identical."""
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _same_results(search, xq, k, settings, expected):
    return all(_equal(search(xq, k, nprobe=nprobe, refine_factor=refine), expected[nprobe, refine])
               for nprobe, refine in settings)


def _demo_ray(path, xq, k, settings, gt, local):
    """The saved index on 2 Ray shard actors in local mode, checked against the local one."""
    try:
        import ray

        from shardann.distributed import ShardedIndex
    except ImportError as exc:
        _step("ray", f"skipped: {exc} (use --no-ray to skip it quietly)")
        return
    if ray.is_initialized():
        raise CommandError("Ray is already initialised in this process")
    with _Timer() as t:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    try:
        _step("ray", "local mode started: ray.init(num_cpus=2)", t.seconds)
        with _Timer() as t:
            sharded = ShardedIndex.open(path, num_shards=2)
        with sharded:
            sizes = [int(sharded.list_sizes[sharded.owner == s].sum()) for s in range(2)]
            _step("shards", f"2 shard actors, {sizes[0]:,} + {sizes[1]:,} vectors "
                            "(lists placed by size)", t.seconds)
            with _Timer() as t:  # first calls: the actors load their kernels
                sharded.search(xq[:64], k, nprobe=1)
                sharded.search(xq[:64], k, nprobe=1, refine_factor=2)
            _step("warm-up", "shard actors' kernels loaded", t.seconds)
            print("\nsearch fanned out to the 2 shards, merged on the coordinator:")
            results = _search_table(sharded.search, xq, k, settings, gt, local=local)
    finally:
        ray.shutdown()
    if not all(_equal(results[s], local[s]) for s in settings):
        raise CommandError("the sharded index returned different results from the local one")


# -- info ----------------------------------------------------------------------------------------
def cmd_info(args):
    from shardann.storage import IndexStore

    store = IndexStore.open(args.path)  # reads the manifest and codebooks, not the lists
    cfg = store.config
    d = cfg["d"]
    rows = [("path", os.path.abspath(args.path)),
            ("kind", store.kind),
            ("d", d),
            ("metric", cfg["metric"])]
    if "nlist" in cfg:
        rows += [("nlist", cfg["nlist"]), ("nprobe", f"{cfg['nprobe']} (default per search)")]
    if "M" in cfg:
        rows += [("M", cfg["M"]), ("nbits", cfg["nbits"]),
                 ("code size", f"{-(-cfg['M'] * cfg['nbits'] // 8)} B"),
                 ("opq", "yes" if cfg.get("opq") else "no"),
                 ("kept vectors", cfg.get("keep_vectors") or "no (refine unavailable)")]
    rows += [("trained", "yes" if store.is_trained else "no"),
             ("ntotal", f"{store.ntotal:,}")]
    if "nlist" in cfg and store.is_trained:
        sizes = store.list_sizes()
        rows.append(("list sizes", f"min {sizes.min():,} / mean {sizes.mean():,.1f} / "
                                   f"max {sizes.max():,} ({int((sizes == 0).sum())} empty)"))
    if store.is_trained:
        parts = [("id", 8)] + [(name, spec["width"] * np.dtype(spec["dtype"]).itemsize)
                               for name, spec in store.columns.items()]
        rows.append(("bytes/vector", f"{sum(b for _, b in parts)} in memory ("
                     + " + ".join(f"{name} {b}" for name, b in parts)
                     + f"); raw float32 is {4 * d}"))
    m = store.manifest
    rows += [("version", f"{store.version} ({m['operation']} at {m['created_at']}); "
                         f"{len(store.history())} readable version(s)"),
             ("files", f"{len(m['files']['segments'])} segment(s), "
                       f"{len(m['files']['tombstones'])} tombstone file(s), "
                       f"{_human_bytes(_dir_size(args.path))} on disk")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return EXIT_OK


def _dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def _human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


# -- bench ---------------------------------------------------------------------------------------
def _parse_bench(args, extra):
    """Parse the options after `bench SUITE` with shardann.bench.SUITE's own parser."""
    module = _load_bench(args.suite)
    text = BENCH_SUITES[args.suite]
    parser = argparse.ArgumentParser(prog=f"shardann bench {args.suite}", allow_abbrev=False,
                                     conflict_handler="resolve",
                                     description=text[:1].upper() + text[1:] + ".")
    _common_options(parser, in_subcommand=True)
    module.add_arguments(parser)
    ns = parser.parse_args(extra, namespace=args)
    ns.bench_module = module
    return ns


def _load_bench(suite):
    name = f"shardann.bench.{suite}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the module exists but one of its own imports is missing
        raise CommandError(f"{name} is not in this version of shardann yet") from None


def cmd_bench(args):
    status = args.bench_module.run(args)
    return EXIT_OK if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
