"""``shardann serve PATH``: serve an index over HTTP with Ray Serve (:mod:`shardann.service`).

Local Ray by default, ``--address`` to join a cluster. With a local Ray the
ingress replica answers HTTP on ``--port`` itself (Serve's direct ingress; see
:mod:`shardann.service.server`), ``--ingress proxy`` puts Serve's proxy
there instead. The token comes from
``--token-file`` or ``$SHARDANN_TOKEN`` / ``$SHARDANN_TOKEN_FILE``; without
one the service binds only to loopback addresses. PATH is opened before Ray
starts, so a path without an index fails at once. On Ctrl-C / SIGTERM the
app and the index's shard actors are stopped (unless ``--detach``). Ray's own
INFO lines are hidden unless ``--log-level DEBUG``.

``add_arguments`` imports nothing heavy; ``run`` imports Ray.
"""

import argparse
import logging
import os
import signal
import sys
import threading

from shardann.service.config import ServiceConfig, check_auth_settings, resolve_token_digest

from ._common import EXIT_OK, CommandError, UsageError, common_options, is_debug, start_ray

logger = logging.getLogger(__name__)

HELP = "Serve an index over HTTP (Ray Serve) until interrupted."
LOG_LEVEL_HELP = ("log level of shardann's messages (default WARNING); Ray's own INFO lines "
                  "show only with DEBUG")


class _RenamedOption(argparse.Action):
    """A hidden old spelling of an option: stores into the new one's dest and says so."""

    def __init__(self, option_strings, dest, new=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_arguments(parser):
    """Add the ``serve`` options (and the common ones) to an argparse (sub)parser."""
    d = ServiceConfig()
    common_options(parser, in_subcommand=True, log_level_help=LOG_LEVEL_HELP)
    parser.add_argument("path", metavar="PATH",
                        help="index store: a directory or a URI (s3://, gs://, az://, "
                             "file://; credentials from the environment)")
    parser.add_argument("--shards", type=int, default=1, metavar="N",
                        help="shard actors (default 1)")
    parser.add_argument("--replicas", type=int, default=1, metavar="R",
                        help="replicas of each shard (default 1)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="HTTP bind address (default 127.0.0.1; a non-loopback address "
                             "needs a token)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (e.g. 'auto' or 'ray://head:10001'); "
                             "default: start a local Ray")
    parser.add_argument("--ingress", choices=("direct", "proxy"), default=None,
                        help="who listens on --port: the ingress replica itself (direct; the "
                             "default with a local Ray, about 3x the throughput of the proxy "
                             "on a small machine) or Serve's HTTP proxy (the default with "
                             "--address; direct there needs the cluster started with "
                             "shardann.service.direct_ingress_env)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray (default: all)")
    parser.add_argument("--name", default=None,
                        help="index name for the shard actors (default: PATH's basename)")
    parser.add_argument("--token-file", default=None,
                        help="file holding the bearer token (else $SHARDANN_TOKEN or "
                             "$SHARDANN_TOKEN_FILE)")
    parser.add_argument("--backend", choices=("sharded", "local"), default="sharded",
                        help="sharded (Ray actors, default) or local (one in-process index)")
    parser.add_argument("--max-vectors-per-request", type=int, default=d.max_batch_size,
                        metavar="N", dest="max_vectors_per_request",
                        help="largest number of query vectors in one search request (422 "
                             f"above it; default {d.max_batch_size})")
    parser.add_argument("--max-batch-size", type=int, dest="max_vectors_per_request",
                        action=_RenamedOption, new="--max-vectors-per-request",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--max-k", type=int, default=d.max_k,
                        help=f"largest k (default {d.max_k})")
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                        help=f"request body limit (default {d.max_body_bytes})")
    parser.add_argument("--timeout-s", type=float, default=d.request_timeout_s,
                        help=f"per-request deadline, 504 after it "
                             f"(default {d.request_timeout_s:g})")
    parser.add_argument("--max-ongoing-requests", type=int, default=d.max_ongoing_requests,
                        help="requests in the replica at once "
                             f"(default {d.max_ongoing_requests})")
    parser.add_argument("--max-queued-requests", type=int, default=d.max_queued_requests,
                        help="requests waiting for the replica before 503 "
                             f"(default {d.max_queued_requests})")
    parser.add_argument("--batch-max-size", type=int, default=d.batch_max_size, metavar="N",
                        help="micro-batching: at most N concurrent single-vector searches "
                             f"are merged into one index call (default {d.batch_max_size})")
    parser.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_timeout_s * 1e3,
                        help="micro-batching: longest wait to fill such a batch "
                             f"(default {d.batch_wait_timeout_s * 1e3:g} ms)")
    parser.add_argument("--recall-cpu-fraction", type=float, default=d.recall_cpu_fraction,
                        metavar="F",
                        help="online recall estimate: share of the wall time the background "
                             "replay of the calibration queries may take (default "
                             f"{d.recall_cpu_fraction:g})")
    parser.add_argument("--no-recall-estimate", action="store_true",
                        help="no background recall estimate (shardann_recall_estimate)")
    parser.add_argument("--detach", action="store_true",
                        help="deploy and exit, leaving the app running on the cluster "
                             "(stop it with `serve shutdown` or shardann.service.stop)")
    return parser


