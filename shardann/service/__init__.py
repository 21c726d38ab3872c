"""The cluster search service: a Ray Serve HTTP app over a sharded index, and its client.

Importing this package is cheap: the names below load their modules on first
use, so ``shardann.service.Client`` needs only ``httpx`` while
``build_app`` / ``run`` bring in Ray Serve and FastAPI.

``Client``, ``ServiceError`` and subclasses
    :mod:`shardann.service.client` — Python client of the HTTP API.
``ServiceConfig``
    :mod:`shardann.service.config` — limits, auth, batching, backpressure.
``build_app``, ``app_builder``, ``create_app``
    :mod:`shardann.service.app` — the Serve application / FastAPI app.
``SearchService``
    the service logic (testable without Serve).
``run``, ``stop``, ``stop_index``, ``direct_ingress_env``
    :mod:`shardann.service.server` — start and stop a served index.
"""

import importlib

_EXPORTS = {
    "Client": "client", "ServiceError": "client", "InvalidRequestError": "client",
    "AuthenticationError": "client", "ConflictError": "client",
    "ServiceUnavailableError": "client", "ServiceConnectionError": "client",
    "ServiceConfig": "config",
    "build_app": "app", "app_builder": "app", "create_app": "app",
    "SearchService": "_service", "ApiError": "_service",
    "LocalBackend": "backends", "ShardedBackend": "backends",
    "run": "server", "stop": "server", "stop_index": "server",
    "direct_ingress_env": "server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shardann.service' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
