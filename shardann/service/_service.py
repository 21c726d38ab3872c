"""The service logic behind the HTTP routes, independent of FastAPI and Serve.

:class:`SearchService` validates requests against its limits, runs the
blocking index calls in a small thread pool, batches concurrent
single-vector searches into one fan-out (``@serve.batch``), serialises
writes, switches index versions without failing requests, and maps failures
to HTTP errors (:class:`ApiError`).

Version switching: every request holds a reference to the *generation*
(backend) it started on; ``reload`` opens the new version beside the old one,
switches new requests to it, and stops the old shard actors once their last
request has finished (and ``retire_grace_s`` has passed).
"""

import asyncio
import collections
import functools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._validation import MAX_SQUARED_NORM, first_oversized_row
from ..errors import (
    CommitConflictError,
    CorruptIndexError,
    DuplicateIdError,
    ShardUnavailableError,
)
from ..filters import check_columns, compile_filter
from ._attrjson import encode_schema, hits_to_json, rows_to_table
from ._batching import MicroBatcher
from ._recall import RecallMonitor
from .backends import open_backend
from .config import ServiceConfig, check_auth_settings, resolve_token_digest
from .metrics import ServiceMetrics

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP error answer: status, machine-readable ``code``, message, details."""

    def __init__(self, status, code, message, details=None, headers=None):
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self):
        err = {"code": self.code, "message": self.message}
        if self.details is not None:
            err["details"] = self.details
        return {"error": err}


def _is_ray_error(exc):
    return type(exc).__module__.startswith("ray.")


class _Generation:
    """One opened backend and the number of requests using it."""

    def __init__(self, backend):
        self.backend = backend
        self.refs = 0


def _json_results(D, I):
    """ids and distances as JSON-ready lists; null where a distance is not finite."""
    ids = I.tolist()
    dist = D.tolist()
    bad = ~np.isfinite(D)
    if bad.any():
        for r, c in zip(*np.nonzero(bad), strict=True):
            dist[r][c] = None
    return ids, dist


class SearchService:
    """Serve one index over the HTTP API (see :mod:`shardann.service.app`).

    Parameters
    ----------
    config : ServiceConfig or dict.
    backend : an opened backend (default: ``open_backend(config)``).
    environ : environment mapping to read the token variables from.
    serve_batching : batch single-vector searches with ``@serve.batch`` (inside a
        Serve replica, where it needs the replica context); otherwise a
        minimal asyncio batcher with the same behaviour is used.
    """

    def __init__(self, config, backend=None, *, environ=None, serve_batching=False):
        self.config = ServiceConfig.from_dict(config)
        cfg = self.config
        self.token_digest = resolve_token_digest(cfg, environ)
        check_auth_settings(cfg, self.token_digest)
        self.metrics = ServiceMetrics()
        self._pool = ThreadPoolExecutor(cfg.search_threads, thread_name_prefix="shardann-svc")
        t0 = time.perf_counter()
        self._gen = _Generation(backend if backend is not None else open_backend(cfg))
        b = self._gen.backend
        logger.info("serving %s (%s, version %d, %d vectors, d=%d) after %.1fs", cfg.path,
                    b.kind, b.version, b.ntotal, b.d, time.perf_counter() - t0)
        self.d = b.d
        self._write_lock = asyncio.Lock()
        self._tasks = set()
        self._batched = self._make_batcher(serve_batching)
        self.recall = RecallMonitor(self._estimate_recall, fraction=cfg.recall_cpu_fraction,
                                    min_interval_s=cfg.recall_min_interval_s)
        self.metrics.registry.register(self.recall)
        self.closed = False

    # -- plumbing ---------------------------------------------------------------------
    @property
    def backend(self):
        return self._gen.backend

    async def _run(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _timed(self, op, fn):
        """``fn`` wrapped to record its duration in ``shardann_index_call_seconds``."""
        hist = self.metrics.index_latency.labels(op)

        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                hist.observe(time.perf_counter() - t0)

        return call

    def _acquire(self):
        gen = self._gen
        gen.refs += 1
        return gen

    @staticmethod
    def _release(gen):
        gen.refs -= 1

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _map_error(self, exc, what):
        """The HTTP answer for an exception raised by the index."""
        if isinstance(exc, ApiError):
            return exc
        retry = {"Retry-After": str(max(1, math.ceil(self.config.retry_after_s)))}
        if isinstance(exc, ShardUnavailableError) or _is_ray_error(exc):
            self.metrics.error("shard_unavailable")
            return ApiError(503, "shard_unavailable", f"{what} failed: {exc}", headers=retry)
        if isinstance(exc, TimeoutError):
            self.metrics.error("timeout")
            return ApiError(504, "timeout", f"{what} did not finish within the request "
                                            "deadline; retry later", headers=retry)
        if isinstance(exc, PermissionError):
            self.metrics.error("read_only")
            return ApiError(409, "read_only", str(exc))
        if isinstance(exc, (DuplicateIdError, CommitConflictError)):
            self.metrics.error("conflict")
            return ApiError(409, "conflict", str(exc))
        if isinstance(exc, CorruptIndexError):  # the operator's to repair; say what is damaged
            self.metrics.error("corrupt_index")
            logger.error("%s failed: %s", what, exc)
            return ApiError(500, "corrupt_index", f"{what} failed: {exc}")
        if isinstance(exc, (ValueError, TypeError)):
            self.metrics.error("invalid_request")
            return ApiError(422, "invalid_request", str(exc))
        self.metrics.error("internal")
        logger.exception("%s failed", what, exc_info=exc)
        return ApiError(500, "internal", f"{what} failed: {type(exc).__name__}")

    def _timeout(self, requested):
        limit = self.config.request_timeout_s
        return limit if requested is None else min(float(requested), limit)

    def _matrix(self, rows, what):
        """Validated rows (finite, dimension d) as float32 (n, d), else 422."""
        d = self.d
        for i, row in enumerate(rows):
            if len(row) != d:
                self.metrics.error("invalid_request")
                raise ApiError(422, "invalid_request",
                               f"{what}[{i}] has dimension {len(row)} but the index expects "
                               f"d={d}", [{"loc": ["body", what, i], "type": "dimension"}])
        with np.errstate(over="ignore"):
            x = np.array(rows, dtype=np.float32).reshape(len(rows), d)
        if not np.isfinite(x).all():
            bad = int(np.argmin(np.isfinite(x).all(axis=1)))
            self.metrics.error("invalid_request")
            raise ApiError(422, "invalid_request",
                           f"{what}[{bad}] has values outside the float32 range; all values "
                           "must be finite float32 numbers",
                           [{"loc": ["body", what, bad], "type": "finite_number"}])
        over = first_oversized_row(x)  # the library's limit, refused here with 422
        if over is not None:
            bad, sq = over
            self.metrics.error("invalid_request")
            raise ApiError(422, "invalid_request",
                           f"{what}[{bad}] has squared norm {sq:.3g}; float32 "
                           f"distances overflow beyond {MAX_SQUARED_NORM:g}",
                           [{"loc": ["body", what, bad], "type": "too_large"}])
        return x

    # -- search -----------------------------------------------------------------------
    def _make_batcher(self, serve_batching):
        cfg = self.config

        async def search_batch(items):
            # an item: (query (d,), group key (k, nprobe, refine, partial, probe ratio,
            # filter text, columns, probe gap), compiled filter, timeout); one fan-out
            # per group
            gen = self._acquire()
            try:
                groups = collections.defaultdict(list)
                for i, item in enumerate(items):
                    groups[item[1]].append(i)
                keys = list(groups)
                calls = []
                for key in keys:
                    idx = groups[key]
                    k, nprobe, refine, partial, ratio, _, columns, gap = key
                    q = np.stack([items[i][0] for i in idx])
                    timeout = max(items[i][3] for i in idx)
                    self.metrics.batch_size.observe(len(idx))
                    calls.append(self._run(self._timed("search", gen.backend.search), q, k,
                                           nprobe=nprobe, refine_factor=refine,
                                           probe_ratio=ratio, probe_gap=gap,
                                           filter=items[idx[0]][2],
                                           columns=None if columns is None else list(columns),
                                           timeout_s=timeout, allow_partial=partial))
                results = await asyncio.gather(*calls, return_exceptions=True)
            finally:
                self._release(gen)
            out = [None] * len(items)
            for key, res in zip(keys, results, strict=True):
                k = key[0]
                for j, i in enumerate(groups[key]):
                    if isinstance(res, BaseException):
                        out[i] = res
                    else:
                        D, I, A, missing = res
                        out[i] = (D[j:j + 1], I[j:j + 1],
                                  None if A is None else A.slice(j * k, k), missing,
                                  gen.backend)
            return out

        options = {"max_batch_size": cfg.batch_max_size,
                   "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
                   "max_concurrent_batches": cfg.max_concurrent_batches}
        if serve_batching:
            from ray import serve
            return serve.batch(**options)(search_batch)
        return MicroBatcher(search_batch, **options)

    async def _search_direct(self, q, k, nprobe, refine, partial, ratio, expr, columns,
                             shard_timeout, gap=None):
        gen = self._acquire()
        try:
            self.metrics.batch_size.observe(len(q))
            D, I, A, missing = await self._run(
                self._timed("search", gen.backend.search), q, k, nprobe=nprobe,
                refine_factor=refine, probe_ratio=ratio, probe_gap=gap, filter=expr,
                columns=columns, timeout_s=shard_timeout, allow_partial=partial)
            return D, I, A, missing, gen.backend
        finally:
            self._release(gen)

    def _filter_and_columns(self, req):
        """The request's filter compiled against the served index's attribute
        schema, and its columns checked; 400 naming the problem otherwise."""
        schema = self.backend.attribute_schema
        out = []
        for name, check, value in (("filter", compile_filter, req.filter),
                                   ("columns", check_columns, req.columns)):
            try:
                out.append(check(value, schema))
            except (ValueError, TypeError) as exc:
                code = f"invalid_{name}"
                self.metrics.error(code)
                raise ApiError(400, code, f"{name}: {exc}",
                               [{"loc": ["body", name], "type": code}]) from None
        return tuple(out)

    async def search(self, req):
        """Answer a validated ``SearchRequest``: ids, distances (null for padding),
        and the hits' attribute columns when asked for."""
        q = self._matrix(req.vectors, "vectors")
        expr, columns = self._filter_and_columns(req)
        timeout = self._timeout(req.timeout_s)
        shard_timeout = timeout * self.config.shard_timeout_fraction
        self.metrics.vectors.inc(len(q))
        try:
            async with asyncio.timeout(timeout):
                if len(q) == 1:
                    key = (req.k, req.nprobe, req.refine_factor, req.allow_partial,
                           req.probe_ratio, req.filter,
                           None if columns is None else tuple(columns), req.probe_gap)
                    res = await self._batched((q[0], key, expr, shard_timeout))
                    if isinstance(res, BaseException):
                        raise res
                else:
                    res = await self._search_direct(q, req.k, req.nprobe, req.refine_factor,
                                                    req.allow_partial, req.probe_ratio, expr,
                                                    columns, shard_timeout, req.probe_gap)
        except Exception as exc:
            raise self._map_error(exc, "search") from None
        D, I, A, missing, backend = res
        # settings that answered are replayed (refine on an index without vectors
        # fails here, not in the replay); filtered ones only counted: the
        # calibration truth is unfiltered (see _recall)
        # (probe_gap searches too: the estimate has no such setting to replay)
        self.recall.record(req.k, req.nprobe, req.refine_factor, req.probe_ratio, len(q),
                           filtered=expr is not None or req.probe_gap is not None)
        ids, dist = _json_results(D, I)
        out = {"ids": ids, "distances": dist, "metric": backend.metric,
               "version": backend.version, "partial": bool(missing),
               "missing_shards": [int(s) for s in missing]}
        if A is not None:
            out["attributes"] = hits_to_json(A, I)
            out["arrow_schema"] = encode_schema(A.schema)
        return out

    # -- writes -----------------------------------------------------------------------
    async def add(self, req):
        x = self._matrix(req.vectors, "vectors")
        attributes = None
        if req.attributes is not None:
            if len(req.attributes) != len(x):
                self.metrics.error("invalid_request")
                raise ApiError(422, "invalid_request",
                               f"attributes has {len(req.attributes)} objects for {len(x)} "
                               "vectors")
            try:
                attributes = rows_to_table(req.attributes, self.backend.attribute_schema)
            except ValueError as exc:
                self.metrics.error("invalid_request")
                raise ApiError(422, "invalid_request", str(exc),
                               [{"loc": ["body", "attributes"], "type": "attributes"}]) from None
        ids = None
        if req.ids is not None:
            if len(req.ids) != len(x):
                self.metrics.error("invalid_request")
                raise ApiError(422, "invalid_request",
                               f"ids has {len(req.ids)} entries for {len(x)} vectors")
            ids = np.asarray(req.ids, dtype=np.int64)
            if len(np.unique(ids)) != len(ids):
                self.metrics.error("invalid_request")
                raise ApiError(422, "invalid_request", "ids contains duplicates")
        try:
            async with self._write_lock:
                gen = self._acquire()
                try:
                    async with asyncio.timeout(max(self.config.request_timeout_s, 60.0)):
                        # attributes only when given: backends need not take them
                        extra = () if attributes is None else (attributes,)
                        out = await self._run(self._timed("add", gen.backend.add), x, ids,
                                              *extra)
                finally:
                    self._release(gen)
        except Exception as exc:
            raise self._map_error(exc, "add") from None
        self.metrics.added.inc(len(x))
        return {"ids": np.asarray(out).tolist(), "ntotal": gen.backend.ntotal}

    async def delete(self, req):
        ids = np.asarray(req.ids, dtype=np.int64)
        try:
            async with self._write_lock:
                gen = self._acquire()
                try:
                    async with asyncio.timeout(max(self.config.request_timeout_s, 60.0)):
                        n = await self._run(self._timed("remove", gen.backend.remove_ids), ids)
                finally:
                    self._release(gen)
        except Exception as exc:
            raise self._map_error(exc, "delete") from None
        self.metrics.removed.inc(int(n))
        return {"removed": int(n), "ntotal": gen.backend.ntotal}

    # -- versions ---------------------------------------------------------------------
    async def reload(self, version=None):
        """Serve ``version`` (default: the newest committed one).

        The new version is opened beside the old one while searches keep
        running on the old one; writes wait. Then new requests go to the new
        version and the old shard actors stop once idle.
        """
        try:
            async with self._write_lock:
                old = self._gen
                target = version
                if target is None:
                    target = await self._run(old.backend.newest_version)
                if int(target) == old.backend.version:
                    b = old.backend
                    return {"changed": False, "previous_version": b.version,
                            "version": b.version, "ntotal": b.ntotal,
                            "read_only": bool(getattr(getattr(b, "index", None),
                                                      "read_only", False))}
                t0 = time.perf_counter()
                try:
                    new = await self._run(old.backend.reopen, int(target))
                except FileNotFoundError as exc:  # by type: the store has no such version
                    self.metrics.error("version_not_found")
                    raise ApiError(404, "version_not_found",
                                   f"version {int(target)} of {self.config.path} does not "
                                   f"exist: {exc}") from None
                if new.d != old.backend.d:
                    await self._run(new.retire)
                    raise ApiError(409, "conflict", f"version {target} has dimension {new.d}, "
                                                    f"the served one {old.backend.d}")
                self._gen = _Generation(new)
                self.metrics.reloads.inc()
                logger.info("switched %s from version %d to %d in %.1fs", self.config.path,
                            old.backend.version, new.version, time.perf_counter() - t0)
                if new is not old.backend:
                    self._spawn(self._retire(old))
        except Exception as exc:
            raise self._map_error(exc, "reload") from None
        return {"changed": True, "previous_version": old.backend.version,
                "version": new.version, "ntotal": new.ntotal,
                "read_only": bool(getattr(getattr(new, "index", None), "read_only", False))}

    async def _retire(self, gen):
        t0 = time.monotonic()
        while gen.refs > 0:
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, self.config.retire_grace_s - (time.monotonic() - t0)))
        try:
            await self._run(gen.backend.retire)
            logger.info("retired version %d of %s", gen.backend.version, self.config.path)
        except Exception:
            logger.exception("retiring version %d failed", gen.backend.version)

    async def _stop_stale_later(self):
        await asyncio.sleep(self.config.retire_grace_s)
        gen = self._gen
        try:
            await self._run(gen.backend.stop_stale_actors)
        except Exception:
            logger.exception("stopping stale shard actors failed")

    # -- introspection ----------------------------------------------------------------
    async def health(self):
        gen = self._acquire()
        try:
            async with asyncio.timeout(5.0):
                h = await self._run(gen.backend.health, 2.0)
        except Exception as exc:
            logger.warning("health check failed: %s", exc)
            h = {"status": "unavailable", "shards": []}
        finally:
            self._release(gen)
        h["version"] = gen.backend.version
        return h

    async def stats(self):
        gen = self._acquire()
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                s = await self._run(gen.backend.stats)
        except Exception as exc:
            raise self._map_error(exc, "stats") from None
        finally:
            self._release(gen)
        cfg = self.config
        s["service"] = {
            **self.metrics.summary(),
            "limits": {"max_batch_size": cfg.max_batch_size, "max_add_batch": cfg.max_add_batch,
                       "max_k": cfg.max_k, "max_refine_factor": cfg.max_refine_factor,
                       "max_body_bytes": cfg.max_body_bytes,
                       "request_timeout_s": cfg.request_timeout_s},
            "batching": {"max_batch_size": cfg.batch_max_size,
                         "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
                         "max_concurrent_batches": cfg.max_concurrent_batches},
            "auth": self.token_digest is not None,
        }
        s["recall"] = self.recall.snapshot()
        return s

    def _estimate_recall(self, k, nprobe, refine_factor=0, probe_ratio=None):
        """The served version's recall estimate (blocking; for the replay loop)."""
        gen = self._acquire()
        try:
            return gen.backend.estimate_recall(k, nprobe, refine_factor, probe_ratio)
        finally:
            self._release(gen)

    async def metrics_text(self):
        gen = self._acquire()
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                s = await self._run(gen.backend.stats)
        except Exception as exc:
            logger.warning("shard statistics unavailable for /metrics: %s", exc)
            s = None
        finally:
            self._release(gen)
        return self.metrics.render(s)

    # -- lifecycle --------------------------------------------------------------------
    async def startup(self):
        """Background housekeeping once the event loop runs."""
        self._spawn(self._stop_stale_later())
        if self.config.recall_estimate:
            self._spawn(self.recall.run(self._run))

    async def shutdown(self):
        for task in list(self._tasks):
            task.cancel()
        self.close()

    def close(self):
        """Release threads; shard actors keep running (stop them with ``stop_index``)."""
        if self.closed:
            return
        self.closed = True
        self._gen.backend.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
