"""Ray-distributed shardann: coordinator, shard actors, list placement, ingest.

Names are loaded on first use, so ``shardann ingest --help`` and the CLI
parser can import the argument definitions without starting Ray's import.
"""

import importlib
import types

# ``shardann.distributed.ingest(...)`` is the documented call, and
# ``shardann.distributed.ingest`` is also the module that defines it. Binding
# the function over the module name would break ``import ...ingest as mod``,
# so the module itself is made callable (it imports Ray only when a job runs).
from . import ingest
from .ingest import IngestSummary as IngestSummary


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return self.ingest(*args, **kwargs)


ingest.__class__ = _CallableModule

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
