"""``shardann bench SUITE``: benchmarks from ``shardann.bench.SUITE``: ``core``
(kernels, local indexes vs FAISS), ``distributed`` (sharded vs local) and
``frontier`` (recall-QPS frontier vs FAISS and ScaNN), ``filter`` (filtered
search vs FAISS's IDSelector and LanceDB), ``probing`` (adaptive against fixed
nprobe), ``threads`` (scaling over cores) and ``plancheck`` (the planner's
predicted recall against the planned index built at scale).

A suite takes its options from ``shardann.bench.<suite>``, imported only when it
runs: everything after the suite's name is handed to that module's
``add_arguments(parser)``, and its ``run(args)`` returns the exit status.
"""

import argparse
import importlib

from ._common import EXIT_OK, CommandError, common_options

HELP = "Benchmarks (speed is measured here, not in the tests)."
SUITES = {
    "core": "kernel and single-process index benchmarks against FAISS",
    "distributed": "the sharded index in Ray local mode against the local index",
    "frontier": "the recall-QPS frontier of shardann's configurations against FAISS and ScaNN",
    "filter": "filtered search by selectivity against FAISS's IDSelector and LanceDB's where",
    "probing": "adaptive probing (probe_ratio, probe_gap) against fixed nprobe at equal recall",
    "threads": "batch QPS and single-query latency of a local index by thread count",
    "plancheck": "shardann plan's predicted recall against the planned index built at scale",
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for suite, help_text in SUITES.items():
        p = sub.add_parser(suite, add_help=False, allow_abbrev=False,
                           help=f"{help_text} (`shardann bench {suite} --help`)")
        p.set_defaults(handler=run, passthrough=True)
    return parser


def parse_suite(args, extra):
    """Parse the options after `bench SUITE` with shardann.bench.SUITE's own parser."""
    module = _load(args.suite)
    text = SUITES[args.suite]
    parser = argparse.ArgumentParser(prog=f"shardann bench {args.suite}", allow_abbrev=False,
                                     conflict_handler="resolve",
                                     description=text[:1].upper() + text[1:] + ".")
    common_options(parser, in_subcommand=True)
    module.add_arguments(parser)
    ns = parser.parse_args(extra, namespace=args)
    ns.bench_module = module
    return ns


def _load(suite):
    name = f"shardann.bench.{suite}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the module exists but one of its own imports is missing
        raise CommandError(f"{name} is not in this version of shardann yet") from None


def run(args):
    """Handler of ``shardann bench SUITE``."""
    status = args.bench_module.run(args)
    return EXIT_OK if status is None else int(status)
