"""The service's online recall estimate: a background replay of the index's
calibration queries at the search settings live traffic uses.

After a replay that took ``t`` seconds the monitor waits ``t * (1 / fraction -
1)`` (at least ``min_interval_s``) before the next one, so replays take at most
``fraction`` of the wall time (default 1%: a replay of 0.2 s, then 19.8 s of
rest). Each replay estimates recall@k for the most frequent settings — ``(k,
nprobe, refine_factor, probe_ratio)`` — of the searches answered since the
service started (up to ``max_settings``) through the backend's own search path
(:meth:`shardann.distributed.ShardedIndex.estimate_recall`), and the results are
exported as ``shardann_recall_estimate{k,nprobe,probe_ratio,refine_factor}``
with ``shardann_recall_estimate_lower`` / ``_upper`` on ``/metrics`` and under
``"recall"`` in ``/v1/stats``. ``probe_ratio`` is ``""`` for searches without
one (Prometheus reads an empty label as no label), so a selector on ``k`` and
``nprobe`` alone still finds the plain setting's series (among the others).

Filtered searches are not replayed, only counted (``filtered_skipped``): the
calibration truth is each query's exact neighbours among all rows, so an
estimate from it says nothing about recall among the rows a filter passes, and
it is never reported as one.
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
    estimate : callable ``(k, nprobe, refine_factor, probe_ratio) ->
        RecallEstimate`` (blocking; raises ``ValueError`` when the index has no
        calibration set).
    fraction : float in (0, 1], the share of wall time replays may take.
    min_interval_s : the shortest rest between two replays.
    max_settings : how many of the most frequent settings are replayed.
    """

    def __init__(self, estimate, *, fraction=0.01, min_interval_s=1.0, max_settings=8):
        self.estimate = estimate
        self.fraction = float(fraction)
        self.min_interval_s = float(min_interval_s)
        self.max_settings = int(max_settings)
        # (k, nprobe or None, refine_factor, probe_ratio or None) -> searches
        self._seen = collections.Counter()
        # the estimate's own settings (nprobe resolved) -> its dict
        self._results = {}
        self.filtered_skipped = 0  # filtered searches (queries), never replayed
        self._lock = threading.Lock()
        self.unavailable = None  # why there is no estimate (no calibration set), or None
        self.replays = 0
        self.busy_s = 0.0

    def record(self, k, nprobe, refine_factor=0, probe_ratio=None, n=1, *, filtered=False):
        """Note ``n`` searches answered at these settings (nprobe None: the
        index's default; probe_ratio None: none). Filtered ones are only counted."""
        with self._lock:
            if filtered:
                self.filtered_skipped += n
            elif 1 <= int(k) <= MAX_K:
                self._seen[(int(k), None if nprobe is None else int(nprobe),
                            int(refine_factor or 0),
                            None if probe_ratio is None else float(probe_ratio))] += n

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
        for k, nprobe, refine_factor, probe_ratio in keys:
            try:
                est = self.estimate(k, nprobe, refine_factor, probe_ratio)
            except ValueError as exc:  # no calibration set: say why, once
                if self.unavailable is None:
                    logger.info("no online recall estimate: %s", exc)
                self.unavailable = str(exc)
                return time.perf_counter() - t0
            self.unavailable = None
            with self._lock:
                self._results[_labels(est.to_dict())] = {**est.to_dict(), "at": time.time()}
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
        """For ``/v1/stats``: {"fraction", "replays", "busy_s", "filtered_skipped",
        "estimates": [...]} (and "unavailable": the reason, when the index has
        no calibration set)."""
        with self._lock:
            estimates = [dict(v) for _, v in sorted(self._results.items(),
                                                    key=lambda kv: _order(kv[1]))]
            skipped = self.filtered_skipped
        out = {"fraction": self.fraction, "replays": self.replays,
               "busy_s": round(self.busy_s, 3), "filtered_skipped": skipped,
               "estimates": estimates}
        if self.unavailable is not None:
            out["unavailable"] = self.unavailable
        return out

    def collect(self):
        """Prometheus collector: the latest estimate per setting."""
        with self._lock:
            results = list(self._results.values())
        names = (("recall", "shardann_recall_estimate",
                  "Estimated recall@k of the served index (calibration queries replayed)"),
                 ("lower", "shardann_recall_estimate_lower",
                  "Lower bound of the recall estimate's interval"),
                 ("upper", "shardann_recall_estimate_upper",
                  "Upper bound of the recall estimate's interval"))
        for field, name, doc in names:
            fam = GaugeMetricFamily(name, doc, labels=list(LABELS))
            for r in results:
                fam.add_metric(list(_labels(r)), r[field])
            yield fam
        queries = GaugeMetricFamily("shardann_recall_estimate_queries",
                                    "Calibration queries behind each recall estimate",
                                    labels=list(LABELS))
        for r in results:
            queries.add_metric(list(_labels(r)), r["n_queries"])
        yield queries


#: the labels of the recall metrics: the search settings an estimate is for (in the
#: order the exposition prints them)
LABELS = ("k", "nprobe", "probe_ratio", "refine_factor")


def _labels(est):
    """The label values of an estimate (its dict), as :data:`LABELS`: strings,
    ``probe_ratio`` "" when there is none."""
    pr = est["probe_ratio"]
    return (str(est["k"]), str(est["nprobe"]), "" if pr is None else repr(float(pr)),
            str(est["refine_factor"]))


def _order(est):
    return (est["k"], est["nprobe"] or 0, est["refine_factor"], est["probe_ratio"] or 0.0)
