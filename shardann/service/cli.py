"""``shardann serve PATH``: serve an index over HTTP with Ray Serve.

Wire it into ``shardann/cli.py`` with::

    serve = add("serve", "Serve an index over HTTP (Ray Serve) until interrupted.")
    _common_options(serve, in_subcommand=True)
    from .service.cli import add_serve_arguments, serve_main
    add_serve_arguments(serve)
    serve.set_defaults(handler=serve_main)

(``add_serve_arguments`` imports nothing heavy; ``serve_main`` imports Ray.)
Local Ray by default, ``--address`` to join a cluster. With a local Ray the
ingress replica answers HTTP on ``--port`` itself (Serve's direct ingress; see
:mod:`shardann.service.server`), ``--ingress proxy`` puts Serve's proxy
there instead. The token comes from
``--token-file`` or ``$SHARDANN_TOKEN`` / ``$SHARDANN_TOKEN_FILE``; without
one the service binds only to loopback addresses. On Ctrl-C / SIGTERM the
app and the index's shard actors are stopped (unless ``--detach``).
"""

import logging
import os
import signal
import threading

from .config import ServiceConfig, check_auth_settings, resolve_token_digest

logger = logging.getLogger(__name__)


def add_serve_arguments(parser):
    """Add the ``serve`` options to an argparse (sub)parser."""
    d = ServiceConfig()
    parser.add_argument("path", metavar="PATH", help="index store (directory)")
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
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                        help=f"vectors per search request (default {d.max_batch_size})")
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
    parser.add_argument("--batch-max-size", type=int, default=d.batch_max_size,
                        help="single-vector searches merged into one fan-out "
                             f"(default {d.batch_max_size})")
    parser.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_timeout_s * 1e3,
                        help="longest wait to fill a batch "
                             f"(default {d.batch_wait_timeout_s * 1e3:g} ms)")
    parser.add_argument("--detach", action="store_true",
                        help="deploy and exit, leaving the app running on the cluster "
                             "(stop it with `serve shutdown` or shardann.service.stop)")
    return parser


def config_from_args(args):
    """The :class:`ServiceConfig` for parsed ``serve`` arguments."""
    return ServiceConfig(
        path=os.path.abspath(args.path) if args.backend == "local" or "://" not in args.path
        else args.path,
        backend=args.backend, num_shards=args.shards, replicas=args.replicas, name=args.name,
        token_file=os.path.abspath(args.token_file) if args.token_file else None,
        host=args.host, max_batch_size=args.max_batch_size, max_k=args.max_k,
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.timeout_s,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests, batch_max_size=args.batch_max_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1e3)


def _check_port_free(host, port):
    from ..cli import CommandError
    from .server import bindable_port

    try:
        bindable_port(host, port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror} (another "
                           "program may be using the port; pick another with --port)") from None


def serve_main(args):
    """Handler of ``shardann serve``: deploy, print the URL, wait for a signal, stop."""
    from ..cli import CommandError, UsageError

    try:
        config = config_from_args(args)
        digest = resolve_token_digest(config)
        check_auth_settings(config, digest)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if not os.path.exists(config.path) and "://" not in config.path:
        raise CommandError(f"no index at {config.path}")
    if not args.address:
        # a fresh local Ray: nothing of ours holds the port yet, so a busy port is another
        # program's (Serve would only report that the deployment failed)
        _check_port_free(args.host, args.port)

    import ray
    from ray import serve

    from .server import direct_ingress_env, run, stop

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
            ray.init(address=args.address, log_to_driver=False)
        else:
            if ingress == "direct":
                # read by every process of the local Ray, which inherit this environment
                os.environ.update(direct_ingress_env(args.port))
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        url = run(config, host=args.host, port=args.port, ingress=ingress)
        auth = "bearer token required" if digest else "no token (loopback only)"
        print(f"shardann: serving {config.path} ({config.num_shards} shard(s) x "
              f"{config.replicas} replica(s)) at {url}  [{auth}]", flush=True)
        if args.detach:
            print("shardann: detached; the app keeps running on the Ray cluster", flush=True)
            stop_on_exit = False
            return 0
        print("shardann: Ctrl-C to stop", flush=True)
        while not done.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_on_exit and ray.is_initialized():
            print("shardann: stopping", flush=True)
            stop(config.index_name, shutdown_serve=not args.address)
        if not args.address and ray.is_initialized() and stop_on_exit:
            serve.shutdown()
            ray.shutdown()
    return 0


def main(argv=None):
    """``python -m shardann.service.cli PATH ...`` (the same as ``shardann serve``)."""
    import argparse
    import sys

    from ..cli import CommandError, UsageError, _configure_logging

    parser = argparse.ArgumentParser(prog="shardann serve", allow_abbrev=False,
                                     description="Serve an index over HTTP (Ray Serve).")
    parser.add_argument("--log-level", type=str.upper, default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return serve_main(args)
    except UsageError as exc:
        print(f"shardann serve: error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"shardann serve: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
