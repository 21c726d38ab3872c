"""The one top-k merge: combine partial ``(D, I)`` results, best first.

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
