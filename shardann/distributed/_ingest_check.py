"""The recall **spot check** after an ingest commit: the held-out input rows
searched in the job's own segments, against their exact top-k among the
job's rows (found by the encode workers)."""

import numpy as np

from ..index import load_index
from ..results import merge_results, recall_at_k

#: a chunk of lists loaded at once holds about this many bytes
CHECK_BYTES = 256 << 20


def spot_check(store, ours, model, queries, gt_ids, k, nprobe):
    """recall@k of ``queries`` (raw float32 (nq, d)) searched with ``nprobe`` in
    the segments ``ours`` (manifest entries of ``store``'s version) against the
    exact top-k ids ``gt_ids`` int64 (nq, k); None when there is no true neighbour.

    The probed lists are loaded a chunk of about :data:`CHECK_BYTES` at a time.
    """
    view = store.segment_view(ours)
    q = model.prepare(queries)
    dis0, probes = model.probe(q, nprobe)
    lists = np.unique(probes)
    sizes = view.list_sizes()
    cols = view.columns
    row_bytes = 8 + sum(c["width"] * np.dtype(c["dtype"]).itemsize for c in cols.values())
    parts, chunk, acc = [], [], 0
    for li in lists.tolist() + [None]:
        if li is not None and (not chunk or acc + sizes[li] * row_bytes <= CHECK_BYTES):
            chunk.append(li)
            acc += sizes[li] * row_bytes
            continue
        sub = load_index(view, lists=np.array(chunk, np.int64))
        chosen = np.where(np.isin(probes, chunk), probes, -1)
        parts.append(sub.search_preassigned(q, dis0, chosen, k))
        del sub
        chunk, acc = ([li], sizes[li] * row_bytes) if li is not None else ([], 0)
    _, I = merge_results(parts, k, model.metric)
    return recall_at_k(I, gt_ids, k) if (gt_ids >= 0).any() else None
