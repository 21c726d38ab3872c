"""Start and stop a served index from Python (what ``shardann serve`` does).

::

    import ray
    from shardann.service import run, stop
    ray.init()
    url = run({"path": "/data/idx", "num_shards": 2}, host="127.0.0.1", port=8000)
    ...
    stop("idx")   # delete the Serve app and the index's detached shard actors
"""

import logging

from .config import ServiceConfig

logger = logging.getLogger(__name__)


def run(config, *, host="127.0.0.1", port=8000, app_name=None, route_prefix="/",
        start_serve=True):
    """Deploy the service for ``config`` on the connected Ray cluster; return its URL.

    ``host``/``port`` configure the Serve HTTP proxy (when this call starts
    Serve; an already running Serve keeps its own). Without a token, a
    non-loopback ``host`` is refused. Blocks until the app is ready.
    """
    import ray
    from ray import serve

    from .app import APP_NAME, build_app

    config = ServiceConfig.from_dict(dict(ServiceConfig.from_dict(config).to_dict(),
                                          host=host))
    app = build_app(config)  # refuses a public host without a token before starting anything
    if not ray.is_initialized():
        ray.init()
    if start_serve:
        serve.start(http_options={"host": host, "port": int(port),
                                  "request_timeout_s": config.request_timeout_s + 5})
    serve.run(app, name=app_name or APP_NAME, route_prefix=route_prefix)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{int(port)}{route_prefix.rstrip('/')}"
    logger.info("serving %s at %s", config.path, url)
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
