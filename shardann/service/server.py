"""Start and stop a served index from Python (what ``shardann serve`` does).

::

    import ray
    from shardann.service import run, stop
    ray.init()
    url = run({"path": "/data/idx", "num_shards": 2}, host="127.0.0.1", port=8000)
    ...
    stop("idx")   # delete the Serve app and the index's detached shard actors

Two ways in (``ingress``):

- ``"proxy"``: Serve's HTTP proxy actor listens on ``port`` and forwards every
  request to the ingress replica with an actor call.
- ``"direct"``: the ingress replica itself listens on ``port`` (Serve's
  *direct ingress*), which saves the proxy's hop. On a 2-core machine that hop
  cost about as much CPU as the search itself: a 1M-vector index on 2 shards
  served ~60 single-vector searches/s through the proxy and ~180/s directly,
  with p99 at 120/s of 25 ms. Serve reads the switch from the environment of
  every Ray process, so it must be set before Ray starts:
  ``os.environ.update(direct_ingress_env(port))`` before ``ray.init`` (what
  ``shardann serve`` does for its local Ray), or the same variables in the
  cluster's environment. Serve still starts its proxy, on another port.
"""

import logging
import socket
import time

from ..errors import DeploymentError  # noqa: F401  (raised here; importable from here too)
from .config import ServiceConfig

logger = logging.getLogger(__name__)

INGRESS = ("direct", "proxy")
_DIRECT_INGRESS_FLAG = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
_FAILED = ("UNHEALTHY", "DEPLOY_FAILED")  # Serve deployment statuses of a failed start


def _last_line(text):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def deployment_failure(app_name):
    """Why the Serve application ``app_name`` failed, from ``serve.status()``:
    ``(cause, details)`` where ``cause`` is one line (the last line of the first
    failed deployment's message, normally the replica constructor's exception)
    and ``details`` every message; ``(None, "")`` when Serve recorded nothing."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return None, ""
    failed = [(name, d.message) for name, d in app.deployments.items()
              if d.message and str(getattr(d.status, "value", d.status)) in _FAILED]
    messages = [f"{name}: {message}" for name, message in failed]
    if app.message:
        messages.append(app.message)
    cause = _last_line(failed[0][1]) if failed else _last_line(app.message)
    return cause or None, "\n".join(messages)


def direct_ingress_env(port):
    """Environment variables (str -> str) that make Serve's ingress replica answer
    HTTP itself on ``port``; set them before Ray starts."""
    port = int(port)
    return {
        _DIRECT_INGRESS_FLAG: "1",
        # the port range is [min, max): exactly ``port``
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        # both exist for a load balancer in front (deregistering a stopping replica,
        # keeping a freed port out of use); with none, they only delay a restart
        # on the same port and every shutdown
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
    }


def bindable_port(host, port=0):
    """Bind ``host``:``port`` as an HTTP server would (``SO_REUSEADDR``), let it go,
    and return the port (with ``port=0``, one the OS found free). ``OSError`` when
    another program holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        return s.getsockname()[1]


def _wait_listening(host, port, timeout_s):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the Serve ingress replica is not listening on {host}:{port}: direct "
                    f"ingress needs {_DIRECT_INGRESS_FLAG}=1 and its port range in the "
                    "environment before Ray starts (see shardann.service.server."
                    "direct_ingress_env), or use ingress='proxy'") from None
            time.sleep(0.1)


def run(config, *, host="127.0.0.1", port=8000, app_name=None, route_prefix="/",
        start_serve=True, ingress="proxy"):
    """Deploy the service for ``config`` on the connected Ray cluster; return its URL.

    ``host``/``port`` is where clients connect: Serve's HTTP proxy
    (``ingress="proxy"``; when this call starts Serve, an already running
    Serve keeps its own) or the ingress replica itself (``ingress="direct"``;
    see the module docstring; one ingress replica). Without a token, a
    non-loopback ``host`` is refused. Blocks until the app is ready; raises
    :class:`DeploymentError` with the replica's own error when it cannot start
    (e.g. no index at ``config.path``).
    """
    import ray
    from ray import serve

    from .app import APP_NAME, build_app

    if ingress not in INGRESS:
        raise ValueError(f"ingress must be one of {INGRESS}; got {ingress!r}")
    config = ServiceConfig.from_dict(dict(ServiceConfig.from_dict(config).to_dict(),
                                          host=host))
    if ingress == "direct" and config.num_replicas != 1:
        raise ValueError("direct ingress serves one ingress replica on one port; "
                         f"got num_replicas={config.num_replicas} (use ingress='proxy')")
    app = build_app(config)  # refuses a public host without a token before starting anything
    if not ray.is_initialized():
        ray.init()
    if start_serve:
        # with direct ingress the replica takes ``port``; the proxy still starts
        proxy_port = bindable_port(host) if ingress == "direct" else int(port)
        serve.start(http_options={"host": host, "port": proxy_port,
                                  "request_timeout_s": config.request_timeout_s + 5})
    name = app_name or APP_NAME
    try:
        serve.run(app, name=name, route_prefix=route_prefix)
    except RuntimeError as exc:  # "Deploying application ... failed: <a summary>"
        try:
            cause, details = deployment_failure(name)
        except Exception as status_exc:  # keep Serve's own error, say why there is no more
            logger.warning("serve.status() failed after a failed deployment: %s", status_exc)
            raise exc from None
        if cause is None:
            raise
        logger.debug("Serve status of the failed application %r:\n%s", name, details)
        raise DeploymentError(name, cause, details) from exc
    if ingress == "direct":
        _wait_listening(host, int(port), timeout_s=30.0)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{int(port)}{route_prefix.rstrip('/')}"
    logger.debug("serving %s at %s (%s ingress)", config.path, url, ingress)
    return url


def stop_index(name):
    """Kill the detached shard actors of the index called ``name`` (every version)."""
    from .backends import stop_index_actors
    return stop_index_actors(name)


def stop(index_name=None, *, app_name=None, shutdown_serve=False):
    """Delete the Serve app (or shut Serve down) and stop the index's shard actors."""
    import ray
    from ray import serve

    from .app import APP_NAME

    if not ray.is_initialized():
        return
    if shutdown_serve:
        serve.shutdown()
    else:
        try:
            serve.delete(app_name or APP_NAME)
        except Exception as exc:  # not running
            logger.info("no Serve app to delete: %s", exc)
    if index_name is not None:
        stop_index(index_name)
