"""A sharded index on an S3 store (a real moto server on 127.0.0.1): each shard
actor reads only its own row groups, with ranged reads; writes through the
coordinator commit to the S3 store."""

import os
import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from dist_support import assert_same, build_local  # noqa: E402

import shardann  # noqa: E402
from shardann.distributed import ShardedIndex, place_list_ranges, place_lists  # noqa: E402
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
            assert s["load_bytes_read"] < codebook_bytes + 0.5 * segment_bytes, read
        model_bytes = SHARDS * codebook_bytes
        assert sum(read) - model_bytes < 1.2 * segment_bytes, read
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


def test_list_ranges_are_contiguous_and_balanced():
    rng = np.random.default_rng(1)
    sizes = rng.integers(0, 500, 1024)
    for shards in (1, 3, 7):
        owner = place_list_ranges(sizes, shards)
        assert (np.diff(owner) >= 0).all() and set(owner.tolist()) == set(range(shards))
        loads = np.bincount(owner, weights=sizes, minlength=shards)
        # at most one list away from an even split, like the greedy placement
        greedy = np.bincount(place_lists(sizes, shards), weights=sizes, minlength=shards)
        assert np.abs(loads - sizes.sum() / shards).max() <= sizes.max()
        assert loads.max() - loads.min() <= max(2 * sizes.max(), greedy.max() - greedy.min())
        np.testing.assert_array_equal(owner, place_list_ranges(sizes, shards))
    assert place_list_ranges(np.zeros(6, np.int64), 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert (np.diff(place_list_ranges([0, 0, 9, 0], 8)) >= 0).all()


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


@pytest.mark.slow
def test_ingest_from_s3_into_s3_then_shards_over_three_nodes(tmp_path, data, s3_env,
                                                             monkeypatch):
    """The issue's whole path on three nodes: Parquet on S3 ingested into an S3 store
    (the default work directory: the tasks run on the driver's node), then a sharded
    index on that store answering exactly as the same ingest into a local directory;
    add + remove through the coordinator, reopened, same results."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.cluster_utils import Cluster

    from shardann.distributed import ingest
    from shardann.distributed._ingest_job import IngestJob

    xb, xq, _ = data
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default work dir
    files = tmp_path / "emb"
    files.mkdir()
    bucket = s3_env.new_bucket()
    for i, part in enumerate(np.array_split(xb, 3)):
        name = f"part-{i}.parquet"
        column = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), xb.shape[1])
        pq.write_table(pa.table({"embedding": column}), files / name, row_group_size=700)
        s3_env.upload(str(files / name), bucket, f"emb/{name}")
    opts = {"nlist": 32, "M": 8, "niter": 8, "pq_niter": 8, "progress": False,
            "block_rows": 1000, "merge_bytes": 32 << 10}
    uri = f"s3://{bucket}/idx"
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        c.add_node(num_cpus=1)
    try:
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        c.wait_for_nodes()
        job = IngestJob(uri, f"s3://{bucket}/emb/*.parquet",
                        work_dir=None, **opts)._job
        node = job.run_state.node()
        assert node == (ray.get_runtime_context().get_node_id(), 1.0)
        assert job.run_state.workers() == 1
        s = ingest(uri, f"s3://{bucket}/emb/*.parquet", **opts)
        assert (s.version, s.vectors) == (1, xb.shape[0])
        assert os.listdir(tmp_path / "cache" / "shardann" / "ingest")  # the scratch was here
        ref = str(tmp_path / "ref")
        ingest(ref, str(files), work_dir=str(tmp_path / "w"), **opts)
        local = shardann.open_index(ref)
        with ShardedIndex.open(uri, num_shards=SHARDS, timeout_s=60) as sharded:
            assert len({sh["node_id"] for sh in sharded.stats()["shards"]}) >= 2
            assert_same(sharded.search(xq, 10, nprobe=6), local.search(xq, 10, nprobe=6))
            new = np.random.default_rng(5).standard_normal((50, xb.shape[1])).astype(np.float32)
            sharded.add(new, np.arange(100_000, 100_050))
            sharded.remove_ids(np.arange(0, 300, 3))
            after = sharded.search(xq, 10, nprobe=6)
        local.add(new, np.arange(100_000, 100_050))
        local.remove_ids(np.arange(0, 300, 3))
        assert_same(after, local.search(xq, 10, nprobe=6))
        with ShardedIndex.open(uri, num_shards=SHARDS, timeout_s=60) as reopened:
            assert_same(reopened.search(xq, 10, nprobe=6), after)
    finally:
        ray.shutdown()
        c.shutdown()
