"""Recall estimates of a ShardedIndex: the same code path as the local index, the
calibration set kept by the coordinator's writes, never read by the shards."""

import os

import numpy as np
import pytest

import shardann
from shardann.distributed import ShardedIndex
from shardann.errors import CorruptIndexError
from shardann.index import brute_force_knn
from shardann.storage import IndexStore

pytestmark = pytest.mark.ray


def test_sharded_estimate_equals_local_and_shards_never_read_it(tmp_path, ray_local, data):
    xb, _, xt = data
    path = str(tmp_path / "idx")
    local = shardann.IVFPQIndex(32, 32, 8, seed=0, niter=8, pq_niter=8, calibration=200)
    local.train(xt)
    local.add(xb[:4000])
    local.add(xb[4000:])
    local.remove_ids(np.arange(0, 6000, 9))
    local.save(path)
    want = local.estimate_recall(10, 4)
    # damage the calibration file: opening the index and loading the shards must not
    # notice (they never read it); the estimate names it
    rel = IndexStore.open(path).calibration_file["path"]
    full = os.path.join(path, rel)
    good = open(full, "rb").read()
    with open(full, "r+b") as f:
        f.seek(len(good) // 2)
        f.write(b"\0" * 64)
    with ShardedIndex.open(path, num_shards=2) as sharded:
        sharded.search(xb[:5], 10, nprobe=4)
        with pytest.raises(CorruptIndexError, match="calibration file"):
            sharded.estimate_recall(10, 4)
        with open(full, "wb") as f:
            f.write(good)
        got = sharded.estimate_recall(10, 4)
    assert (got.recall, got.lower, got.upper, got.n_queries) == (
        want.recall, want.lower, want.upper, want.n_queries)


def test_coordinator_writes_keep_the_set(tmp_path, ray_local, data):
    xb, _, xt = data
    path = str(tmp_path / "idx")
    with ShardedIndex.create(path, d=32, nlist=16, M=8, sample=xt, niter=5, pq_niter=5,
                             calibration=150, num_shards=2) as sharded:
        with pytest.raises(ValueError, match="no calibration set"):
            sharded.estimate_recall()
        sharded.add(xb[:100])
        sharded.add(xb[100:3000])
        sharded.remove_ids(np.arange(0, 3000, 4))
        sharded.add(xb[3000:])
        est = sharded.estimate_recall(10, 16)  # every list: PQ alone limits recall
        assert est.n_queries == 150
        cal = sharded._cal
    # what the store holds is what the coordinator held, and it is exact
    local = shardann.open_index(path)
    again = local.estimate_recall(10, 16)
    assert (again.recall, again.lower, again.upper) == (est.recall, est.lower, est.upper)
    live = np.setdiff1d(np.arange(6000), np.arange(0, 3000, 4))
    _, I = brute_force_knn(cal.vectors, xb[live], cal.k_max + 1, ids=live)
    for row, own, got in zip(I, cal.ids, cal.truth_ids, strict=True):
        exact = [i for i in row if i != own]
        kept = [i for i in got if i >= 0]
        assert len(kept) >= 75 and kept == exact[:len(kept)]
