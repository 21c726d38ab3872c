"""Ingest from a ``ray.data.Dataset``: stage it as local Parquet, then plan as files.

A Dataset (the output of an embedding ``map_batches``, ``ray.data.read_sql``,
``ray.data.read_parquet("s3://…")``) is executed once, in order
(``preserve_order``), and its vector and id columns are written batch by batch
to Parquet files in the job directory (``stage/part-*.parquet``, uncompressed
PLAIN, so the fast local reader and the row sampler apply). The rest of the
job is the file job's: the plan, the sample drawn by row number, the encode
and merge stages. Two passes over the data (sample, then encode) therefore run
the Dataset's pipeline (e.g. an embedding model or a database query) only once.

Memory stays bounded: the driver holds one batch of ``rows_per_file`` rows
(plus Ray Data's bounded prefetch). The staged files take about the input's
float bytes of local disk until the job ends (they are removed with the rest
of the job's scratch).

A staged Dataset is marked complete by ``stage/staged.json``; a job resumed
with the same ``job_id`` reuses it and skips its finished blocks, as a file
job does. A Dataset carries no identity that could be hashed (its pipeline may
read anything), so a Dataset job gets a fresh id unless ``job_id=`` names it.
"""

import logging
import os
import shutil
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ._ingest_read import plain_vector_column, vectors_from_arrow
from ._ingest_work import read_json, replace_into, write_json

logger = logging.getLogger(__name__)

#: marker of a complete staging: the files and their rows
STAGED = "staged.json"


def is_dataset(obj):
    """Whether ``obj`` is a ``ray.data.Dataset`` (without importing Ray when it is not)."""
    if isinstance(obj, (str, os.PathLike, list, tuple)):
        return False
    try:
        from ray.data import Dataset
    except ImportError:  # pragma: no cover - Ray is a dependency
        return False
    return isinstance(obj, Dataset)


def _staged_table(batch, column, id_column, attributes=None):
    names = batch.column_names
    wanted = [(column, "vector"), (id_column, "id")] + [(a, "attribute")
                                                         for a in attributes or ()]
    for name, what in wanted:
        if name is not None and name not in names:
            raise InputError(f"dataset has no {what} column {name!r} "
                             f"(columns: {', '.join(names)})")
    cols = {column: plain_vector_column(batch.column(column), f"dataset column {column!r}")}
    if id_column is not None:
        cols[id_column] = batch.column(id_column).combine_chunks()
    for name in attributes or ():
        cols[name] = batch.column(name).combine_chunks()
    return pa.table(cols)


def _write_stage_file(path, table):
    def write(f):
        # PLAIN and uncompressed: the fast local reader and the row sampler read it
        pq.write_table(table, f, compression="none", use_dictionary=False,
                       row_group_size=max(1, table.num_rows))
    replace_into(path, write)


def stage_dataset(ds, directory, *, column, id_column, rows_per_file, attributes=None,
                  bar=None):
    """Write the Dataset ``ds`` (in order) as Parquet files under ``directory``:
    its vector column, its id column and its ``attributes`` columns.

    Returns the list of file paths. A complete earlier staging (its
    ``staged.json``) is reused as it is; an incomplete one is started over.
    ``bar`` (a tqdm bar or None) is advanced by the rows written.
    """
    marker = os.path.join(directory, STAGED)
    if os.path.exists(marker):
        staged = read_json(marker)
        files = [os.path.join(directory, name) for name in staged["files"]]
        if all(os.path.exists(p) for p in files):
            logger.info("reusing the staged dataset in %s (%d rows)", directory,
                        staged["rows"])
            if bar is not None:
                bar.update(staged["rows"])
            return files
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    ctx = ds.context.execution_options
    saved = ctx.preserve_order
    ctx.preserve_order = True  # default ids and the sample are by row order: keep it
    names, rows = [], 0
    try:
        batches = ds.iter_batches(batch_size=int(rows_per_file), batch_format="pyarrow",
                                  prefetch_batches=1)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            table = _staged_table(batch, column, id_column, attributes)
            name = f"part-{len(names):06d}.parquet"
            _write_stage_file(os.path.join(directory, name), table)
            names.append(name)
            rows += table.num_rows
            if bar is not None:
                bar.update(table.num_rows)
    finally:
        ctx.preserve_order = saved
    if not names:
        raise InputError("the dataset holds no rows")
    write_json(marker, {"files": names, "rows": rows})
    logger.info("staged %d dataset rows in %d file(s) under %s", rows, len(names), directory)
    return [os.path.join(directory, name) for name in names]


