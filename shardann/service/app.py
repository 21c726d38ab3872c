"""The HTTP API (FastAPI) and the Ray Serve application around it.

Routes (JSON; every route but ``/v1/health`` needs ``Authorization: Bearer
<token>`` when the service has a token):

==========================  ====================================================
``POST /v1/search``         ``{"vectors": [[...]], "k": 10, "nprobe": 16,
                            "filter": "lang = 'en'", "columns": ["title"]}`` ->
                            ``{"ids": [[...]], "distances": [[...]],
                            "attributes": [[{"title": ...}, ...]], ...}``
``POST /v1/vectors``        add ``{"vectors": [[...]], "ids": [...],
                            "attributes": [{"lang": "en", ...}, ...]}``
``DELETE /v1/vectors``      delete ``{"ids": [...]}``
``GET /v1/health``          per-shard liveness (503 when a shard has no replica)
``GET /v1/stats``           ntotal, versions, shards, balance, drift, request counters
``POST /v1/admin/reload``   switch to the newest (or a given) committed version
``GET /metrics``            Prometheus text format
``GET /openapi.json``       the OpenAPI schema
``GET /docs``, ``/redoc``   the schema as Swagger UI / ReDoc pages (their scripts
                            and styles load from a CDN, so the browser needs it)
==========================  ====================================================

Errors are ``{"error": {"code": ..., "message": ..., "details": [...]}}`` with a
4xx status for bad requests (400 malformed JSON or a bad filter / unknown
column, 401 token, 413 body too large,
415 not JSON, 422 invalid values, 409 conflicts) and 503/504 (with ``Retry-After``) when the
index is unavailable or too slow. Only JSON travels; nothing is unpickled.

``create_app(service)`` builds the FastAPI app for a :class:`SearchService`
(testable without Ray). :func:`build_app` wraps it in a Serve deployment
(``ShardannServer``) configured for backpressure, and :func:`app_builder` is
the import path for a Serve config file.
"""

import contextlib
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._service import ApiError, SearchService
from .config import ServiceConfig, check_auth_settings, resolve_token_digest, token_digest
from .metrics import CONTENT_TYPE
from .schemas import (
    AddResponse,
    DeleteResponse,
    ErrorResponse,
    HealthResponse,
    ReloadResponse,
    SearchResponse,
    request_models,
)

logger = logging.getLogger(__name__)

API_VERSION = "v1"
PUBLIC_PATHS = frozenset({"/v1/health"})
ENDPOINTS = frozenset({"/v1/search", "/v1/vectors", "/v1/health", "/v1/stats",
                       "/v1/admin/reload", "/metrics", "/openapi.json", "/docs", "/redoc"})
_MAX_ERROR_DETAILS = 10
MAX_HEADER_BYTES = 64 << 10  # request headers in total (names + values), checked first


def _error_response(status, code, message, details=None, headers=None):
    err = {"code": code, "message": message}
    if details is not None:
        err["details"] = details
    return JSONResponse({"error": err}, status_code=status, headers=headers)


async def _send_json(send, status, body, headers=()):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


class _Gate:
    """Outermost ASGI layer: metrics for every request, the header size limit
    (431), bearer-token check, and the body size limit, all before the body is
    read or parsed."""

    def __init__(self, app, service):
        self.app = app
        self.service = service

    def _authorized(self, headers):
        digest = self.service.token_digest
        if digest is None:
            return True
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hmac.compare_digest(token_digest(token), digest)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics = self.service.metrics
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        endpoint = path if path in ENDPOINTS else "other"
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        metrics.inflight.inc()
        try:
            raw_headers = scope.get("headers") or ()
            header_bytes = sum(len(k) + len(v) for k, v in raw_headers)
            if header_bytes > MAX_HEADER_BYTES:
                metrics.error("headers_too_large")
                await _send_json(send_status, 431, {"error": {
                    "code": "headers_too_large",
                    "message": f"request headers of {header_bytes} bytes; the limit is "
                               f"{MAX_HEADER_BYTES} bytes"}})
                return
            headers = dict(raw_headers)
            if path not in PUBLIC_PATHS and not self._authorized(headers):
                metrics.error("unauthorized")
                await _send_json(send_status, 401, {"error": {
                    "code": "unauthorized",
                    "message": "missing or invalid bearer token (Authorization: Bearer <token>)"}},
                    [(b"www-authenticate", b'Bearer realm="shardann"')])
                return
            limit = self.service.config.max_body_bytes
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    metrics.error("body_too_large" if declared > limit else "invalid_request")
                    await _send_json(send_status, 413 if declared > limit else 400, {"error": {
                        "code": "body_too_large" if declared > limit else "malformed_request",
                        "message": f"request body of {length.decode('latin-1')} bytes; "
                                   f"the limit is {limit} bytes"}})
                    return
            seen = [0]

            async def limited_receive():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > limit:
                        raise StarletteHTTPException(413, "body_too_large")
                return message

            await self.app(scope, limited_receive, send_status)
        finally:
            metrics.inflight.dec()
            metrics.observe(endpoint, scope.get("method", ""), status[0],
                            time.perf_counter() - t0)


