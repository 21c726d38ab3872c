"""What the coordinator does with attributes: the hits' rows gathered from the
shards owning them, in hit order."""

import numpy as np
import pyarrow as pa


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
