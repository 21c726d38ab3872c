"""The one top-k merge: combine partial ``(D, I)`` results, best first; and recall@k.

Results are ``(D, I)``: float32 distances and int64 ids of shape ``(nq, k)``,
best first, padded with ``+inf`` (l2) or ``-inf`` (ip/cosine) and id ``-1``.
Ties break by the smaller id, so merging is deterministic and merging the
per-shard top-k gives exactly the top-k over all shards.
"""

import numpy as np

from ._validation import check_int
from .metric import check_metric, distances_to_keys, pad_distance

_ID_LAST = np.iinfo(np.int64).max


def empty_results(nq, k, metric):
    """Padded ``(D, I)`` of shape (nq, k) with no hits."""
    metric = check_metric(metric)
    D = np.full((nq, k), pad_distance(metric), dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    return D, I


def merge_results(parts, k, metric, *, return_source=False):
    """Merge partial results into the global top-k.

    Parameters
    ----------
    parts : iterable of (D, I), each float32/int64 of shape (nq, k_i); every
        part is itself a valid result (sorted or not) for the same queries.
    k : int, hits per query in the output.
    metric : "l2", "ip" or "cosine" — decides whether smaller or larger D wins.

    return_source : also return int64 (nq, k) positions of the chosen
        entries among the concatenated columns of ``parts`` (so a caller can
        carry extra per-hit data through the merge).

    Returns
    -------
    D : float32 (nq, k), I : int64 (nq, k)[, source int64 (nq, k)].
    """
    metric = check_metric(metric)
    k = check_int("k", k, low=1)
    parts = list(parts)
    if not parts:
        raise ValueError("merge_results needs at least one part")
    D = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts], axis=1)
    I = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    nq, n = D.shape
    if n < k:
        Dp, Ip = empty_results(nq, k - n, metric)
        D = np.concatenate([D, Dp], axis=1)
        I = np.concatenate([I, Ip], axis=1)
    keys = distances_to_keys(D, metric)
    pad = I < 0
    keys[pad] = np.inf  # a padding slot never outranks a hit
    order = np.lexsort((np.where(pad, _ID_LAST, I), keys), axis=1)[:, :k]
    D = np.take_along_axis(D, order, axis=1)
    I = np.take_along_axis(I, order, axis=1)
    D[I < 0] = pad_distance(metric)
    D, I = np.ascontiguousarray(D), np.ascontiguousarray(I)
    if return_source:
        return D, I, np.where(order < n, order, -1)
    return D, I


def recall_at_k(I, gt, k=None):
    """Recall@k: the fraction of the true top-``k`` ids found among the returned top-``k``.

    Parameters
    ----------
    I : int64 (nq, k_I) returned ids, best first, ``-1`` padding (a result's ``I``).
    gt : int64 (nq, k_gt) exact top ids of the same queries (ground truth), ``-1``
        padding where fewer than ``k_gt`` neighbours exist.
    k : int, default ``gt.shape[1]``; the first ``k`` columns of ``I`` and ``gt``
        are compared (columns missing from either count as padding).

    Returns
    -------
    float in [0, 1]: hits over true neighbours (the non-padding entries of
    ``gt[:, :k]``), over all queries; NaN when ``gt`` holds none. Padding in
    ``I`` never counts and order within the top-``k`` does not matter.

    Examples
    --------
    >>> recall_at_k(np.array([[3, 1, -1]]), np.array([[1, 2, 3]]))
    0.6666666666666666
    """
    I, gt = np.asarray(I), np.asarray(gt)
    if I.ndim != 2 or gt.ndim != 2 or I.shape[0] != gt.shape[0]:
        raise ValueError(f"I and gt must be (nq, k) arrays of the same queries; got shapes "
                         f"{I.shape} and {gt.shape}")
    if k is None:
        k = gt.shape[1]
    k = check_int("k", k, low=1)
    I, gt = I[:, :k], gt[:, :k]
    valid = gt >= 0
    total = int(valid.sum())
    if total == 0:
        return float("nan")
    hits = 0
    step = max(1, (1 << 22) // max(1, I.shape[1] * k))  # bounds the (rows, k_I, k) compare
    for s in range(0, gt.shape[0], step):
        found = (I[s:s + step, :, None] == gt[s:s + step, None, :]).any(axis=1)
        hits += int((found & valid[s:s + step]).sum())
    return hits / total
