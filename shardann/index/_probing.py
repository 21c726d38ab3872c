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


def gap_bounds(dis0, gap, shift=0.0):
    """Per-list bounds of the k-th-distance gap rule, for the scan kernels'
    early exit (``bounds`` of :mod:`shardann._kernels.ivf`).

    A query visits its lists closest first and skips list ``j`` once
    ``d(q, c_j) - d(q, c_1) > gap * D_k``, ``D_k`` the squared L2 distance of
    the k-th best row found in the lists before ``j``: a list only a little
    farther than the closest one is scanned while the neighbours found are
    still far, and not once they are near. Squared L2 keys (l2) compare as
    they are; cosine keys ``-s`` of unit vectors and centroids are squared
    L2 ``2 + 2 * key``, so the same rule reads ``key_j - key_1 > gap * (1 +
    D_k)`` there (``shift`` 1). As a bound on the scan key:
    ``(key_j - key_1) / gap - shift``.

    Parameters
    ----------
    dis0 : float32 (nq, w), coarse keys closest first (``IVFIndex.probe``).
    gap : float > 0 (``inf``: no list is skipped).
    shift : 0.0 (l2) or 1.0 (cosine).

    Returns
    -------
    bounds : float32 (nq, w), C-contiguous; column 0 is ``-inf`` (the closest
        list is always scanned).
    """
    dis0 = np.asarray(dis0, np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf of a pruned list's pad: NaN never skips
        out = (dis0 - dis0[:, :1]) / np.float32(gap) - np.float32(shift)
    out[:, :1] = -np.inf
    return np.ascontiguousarray(out, np.float32)
