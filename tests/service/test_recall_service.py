"""The service's online recall estimate without Ray: the replay loop's pacing and
its results through the app (LocalBackend); the end-to-end check over real HTTP
with shards is in test_serve_e2e.py."""

import re
import time

import pytest
from service_support import local_client

from shardann.service._recall import RecallMonitor


def test_rest_keeps_replays_to_the_fraction():
    monitor = RecallMonitor(lambda k, nprobe: None, fraction=0.01, min_interval_s=1.0)
    assert monitor.rest_after(0.2) == pytest.approx(19.8)  # 0.2 / (0.2 + 19.8) = 1%
    assert monitor.rest_after(0.001) == 1.0
    assert monitor.replay() == 0.0 and monitor.replays == 0  # no traffic: nothing to do
    monitor.record(500, 4)  # k above the calibration set's 100: not replayed
    assert monitor.settings() == []


def test_service_replays_the_settings_traffic_uses(small_index, svc_data):
    _, xq, _ = svc_data
    want = small_index.estimate_recall(10, 4)
    with local_client(small_index, recall_cpu_fraction=1.0, recall_min_interval_s=0.05) as c:
        assert c.get("/v1/stats").json()["recall"]["estimates"] == []
        for _ in range(3):
            r = c.post("/v1/search", json={"vectors": xq[:2].tolist(), "k": 10, "nprobe": 4})
            assert r.status_code == 200
        c.post("/v1/search", json={"vectors": xq[:1].tolist(), "k": 5})
        deadline = time.monotonic() + 30
        while True:
            rec = c.get("/v1/stats").json()["recall"]
            if len(rec["estimates"]) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        got = {(e["k"], e["nprobe"]): e for e in rec["estimates"]}
        default = c.service.backend.index.nprobe  # nprobe omitted: the index's default
        assert set(got) == {(10, 4), (5, default)}, rec
        e = got[(10, 4)]
        assert (e["recall"], e["lower"], e["upper"]) == (want.recall, want.lower, want.upper)
        assert e["n_queries"] == 1000 and rec["replays"] >= 1 and rec["fraction"] == 1.0
        text = c.get("/metrics").text
        # k and nprobe as before, and the probe ratio ("": none) and refine factor
        plain = r'\{k="10",nprobe="4",probe_ratio="",refine_factor="0"\}'
        value = re.search(r'^shardann_recall_estimate' + plain + r' (\S+)$', text, re.M)
        assert value and float(value.group(1)) == pytest.approx(want.recall)
        assert re.search(r'^shardann_recall_estimate_lower' + plain, text, re.M)
        assert re.search(r'^shardann_recall_estimate_upper' + plain, text, re.M)


def test_no_calibration_set_is_reported_not_fatal(svc_data):
    import shardann

    xb, xq, xt = svc_data
    index = shardann.IVFFlatIndex(xb.shape[1], 16, calibration=0).train(xt)
    index.add(xb)
    with local_client(index, recall_cpu_fraction=1.0, recall_min_interval_s=0.05) as c:
        c.post("/v1/search", json={"vectors": xq[:1].tolist(), "k": 10})
        deadline = time.monotonic() + 30
        while "unavailable" not in c.get("/v1/stats").json()["recall"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.post("/v1/search", json={"vectors": xq[:1].tolist(), "k": 10}).status_code \
            == 200
        assert "shardann_recall_estimate{" not in c.get("/metrics").text


def test_off_switch(small_index, svc_data):
    _, xq, _ = svc_data
    with local_client(small_index, recall_estimate=False, recall_cpu_fraction=1.0,
                      recall_min_interval_s=0.01) as c:
        c.post("/v1/search", json={"vectors": xq[:1].tolist(), "k": 10})
        time.sleep(0.3)
        assert c.get("/v1/stats").json()["recall"]["replays"] == 0


def test_replays_are_keyed_by_refine_and_probe_ratio_and_skip_filters(svc_data):
    import numpy as np

    import shardann

    xb, xq, xt = svc_data
    index = shardann.IVFPQIndex(xb.shape[1], 16, 8, 8, "l2", seed=0, niter=6, pq_niter=6,
                                keep_vectors=True)
    index.train(xt)
    index.add(xb, attributes={"tag": np.arange(len(xb)) % 3})
    settings = [{"k": 10, "nprobe": 4}, {"k": 10, "nprobe": 4, "refine_factor": 2},
                {"k": 10, "nprobe": 4, "probe_ratio": 0.5}]
    want = {i: index.estimate_recall(**kw) for i, kw in enumerate(settings)}
    # the three settings estimate differently: a replay at (k, nprobe) alone would be wrong
    assert len({w.recall for w in want.values()}) == 3
    with local_client(index, recall_cpu_fraction=1.0, recall_min_interval_s=0.05) as c:
        for kw in settings:
            r = c.post("/v1/search", json={"vectors": xq[:2].tolist(), **kw})
            assert r.status_code == 200
        # filtered: counted, never replayed (the calibration truth is unfiltered)
        r = c.post("/v1/search", json={"vectors": xq[:3].tolist(), "k": 5, "nprobe": 4,
                                       "filter": "tag = 1"})
        assert r.status_code == 200
        deadline = time.monotonic() + 30
        while True:
            rec = c.get("/v1/stats").json()["recall"]
            if len(rec["estimates"]) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert rec["filtered_skipped"] == 3
        got = {(e["k"], e["nprobe"], e["refine_factor"], e["probe_ratio"]): e
               for e in rec["estimates"]}
        assert set(got) == {(10, 4, 0, None), (10, 4, 2, None), (10, 4, 0, 0.5)}, rec
        for i, kw in enumerate(settings):
            e = got[(10, 4, kw.get("refine_factor", 0), kw.get("probe_ratio"))]
            assert (e["recall"], e["lower"], e["upper"]) == (want[i].recall, want[i].lower,
                                                             want[i].upper)
        text = c.get("/metrics").text
        for labels, w in ((r'k="10",nprobe="4",probe_ratio="",refine_factor="0"', want[0]),
                          (r'k="10",nprobe="4",probe_ratio="",refine_factor="2"', want[1]),
                          (r'k="10",nprobe="4",probe_ratio="0.5",refine_factor="0"', want[2])):
            value = re.search(r'^shardann_recall_estimate\{' + labels + r'\} (\S+)$', text,
                              re.M)
            assert value and float(value.group(1)) == pytest.approx(w.recall), labels
        assert 'k="5"' not in text  # the filtered setting has no estimate
