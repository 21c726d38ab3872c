"""End to end over real HTTP on loopback: the Serve app in local Ray (2 CPUs)
over a ShardedIndex on 2 shards. Each test starts its own app and shuts Serve
down and stops the shard actors afterwards. The local Ray has Serve's direct
ingress on (as ``shardann serve`` starts it), so the ingress replica answers
HTTP itself on ``direct_port``; one test goes through Serve's proxy instead."""

import asyncio
import json
import re
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_support import (
    JSON_AUTH,
    TOKEN,
    assert_error,
    bearer,
    build_store,
    free_port,
    serving,
)

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

import shardann  # noqa: E402
from shardann.distributed import ShardedIndex  # noqa: E402
from shardann.service import Client  # noqa: E402
from shardann.service.backends import list_index_actors  # noqa: E402
from shardann.service.config import token_digest  # noqa: E402
from shardann.storage import IndexStore  # noqa: E402

pytestmark = pytest.mark.ray
AUTH = {"token_sha256": token_digest(TOKEN)}


@pytest.fixture(scope="module", autouse=True)
def direct_port():
    """Start the module's local Ray with direct ingress on a free port; yield the port."""
    from shardann.service import direct_ingress_env

    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in direct_ingress_env(port).items():
            mp.setenv(name, value)  # Ray's processes inherit it
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        yield port
        ray.shutdown()


@pytest.fixture()
def store(tmp_path, svc_data):
    xb, _, xt = svc_data
    path = tmp_path / "idx"
    build_store(path, xt, xb)
    return path


def _reference(path, xq, **kw):
    with ShardedIndex.open(path, num_shards=2, name="reference") as ref:
        return ref.search(xq, 10, nprobe=8, **kw)


def test_add_search_delete_equals_sharded_index(store, svc_data, direct_port):
    xb, xq, _ = svc_data
    # room for the burst of 16 below (the defaults answer 503 beyond 4 + 4)
    with serving(store, direct_port, "direct", num_shards=2, batch_wait_timeout_s=0.02,
                 max_ongoing_requests=16, max_queued_requests=16, **AUTH) as url, \
            Client(url, TOKEN) as client:
        assert client.health()["status"] == "ok"
        # concurrent single-vector searches are answered right, and batched (@serve.batch)
        _, want = _reference(store, xq[:16])

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=60, headers=JSON_AUTH) as http:
                return await asyncio.gather(*[
                    http.post("/v1/search", json={"vectors": [xq[i].tolist()], "k": 10,
                                                  "nprobe": 8}) for i in range(16)])

        for i, r in enumerate(asyncio.run(burst())):
            assert r.status_code == 200 and r.json()["ids"][0] == want[i].tolist()
        metrics = client.metrics()
        calls = float(re.search(r"^shardann_search_batch_size_count (\S+)$", metrics,
                                re.M).group(1))
        assert calls < 16, metrics  # fewer index calls than requests
        for kw in ({}, {"refine_factor": 4}):
            got = client.search(xq, 10, nprobe=8, **kw)
            want = _reference(store, xq, **kw)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
        new = xq[:5] + np.float32(0.01)
        ids = client.add(new, ids=np.arange(50_000, 50_005))
        np.testing.assert_array_equal(ids, np.arange(50_000, 50_005))
        _, I = client.search(new, 1, nprobe=16)
        assert (I[:, 0] == ids).mean() >= 0.8  # nearly always its own nearest hit
        assert client.delete(np.r_[50_000, 50_001, np.arange(0, 200)]) == 202
        got = client.search(xq, 10, nprobe=8)
        assert not np.isin(got[1], np.r_[50_000, 50_001, np.arange(200)]).any()
        want = _reference(store, xq)  # a fresh coordinator on the committed store
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        s = client.stats()
        assert s["ntotal"] == len(xb) + 5 - 202 and s["num_shards"] == 2
        assert s["versions"][-1] > s["versions"][0]  # the writes were committed
        assert "shardann_shard_scanned_lists_total" in client.metrics()
    # everything acknowledged is in the store
    assert shardann.open_index(store).ntotal == len(xb) + 5 - 202


@pytest.mark.slow  # 11 s: a whole failed Serve deployment
def test_failed_deployment_names_its_cause(tmp_path):
    """A replica that cannot open its index: the error says why (Serve's own said only
    "Deploying application shardann failed: Failed to update the deployments")."""
    from shardann.service.server import DeploymentError

    path = tmp_path / "not-an-index"
    path.mkdir()
    with pytest.raises(DeploymentError, match=r"failed to start: FileNotFoundError: no "
                                              rf"shardann index at '{re.escape(str(path))}'"):
        with serving(path, num_shards=1):
            pass


