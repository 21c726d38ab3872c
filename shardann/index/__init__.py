"""Single-process indexes (no Ray)."""

from .base import BaseIndex
from .flat import FlatIndex, brute_force_knn
from .ivf import IVFFlatIndex, IVFIndex, IVFPQIndex
from .serialize import index_from_state, load_index, open_index

__all__ = ["BaseIndex", "FlatIndex", "IVFFlatIndex", "IVFIndex", "IVFPQIndex",
           "brute_force_knn", "index_from_state", "load_index", "open_index"]
