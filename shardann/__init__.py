"""shardann: a sharded IVF-PQ approximate-nearest-neighbour index.

The core (this package's top level) runs in one Python process with no Ray;
``shardann.distributed`` and ``shardann.service`` add Ray.
"""

from .errors import (
    CommitConflictError,
    CorruptIndexError,
    DeploymentError,
    DuplicateIdError,
    FutureFormatError,
    IngestJobBusyError,
    InputError,
    NotTrainedError,
    ShardannError,
    ShardUnavailableError,
    StaleShardError,
)
from .index import FlatIndex, IVFFlatIndex, IVFPQIndex, brute_force_knn, open_index
from .kmeans import KMeans
from .pca import PCA
from .pq import OPQ, ProductQuantizer
from .results import merge_results

__version__ = "0.1.0"


def __getattr__(name):
    # the HTTP client lives with the service; importing it lazily keeps
    # ``import shardann`` free of Ray and FastAPI
    if name == "Client":
        from .service.client import Client
        return Client
    raise AttributeError(f"module 'shardann' has no attribute {name!r}")

__all__ = [
    "brute_force_knn",
    "Client",
    "CommitConflictError",
    "CorruptIndexError",
    "DeploymentError",
    "DuplicateIdError",
    "FlatIndex",
    "FutureFormatError",
    "IngestJobBusyError",
    "InputError",
    "IVFFlatIndex",
    "IVFPQIndex",
    "KMeans",
    "merge_results",
    "NotTrainedError",
    "open_index",
    "OPQ",
    "PCA",
    "ProductQuantizer",
    "ShardannError",
    "ShardUnavailableError",
    "StaleShardError",
]
