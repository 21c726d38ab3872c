"""An IVF index's drift bookkeeping (see :mod:`shardann.drift`): the
quantization errors of encoded rows and the running stats the index keeps.

The bookkeeping is a plain dict (it travels in ``IndexState.drift`` and
pickles with the index): ``"baseline"``, ``"since_training"``, ``"pending"``
(rows added since the store version the index came from / was saved as) and
``"latest"`` (the newest commit that added rows).
"""

import copy

import numba
import numpy as np

from .._kernels.distances import residual_norms_parallel, residual_norms_serial
from .._kernels.pq import residual_errors_parallel, residual_errors_serial
from ..drift import empty_stats, merge_stats

#: most training rows the baseline is measured on (a seeded sample above it)
BASELINE_ROWS = 65536
#: fewer rows than this are measured on one thread
_PARALLEL_ROWS = 4096


def quantization_errors(xr, centroids, labels, pq=None, codes=None):
    """Squared L2 quantization errors of encoded rows.

    Parameters
    ----------
    xr : float32 (n, d'), the rows in the centroids' space.
    centroids : float32 (nlist, d'). labels : int64 (n,), each row's list.
    pq : the index's ProductQuantizer, with ``codes`` uint8 (n, code_size)
        the rows' packed codes of their residuals; None for IVF-Flat.

    Returns ``{"coarse": float32 (n,)[, "pq": float32 (n,)]}``: ``|x - c|^2``
    to the row's centroid, and ``|(x - c) - decode(code)|^2``.
    """
    n = xr.shape[0]
    par = n >= _PARALLEL_ROWS and numba.get_num_threads() > 1
    xr, labels = np.ascontiguousarray(xr), np.ascontiguousarray(labels, np.int64)
    coarse = np.empty(n, np.float32)
    if pq is None:
        (residual_norms_parallel if par else residual_norms_serial)(
            xr, centroids, labels, coarse)
        return {"coarse": coarse}
    out_pq = np.empty(n, np.float32)
    (residual_errors_parallel if par else residual_errors_serial)(
        xr, centroids, labels, np.ascontiguousarray(codes), pq.codebooks, pq.nbits,
        coarse, out_pq)
    return {"coarse": coarse, "pq": out_pq}


def new_log(baseline):
    """The bookkeeping of a freshly trained index."""
    empty = empty_stats(baseline)
    return {"baseline": baseline, "since_training": empty, "pending": copy.deepcopy(empty),
            "latest": None}


def from_state(drift):
    """The bookkeeping from an ``IndexState.drift`` (None stays None)."""
    if not drift or not drift.get("baseline"):
        return None
    base = drift["baseline"]
    return {"baseline": base,
            "since_training": drift.get("since_training") or empty_stats(base),
            "pending": drift.get("pending") or empty_stats(base),
            "latest": drift.get("latest")}


def record(log, stats):
    """Count ``stats`` of rows just added."""
    log["since_training"] = merge_stats(log["since_training"], stats)
    log["pending"] = merge_stats(log["pending"], stats)


def adopt(log, section):
    """After a commit (or a load) of the index: take the store's figures
    (its manifest's ``drift`` ``section``) when they are of the same baseline;
    nothing is pending any more."""
    if log is None:
        return
    if section and section.get("baseline") == log["baseline"]:
        log["since_training"] = section["since_training"]
        log["latest"] = section.get("latest")
    log["pending"] = empty_stats(log["baseline"])


def section(log):
    """The bookkeeping as a manifest-like section for
    :func:`shardann.drift.drift_report`: the pending rows are the latest."""
    latest = log["latest"]
    if log["pending"]["n"]:
        latest = {"version": None, **log["pending"]}
    return {"baseline": log["baseline"], "since_training": log["since_training"],
            "latest": latest}