def test_auth_and_bad_input_over_http(store, svc_data):
    # through Serve's HTTP proxy (ingress="proxy"), the other way in
    xb, xq, _ = svc_data
    d = xb.shape[1]
    with serving(store, num_shards=2, max_body_bytes=64 * 1024, **AUTH) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            before = http.get("/v1/stats", headers=bearer()).json()["ntotal"]
            for headers in ({}, bearer("nope")):
                assert_error(http.post("/v1/search", headers=headers,
                                       json={"vectors": xq[:1].tolist()}), 401)
                assert_error(http.post("/v1/vectors", headers=headers,
                                       json={"vectors": xq[:1].tolist(), "ids": [99_999]}),
                             401)
                assert_error(http.request("DELETE", "/v1/vectors", headers=headers,
                                          json={"ids": [1, 2]}), 401)
            assert http.get("/v1/stats", headers=bearer()).json()["ntotal"] == before
            assert http.get("/v1/health").status_code == 200
            for page in ("/docs", "/redoc"):
                assert_error(http.get(page), 401)
                r = http.get(page, headers=bearer())
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            row = [0.5] * d
            bad = [
                {"vectors": [row[:-1]]}, {"vectors": [row], "k": 0},
                {"vectors": [row], "k": 10**6}, {"vectors": [["x"] * d]},
                {"vectors": [row], "nprobe": 10**9}, {"vectors": row}, {"k": 3},
            ]
            for body in bad:
                assert_error(http.post("/v1/search", headers=bearer(), json=body), 422)
            nan = '{"vectors": [[NaN' + ", 0.5" * (d - 1) + "]]}"
            assert_error(http.post("/v1/search", headers=JSON_AUTH, content=nan), 422)
            assert_error(http.post("/v1/search", headers={**bearer(),
                                                          "content-type": "application/json"},
                                   content="{not json"), 400, "malformed_json")
            big = json.dumps({"vectors": [row] * 1000})
            assert_error(http.post("/v1/search", headers=JSON_AUTH, content=big), 413)
            fuzz_http(http)
            r = http.post("/v1/search", headers=bearer(), json={"vectors": xq[:3].tolist()})
            assert r.status_code == 200 and len(r.json()["ids"]) == 3
            counts = http.get("/v1/stats", headers=bearer()).json()["service"]["requests"]
            assert not any(s.startswith("5") for c in counts.values() for s in c), counts


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**66, 2**66) | st.floats() | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4), max_leaves=30)


def fuzz_http(http):
    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=st.fixed_dictionaries({"vectors": _values},
                                      optional={"k": _values, "nprobe": _values,
                                                "refine_factor": _values}) | _values)
    def check(body):
        r = http.post("/v1/search", headers=JSON_AUTH, content=json.dumps(body))
        assert r.status_code < 500, (r.status_code, r.text)
        if r.status_code != 200:
            assert_error(r)

    check()


def _request_loop(url, xq, baseline, seconds, outcomes, stop):
    """Single-vector searches for ``seconds``; classify every answer."""
    with httpx.Client(base_url=url, timeout=30, headers=bearer()) as http:
        t_end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < t_end and not stop.is_set():
            j = i % len(xq)
            i += 1
            try:
                r = http.post("/v1/search", json={"vectors": [xq[j].tolist()], "k": 10,
                                                  "nprobe": 8, "timeout_s": 3})
            except httpx.HTTPError as exc:
                outcomes.append(("transport", type(exc).__name__))
                continue
            if r.status_code == 200:
                same = r.json()["ids"][0] == baseline[j].tolist()
                outcomes.append(("ok" if same else "wrong", r.status_code))
            else:
                try:
                    code = r.json()["error"]["code"]
                except Exception:
                    code = r.text[:100]
                outcomes.append((r.status_code, code))


