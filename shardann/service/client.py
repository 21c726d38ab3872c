"""``shardann.Client``: a small synchronous HTTP client of the search service.

Needs only ``httpx`` and NumPy (no Ray, no FastAPI)::

    client = shardann.Client("http://127.0.0.1:8000", token="...")
    D, I = client.search(queries, k=10, nprobe=16)     # like a local index
    D, I, A = client.search(queries, k=10, filter="lang = 'en'", columns=["title"])
    ids = client.add(vectors, ids=[...], attributes={"lang": [...], "title": [...]})
    client.delete([3, 4])
    client.health(); client.stats(); client.reload()

Results come back as the local index gives them: float32 ``D`` and int64
``I`` of shape (nq, k), padded with ``+inf``/``-inf`` and ``-1``. Errors
raise :class:`ServiceError` subclasses carrying the HTTP status and the
service's error code (:class:`ServiceConnectionError` when no answer came at
all; a bad filter is an :class:`InvalidRequestError`, a ``ValueError``, with
code ``invalid_filter``); 503 answers are retried (``retries`` times, honouring ``Retry-After``)
for the idempotent calls only.
"""

import logging
import time

import numpy as np

from ..errors import ShardannError
from ..metric import pad_distance

logger = logging.getLogger(__name__)


class ServiceError(ShardannError):
    """The service answered with an error status."""

    def __init__(self, status, code, message, details=None, retry_after=None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


class InvalidRequestError(ServiceError, ValueError):
    """400/413/422: the request was malformed or out of limits."""


class AuthenticationError(ServiceError, PermissionError):
    """401/403: missing or wrong bearer token."""


class ConflictError(ServiceError):
    """409: an id is already present, or the served version is read-only."""


class ServiceUnavailableError(ServiceError):
    """503/504/429: overloaded, a shard did not answer, or the deadline passed."""


class ServiceConnectionError(ServiceError, ConnectionError):
    """No HTTP answer at all: the connection was refused or broke (nothing listens
    at the URL, the service is down or restarting), or timed out. ``status`` is
    None; ``url`` is the URL that was tried."""

    def __init__(self, url, message):
        ShardannError.__init__(self, message)
        self.status = None
        self.code = "connection_error"
        self.message = message
        self.details = None
        self.retry_after = None
        self.url = url


def _error_class(status):
    if status in (401, 403):
        return AuthenticationError
    if status == 409:
        return ConflictError
    if status in (429, 503, 504):
        return ServiceUnavailableError
    if 400 <= status < 500:
        return InvalidRequestError
    return ServiceError


def _as_rows(x, name):
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d); got shape {a.shape}")
    return a.tolist()


def _hits_table(out, columns):
    """The answer's hit attributes as a ``pyarrow.Table`` (nq * k rows, row-major)."""
    from ._attrjson import decode_schema, rows_to_table

    rows = [hit for row in out["attributes"] for hit in row]
    return rows_to_table(rows, decode_schema(out["arrow_schema"]), columns=columns)


