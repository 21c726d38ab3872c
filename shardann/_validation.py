"""Parameter and input validation, done once at the public boundary.

Messages say what was expected and what was given. ``TypeError`` for wrong
types, ``ValueError`` for wrong values; never ``assert`` on user input.
"""

import numbers

import numpy as np

from ._kernels.checks import finite_rows

MAX_ID = np.iinfo(np.int64).max - 1  # int64 max marks empty heap slots
#: the largest squared norm a vector may have: x.y and |x - y|^2 of two such
#: vectors still fit in float32 (max ~3.4e38); larger ones would rank by inf/NaN
MAX_SQUARED_NORM = 1e36
_HUGE = 1e15  # below this per-value magnitude no row can reach the norm limit cheaply


def check_int(name, value, *, low=None, high=None):
    """Return ``value`` as a Python int within ``[low, high]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} ({value!r})")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value}")
    return value


def check_bool(name, value):
    """Return ``value`` as a Python bool; refuse anything but bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} ({value!r})")
    return bool(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")
    return value


def as_vectors(x, d, name="x", *, allow_empty=True):
    """Validate a batch of vectors and return it as C-contiguous float32 (n, d).

    A 1-D array of length ``d`` is taken as one vector. Integer and float
    inputs are converted; bool, complex, object and string arrays are refused.
    NaN or infinite values raise ``ValueError`` naming the first bad row.
    """
    if x is None:
        raise TypeError(f"{name} must be an array of shape (n, {d}); got None")
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be an array of shape (n, {d}): {exc}") from None
    if x.dtype.kind not in "fiu":
        raise TypeError(
            f"{name} must hold real numbers (float32 preferred); got dtype {x.dtype}")
    if x.ndim == 1 and x.shape[0] == d and d > 0:
        x = x.reshape(1, d)
    elif x.ndim == 1 and x.shape[0] == 0:
        x = x.reshape(0, d)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, {d}); got shape {x.shape}")
    if x.shape[1] != d:
        raise ValueError(
            f"{name} has dimension {x.shape[1]} but the index expects d={d} "
            f"(got shape {x.shape})")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; need at least one vector of dimension {d}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype.kind == "f" and x.size:
        ok = np.empty(x.shape[0], bool)
        top = finite_rows(x, ok)
        if not ok.all():
            bad = int(np.argmin(ok))
            raise ValueError(
                f"{name} contains NaN or infinite values (first at row {bad}); "
                "all values must be finite")
        if top > _HUGE:
            # squared distances of such vectors overflow float32 to inf/NaN
            over = first_oversized_row(x)
            if over is not None:
                bad, sq = over
                raise ValueError(
                    f"{name} row {bad} has squared norm {sq:.3g}; values this large "
                    f"overflow float32 distances (limit {MAX_SQUARED_NORM:.0e})")
    return x


def first_oversized_row(x):
    """``(row, squared_norm)`` of the first row of the finite float32 (n, d) ``x``
    whose squared norm exceeds :data:`MAX_SQUARED_NORM`, or None."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    over = sq > MAX_SQUARED_NORM
    if not over.any():
        return None
    bad = int(np.argmax(over))
    return bad, float(sq[bad])


def as_ids(ids, n, name="ids"):
    """Validate user ids: int64 (n,), each in ``[0, 2**63 - 2]``, no repeats.

    Negative ids are refused because ``-1`` pads result rows, and int64 max
    because it marks empty slots inside the kernels.
    """
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers (int64); got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the vectors; got {arr.shape}")
    if arr.size and arr.max() > MAX_ID:
        raise ValueError(
            f"{name} must fit in int64 and be <= {MAX_ID} (2**63 - 2); got {arr.max()}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(
            f"{name} must be >= 0 (-1 marks missing results); got {int(arr.min())}")
    if arr.size > 1:
        s = np.sort(arr)
        rep = s[1:] == s[:-1]
        if rep.any():
            raise ValueError(f"{name} contains duplicates, e.g. {int(s[1:][rep][0])}")
    return arr


def as_id_array(ids, name="ids"):
    """Ids given to remove/reconstruct: any 1-D integer array (or scalar)."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers; got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    return arr.astype(np.int64)


def _optional_real(name, value, expect):
    """``value`` as a float, or None; TypeError naming ``expect`` for a bool or a
    non-number (the range is the caller's)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expect} or None; got "
                        f"{type(value).__name__} ({value!r})")
    return float(value)


def check_probe_ratio(value):
    """Return ``probe_ratio`` as a float in (0, 1], or None (adaptive probing off)."""
    value = _optional_real("probe_ratio", value, "a number in (0, 1]")
    if value is None:
        return None
    if not 0.0 < value <= 1.0:  # also refuses NaN
        raise ValueError(f"probe_ratio must be in (0, 1] (1 probes only the lists as close "
                         f"as the closest one); got {value!r}")
    return value


def check_search_args(k, nprobe=None, nlist=None, refine_factor=0):
    """Validate ``k``, ``nprobe`` (1..nlist) and ``refine_factor`` (0 or >= 1)."""
    k = check_int("k", k, low=1)
    if nprobe is not None:
        nprobe = check_int("nprobe", nprobe, low=1, high=nlist)
    refine_factor = check_int("refine_factor", refine_factor, low=0)
    return k, nprobe, refine_factor


def check_probe_gap(value):
    """Return ``probe_gap`` as a float > 0 (``inf`` allowed), or None (off)."""
    value = _optional_real("probe_gap", value, "a number > 0")
    if value is None:
        return None
    if not value > 0.0:  # also refuses NaN
        raise ValueError(f"probe_gap must be > 0 (larger scans more lists; inf scans all "
                         f"nprobe); got {value!r}")
    return value
