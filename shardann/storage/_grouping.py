"""Row-set helpers shared by the read view, transactions and maintenance."""

import numpy as np
import pyarrow as pa

from .._rows import scatter_rows


def as_ids(ids, name="ids"):
    """``ids`` as int64 (n,); a scalar becomes one id."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers (int64); got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def hits(sorted_dead, ids):
    """Boolean mask: which ``ids`` are in the sorted unique array ``sorted_dead``."""
    if sorted_dead.size == 0 or ids.size == 0:
        return np.zeros(ids.size, bool)
    at = np.searchsorted(sorted_dead, ids)
    np.minimum(at, sorted_dead.size - 1, out=at)
    return sorted_dead[at] == ids


def sorted_counts(list_ids, nlist):
    """Rows per list of list ids sorted ascending (segment order), int64 (nlist,)."""
    bounds = np.searchsorted(list_ids, np.arange(nlist + 1, dtype=list_ids.dtype))
    return np.diff(bounds).astype(np.int64)


def group_by_list(parts, nlist, names):
    """Merge row sets, each sorted by list, into one set grouped by list (list 0 first).

    ``parts`` are dicts of arrays with "list_id" and "id" (and "attributes", a
    pyarrow.Table, when ``names`` has it). Rows of one list keep the order of
    ``parts``. Returns (list_sizes int64 (nlist,), ids, {name: rows}); one part
    is returned as it is (no copy).
    """
    counts = [sorted_counts(p["list_id"], nlist) for p in parts]
    sizes = np.sum(counts, axis=0) if counts else np.zeros(nlist, np.int64)
    if len(parts) == 1:
        p = parts[0]
        return sizes, p["id"], {k: p[k] for k in names}
    n = int(sizes.sum())
    out_ids = np.empty(n, np.int64)
    tables = [k for k in names if isinstance(parts[0][k], pa.Table)]
    names = [k for k in names if k not in tables]
    out = {}
    for k in names:
        ref = parts[0][k]
        out[k] = np.empty((n,) + ref.shape[1:], ref.dtype)
    dests = []
    filled = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    for p, c in zip(parts, counts, strict=True):
        if p["id"].size == 0:
            continue
        lid = p["list_id"]
        run_start = np.cumsum(c) - c
        dest = filled[lid] + (np.arange(lid.size, dtype=np.int64) - run_start[lid])
        dests.append(dest)
        out_ids[dest] = p["id"]
        for k in names:
            scatter_rows(out[k], dest, p[k])
        filled += c
    if tables:
        # the rows' new places, inverted: which concatenated row goes where
        order = np.empty(n, np.int64)
        order[np.concatenate(dests) if dests else np.zeros(0, np.int64)] = np.arange(n)
        used = [p for p in parts if p["id"].size]
        for k in tables:
            both = pa.concat_tables([p[k] for p in used]) if used else parts[0][k]
            out[k] = both.take(pa.array(order))
    return sizes, out_ids, out