class Client:
    """HTTP client of a shardann search service.

    Parameters
    ----------
    url : base URL, e.g. ``"http://127.0.0.1:8000"``.
    token : bearer token (default: none).
    timeout : seconds per HTTP call.
    retries : retries of search/health/stats on 503/429 (honouring
        ``Retry-After``, capped at ``max_backoff_s``).
    """

    def __init__(self, url, token=None, *, timeout=30.0, retries=2, max_backoff_s=2.0,
                 transport=None):
        import httpx

        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.retries = int(retries)
        self.max_backoff_s = float(max_backoff_s)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  transport=transport)
        self._httpx = httpx
        self._metric = None

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Client({self.url!r})"

    # -- transport ----------------------------------------------------------------------
    def _request(self, method, path, body=None, *, retry=False):
        attempt = 0
        while True:
            kwargs = {"json": body} if body is not None else {}
            try:
                r = self._http.request(method, path, **kwargs)
            except self._httpx.TransportError as exc:
                raise self._connection_error(method, path, exc) from exc
            if r.status_code < 400 or (path == "/v1/health" and r.status_code == 503):
                return r
            err = self._error(r)
            if retry and r.status_code in (429, 503) and attempt < self.retries:
                attempt += 1
                pause = min(self.max_backoff_s, err.retry_after or 0.1 * 2 ** attempt)
                logger.info("%s %s: %s; retry %d in %.2fs", method, path, err.code, attempt,
                            pause)
                time.sleep(pause)
                continue
            raise err

    def _connection_error(self, method, path, exc):
        url = self.url + path
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, (self._httpx.ConnectError, self._httpx.ConnectTimeout)):
            what = f"cannot connect to the shardann service at {self.url}"
        elif isinstance(exc, self._httpx.TimeoutException):
            what = f"no answer from the shardann service within the timeout: {method} {url}"
        else:
            what = f"the connection to the shardann service broke: {method} {url}"
        return ServiceConnectionError(url, f"{what} ({type(exc).__name__}: {reason})")

    @staticmethod
    def _error(r):
        retry_after = r.headers.get("retry-after")
        try:
            retry_after = float(retry_after) if retry_after is not None else None
        except ValueError:
            retry_after = None
        try:
            err = r.json()["error"]
            code, message, details = err.get("code", "error"), err.get("message", ""), \
                err.get("details")
        except Exception:  # not our JSON body (e.g. the Serve proxy's backpressure 503)
            code = {503: "unavailable", 504: "timeout", 429: "overloaded"}.get(
                r.status_code, "http_error")
            message, details = r.text[:500], None
        return _error_class(r.status_code)(r.status_code, code, message, details, retry_after)

    # -- API ----------------------------------------------------------------------------
    def search(self, queries, k=10, *, nprobe=None, refine_factor=0, probe_ratio=None,
               filter=None, columns=None, timeout_s=None, allow_partial=False,
               probe_gap=None):
        """k nearest neighbours: ``(D, I)`` float32/int64 (nq, k), best first.

        ``nprobe``, ``refine_factor``, ``probe_ratio`` and ``probe_gap`` as for
        the local index (a sharded service refuses ``probe_gap`` with a 400).

        ``filter``: a SQL-like condition on the attribute columns (a string, as
        the service parses it). With ``columns=[...]`` returns ``(D, I, A)``,
        ``A`` a ``pyarrow.Table`` of those columns with nq * k rows (row
        ``i * k + j`` for hit ``I[i, j]``, nulls where it is -1), typed as the
        index stores them. With ``allow_partial=True`` the missing shards come
        last: ``(D, I, missing_shards)`` or ``(D, I, A, missing_shards)``.
        """
        body = {"vectors": _as_rows(queries, "queries"), "k": k,
                "refine_factor": refine_factor}
        if nprobe is not None:
            body["nprobe"] = nprobe
        if probe_ratio is not None:
            body["probe_ratio"] = probe_ratio
        if probe_gap is not None:
            body["probe_gap"] = probe_gap
        if filter is not None:
            if not isinstance(filter, str):
                raise TypeError("the service takes a filter as a string (its SQL-like form); "
                                f"got {type(filter).__name__}")
            body["filter"] = filter
        if columns is not None:
            body["columns"] = [columns] if isinstance(columns, str) else list(columns)
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if allow_partial:
            body["allow_partial"] = True
        out = self._request("POST", "/v1/search", body, retry=True).json()
        I = np.asarray(out["ids"], dtype=np.int64).reshape(-1, k)
        pad = pad_distance(out.get("metric", "l2"))
        D = np.array(out["distances"], dtype=np.float64).reshape(-1, k)  # null -> NaN
        D = np.where(np.isnan(D), pad, D).astype(np.float32)
        res = (D, I)
        if columns is not None:
            res += (_hits_table(out, body["columns"]),)
        if allow_partial:
            res += (out.get("missing_shards", []),)
        return res

    def add(self, vectors, ids=None, attributes=None):
        """Add vectors (committed before this returns); returns the int64 ids.

        ``attributes``: one row per vector, a ``pyarrow.Table`` / ``RecordBatch``
        or a dict of arrays (sent as JSON objects; timestamps as ISO 8601).
        """
        body = {"vectors": _as_rows(vectors, "vectors")}
        if ids is not None:
            body["ids"] = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        if attributes is not None:
            from ._attrjson import rows_for_json
            body["attributes"] = rows_for_json(attributes)
        out = self._request("POST", "/v1/vectors", body).json()
        return np.asarray(out["ids"], dtype=np.int64)

    def delete(self, ids):
        """Delete ids; returns how many were in the index."""
        body = {"ids": np.asarray(ids, dtype=np.int64).reshape(-1).tolist()}
        return int(self._request("DELETE", "/v1/vectors", body).json()["removed"])

    def health(self):
        """Per-shard liveness: ``{"status": "ok"|"degraded"|"unavailable", ...}``."""
        return self._request("GET", "/v1/health", retry=True).json()

    def stats(self):
        """Index and service statistics."""
        return self._request("GET", "/v1/stats", retry=True).json()

    def reload(self, version=None):
        """Switch the service to the newest (or the given) committed version."""
        body = {} if version is None else {"version": int(version)}
        return self._request("POST", "/v1/admin/reload", body).json()

    def metrics(self):
        """The Prometheus metrics text."""
        return self._request("GET", "/metrics", retry=True).text
