"""Adaptive probing: which of a query's ``nprobe`` closest lists are worth scanning.

FastIVF's ``ratio_threshold`` rule: a list is scanned only when it is nearly
as close to the query as the closest list, so a query deep inside one cell
scans few lists and a query on a boundary scans up to ``nprobe``.
"""

import numpy as np


def prune_probes(dis0, probes, ratio):
    """Skip the probed lists that are much farther than the closest one.

    The coarse keys are smaller-is-better but signed by metric, so the ratio is
    taken on the quantity that is positive: with a best key >= 0 (squared L2,
    or an inner product <= 0) a list is kept when ``ratio * key <= best``
    (closeness ``1 / key`` at least ``ratio`` times the best); with a best key
    < 0 (an inner product / cosine similarity ``s`` > 0, the usual case) when
    ``s >= ratio * s_best``. The closest list is always kept; an l2 query lying
    exactly on a centroid keeps only the lists at distance 0.

    Parameters
    ----------
    dis0 : float32 (nq, nprobe), coarse keys closest first (``IVFIndex.probe``).
    probes : int64 (nq, nprobe), the lists.
    ratio : float in (0, 1]; 1 keeps only the lists tied with the closest one.

    Returns
    -------
    dis0, probes : float32 / int64 (nq, w), C-contiguous, ``w`` <= nprobe the
        most lists any query keeps; skipped lists are -1 (the scans skip them).
    """
    best = dis0[:, :1]
    keep = np.where(best >= 0, ratio * dis0 <= best, dis0 <= ratio * best)
    # keys ascend along a row and the test is monotone in the key: keep is a prefix
    width = max(1, int(keep.sum(axis=1).max(initial=1)))
    probes = np.where(keep, probes, -1)[:, :width]
    return np.ascontiguousarray(dis0[:, :width]), np.ascontiguousarray(probes)
