"""Placing inverted lists on shards, and the health of the placed shards."""

import heapq

import numpy as np


def place_lists(list_sizes, num_shards):
    """Assign each list to a shard so shard row counts are balanced.

    Greedy longest-processing-time bin packing: lists in decreasing size
    (ties by list number) each go to the currently smallest shard (ties by
    shard number). Deterministic for given sizes.

    Parameters
    ----------
    list_sizes : int64 (nlist,) rows per list.
    num_shards : int >= 1.

    Returns
    -------
    int64 (nlist,) shard number of every list.
    """
    sizes = np.asarray(list_sizes, dtype=np.int64)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1; got {num_shards}")
    owner = np.empty(sizes.shape[0], np.int64)
    # (rows, lists, shard): among equally loaded shards the one with fewer
    # lists wins, so empty lists spread out too
    heap = [(0, 0, s) for s in range(num_shards)]
    for lst in np.lexsort((np.arange(sizes.shape[0]), -sizes)).tolist():
        rows, nlists, s = heapq.heappop(heap)
        owner[lst] = s
        heapq.heappush(heap, (rows + int(sizes[lst]), nlists + 1, s))
    return owner


def place_list_ranges(list_sizes, num_shards):
    """Assign each shard one contiguous range of lists, balanced by rows.

    For stores on object storage: segments are sorted by list and cut into
    row groups at list boundaries, so a shard owning a run of consecutive lists
    reads only the row groups of that run (plus at most one shared at each end),
    where the scattered lists of :func:`place_lists` would touch every row group.
    List ``i`` goes to the shard whose share of the rows holds the middle of the
    list: ``floor((rows before i + size_i / 2) * num_shards / total)``. Shard
    loads then differ from an even split by at most one list each.
    Deterministic; same parameters and return as :func:`place_lists`.
    """
    sizes = np.asarray(list_sizes, dtype=np.int64)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1; got {num_shards}")
    total = int(sizes.sum())
    if total == 0:  # nothing to balance: even runs of lists
        return np.arange(sizes.shape[0], dtype=np.int64) * num_shards // max(sizes.shape[0], 1)
    middle = 2 * np.cumsum(sizes) - sizes  # twice the row at each list's middle
    return np.minimum(middle * num_shards // (2 * total), num_shards - 1).astype(np.int64)


def shard_loads(owner, list_sizes, num_shards):
    """Rows held by each shard, int64 (num_shards,)."""
    return np.bincount(owner, weights=list_sizes, minlength=num_shards).astype(np.int64)


def health_status(alive, replicas):
    """The health of a sharded index from the live replicas of each shard.

    Parameters
    ----------
    alive : sequence of int, live replicas of each shard.
    replicas : int, the replicas each shard has when all are up.

    Returns
    -------
    ``"ok"`` when every replica is alive, ``"degraded"`` when every shard still
    has a live replica, ``"unavailable"`` when some shard has none.
    """
    alive = [int(a) for a in alive]
    if all(a >= replicas for a in alive):
        return "ok"
    if all(a > 0 for a in alive):
        return "degraded"
    return "unavailable"
