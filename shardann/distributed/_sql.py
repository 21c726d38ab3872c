"""A SQL table as an ingest source, and PQ codes written back to a table.

The workflow of the usual "train a ProductQuantizer on a sample pulled from
the database, then compute codes for every row and write them back" scripts,
on Ray Data:

- :func:`read_sql_vectors` reads ``SELECT id, embedding FROM …`` with
  ``ray.data.read_sql`` in batches: with ``key=`` (an integer column, e.g. the
  primary key) as one read per key range of about ``rows_per_read`` rows, each
  ``ORDER BY key`` (so the Dataset's row order, the sample and default ids are
  the same on every run and equal to reading the same rows from a file);
  without, as one read of the whole query.
- :func:`shardann.distributed.ingest` takes that Dataset (or any
  ``ray.data.read_sql`` Dataset) and builds the index: it trains on a sample
  and encodes every row (the Dataset is executed once).
- :func:`write_codes` computes the codes of every row with a trained
  :class:`shardann.ProductQuantizer` or IVF-PQ index and writes them with
  ``Dataset.write_sql`` (batched ``executemany``).

Vector columns: ``real[]`` / ``double precision[]`` (a list of floats) or
``bytea`` of little-endian float32. ``connection`` is a libpq DSN (psycopg is
used) or any DB-API connection factory (a picklable zero-argument callable).
"""

import functools
import logging
import math
import re

import numpy as np
import pyarrow as pa

from .._validation import check_int
from ..errors import InputError
from ._ingest_read import vectors_from_arrow

logger = logging.getLogger(__name__)

__all__ = ["connection_factory", "read_sql_vectors", "write_codes"]

#: rows one read task holds at most (its block), by default
ROWS_PER_READ = 100_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _psycopg_connect(dsn):
    import psycopg

    return psycopg.connect(dsn)


def connection_factory(connection):
    """A picklable DB-API connection factory: ``connection`` is a libpq DSN
    string (``"host=… dbname=…"`` or ``"postgresql://…"``, opened with psycopg)
    or already a zero-argument callable (returned as is)."""
    if callable(connection):
        return connection
    if isinstance(connection, str):  # "" : libpq's PG* variables say everything
        return functools.partial(_psycopg_connect, connection)
    raise TypeError("connection must be a DSN string or a zero-argument DB-API connection "
                    f"factory; got {type(connection).__name__}")


def _key_bounds(sql, key, factory):
    conn = factory()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT MIN({key}), MAX({key}), COUNT(*) FROM ({sql}) AS shardann_q")
        lo, hi, n = cur.fetchone()
        conn.commit()
    finally:
        conn.close()
    return lo, hi, int(n)


