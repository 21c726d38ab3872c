"""Metrics: ``l2`` (squared distance, smaller is better), ``ip`` and ``cosine``
(similarity, larger is better; cosine normalises vectors and then uses ip).

Kernels minimise a *key*: the squared distance for l2, the negated similarity
otherwise. :func:`keys_to_distances` converts at the public boundary.
"""

import numpy as np

from ._kernels.transform import normalize_rows as _normalize

METRICS = ("l2", "ip", "cosine")


def check_metric(metric):
    """Return the canonical metric name or raise ``ValueError``/``TypeError``."""
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a str, one of {METRICS}; got {type(metric).__name__}")
    m = metric.lower()
    if m in ("inner_product", "dot"):
        m = "ip"
    if m not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    return m


def uses_ip(metric):
    """True when the metric ranks by inner product (``ip`` or ``cosine``)."""
    return metric != "l2"


def larger_is_better(metric):
    return metric != "l2"


def pad_distance(metric):
    """The distance that pads a result row with fewer than k hits."""
    return np.float32(-np.inf) if larger_is_better(metric) else np.float32(np.inf)


def keys_to_distances(keys, metric):
    """Convert minimised kernel keys (float32) into public distances in place."""
    if larger_is_better(metric):
        np.negative(keys, out=keys)
    return keys


def distances_to_keys(distances, metric):
    """The inverse of :func:`keys_to_distances` (returns a new array)."""
    d = np.asarray(distances, dtype=np.float32)
    return -d if larger_is_better(metric) else d.copy()


def normalize_rows(x):
    """L2-normalise the rows of C-contiguous float32 (n, d) ``x`` in place and
    return it; zero rows stay zero. Each row's result is the same in any batch
    (see :mod:`shardann._kernels.transform`)."""
    _normalize(x)
    return x