def config_from_args(args):
    """The :class:`ServiceConfig` for parsed ``serve`` arguments."""
    return ServiceConfig(
        path=args.path if "://" in args.path else os.path.abspath(args.path),
        backend=args.backend, num_shards=args.shards, replicas=args.replicas, name=args.name,
        token_file=os.path.abspath(args.token_file) if args.token_file else None,
        host=args.host, max_batch_size=args.max_vectors_per_request, max_k=args.max_k,
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.timeout_s,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests, batch_max_size=args.batch_max_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1e3,
        recall_estimate=not args.no_recall_estimate,
        recall_cpu_fraction=args.recall_cpu_fraction)


def _check_port_free(host, port):
    from shardann.service.server import bindable_port

    try:
        bindable_port(host, port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror} (another "
                           "program may be using the port; pick another with --port)") from None


def _check_store(path):
    """Open the store as the replica will, before Ray starts: a path that holds no
    index fails here in milliseconds instead of as a failed Serve deployment."""
    from shardann.storage import IndexStore

    try:
        IndexStore.open(path)
    except (OSError, ValueError) as exc:  # FileNotFoundError, CorruptIndexError, ...
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise CommandError(f"cannot serve {path}: {cause}") from None


def _quiet_serve(debug):
    """Ray's INFO lines (Serve's "Application ... is ready at <the proxy's URL>",
    which is not where a direct-ingress service listens, "Connecting to existing
    Serve app", ...) show only with --log-level DEBUG; its warnings always do.
    Returns the level for ``ray.init(logging_level=...)``."""
    import ray.serve  # noqa: F401  (its import gives the ray.serve logger an INFO handler)

    level = logging.INFO if debug else logging.WARNING
    logging.getLogger("ray.serve").setLevel(level)
    return level


def run(args):
    """Handler of ``shardann serve``: deploy, print the URL, wait for a signal, stop."""
    try:
        config = config_from_args(args)
        digest = resolve_token_digest(config)
        # refuse before Ray starts; the no-token warning is left to build_app
        check_auth_settings(config, digest, warn=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    _check_store(config.path)
    if not args.address:
        # a fresh local Ray: nothing of ours holds the port yet, so a busy port is another
        # program's (Serve would only report that the deployment failed)
        _check_port_free(args.host, args.port)

    import ray

    from shardann.service import server

    debug = is_debug(args)
    ray_log_level = _quiet_serve(debug)

    # Ctrl-C / SIGTERM: the first asks for an orderly stop (also during startup, which
    # then finishes and stops at once); a second one interrupts.
    done = threading.Event()

    def on_signal(signum, _frame):
        if done.is_set():
            raise KeyboardInterrupt
        logger.info("signal %d: stopping", signum)
        done.set()

    ingress = args.ingress or ("proxy" if args.address else "direct")
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop_on_exit = True
    try:
        if args.address:
            start_ray(address=args.address, logging_level=ray_log_level)
        else:
            if ingress == "direct":
                # read by every process of the local Ray, which inherit this environment
                os.environ.update(server.direct_ingress_env(args.port))
            start_ray(num_cpus=args.num_cpus, logging_level=ray_log_level, debug=debug)
        try:
            url = server.run(config, host=args.host, port=args.port, ingress=ingress)
        except server.DeploymentError as exc:
            raise CommandError(f"the service for {config.path} did not start: {exc.cause} "
                               "(--log-level DEBUG shows Serve's whole report)") from None
        auth = "bearer token required" if digest else "no token: loopback only"
        print(f"shardann: serving on {url}  ({config.path}, {config.num_shards} shard(s) x "
              f"{config.replicas} replica(s); {auth})", flush=True)
        if args.detach:
            print("shardann: detached; the app keeps running on the Ray cluster", flush=True)
            stop_on_exit = False
            return EXIT_OK
        print("shardann: Ctrl-C to stop", flush=True)
        while not done.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_on_exit and ray.is_initialized():
            print("shardann: stopping", flush=True)
            # delete the app (its replica finishes what it is answering) and the shard
            # actors; a local Ray then ends with Serve's controller and proxy in it. (Not
            # serve.shutdown(): it kills the controller under its own graceful_shutdown
            # call, which Ray reports on stdout as a failed task.)
            server.stop(config.index_name)
            if not args.address:
                ray.shutdown()
    return EXIT_OK