@pytest.mark.parametrize("seconds", [10, pytest.param(30, marks=pytest.mark.slow)])
def test_kill_shard_under_load_recovers(store, svc_data, seconds, direct_port):
    xb, xq, _ = svc_data
    with serving(store, direct_port, "direct", num_shards=2, replicas=1, request_timeout_s=4,
                 **AUTH) as url, \
            Client(url, TOKEN) as client:
        added = client.add(xq[:10] + np.float32(0.02), ids=np.arange(70_000, 70_010))
        _, baseline = client.search(xq, 10, nprobe=8)
        outcomes, stop = [], threading.Event()
        loop = threading.Thread(target=_request_loop,
                                args=(url, xq, baseline, seconds, outcomes, stop))
        loop.start()
        try:
            time.sleep(2)
            victim = sorted(list_index_actors("idx"))[0]
            ray.kill(ray.get_actor(victim, namespace="shardann"), no_restart=False)
        finally:
            loop.join()
        kinds = {}
        for kind, detail in outcomes:
            kinds[(kind, detail) if kind != "ok" else "ok"] = kinds.get(
                (kind, detail) if kind != "ok" else "ok", 0) + 1
        allowed = {"ok", (503, "shard_unavailable"), (504, "timeout")}
        assert set(kinds) <= allowed, kinds
        assert kinds.get("ok", 0) > 0
        # recovers by itself, and nothing added before the kill is lost
        deadline = time.monotonic() + 60
        while True:
            try:
                _, I = client.search(xq, 10, nprobe=8)
                break
            except shardann.ShardannError:
                assert time.monotonic() < deadline, "the service did not recover"
                time.sleep(0.5)
        np.testing.assert_array_equal(I, baseline)
        assert client.stats()["ntotal"] == len(xb) + 10
        _, I = client.search(xq[:10] + np.float32(0.02), 1, nprobe=16)
        assert np.isin(added, I[:, 0]).mean() >= 0.8
        assert client.health()["status"] == "ok"


