"""Ray-distributed shardann: coordinator, shard actors, list placement.

Importing this package imports Ray; ``import shardann`` does not.
"""

from .coordinator import NAMESPACE, SearchResult, ShardedIndex
from .placement import place_lists
from .shard import ShardWorker

__all__ = ["NAMESPACE", "SearchResult", "ShardWorker", "ShardedIndex", "place_lists"]
