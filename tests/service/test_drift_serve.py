"""The drift gauges through Ray Serve over real HTTP (slow: starts Serve in a
local Ray): a sharded backend's HTTP adds move ``/metrics`` and ``/v1/stats``.
The fast twin over the same app with a local backend is test_drift_http.py."""

import re

import numpy as np
import pytest
from service_support import D, serving

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def gauge(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


def test_drift_gauges_through_serve(ray_local, tmp_path, svc_data):
    from shardann.service import Client

    xb, _, xt = svc_data
    path = tmp_path / "idx"
    import shardann

    # 4-bit codes: enough training vectors per code for a fair PQ baseline
    index = shardann.IVFPQIndex(D, 16, 8, 4, "l2", seed=0, niter=6, pq_niter=6).train(xt)
    index.add(xb[:2000])
    index.save(path)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((D, D)))
    moved = (xb[2000:] @ q.astype(np.float32)).astype(np.float32)
    with serving(path, num_shards=2) as url, Client(url) as client:
        text = client.metrics()
        assert gauge(text, "shardann_drift_added_vectors") == 2000
        assert gauge(text, "shardann_drift_retrain_recommended") == 0
        client.add(moved, ids=np.arange(10_000, 10_000 + len(moved)))
        text = client.metrics()
        assert gauge(text, "shardann_drift_added_vectors") == 4000
        assert gauge(text, "shardann_drift_coarse_ratio") > 1.25
        assert gauge(text, "shardann_drift_retrain_recommended") == 1
        drift = client.stats()["drift"]
        assert drift["retrain_recommended"] and drift["latest"]["n"] == len(moved)