def test_version_rollover_without_failed_requests(store, svc_data, direct_port):
    xb, xq, _ = svc_data
    with serving(store, direct_port, "direct", num_shards=2, retire_grace_s=0.5, **AUTH) as url, \
            Client(url, TOKEN) as client:
        v1 = client.stats()["version"]
        outcomes = []
        stop = threading.Event()
        _, baseline = client.search(xq, 10, nprobe=8)

        def loop():
            with httpx.Client(base_url=url, timeout=30, headers=bearer()) as http:
                i = 0
                while not stop.is_set():
                    r = http.post("/v1/search", json={"vectors": [xq[i % len(xq)].tolist()],
                                                      "k": 10, "nprobe": 8})
                    outcomes.append(r.status_code)
                    i += 1

        threads = [threading.Thread(target=loop) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            # another writer commits a new version with 30 more vectors
            local = shardann.open_index(store)
            fresh = xq + np.float32(0.03)
            local.add(fresh[:30], ids=np.arange(90_000, 90_030))
            local.save(store)
            v2 = IndexStore.open(store).version
            assert v2 > v1
            time.sleep(0.5)
            out = client.reload()
            assert out == {"changed": True, "previous_version": v1, "version": v2,
                           "ntotal": len(xb) + 30, "read_only": False}
            assert client.reload()["changed"] is False
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert outcomes and set(outcomes) == {200}, {s: outcomes.count(s) for s in outcomes}
        assert client.stats()["version"] == v2
        _, I = client.search(fresh[:30], 1, nprobe=16)
        assert (I[:, 0] == np.arange(90_000, 90_030)).mean() >= 0.8
        # the old version's shard actors are gone once idle
        deadline = time.monotonic() + 20
        while any(f"/v{v1}/" in n for n in list_index_actors("idx")):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert all(f"/v{v2}/" in n for n in list_index_actors("idx"))


@pytest.mark.slow  # 12 s: fills a real deployment's queue
def test_overload_answers_503_fast(store, svc_data, direct_port):
    _, xq, _ = svc_data
    with serving(store, direct_port, "direct", num_shards=2, max_ongoing_requests=2,
                 max_queued_requests=2, batch_max_size=1, **AUTH) as url:
        body = json.dumps({"vectors": np.tile(xq, (6, 1)).tolist(), "k": 100, "nprobe": 16})

        async def burst(n):
            async with httpx.AsyncClient(base_url=url, timeout=60, headers=JSON_AUTH,
                                         limits=httpx.Limits(max_connections=n)) as http:
                async def one():
                    t0 = time.perf_counter()
                    r = await http.post("/v1/search", content=body)
                    return r, time.perf_counter() - t0
                return await asyncio.gather(*[one() for _ in range(n)])

        results = asyncio.run(burst(24))
        statuses = [r.status_code for r, _ in results]
        assert set(statuses) <= {200, 503}, statuses
        rejected = [(r, t) for r, t in results if r.status_code == 503]
        assert len(rejected) >= 12, statuses  # at most 2 running + 2 queued (+ timing slack)
        assert all(r.headers.get("retry-after") for r, _ in rejected)
        fastest_ok = min(t for r, t in results if r.status_code == 200)
        # rejections do not wait for the work ahead of them
        assert np.median([t for _, t in rejected]) < fastest_ok, (
            [round(t, 3) for _, t in rejected], fastest_ok)
        r = httpx.post(f"{url}/v1/search", headers=bearer(), json={"vectors": xq[:1].tolist()})
        assert r.status_code == 200


@pytest.mark.slow  # 15-30 s: a Serve app of its own (test_attributes_http covers the JSON)
def test_attributes_and_filters_over_http(tmp_path, svc_data, direct_port):
    # attributes survive the round trip: stored by the index, added over HTTP, filtered
    # inside the shards' scans and returned with the hits, typed as stored
    import datetime

    import pyarrow as pa

    from shardann.service.client import InvalidRequestError

    xb, xq, xt = svc_data
    n = len(xb)
    rng = np.random.default_rng(4)
    t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    attrs = pa.table({"lang": pa.array(np.array(["en", "de"])[rng.integers(0, 2, n)]),
                      "year": rng.integers(2015, 2025, n),
                      "tags": pa.array([["news"] if i % 3 else [] for i in range(n)],
                                       pa.list_(pa.string())),
                      "ts": pa.array([t0 + datetime.timedelta(minutes=i) for i in range(n)])})
    index = shardann.IVFPQIndex(xb.shape[1], 16, 8, 8, "l2", seed=0, niter=6, pq_niter=6)
    index.train(xt)
    index.add(xb, attributes=attrs)
    path = tmp_path / "attrs"
    index.save(path)
    f = "lang = 'de' AND year >= 2020 AND tags CONTAINS 'news'"
    cols = ["year", "ts", "tags"]
    with serving(path, direct_port, "direct", num_shards=2, **AUTH) as url, \
            Client(url, TOKEN) as client:
        with ShardedIndex.open(path, num_shards=2, name="reference") as ref:
            want = ref.search(xq, 10, nprobe=8, filter=f, columns=cols)
        for q in (xq, xq[:1]):
            D, I, A = client.search(q, 10, nprobe=8, filter=f, columns=cols)
            np.testing.assert_array_equal(I, want[1][:len(q)])
            np.testing.assert_array_equal(D, want[0][:len(q)])
            assert A.equals(want[2].slice(0, 10 * len(q)))
        new = xq[:2] + np.float32(0.001)
        client.add(new, ids=[70_000, 70_001],
                   attributes={"lang": ["fr", None], "year": [2030, 2031],
                               "tags": [["x"], None], "ts": [t0, None]})
        _, I, A = client.search(new, 2, nprobe=16, filter="lang = 'fr' OR year = 2031",
                                columns=["lang", "ts"])
        assert sorted(I[:, 0].tolist()) == [70_000, 70_001]
        hits = dict(zip(I.reshape(-1).tolist(), A.to_pylist(), strict=True))
        assert hits[70_000] == {"lang": "fr", "ts": t0} and hits[70_001] == {"lang": None,
                                                                              "ts": None}
        with pytest.raises(InvalidRequestError, match="nope") as info:
            client.search(xq[:1], 5, filter="nope > 3")
        assert info.value.status == 400 and info.value.code == "invalid_filter"
    # what the service acknowledged is in the store
    again = shardann.open_index(path)
    assert again.get_attributes(np.array([70_000]), ["year"]).column(0).to_pylist() == [2030]


def test_online_recall_estimate_over_http(store, svc_data, direct_port):
    """The replay of the calibration queries through the served shards: /v1/stats and
    /metrics carry the estimate of the settings searches used, equal to the local
    index's (2 shards answer as the local index)."""
    _, xq, _ = svc_data
    want = shardann.open_index(store).estimate_recall(10, 4)
    with serving(store, direct_port, "direct", num_shards=2, recall_cpu_fraction=1.0,
                 recall_min_interval_s=0.2, **AUTH) as url, Client(url, TOKEN) as client:
        client.search(xq[:3], 10, nprobe=4)
        deadline = time.monotonic() + 60
        while not client.stats()["recall"]["estimates"]:
            assert time.monotonic() < deadline, client.stats()["recall"]
            time.sleep(0.2)
        est = client.stats()["recall"]["estimates"][0]
        assert (est["k"], est["nprobe"]) == (10, 4)
        assert (est["recall"], est["lower"], est["upper"]) == (want.recall, want.lower,
                                                               want.upper)
        metrics = client.metrics()
        value = re.search(r'^shardann_recall_estimate\{k="10",nprobe="4",probe_ratio="",'
                          r'refine_factor="0"\} (\S+)$', metrics, re.M)
        assert value and float(value.group(1)) == pytest.approx(want.recall)
