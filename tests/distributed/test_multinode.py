"""Shards spread over simulated nodes, and come back when a node goes away."""

import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from dist_support import assert_same, build_local  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from shardann.distributed import ShardedIndex  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def test_shards_spread_and_survive_node_loss(cluster, data, tmp_path):
    c, workers = cluster
    xb, xq, xt = data
    build_local(tmp_path / "idx", xt, xb)
    with ShardedIndex.open(tmp_path / "idx", num_shards=3, timeout_s=10) as sharded:
        baseline = sharded.search(xq, 10, nprobe=6)
        nodes = {s["node_id"] for s in sharded.stats()["shards"]}
        assert len(nodes) >= 2, nodes
        victim_node = workers[0]
        c.remove_node(victim_node)
        deadline = time.monotonic() + 120
        while True:
            try:
                got = sharded.search(xq, 10, nprobe=6, timeout_s=10)
                break
            except Exception:
                assert time.monotonic() < deadline, "shards did not come back"
                time.sleep(1)
        assert_same(got, baseline)
        live = {s.get("node_id") for s in sharded.stats()["shards"]}
        assert victim_node.node_id not in live
        assert np.isfinite(got[0]).all()
