"""The service's online recall estimate: a background replay of the index's
calibration queries at the (k, nprobe) settings live traffic uses.

After a replay that took ``t`` seconds the monitor waits ``t * (1 / fraction -
1)`` (at least ``min_interval_s``) before the next one, so replays take at most
``fraction`` of the wall time (default 1%: a replay of 0.2 s, then 19.8 s of
rest). Each replay estimates recall@k for the most frequent settings seen since
the service started (up to ``max_settings``) through the backend's own search
path (:meth:`shardann.distributed.ShardedIndex.estimate_recall`), and the
results are exported as ``shardann_recall_estimate{k,nprobe}`` with
``shardann_recall_estimate_lower`` / ``_upper`` on ``/metrics`` and under
``"recall"`` in ``/v1/stats``.
"""

import asyncio
import collections
import logging
import threading
import time

from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

#: the largest k a calibration set answers for (its exact neighbours per query)
MAX_K = 100


class RecallMonitor:
    """Settings seen in traffic, the latest estimates, and the replay loop.

    Parameters
    ----------
    estimate : callable ``(k, nprobe) -> RecallEstimate`` (blocking; raises
        ``ValueError`` when the index has no calibration set).
    fraction : float in (0, 1], the share of wall time replays may take.
    min_interval_s : the shortest rest between two replays.
    max_settings : how many of the most frequent (k, nprobe) are replayed.
    """

    def __init__(self, estimate, *, fraction=0.01, min_interval_s=1.0, max_settings=8):
        self.estimate = estimate
        self.fraction = float(fraction)
        self.min_interval_s = float(min_interval_s)
        self.max_settings = int(max_settings)
        self._seen = collections.Counter()  # (k, nprobe or None) -> searches
        self._results = {}  # (k, nprobe or None) -> dict
        self._lock = threading.Lock()
        self.unavailable = None  # why there is no estimate (no calibration set), or None
        self.replays = 0
        self.busy_s = 0.0

    def record(self, k, nprobe, n=1):
        """Note ``n`` searches at ``(k, nprobe)`` (nprobe None: the default)."""
        if 1 <= int(k) <= MAX_K:
            with self._lock:
                self._seen[(int(k), None if nprobe is None else int(nprobe))] += n

    def settings(self):
        with self._lock:
            return [key for key, _ in self._seen.most_common(self.max_settings)]

    def replay(self):
        """Estimate recall for the settings seen (blocking). Returns the seconds
        it took (0 when there was nothing to do)."""
        keys = self.settings()
        if not keys:
            return 0.0
        t0 = time.perf_counter()
        for k, nprobe in keys:
            try:
                est = self.estimate(k, nprobe)
            except ValueError as exc:  # no calibration set: say why, once
                if self.unavailable is None:
                    logger.info("no online recall estimate: %s", exc)
                self.unavailable = str(exc)
                return time.perf_counter() - t0
            self.unavailable = None
            with self._lock:
                self._results[(k, nprobe)] = {**est.to_dict(), "at": time.time()}
        took = time.perf_counter() - t0
        self.replays += 1
        self.busy_s += took
        return took

    def rest_after(self, took):
        """Seconds to wait after a replay of ``took`` seconds."""
        return max(self.min_interval_s, took * (1.0 / self.fraction - 1.0))

    async def run(self, run_blocking):
        """The replay loop: ``run_blocking(fn)`` runs ``fn`` off the event loop."""
        while True:
            try:
                took = await run_blocking(self.replay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a shard down, a reload under way: try later
                logger.warning("recall replay failed: %s", exc)
                took = 0.0
            await asyncio.sleep(self.rest_after(took))

    def snapshot(self):
        """For ``/v1/stats``: {"fraction", "replays", "busy_s", "estimates": [...]}
        (and "unavailable": the reason, when the index has no calibration set)."""
        with self._lock:
            estimates = [dict(v) for _, v in sorted(self._results.items(),
                                                    key=lambda kv: (kv[0][0], kv[0][1] or 0))]
        out = {"fraction": self.fraction, "replays": self.replays,
               "busy_s": round(self.busy_s, 3), "estimates": estimates}
        if self.unavailable is not None:
            out["unavailable"] = self.unavailable
        return out

    def collect(self):
        """Prometheus collector: the latest estimate per (k, nprobe)."""
        with self._lock:
            results = list(self._results.values())
        names = (("recall", "shardann_recall_estimate",
                  "Estimated recall@k of the served index (calibration queries replayed)"),
                 ("lower", "shardann_recall_estimate_lower",
                  "Lower bound of the recall estimate's interval"),
                 ("upper", "shardann_recall_estimate_upper",
                  "Upper bound of the recall estimate's interval"))
        for field, name, doc in names:
            fam = GaugeMetricFamily(name, doc, labels=["k", "nprobe"])
            for r in results:
                fam.add_metric([str(r["k"]), str(r["nprobe"])], r[field])
            yield fam
        queries = GaugeMetricFamily("shardann_recall_estimate_queries",
                                    "Calibration queries behind each recall estimate",
                                    labels=["k", "nprobe"])
        for r in results:
            queries.add_metric([str(r["k"]), str(r["nprobe"])], r["n_queries"])
        yield queries
