"""Attribute rows between JSON and Arrow, for the HTTP API and its client.

JSON carries attributes as one object per vector (``{"lang": "en", "year":
2023}``); timestamps and dates travel as ISO 8601 strings, non-finite floats
as null. The Arrow schema of returned columns travels IPC-serialized and
base64-encoded, so the client rebuilds exactly the index's types.
"""

import base64
import datetime
import math

import pyarrow as pa


def json_value(v):
    """A Python value of ``Table.to_pylist()`` as JSON can hold it."""
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, datetime.timedelta):
        return v.total_seconds()
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    if isinstance(v, dict):
        return {k: json_value(x) for k, x in v.items()}
    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(v).decode("ascii")
    return v


def table_to_rows(table):
    """``pyarrow.Table`` -> list of JSON-ready objects, one per row."""
    names = table.column_names
    cols = [[json_value(v) for v in table.column(c).to_pylist()] for c in names]
    return [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)] \
        if names else [{} for _ in range(table.num_rows)]


def hits_to_json(table, I):
    """The (nq, k) JSON objects of the hits' attributes: ``table`` has nq * k rows
    in row-major order; null where ``I`` is -1."""
    nq, k = I.shape
    rows = table_to_rows(table)
    flat = I.reshape(-1)
    return [[rows[i * k + j] if flat[i * k + j] >= 0 else None for j in range(k)]
            for i in range(nq)]


def encode_schema(schema):
    """``pyarrow.Schema`` -> base64 text of its IPC serialization."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_schema(text):
    """:func:`encode_schema`'s text -> ``pyarrow.Schema``."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _column(name, values, typ):
    """An Arrow array of JSON ``values``, cast to ``typ`` when given; ValueError
    naming the column when the values do not fit."""
    try:
        arr = pa.array(values)
        if typ is not None and arr.type != typ:
            if pa.types.is_null(arr.type):
                return pa.nulls(len(values), typ)
            arr = arr.cast(typ)
        return arr
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError,
            OverflowError) as exc:
        want = f" as {typ}" if typ is not None else ""
        raise ValueError(f"attribute column {name!r}: the values cannot be read{want} "
                         f"({exc})") from None


def rows_to_table(rows, schema=None, *, columns=None):
    """JSON attribute objects (one per vector) -> ``pyarrow.Table``.

    The columns are ``columns``, or else ``schema``'s (the index's) and the
    keys of the objects that are not in it; a key missing from an object (or
    an object that is null) is null. Values are cast to ``schema``'s types —
    ISO 8601 strings to timestamps, ints to floats. None when there are no
    columns. Raises ``ValueError`` naming a column whose values do not fit.
    """
    rows = [{} if row is None else row for row in rows]
    for row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"attributes must be objects (column -> value); got "
                             f"{type(row).__name__}")
    if columns is None:
        names = list(dict.fromkeys(key for row in rows for key in row))
        if schema is not None:
            names = list(schema.names) + [n for n in names if n not in schema.names]
    else:
        names = list(columns)
    if not names:
        return None
    arrays = []
    for name in names:
        typ = None
        if schema is not None and name in schema.names:
            typ = schema.field(name).type
        arrays.append(_column(name, [row.get(name) for row in rows], typ))
    return pa.table(arrays, names=names)


def rows_for_json(attributes):
    """Client side: attributes (Table, RecordBatch, dict of arrays) -> JSON objects."""
    table = attributes if isinstance(attributes, pa.Table) else pa.table(attributes)
    return table_to_rows(table)
