"""The drift figures over HTTP (issue 22 item 2): ``/metrics`` gauges and the
``drift`` entry of ``/v1/stats``, updated by HTTP adds (LocalBackend, no Ray;
the sharded backend's figures are tested in tests/distributed/test_drift_sharded.py
and, through Ray Serve, in the slow test below)."""

import re

import numpy as np
import pytest
from service_support import D, local_client


def rotated(x, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, D)))
    return (x @ q.astype(np.float32)).astype(np.float32)


def gauge(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


@pytest.fixture(scope="module")
def index4(svc_data):
    """IVF-PQ with 4-bit codes: 125 training vectors per code, so the training
    PQ error is not optimistic (see shardann.drift.ROWS_PER_CODE)."""
    import shardann

    xb, _, xt = svc_data
    index = shardann.IVFPQIndex(D, 16, 8, 4, "l2", seed=0, niter=6, pq_niter=6)
    index.train(xt)
    index.add(xb)
    return index


def test_http_adds_move_the_drift_gauges(index4, svc_data):
    xb, _, _ = svc_data
    with local_client(index4) as client:
        text = client.get("/metrics").text
        # the index holds 4000 vectors of the training distribution
        assert 0.9 < gauge(text, "shardann_drift_coarse_ratio") < 1.1
        assert 0.9 < gauge(text, "shardann_drift_pq_ratio") < 1.15
        assert gauge(text, "shardann_drift_retrain_recommended") == 0
        assert gauge(text, "shardann_drift_added_vectors") == 4000
        assert gauge(text, "shardann_drift_threshold") == 1.25
        assert gauge(text, "shardann_list_imbalance") >= 1
        assert gauge(text, "shardann_empty_lists") == 0
        moved = rotated(xb)
        for s in range(0, len(moved), 2000):
            r = client.post("/v1/vectors", json={"vectors": moved[s:s + 2000].tolist(),
                                                 "ids": list(range(10_000 + s, 12_000 + s))})
            assert r.status_code == 200, r.text
        text = client.get("/metrics").text
        assert gauge(text, "shardann_drift_added_vectors") == 8000
        assert gauge(text, "shardann_drift_coarse_ratio") > 1.25
        assert gauge(text, "shardann_drift_retrain_recommended") == 1
        stats = client.get("/v1/stats").json()
        drift = stats["drift"]
        assert drift["retrain_recommended"] and drift["since_training"]["n"] == 8000
        assert drift["since_training"]["coarse"]["ratio"] == pytest.approx(
            gauge(text, "shardann_drift_coarse_ratio"))
        assert drift["latest"]["n"] == 8000  # adds since the index was loaded


def test_flat_index_exports_no_drift(svc_data):
    import shardann

    xb, _, _ = svc_data
    flat = shardann.FlatIndex(D)
    flat.add(xb[:100])
    with local_client(flat) as client:
        assert "shardann_drift_" not in client.get("/metrics").text
        assert client.get("/v1/stats").json()["drift"] is None
