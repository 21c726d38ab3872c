"""Shard health from live replicas (``placement.health_status``), as the coordinator
and the service's backends report it; no Ray needed."""

import pytest

from shardann.distributed.placement import health_status


@pytest.mark.parametrize("alive,replicas,status", [
    ([2, 2, 2], 2, "ok"), ([1], 1, "ok"), ([], 1, "ok"),
    ([2, 1, 2], 2, "degraded"),
    ([2, 0, 2], 2, "unavailable"), ([0], 1, "unavailable"),
])
def test_health_status(alive, replicas, status):
    assert health_status(alive, replicas) == status
