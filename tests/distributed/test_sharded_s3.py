"""A sharded index on an S3 store (a real moto server on 127.0.0.1): each shard
actor reads only its own row groups, with ranged reads; writes through the
coordinator commit to the S3 store."""

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from dist_support import assert_same, build_local  # noqa: E402

import shardann  # noqa: E402
from shardann.distributed import ShardedIndex  # noqa: E402
from shardann.storage import IndexStore  # noqa: E402

pytestmark = pytest.mark.ray
SHARDS = 3


def _check_sharded_on_s3(tmp_path, data, moto_s3, uri):
    """Build locally, copy to ``uri``, drop the local copy; the sharded index on
    ``uri`` must answer exactly as the local index, before and after an add and a
    remove through the coordinator, and after reopening."""
    xb, xq, xt = data
    opts = moto_s3.options
    local = build_local(tmp_path / "idx", xt, xb)
    # one list per row group, so that a shard's share is exactly its lists
    IndexStore.save(uri, local, row_group_rows=1, storage_options=opts)
    shutil.rmtree(tmp_path / "idx")  # no node can read a local copy of the store
    store = IndexStore.open(uri, storage_options=opts)
    segment_bytes = sum(s["size"] for s in store.manifest["files"]["segments"])
    codebook_bytes = store.codebooks_file["size"]
    rng = np.random.default_rng(5)
    new = rng.standard_normal((200, xb.shape[1])).astype(np.float32)
    new_ids = np.arange(100_000, 100_200)
    gone = np.arange(0, 600, 3)
    with ShardedIndex.open(uri, num_shards=SHARDS, storage_options=opts,
                           timeout_s=60) as sharded:
        assert_same(sharded.search(xq, 10, nprobe=6), local.search(xq, 10, nprobe=6))
        shards = sharded.stats()["shards"]
        read = [s["load_bytes_read"] for s in shards]
        # each shard read its share of the segments plus the model (and the manifest
        # and segment footer), not the whole store
        for s in shards:
            assert s["load_bytes_read"] < codebook_bytes + 0.6 * segment_bytes, read
        model_bytes = SHARDS * codebook_bytes
        assert sum(read) - model_bytes < 1.3 * segment_bytes, read
        sharded.add(new, new_ids)
        sharded.remove_ids(gone)
        version = sharded.version
        after = sharded.search(xq, 10, nprobe=6)
    local.add(new, new_ids)
    local.remove_ids(gone)
    assert_same(after, local.search(xq, 10, nprobe=6))
    assert IndexStore.open(uri, storage_options=opts).version == version == 3
    with ShardedIndex.open(uri, num_shards=SHARDS, storage_options=opts,
                           timeout_s=60) as reopened:
        assert_same(reopened.search(xq, 10, nprobe=6), after)
    assert_same(shardann.open_index(uri, storage_options=opts).search(xq, 10, nprobe=6),
                after)
    return read, segment_bytes, codebook_bytes


def test_sharded_index_on_s3_equals_local(ray_local, tmp_path, data, moto_s3):
    _check_sharded_on_s3(tmp_path, data, moto_s3, f"s3://{moto_s3.new_bucket()}/sharded")


@pytest.mark.slow
def test_sharded_index_on_s3_over_three_nodes(tmp_path, data, moto_s3):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        c.add_node(num_cpus=1)
    try:
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        c.wait_for_nodes()
        _check_sharded_on_s3(tmp_path, data, moto_s3, f"s3://{moto_s3.new_bucket()}/nodes")
    finally:
        ray.shutdown()
        c.shutdown()
