"""What the coordinator does with attributes: which columns a search returns
and their rows gathered from the shards owning the hits, in hit order; and the
local index's selectivity rule applied to the whole index's passing counts."""

import numpy as np
import pyarrow as pa

from ..filters import expand_probes


def check_columns(columns, schema):
    """``columns`` as a list of names of ``schema`` (None stays None).

    Raises ``ValueError`` naming a column the index does not have (or saying it
    has none), ``TypeError`` for something other than a list of strings.
    """
    if columns is None:
        return None
    if isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not all(isinstance(c, str) for c in columns):
        raise TypeError(f"columns must be a list of column names; got {columns!r}")
    if not columns:
        raise ValueError("columns is empty; pass None to get no columns")
    have = [] if schema is None else list(schema.names)
    unknown = [c for c in columns if c not in have]
    if unknown:
        if not have:
            raise ValueError(f"columns {unknown} asked for, but the index has no attribute "
                             "columns (add vectors with attributes=... first)")
        raise ValueError(f"unknown attribute column {unknown[0]!r}; the index has {have}")
    return columns


def assemble_rows(n, columns, schema, pieces):
    """One ``pyarrow.Table`` of ``columns`` with ``n`` rows from per-shard pieces.

    ``pieces`` is a list of ``(rows, table)``: the int64 positions (in 0..n-1)
    a shard answered for, and its table with one row per position. Positions
    no piece covers (no hit) are all nulls. Column types are ``schema``'s.
    """
    fields = [schema.field(c) for c in columns]
    out_schema = pa.schema(fields)
    tables, where = [], np.full(n, -1, np.int64)
    offset = 0
    for rows, table in pieces:
        rows = np.asarray(rows, np.int64)
        if table.num_rows != rows.size:
            raise RuntimeError(f"a shard returned {table.num_rows} attribute rows for "
                               f"{rows.size} hits")
        tables.append(table.select(columns).cast(out_schema))
        where[rows] = offset + np.arange(rows.size)
        offset += rows.size
    if not tables:
        return out_schema.empty_table().take(pa.array(np.zeros(n, np.int64),
                                                      mask=np.ones(n, bool)))
    merged = pa.concat_tables(tables)
    # a null index takes an all-null row
    return merged.take(pa.array(where, mask=where < 0))


def filtered_probes(model, q, dis0, probes, counts, sizes):
    """The local index's selectivity rule (README, "Filters") over the whole
    sharded index: each query probes further down its coarse ranking until the
    rows passing the filter in its lists reach the rows its ``nprobe`` lists
    hold.

    Parameters
    ----------
    model : the coordinator's IVF index (centroids; its ``probe``).
    q : float32 (nq, d) prepared queries; dis0 float32 / probes int64
        (nq, nprobe) their coarse probes.
    counts, sizes : int64 (nlist,), rows passing the filter / live rows per
        list, summed over the shards.

    Returns ``(dis0, probes)``, as ``IVFIndex.search`` scans them.
    """
    valid = probes >= 0
    safe = np.where(valid, probes, 0)
    have = np.where(valid, counts[safe], 0).sum(axis=1)
    want = np.where(valid, sizes[safe], 0).sum(axis=1)
    total = int(counts.sum())
    if total == 0 or (have >= want).all() or probes.shape[1] >= model.nlist:
        return dis0, probes
    # as deep as the local index ranks: twice the lists the filter's average
    # density needs (IVFIndex._filter_probes)
    density = total / max(int(sizes.sum()), 1)
    depth = min(model.nlist, max(probes.shape[1] + 1,
                                 int(np.ceil(2 * probes.shape[1] / density))))
    full_dis0, full_probes = model.probe(q, depth)
    return expand_probes(full_dis0, full_probes, counts, sizes, probes.shape[1])
