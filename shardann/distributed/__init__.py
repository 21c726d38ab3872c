"""Ray-distributed shardann: coordinator, shard actors, list placement, ingest.

Names are loaded on first use, so ``shardann ingest --help`` and the CLI
parser can import the argument definitions without starting Ray's import.
"""

import importlib

# the function shadows its module's name in this package, so bind it eagerly
# (ingest.py itself imports Ray only when a job runs)
from .ingest import IngestSummary as IngestSummary
from .ingest import ingest as ingest

_EXPORTS = {
    "NAMESPACE": ".coordinator", "SearchResult": ".coordinator", "ShardedIndex": ".coordinator",
    "ShardWorker": ".shard", "place_lists": ".placement",
}

__all__ = sorted([*_EXPORTS, "IngestSummary", "ingest"])


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'shardann.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
