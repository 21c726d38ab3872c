"""Adaptive probing through the coordinator: the coarse probe (and its
pruning) happens there, so 1 and 3 shards answer exactly as the local index;
``probe_gap`` is refused."""

import numpy as np
import pytest
from dist_support import assert_same, build_local

from shardann.distributed import ShardedIndex

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("metric,shards", [("l2", 3), ("cosine", 2)])
def test_sharded_probe_ratio_equals_local(ray_local, data, tmp_path, metric, shards):
    xb, xq, xt = data
    local = build_local(tmp_path / "idx", xt, xb, metric, keep_vectors=True)
    settings = [(None, 0), (0.5, 0), (0.8, 3), (1.0, 0)]
    expected = {s: local.search(xq, 10, nprobe=8, probe_ratio=s[0], refine_factor=s[1])
                for s in settings}
    assert not np.array_equal(expected[None, 0][1], expected[0.5, 0][1])  # it prunes
    with ShardedIndex.open(tmp_path / "idx", num_shards=shards) as sharded:
        for (ratio, rf), want in expected.items():
            assert_same(sharded.search(xq, 10, nprobe=8, probe_ratio=ratio,
                                       refine_factor=rf), want)
        with pytest.raises(ValueError, match="probe_ratio"):
            sharded.search(xq, 10, probe_ratio=0)
        with pytest.raises(ValueError, match="probe_ratio"):
            sharded.search(xq, 10, probe_ratio=2.0)
        # probe_gap's exit needs the running k-th distance across shards: refused
        with pytest.raises(ValueError, match="probe_gap is not available on a sharded"):
            sharded.search(xq, 10, nprobe=8, probe_gap=0.5)
