"""Single-process indexes (no Ray)."""

from ._calibration import DEFAULT_SIZE as DEFAULT_CALIBRATION
from ._calibration import (
    CalibrationSet,
    RecallEstimate,
    calibration_source,
    estimate_recall,
    exact_neighbours,
    load_calibration,
    recall_interval,
)
from .base import BaseIndex
from .flat import FlatIndex, brute_force_knn
from .ivf import IVFFlatIndex, IVFIndex, IVFPQIndex
from .serialize import index_from_state, load_index, open_index

__all__ = ["DEFAULT_CALIBRATION", "BaseIndex", "CalibrationSet", "FlatIndex", "IVFFlatIndex",
           "IVFIndex", "IVFPQIndex", "RecallEstimate", "brute_force_knn", "calibration_source",
           "estimate_recall", "exact_neighbours", "load_calibration", "recall_interval",
           "index_from_state", "load_index", "open_index"]
