"""``shardann info PATH --recall``: the calibration set's line and the recall estimate."""

from ._common import CommandError, UsageError


def add_arguments(parser):
    """The --recall options of ``shardann info``."""
    group = parser.add_argument_group("recall estimate (from the index's calibration set)")
    group.add_argument("--recall", action="store_true",
                       help="estimate recall@k with a 95%% interval: the calibration queries "
                            "searched with the index's own search (loads the index)")
    group.add_argument("--k", type=int, default=10, help="k of recall@k (1..100; default 10)")
    group.add_argument("--nprobe", type=int, default=None,
                       help="lists scanned per query (default: the index's nprobe)")
    group.add_argument("--refine-factor", type=int, default=0,
                       help="re-rank k * this many candidates on kept vectors (default 0)")
    group.add_argument("--probe-ratio", type=float, default=None,
                       help="adaptive probing ratio in (0, 1] (default off)")
    group.add_argument("--confidence", type=float, default=0.95,
                       help="confidence of the interval (default 0.95)")


def rows(args, store):
    """``[(name, value)]`` rows: the calibration set (from the manifest) and, with
    ``--recall``, the estimate (loads the index and reads the calibration file)."""
    entry = store.calibration_file
    out = [("calibration", "none (no recall estimates)" if entry is None else
            f"{entry['rows']:,} queries ({entry['size']:,} B)")]
    if not getattr(args, "recall", False):
        return out
    if not 1 <= args.k <= 100:
        raise UsageError(f"--k must be in 1..100; got {args.k}")
    if "nlist" not in store.config:
        raise CommandError(f"--recall needs an IVF index; {store.path} is {store.kind!r} "
                           "(exact: its recall is 1)")
    from shardann.index import load_index

    index = load_index(store)
    try:
        est = index.estimate_recall(args.k, args.nprobe, args.refine_factor,
                                    probe_ratio=args.probe_ratio, confidence=args.confidence)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    skipped = f", {est.n_skipped} skipped" if est.n_skipped else ""
    ratio = "" if est.probe_ratio is None else f" probe_ratio={est.probe_ratio}"
    out.append((f"recall@{est.k}",
                f"{est.recall:.4f}  [{est.lower:.4f}, {est.upper:.4f}] "
                f"({est.confidence:.0%} interval, {est.n_queries} queries{skipped}; "
                f"nprobe={est.nprobe} refine_factor={est.refine_factor}{ratio})"))
    return out