def read_sql_vectors(sql, connection, *, key=None, rows_per_read=ROWS_PER_READ):
    """A ``ray.data.Dataset`` of the rows of ``sql``, read with ``ray.data.read_sql``.

    Parameters
    ----------
    sql : str, a query returning the vector column (``real[]`` or float32
        ``bytea``) and, usually, an integer id column.
    connection : libpq DSN (psycopg) or a DB-API connection factory.
    key : name of an integer column of the query (e.g. the primary key) to read
        by: the key's range ``[MIN, MAX]`` is cut into ``ceil(COUNT / rows_per_read)``
        equal ranges, each one ``read_sql`` task ``WHERE key >= lo AND key < hi
        ORDER BY key`` (an index on the key makes each a range scan), in key
        order. Memory per task is one range (skewed keys make uneven ranges).
        None: one task reads the whole result (small tables only).
    rows_per_read : about how many rows one task reads.

    Returns
    -------
    ray.data.Dataset with the query's columns, in key order (with ``key``).
    """
    import ray.data

    factory = connection_factory(connection)
    if key is None:
        return ray.data.read_sql(sql, factory)
    if not isinstance(key, str) or not _IDENT.match(key):
        raise ValueError(f"key must be a column name (letters, digits, _); got {key!r}")
    check_int("rows_per_read", rows_per_read, low=1)
    lo, hi, n = _key_bounds(sql, key, factory)
    if n == 0:
        raise InputError("the query returns no rows")
    if not all(isinstance(v, int) for v in (lo, hi)):
        raise InputError(f"key column {key!r} must be an integer column; its minimum is "
                         f"{lo!r}")
    parts = max(1, math.ceil(n / rows_per_read))
    step = max(1, math.ceil((hi - lo + 1) / parts))
    edges = list(range(lo, hi + 1, step)) + [hi + 1]
    logger.info("reading %d rows of the query in %d key ranges of %s", n, len(edges) - 1, key)
    sets = [ray.data.read_sql(f"SELECT * FROM ({sql}) AS shardann_q WHERE {key} >= {a} AND "
                              f"{key} < {b} ORDER BY {key}", factory,
                              override_num_blocks=1)
            for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return sets[0].union(*sets[1:]) if len(sets) > 1 else sets[0]


# -- codes back to the database ---------------------------------------------------------------
class _Coder:
    """``map_batches`` function: the vector column of a batch → its codes.

    ``model`` is a trained :class:`shardann.ProductQuantizer` (codes of the raw
    vectors, its ``compute_codes``) or a trained IVF-PQ index (each row's list
    and the codes of its residual, exactly what the index stores).
    """

    def __init__(self, model, column, id_column, fields, d):
        self.model, self.column, self.id_column = model, column, id_column
        self.fields, self.d = fields, d

    def __call__(self, batch):
        x = vectors_from_arrow(batch.column(self.column), self.d,
                               f"dataset column {self.column!r}")
        if hasattr(self.model, "compute_codes"):
            codes, lists = self.model.compute_codes(x), None
        else:
            lists, payload = self.model.encode(self.model.prepare(x))
            codes = payload["codes"]
        width = codes.shape[1]
        out = {"id": batch.column(self.id_column),
               "code": pa.FixedSizeBinaryArray.from_buffers(
                   pa.binary(width), len(codes), [None, pa.py_buffer(codes.tobytes())])
               .cast(pa.binary())}
        if lists is not None:
            out["list"] = pa.array(np.asarray(lists, np.int64))
        return pa.table({name: out[name] for name in self.fields})


def write_codes(dataset, model, sql, connection, *, column="embedding", id_column="id",
                fields=("id", "code"), batch_size=4096):
    """Compute the codes of every row of ``dataset`` and write them with ``write_sql``.

    Parameters
    ----------
    dataset : ray.data.Dataset with the vector column ``column`` and the id
        column ``id_column`` (e.g. :func:`read_sql_vectors`).
    model : a trained :class:`shardann.ProductQuantizer` (the codes of the raw
        vectors, uint8 ``code_size`` bytes) or a trained IVF-PQ index (the codes
        it stores: of the residual to the row's list centroid; ``"list"`` in
        ``fields`` writes the list too).
    sql : the statement run by ``executemany`` for each batch of rows, with one
        placeholder per field, e.g. ``"INSERT INTO codes (id, code) VALUES (%s, %s)"``
        or ``"UPDATE items SET pq_code = %s WHERE id = %s"`` with
        ``fields=("code", "id")``.
    connection : libpq DSN (psycopg) or a DB-API connection factory.
    fields : the order of the placeholders: ``"id"`` (int), ``"code"`` (bytes,
        ``bytea``) and, for an IVF-PQ index, ``"list"`` (int).
    batch_size : rows per ``map_batches`` batch (Ray Data writes them in
        ``executemany`` calls of up to 128 rows).
    """
    import ray

    fields = tuple(fields)
    allowed = {"id", "code"} | ({"list"} if not hasattr(model, "compute_codes") else set())
    if not fields or set(fields) - allowed:
        raise ValueError(f"fields must be names among {sorted(allowed)}; got {fields}")
    if not getattr(model, "is_trained", False):
        from ..errors import NotTrainedError

        raise NotTrainedError("write_codes needs a trained ProductQuantizer or IVF-PQ index")
    if not hasattr(model, "compute_codes") and "codes" not in getattr(model, "columns", {}):
        raise ValueError(f"write_codes needs a ProductQuantizer or an IVF-PQ index; got "
                         f"{type(model).__name__}")
    check_int("batch_size", batch_size, low=1)
    factory = connection_factory(connection)
    ref = ray.put(model)
    coded = dataset.map_batches(
        _code_batch, batch_size=batch_size, batch_format="pyarrow",
        fn_kwargs={"ref": [ref], "column": column, "id_column": id_column, "fields": fields,
                   "d": model.d})
    coded.write_sql(sql, factory)


def _code_batch(batch, ref, column, id_column, fields, d):
    import ray

    model = _MODELS.get(ref[0].hex())
    if model is None:
        _MODELS.clear()
        model = _MODELS[ref[0].hex()] = ray.get(ref[0])
    return _Coder(model, column, id_column, fields, d)(batch)


_MODELS = {}
