"""The drift figures on ``/metrics`` (see :mod:`shardann.drift`): read from the
``"drift"`` entry of the backend's ``stats()`` at scrape time, so an HTTP add
shows at the next scrape."""

from prometheus_client.core import GaugeMetricFamily

from ..drift import gauges

HELP = {
    "shardann_drift_coarse_ratio": "Mean coarse quantization error (squared distance to the "
                                   "centroid) of the vectors added since training over the "
                                   "training mean",
    "shardann_drift_pq_ratio": "Mean PQ reconstruction error of the vectors added since "
                               "training over the training mean",
    "shardann_drift_pq_relative_ratio": "Relative PQ error (mean PQ error over mean coarse "
                                        "error) of the vectors added since training over "
                                        "training's; above 1 when data contracts",
    "shardann_drift_added_vectors": "Vectors added since training (the ratios' sample)",
    "shardann_drift_retrain_recommended": "1 when a ratio exceeds the threshold "
                                          "(shardann info says 'retrain recommended')",
    "shardann_drift_threshold": "Error ratio above which a retrain is recommended",
    "shardann_list_imbalance": "Largest inverted list over the mean list size",
    "shardann_list_size_cv": "Coefficient of variation of the inverted list sizes",
    "shardann_empty_lists": "Inverted lists holding no vector",
}


class DriftCollector:
    """Gauges of the drift report in the latest ``stats()`` snapshot."""

    def __init__(self):
        self.snapshot = None

    def collect(self):
        report = (self.snapshot or {}).get("drift")
        if not report:
            return
        for name, value in gauges(report).items():
            g = GaugeMetricFamily(name, HELP[name])
            g.add_metric([], value)
            yield g
