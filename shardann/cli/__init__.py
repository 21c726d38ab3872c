"""The ``shardann`` command (``python -m shardann.cli`` is the same).

``shardann demo``        build, search, save and reopen an IVF-PQ index on synthetic data,
                         then search it sharded over 2 Ray actors in local mode
``shardann info PATH``   describe an index written by ``index.save(PATH)``
``shardann search PATH --queries q.npy [--filter ...] [--columns ...]``  search a saved
                         index (or ``--url`` a service), optionally filtered on attributes
``shardann serve PATH``  serve an index over HTTP with Ray Serve (``shardann.service``)
``shardann ingest PATH INPUT...``  build an index from embeddings on disk (Ray Data)
``shardann bench SUITE`` benchmarks: ``core`` (kernels, local indexes vs FAISS) and
                         ``distributed`` (sharded vs local), from ``shardann.bench.SUITE``
``shardann plan --vectors N --d D ...``  IVF-PQ parameters and cluster layout for a
                         target recall, measured on a sample (``shardann.bench.plan``)
``shardann verify PATH`` check every file of a stored version (exit 1 on damage)
``shardann repair PATH --rollback | --supersede VERSION``  deal with a damaged newest manifest

One module per command, each with ``HELP``, ``add_arguments(parser)`` (the
command's options and the common ``--log-level`` / ``--debug``) and
``run(args)``; this package is the only place that parses arguments and the
only place that turns exceptions into exit codes. The library never imports it.

The command prints its results; the library only logs (``--log-level INFO``
shows k-means progress). Exit codes: 0 ok, 1 error (one line; ``--debug``
for the traceback), 2 usage, 130 interrupted.
"""

import argparse
import sys
import traceback

from . import bench, demo, info, ingest, plan, repair, search, serve, verify
from ._common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    UsageError,
    common_options,
    configure_logging,
)

__all__ = ["CommandError", "UsageError", "build_parser", "main"]

#: subcommand name -> its module, in the order ``shardann --help`` lists them
COMMANDS = {"demo": demo, "info": info, "search": search, "serve": serve, "ingest": ingest,
            "bench": bench, "plan": plan, "verify": verify, "repair": repair}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="shardann", allow_abbrev=False,
        description="shardann: a sharded IVF-PQ approximate-nearest-neighbour index.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common_options(parser, in_subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, allow_abbrev=False)
        module.add_arguments(p)  # with --log-level and --debug (bench: in each suite's parser)
        p.set_defaults(handler=module.run)
    return parser


def _version():
    from shardann import __version__
    return __version__


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
            args = bench.parse_suite(args, extra)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        debug = args.debug
        configure_logging(args.log_level)
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