def dataset_job_id():
    """A fresh job id for a Dataset job (a Dataset has no identity to hash)."""
    return "ds-" + uuid.uuid4().hex[:13]


def dataset_dimension(ds, column):
    """The vector dimension of ``ds``'s ``column`` from its schema, or None when the
    schema does not say (variable-length lists, binary, an unknown schema)."""
    try:
        schema = ds.schema(fetch_if_missing=False)
    except Exception:  # noqa: BLE001 - a schema is only a hint here
        return None
    if schema is None or column not in schema.names:
        return None
    t = schema.types[schema.names.index(column)]
    if isinstance(t, pa.FixedSizeListType):
        return t.list_size
    shape = getattr(t, "shape", None)
    if isinstance(t, pa.ExtensionType) and shape and len(shape) == 1 and shape[0]:
        return int(shape[0])
    return None


def sample_dataset(ds, size, *, column="embedding", d=None, seed=0, batch_size=4096):
    """A uniform random sample of ``size`` vectors of a ``ray.data.Dataset`` (for
    training a :class:`shardann.ProductQuantizer` or an index on a sample of a
    table or a pipeline).

    The Dataset is streamed once, in order, through the driver; every row gets
    a random key from ``seed`` and the ``size`` smallest keys are kept (bounded
    memory: the sample plus one batch). Same Dataset (same order) and seed:
    same sample.

    Parameters
    ----------
    ds : ray.data.Dataset with a vector column ``column`` (fixed-size list,
        list of floats, float32 binary or a Ray tensor column).
    size : int >= 1, rows to draw (all rows when the Dataset holds fewer).
    d : the dimension (default: the first batch's).

    Returns
    -------
    float32 (min(size, rows), d), in the Dataset's row order.
    """
    from .._validation import check_int

    check_int("size", size, low=1)
    rng = np.random.default_rng(seed)
    keys = np.zeros(0)
    rows = np.zeros(0, np.int64)
    kept = None
    seen = 0
    ctx = ds.context.execution_options
    saved = ctx.preserve_order
    ctx.preserve_order = True
    try:
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            n = batch.num_rows
            if not n:
                continue
            if column not in batch.column_names:
                raise InputError(f"dataset has no vector column {column!r} "
                                 f"(columns: {', '.join(batch.column_names)})")
            arr = plain_vector_column(batch.column(column), f"dataset column {column!r}")
            if d is None:
                d = arr.type.list_size if isinstance(arr.type, pa.FixedSizeListType) else len(
                    arr[0].as_py()) // (4 if pa.types.is_binary(arr.type) else 1)
            x = vectors_from_arrow(arr, d, f"dataset column {column!r}")
            k = np.concatenate([keys, rng.random(n)])
            r = np.concatenate([rows, np.arange(seen, seen + n, dtype=np.int64)])
            xs = x if kept is None else np.concatenate([kept, x])
            if k.size > size:
                top = np.argpartition(k, size - 1)[:size]
                k, r, xs = k[top], r[top], xs[top]
            keys, rows, kept = k, r, xs
            seen += n
    finally:
        ctx.preserve_order = saved
    if kept is None:
        raise InputError("the dataset holds no rows")
    order = np.argsort(rows, kind="stable")
    return np.ascontiguousarray(kept[order], np.float32)