def _is_json_type(content_type):
    main = content_type.split(";")[0].strip().lower()
    return main == "application/json" or (main.startswith("application/")
                                          and main.endswith("+json"))


def _validation_details(errors):
    out = []
    for e in errors[:_MAX_ERROR_DETAILS]:
        item = {"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
        out.append(item)
    return out


def create_app(service):
    """The FastAPI app serving ``service`` (a :class:`SearchService`)."""
    cfg = service.config
    d = service.d
    SearchRequest, AddRequest, DeleteRequest, ReloadRequest = request_models(cfg, d)
    bearer = HTTPBearer(auto_error=False, description="The service's bearer token.")
    auth = [Security(bearer)]
    errors = {status: {"model": ErrorResponse, "description": text} for status, text in (
        (400, "Malformed JSON, or a bad filter or column (invalid_filter, invalid_columns)"),
        (401, "Missing or invalid bearer token"),
        (413, "Request body too large"), (415, "Body is not JSON"),
        (422, "Invalid request"))}
    unavailable = {503: {"model": ErrorResponse, "description":
                         "A shard did not answer, or the service is overloaded (Retry-After)"},
                   504: {"model": ErrorResponse, "description": "Request deadline exceeded"}}

    app_middleware = [(_Gate, {"service": service})]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await service.startup()
        yield
        await service.shutdown()

    app = FastAPI(
        title="shardann search service", version=API_VERSION, lifespan=lifespan,
        docs_url=None, redoc_url=None,
        description=(f"Approximate nearest-neighbour search over a sharded IVF-PQ index "
                     f"(dimension {d}, metric {service.backend.metric}). JSON only; vectors "
                     "are lists of lists of finite numbers, ids JSON integers (int64). "
                     "Every endpoint but /v1/health needs `Authorization: Bearer <token>` "
                     "when the service has a token."))

    for cls, kwargs in app_middleware:
        app.add_middleware(cls, **kwargs)

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc):
        return _error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        errs = exc.errors()
        ctype = request.headers.get("content-type", "")
        if request.method in ("POST", "DELETE") and not _is_json_type(ctype) and any(
                e.get("loc") == ("body",) for e in errs):
            service.metrics.error("unsupported_media_type")
            return _error_response(415, "unsupported_media_type",
                                   f"the body must be JSON with Content-Type: application/json "
                                   f"(got {ctype or 'no Content-Type'})")
        if any(e.get("type") == "json_invalid" for e in errs):
            service.metrics.error("malformed_json")
            return _error_response(400, "malformed_json", "the request body is not valid JSON",
                                   _validation_details(errs))
        service.metrics.error("invalid_request")
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        if len(errs) > 1:
            message += f" (and {len(errs) - 1} more problem(s))"
        return _error_response(422, "invalid_request", message, _validation_details(errs))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
                 400: "malformed_request"}
        code = codes.get(exc.status_code, "http_error")
        service.metrics.error(code)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 413:
            message = f"request body larger than the limit of {cfg.max_body_bytes} bytes"
        return _error_response(exc.status_code, code, message,
                               headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_request, exc):
        service.metrics.error("internal")
        logger.exception("unhandled error", exc_info=exc)
        return _error_response(500, "internal", f"internal error ({type(exc).__name__})")

    @app.post("/v1/search", response_model=SearchResponse, dependencies=auth,
              responses={**errors, **unavailable}, summary="k nearest neighbours of vectors")
    async def search(body: SearchRequest):
        return JSONResponse(await service.search(body))

    @app.post("/v1/vectors", response_model=AddResponse, dependencies=auth,
              responses={**errors, **unavailable,
                         409: {"model": ErrorResponse, "description": "Id already present, or "
                                                                      "read-only version"}},
              summary="Add vectors (committed before the answer)")
    async def add(body: AddRequest):
        return JSONResponse(await service.add(body))

    @app.delete("/v1/vectors", response_model=DeleteResponse, dependencies=auth,
                responses={**errors, **unavailable}, summary="Delete vectors by id")
    async def delete(body: DeleteRequest):
        return JSONResponse(await service.delete(body))

    @app.get("/v1/health", response_model=HealthResponse,
             responses={503: {"model": HealthResponse, "description": "Some shard is down"}},
             summary="Per-shard liveness (no token needed)")
    async def health():
        h = await service.health()
        return JSONResponse(h, status_code=503 if h["status"] == "unavailable" else 200)

    @app.get("/v1/stats", dependencies=auth, responses=errors,
             summary="Index and service statistics")
    async def stats():
        return JSONResponse(await service.stats())

    @app.post("/v1/admin/reload", response_model=ReloadResponse, dependencies=auth,
              responses={**errors, **unavailable,
                         404: {"model": ErrorResponse, "description": "No such version"}},
              summary="Serve another committed version")
    async def reload(body: ReloadRequest | None = None):
        return JSONResponse(await service.reload(body.version if body else None))

    @app.get("/metrics", dependencies=auth, response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}}},
             summary="Prometheus metrics")
    async def metrics():
        return Response(await service.metrics_text(), media_type=CONTENT_TYPE)

    # The schema's pages. Like /openapi.json they need the token (the _Gate checks it),
    # so a browser reaches them through something that adds the header; the Swagger
    # page's "Authorize" button then sends it with the requests it tries.
    def openapi_url(request):
        return request.scope.get("root_path", "").rstrip("/") + app.openapi_url

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    async def swagger_ui(request: Request):
        return get_swagger_ui_html(openapi_url=openapi_url(request),
                                   title=f"{app.title} - Swagger UI")

    @app.get("/redoc", include_in_schema=False, response_class=HTMLResponse)
    async def redoc(request: Request):
        return get_redoc_html(openapi_url=openapi_url(request), title=f"{app.title} - ReDoc")

    return app


