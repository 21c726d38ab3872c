"""Ray-distributed shardann: coordinator, shard actors, list placement, ingest.

Names are loaded on first use: ``import shardann.distributed`` is cheap, and
Ray is imported by the modules that need it (the coordinator and shard actors
at import, ingest only when a job runs).

``ShardedIndex``, ``SearchResult``, ``NAMESPACE``
    :mod:`shardann.distributed.coordinator` — the sharded index.
``ShardWorker``
    :mod:`shardann.distributed.shard` — what a shard actor runs.
``place_lists``, ``place_list_ranges``
    :mod:`shardann.distributed.placement` — lists onto shards by size (scattered,
    or as contiguous runs for stores on object storage).
``ingest``, ``IngestJob``, ``IngestSummary``, ``clean_ingest_jobs``
    large offline ingest on Ray Data (``shardann ingest``).
``read_sql_vectors``, ``write_codes``, ``sample_dataset``
    a SQL table as an ingest source (``ray.data.read_sql``), PQ codes written
    back to a table (``write_sql``), a uniform sample of a Dataset.
``InputError``, ``IngestJobBusyError``
    its errors (from :mod:`shardann.errors`).
"""

import importlib

_EXPORTS = {
    "NAMESPACE": ".coordinator", "SearchResult": ".coordinator", "ShardedIndex": ".coordinator",
    "ShardWorker": ".shard", "place_lists": ".placement",
    "place_list_ranges": ".placement",
    "ingest": "._ingest_job", "IngestJob": "._ingest_job", "IngestSummary": "._ingest_job",
    "clean_ingest_jobs": "._ingest_state", "sample_dataset": "._ingest_source",
    "read_sql_vectors": "._sql", "write_codes": "._sql",
    "InputError": "..errors", "IngestJobBusyError": "..errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'shardann.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
