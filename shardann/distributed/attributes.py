"""Attribute rows of a sharded search's hits: which columns, gathered from the
shards that own the hits into one table in hit order."""

import numpy as np
import pyarrow as pa


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
