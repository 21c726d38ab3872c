"""Every shard actor serves the coordinator's version, restarts included."""

import os
import time

import numpy as np
import pytest
import ray
from dist_support import assert_same, build_local

import shardann
from shardann.distributed import ShardedIndex
from shardann.storage import IndexStore

pytestmark = pytest.mark.ray


def _wait_alive(actor, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return ray.get(actor.ping.remote(), timeout=5)
        except Exception:
            time.sleep(0.2)
    raise AssertionError("the killed actor did not restart")


def test_restarted_shard_keeps_the_served_version(ray_local, data, tmp_path):
    xb, xq, xt = data
    path = tmp_path / "idx"
    local = build_local(path, xt, xb[:3000])
    v1 = IndexStore.open(path).version
    want = local.search(xq, 10, nprobe=6)
    with ShardedIndex.open(path, num_shards=2, replicas=2) as sharded:
        assert_same(sharded.search(xq, 10, nprobe=6), want)
        other = shardann.open_index(path)  # another writer commits v2
        other.add(xb[3000:])
        v2 = int(other.save(path, merge=True))
        assert v2 > v1
        victim = sharded._actors[0][0]
        os.kill(ray.get(victim.stats.remote())["pid"], 9)
        for _ in range(6):
            assert_same(sharded.search(xq, 10, nprobe=6), want)
        _wait_alive(victim)
        for _ in range(6):  # the restarted replica answers too (round robin)
            assert_same(sharded.search(xq, 10, nprobe=6), want)
        assert sharded.version == v1
        assert {s["version"] for s in sharded.stats()["shards"]} == {v1}

        # a switch happens only through an explicit reload, for all shards together
        sharded.reload()
        assert sharded.version == v2 and sharded.ntotal == 6000
        newest = shardann.open_index(path)
        want2 = newest.search(xq, 10, nprobe=6)
        for _ in range(4):
            assert_same(sharded.search(xq, 10, nprobe=6), want2)
        assert {s["version"] for s in sharded.stats()["shards"]} == {v2}

        # the coordinator's own writes move every actor; a restart comes back there
        sharded.remove_ids(np.arange(0, 6000, 5))
        v3 = sharded.version
        assert v3 == v2 + 1 == IndexStore.open(path).version
        victim = sharded._actors[1][1]
        os.kill(ray.get(victim.stats.remote())["pid"], 9)
        _wait_alive(victim)
        want3 = shardann.open_index(path).search(xq, 10, nprobe=6)
        for _ in range(4):
            assert_same(sharded.search(xq, 10, nprobe=6), want3)
        assert {s["version"] for s in sharded.stats()["shards"]} == {v3}


def _service_client(path, **settings):
    """A TestClient over a SearchService on a ShardedBackend (1 shard) of ``path``."""
    import warnings

    from shardann.service import SearchService, create_app
    from shardann.service.backends import ShardedBackend
    from shardann.service.config import ServiceConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    config = ServiceConfig.from_dict({"path": str(path), "backend": "sharded", "num_shards": 1,
                                      "name": f"t{time.monotonic_ns()}", **settings})
    service = SearchService(config, ShardedBackend(config), environ={})
    return TestClient(create_app(service), raise_server_exceptions=False), service


def test_default_ids_stop_at_the_largest_id(ray_local, data, tmp_path):
    from shardann._validation import MAX_ID
    from shardann.service.backends import stop_index_actors

    xb, xq, xt = data
    path = tmp_path / "idx"
    build_local(path, xt, xb[:500])
    with ShardedIndex.open(path, num_shards=2) as sharded:
        sharded.add(xb[500:501], ids=[MAX_ID - 1])
        assert sharded.add(xb[501:502]).tolist() == [MAX_ID]  # the last default id
        version = sharded.version
        with pytest.raises(ValueError, match=str(MAX_ID)):
            sharded.add(xb[502:503])
        assert sharded.version == version == IndexStore.open(path).version
        assert IndexStore.open(path).next_id == MAX_ID + 1
    client, service = _service_client(path)
    try:
        with client:
            r = client.post("/v1/vectors", json={"vectors": xb[503:504].tolist()})
            assert r.status_code == 422, r.text
            assert str(MAX_ID) in r.json()["error"]["message"]
    finally:
        stop_index_actors(service.backend.name)


def test_service_reports_the_committed_version_after_writes(ray_local, data, tmp_path):
    from shardann.service.backends import stop_index_actors

    xb, xq, xt = data
    path = tmp_path / "idx"
    build_local(path, xt, xb[:500])
    client, service = _service_client(path)
    try:
        with client:
            r = client.post("/v1/vectors", json={"vectors": xb[500:502].tolist()})
            assert r.status_code == 200, r.text
            r = client.request("DELETE", "/v1/vectors", json={"ids": [0, 1]})
            assert r.status_code == 200, r.text
            newest = IndexStore.open(path).version
            assert newest == 3
            r = client.post("/v1/search", json={"vectors": xq[:2].tolist(), "k": 3})
            assert r.json()["version"] == newest, r.text
            assert client.get("/v1/stats").json()["version"] == newest
            assert client.get("/v1/health").json()["version"] == newest
    finally:
        stop_index_actors(service.backend.name)


def test_dead_replicas_are_skipped_and_logged_once(ray_local, data, tmp_path, caplog):
    import logging

    xb, xq, xt = data
    path = tmp_path / "idx"
    build_local(path, xt, xb[:2000])
    want = shardann.open_index(path).search(xq, 10, nprobe=6)
    with ShardedIndex.open(path, num_shards=2, replicas=2, max_restarts=0) as sharded:
        ray.kill(sharded._actors[0][0], no_restart=True)  # gone for good
        with caplog.at_level(logging.INFO, logger="shardann.distributed.coordinator"):
            for _ in range(10):
                assert_same(sharded.search(xq, 10, nprobe=6), want)
        lines = [r for r in caplog.records if "replica 0" in r.getMessage()
                 and "shard 0" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]  # one line per state change
        other = shardann.open_index(path)
        other.remove_ids(np.arange(0, 2000, 3))
        other.save(path, merge=True)
        sharded.reload()  # the dead replica does not stop a reload
        want2 = shardann.open_index(path).search(xq, 10, nprobe=6)
        for _ in range(4):
            assert_same(sharded.search(xq, 10, nprobe=6), want2)

    with ShardedIndex.open(path, num_shards=2, replicas=1, max_restarts=0,
                           replace_after_s=600) as sharded:
        ray.kill(sharded._actors[1][0], no_restart=True)
        with pytest.raises(shardann.ShardUnavailableError):
            sharded.search(xq, 10, nprobe=32, timeout_s=3)
        for _ in range(3):  # known dead: fail fast instead of waiting the timeout
            t0 = time.monotonic()
            with pytest.raises(shardann.ShardUnavailableError):
                sharded.search(xq, 10, nprobe=32, timeout_s=3)
            res = sharded.search(xq, 10, nprobe=32, timeout_s=3, allow_partial=True)
            assert res.missing_shards == [1]
            assert time.monotonic() - t0 < 1.5


def test_a_replica_dead_for_good_is_replaced(ray_local, data, tmp_path):
    xb, xq, xt = data
    path = tmp_path / "idx"
    build_local(path, xt, xb[:2000])
    want = shardann.open_index(path).search(xq, 10, nprobe=6)
    with ShardedIndex.open(path, num_shards=2, replicas=2, max_restarts=0,
                           replace_after_s=1.0) as sharded:
        dead = sharded._actors[1][1]
        ray.kill(dead, no_restart=True)
        assert sharded.health()["status"] == "degraded"  # health marks it down too
        deadline = time.monotonic() + 60
        while sharded.health()["status"] != "ok":
            assert time.monotonic() < deadline, "the dead replica was not replaced"
            assert_same(sharded.search(xq, 10, nprobe=6), want)
            time.sleep(0.2)
        assert sharded._actors[1][1] is not dead
        for _ in range(4):  # both replicas answer, at the served version
            assert_same(sharded.search(xq, 10, nprobe=6), want)
        stats = sharded.stats()["shards"]
        assert all("error" not in st and st["version"] == sharded.version for st in stats)
