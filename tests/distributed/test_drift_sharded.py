"""Drift figures of a sharded index (issue 22 item 2): the coordinator measures
the rows it adds and commits their stats, so N shards report what the local
index reports for the same adds, and the store keeps them."""

import numpy as np
import pytest

import shardann
from shardann.distributed import ShardedIndex
from shardann.storage import IndexStore

pytestmark = pytest.mark.ray


def rotated(x, seed=0):
    d = x.shape[1]
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return (x @ q.astype(np.float32)).astype(np.float32)


@pytest.mark.parametrize("M", [8, None])
def test_sharded_drift_equals_local(ray_local, data, tmp_path, M):
    xb, _, xt = data
    path = tmp_path / "idx"
    with ShardedIndex.create(path, d=32, nlist=16, M=M, sample=xt, niter=6, pq_niter=6,
                             num_shards=2) as sharded:
        local = shardann.open_index(path)
        assert sharded.drift()["since_training"]["n"] == 0
        assert sharded.drift()["training"] == local.drift()["training"]
        for x in (xb[:2000], rotated(xb[2000:4000])):
            sharded.add(x)
            local.add(x)
        got, want = sharded.drift(), local.drift()
        assert got["since_training"]["n"] == 4000
        for kind in ("coarse", "pq") if M else ("coarse",):
            assert got["since_training"][kind]["mean"] == pytest.approx(
                want["since_training"][kind]["mean"], rel=1e-6)
            # the newest commit holds the rotated rows only
            assert got["latest"][kind]["ratio"] > got["since_training"][kind]["ratio"]
        assert ("pq" in got["since_training"]) == bool(M)
        assert got["lists"] == want["lists"]
        assert got["latest"]["version"] == 3 and got["latest"]["n"] == 2000
        assert got["retrain_recommended"] == want["retrain_recommended"] is True
        # what shardann info reads: the store's newest manifest
        stored = IndexStore.open(path).drift()
        assert stored["since_training"] == got["since_training"]
        assert sharded.stats()["ntotal"] == 4000
