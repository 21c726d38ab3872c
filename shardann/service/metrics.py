"""Prometheus metrics and request counters of one service instance.

Each service has its own ``CollectorRegistry`` (several can live in one test
process). ``GET /metrics`` renders it in the Prometheus text format; the
per-shard figures (rows, search calls, scanned lists) are read from the
backend's ``stats()`` at scrape time.

Requests rejected by the Serve proxy for backpressure (503 before they reach
the replica) are counted by Ray Serve's own metrics
(``ray_serve_num_http_error_requests``), not here.
"""

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ._driftmetrics import DriftCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _RateWindow:
    """Events per second over the last ``window_s`` seconds (1 s buckets)."""

    def __init__(self, window_s=60):
        self.window_s = window_s
        self._buckets = collections.deque()
        self._lock = threading.Lock()

    def add(self, n=1, now=None):
        sec = int(now if now is not None else time.monotonic())
        with self._lock:
            if self._buckets and self._buckets[-1][0] == sec:
                self._buckets[-1][1] += n
            else:
                self._buckets.append([sec, n])
            self._trim(sec)

    def _trim(self, sec):
        while self._buckets and self._buckets[0][0] <= sec - self.window_s:
            self._buckets.popleft()

    def rate(self, now=None):
        now = now if now is not None else time.monotonic()
        with self._lock:
            self._trim(int(now))
            total = sum(n for _, n in self._buckets)
        return total / self.window_s


class _ShardCollector:
    """Per-shard gauges and counters from the latest ``stats()`` snapshot."""

    def __init__(self):
        self.snapshot = None

    def collect(self):
        s = self.snapshot
        if not s:
            return
        ntotal = GaugeMetricFamily("shardann_index_vectors", "Vectors in the served index")
        ntotal.add_metric([], s.get("ntotal", 0))
        yield ntotal
        version = GaugeMetricFamily("shardann_index_version", "Served index version")
        version.add_metric([], s.get("version", 0))
        yield version
        balance = GaugeMetricFamily("shardann_list_balance",
                                    "Largest shard's rows over the mean (1 = perfectly even)")
        balance.add_metric([], s.get("balance", 1.0))
        yield balance
        rows = GaugeMetricFamily("shardann_shard_rows", "Rows placed on each shard",
                                 labels=["shard"])
        for i, n in enumerate(s.get("shard_rows", [])):
            rows.add_metric([str(i)], n)
        yield rows
        up = GaugeMetricFamily("shardann_shard_replica_up",
                               "1 if the shard replica answered the last stats call",
                               labels=["shard", "replica"])
        calls = CounterMetricFamily("shardann_shard_search_calls",
                                    "Search calls served by each shard replica",
                                    labels=["shard", "replica"])
        scanned = CounterMetricFamily("shardann_shard_scanned_lists",
                                      "Inverted lists scanned by each shard replica",
                                      labels=["shard", "replica"])
        for sh in s.get("shards", []):
            labels = [str(sh.get("shard")), str(sh.get("replica"))]
            up.add_metric(labels, 0 if "error" in sh else 1)
            if "error" in sh:
                continue
            calls.add_metric(labels, (sh.get("calls") or {}).get("search", 0))
            if sh.get("scanned_lists") is not None:
                scanned.add_metric(labels, sh["scanned_lists"])
        yield up
        yield calls
        yield scanned


class ServiceMetrics:
    """Counters and histograms of one service; also kept as plain dicts for /v1/stats."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("shardann_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("shardann_request_duration_seconds",
                                 "Request latency in the service replica, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.index_latency = Histogram("shardann_index_call_seconds",
                                       "Time in the index (fan-out to the shards and merge), "
                                       "by operation", ["op"], buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.errors = Counter("shardann_errors", "Failed requests by kind", ["kind"],
                              registry=r)
        self.vectors = Counter("shardann_search_vectors", "Query vectors searched",
                               registry=r)
        self.added = Counter("shardann_added_vectors", "Vectors added", registry=r)
        self.removed = Counter("shardann_removed_vectors", "Vectors removed", registry=r)
        self.batch_size = Histogram("shardann_search_batch_size",
                                    "Queries per index search call (after dynamic batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inflight = Gauge("shardann_inflight_requests", "Requests being handled",
                              registry=r)
        self.reloads = Counter("shardann_reloads", "Index version switches", registry=r)
        self._shards = _ShardCollector()
        r.register(self._shards)
        self._drift = DriftCollector()
        r.register(self._drift)
        self._lock = threading.Lock()
        self.counts = collections.defaultdict(collections.Counter)  # endpoint -> status -> n
        self.error_counts = collections.Counter()
        self.search_rate = _RateWindow(60)
        self.request_rate = _RateWindow(60)
        self.started = time.time()

    def observe(self, endpoint, method, status, seconds):
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        with self._lock:
            self.counts[endpoint][str(status)] += 1
        self.request_rate.add()
        if endpoint == "/v1/search":
            self.search_rate.add()

    def error(self, kind):
        self.errors.labels(kind).inc()
        with self._lock:
            self.error_counts[kind] += 1

    def summary(self):
        """Request counters for ``GET /v1/stats``."""
        with self._lock:
            counts = {e: dict(c) for e, c in self.counts.items()}
            errors = dict(self.error_counts)
        return {"requests": counts, "errors": errors,
                "qps_1m": round(self.request_rate.rate(), 3),
                "search_qps_1m": round(self.search_rate.rate(), 3),
                "uptime_s": round(time.time() - self.started, 1)}

    def render(self, shard_stats=None):
        """The Prometheus text exposition (bytes)."""
        self._shards.snapshot = shard_stats
        self._drift.snapshot = shard_stats
        return generate_latest(self.registry)
