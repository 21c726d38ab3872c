"""A sharded index with ``pca``: shards project the queries themselves and
answer exactly as the local index, with and without refine on the originals."""

import numpy as np
import pytest
from dist_support import assert_same

import shardann
from shardann.distributed import ShardedIndex

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("metric,nbits,opq", [("l2", 4, False), ("cosine", 8, True)])
def test_pca_shards_equal_local(ray_local, data, tmp_path, metric, nbits, opq):
    xb, xq, xt = data
    index = shardann.IVFPQIndex(32, 32, 8, nbits, metric, pca=16, opq=opq, keep_vectors=True,
                                seed=0, niter=8, pq_niter=8).train(xt)
    index.add(xb)
    index.remove_ids(np.arange(0, 6000, 9))
    index.save(tmp_path / "idx")
    local = shardann.open_index(tmp_path / "idx")
    with ShardedIndex.open(tmp_path / "idx", num_shards=2) as sharded:
        for rf in (0, 3):
            assert_same(sharded.search(xq, 10, nprobe=6, refine_factor=rf),
                        local.search(xq, 10, nprobe=6, refine_factor=rf))
        assert_same(sharded.search(xq[:1], 10, nprobe=6, refine_factor=3),
                    local.search(xq[:1], 10, nprobe=6, refine_factor=3))
        new = sharded.add(xb[:50] + 0.01)  # encoded by the coordinator in the reduced space
        local.add(xb[:50] + 0.01, ids=new)
        assert_same(sharded.search(xq, 10, nprobe=6, refine_factor=3),
                    local.search(xq, 10, nprobe=6, refine_factor=3))


def test_pca_ivfflat_shards_equal_local(ray_local, data, tmp_path):
    xb, xq, xt = data
    index = shardann.IVFFlatIndex(32, 32, "ip", pca=12, seed=0, niter=8).train(xt)
    index.add(xb)
    index.save(tmp_path / "flat")
    with ShardedIndex.open(tmp_path / "flat", num_shards=2) as sharded:
        assert_same(sharded.search(xq, 10, nprobe=5), index.search(xq, 10, nprobe=5))
        with pytest.raises(ValueError, match="original vectors"):
            sharded.search(xq, 10, nprobe=5, refine_factor=2)
