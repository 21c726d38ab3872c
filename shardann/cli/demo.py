"""``shardann demo``: build, search, save and reopen an IVF-PQ index on synthetic
data, then search it sharded over 2 Ray actors in local mode."""

import logging
import os
import tempfile
import time

import numpy as np

from ..results import recall_at_k
from ._common import EXIT_OK, CommandError, UsageError, common_options, is_debug, start_ray

HELP = ("Build an IVF-PQ index on synthetic data, measure recall@10 against exact search, "
        "save and reopen it, then search it on 2 Ray shard actors in local mode.")


def add_arguments(parser):
    common_options(parser, in_subcommand=True)
    parser.add_argument("--n", type=int, default=100_000, help="database vectors (default 100000)")
    parser.add_argument("--d", type=int, default=64, help="dimension (default 64)")
    parser.add_argument("--nq", type=int, default=1000, help="queries (default 1000)")
    parser.add_argument("--nlist", type=int, default=256, help="IVF lists (default 256)")
    parser.add_argument("--M", type=int, default=16, help="PQ sub-quantizers (default 16)")
    parser.add_argument("--nbits", type=int, default=8, help="bits per PQ code (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    parser.add_argument("--save", metavar="PATH",
                        help="keep the index at PATH (try `shardann info PATH` on it); "
                             "by default it is saved to a temporary directory and removed")
    parser.add_argument("--no-ray", action="store_true",
                        help="skip the Ray local-mode part (the saved index on 2 shard actors)")
    return parser


class _Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def _step(label, text, seconds=None):
    tail = f"{seconds:8.2f} s" if seconds is not None else ""
    print(f"{label:<10} {text:<62}{tail}".rstrip())


def run(args):
    """Handler of ``shardann demo``."""
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
            _demo_ray(path, xq, k, settings, gt, results, debug=is_debug(args))
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


def _demo_ray(path, xq, k, settings, gt, local, *, debug):
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
        start_ray(num_cpus=2, logging_level=logging.WARNING, debug=debug)
    try:
        _step("ray", "local mode started: ray.init(num_cpus=2)", t.seconds)
        with _Timer() as t:
            sharded = ShardedIndex.open(path, num_shards=2)
        with sharded:
            sizes = [int(sharded.list_sizes()[sharded.owner == s].sum()) for s in range(2)]
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