# -- Ray Serve -----------------------------------------------------------------------------
DEPLOYMENT_NAME = "ShardannServer"
APP_NAME = "shardann"


def _server_class():
    from ray import serve

    @serve.ingress()
    class ShardannServer:
        """Serve replica holding the coordinator of one index (see ``create_app``)."""

        def __init__(self, config):
            self.service = SearchService(config, serve_batching=True)

        def __serve_build_asgi_app__(self):
            return create_app(self.service)

        def check_health(self):
            if self.service.closed:
                raise RuntimeError("the service was closed")

    return ShardannServer


def deployment_options(config):
    """Serve deployment options for ``config``: replicas and backpressure."""
    from ray.serve.config import BackpressureConfig

    return {
        "name": DEPLOYMENT_NAME,
        "num_replicas": config.num_replicas,
        "max_ongoing_requests": config.max_ongoing_requests,
        "max_queued_requests": config.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503,
                                                  retry_after_s=config.retry_after_s),
        "ray_actor_options": {"num_cpus": config.replica_num_cpus},
        "health_check_period_s": 10,
        "logging_config": {"enable_access_log": bool(config.access_log)},
        "graceful_shutdown_timeout_s": config.request_timeout_s + 5,
        # a redeploy starts the new replica (which opens the index beside the old one)
        # before it stops the old one
        "max_surge_percent": 100,
    }


def build_app(config):
    """The Serve application for ``config`` (a ServiceConfig or dict).

    Resolves the token where this runs (``$SHARDANN_TOKEN`` / ``token_file``)
    and hands only its SHA-256 digest to the replica; refuses a non-loopback
    ``host`` without a token.
    """
    from ray import serve

    config = ServiceConfig.from_dict(config)
    digest = resolve_token_digest(config)
    check_auth_settings(config, digest)
    if digest is not None and not config.token_file:
        config.token_sha256 = digest
    cls = _server_class()
    return serve.deployment(cls).options(**deployment_options(config)).bind(config.to_dict())


def app_builder(args):
    """Serve config entry point (``import_path: shardann.service.app:app_builder``).

    ``args`` are :class:`ServiceConfig` fields. A cluster deployment binds to
    all interfaces, so ``require_token`` defaults to true here: set
    ``$SHARDANN_TOKEN`` (e.g. from a Kubernetes Secret) or ``token_file``.
    """
    args = dict(args or {})
    args.setdefault("require_token", True)
    args.setdefault("host", "0.0.0.0")
    return build_app(args)
