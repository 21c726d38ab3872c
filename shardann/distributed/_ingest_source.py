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


def _vector_column(arr, column):
    """The vector column of a staged batch, as a type the file plan reads.

    Ray tensor columns (``ArrowTensorType``, what a ``map_batches`` returning
    NumPy ``(n, d)`` arrays makes) become ``fixed_size_list`` of their float
    type (integers become float32); ``fixed_size_list`` / ``list`` of floats
    and float32 binary columns are kept as they are (the plan checks them).
    """
    t = arr.type
    if isinstance(t, pa.ExtensionType):
        x = arr.to_numpy() if hasattr(arr, "to_numpy") else None
        if not isinstance(x, np.ndarray) or x.dtype == object or x.ndim != 2:
            shape = getattr(x, "shape", None)
            raise InputError(f"dataset column {column!r}: tensor column of type {t} "
                             f"(shape {shape}); expected one vector of d numbers per row")
        if x.dtype.kind not in "f":
            x = x.astype(np.float32)
        return pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(x).reshape(-1)), x.shape[1])
    return arr


def _staged_table(batch, column, id_column):
    names = batch.column_names
    for name, what in ((column, "vector"), (id_column, "id")):
        if name is not None and name not in names:
            raise InputError(f"dataset has no {what} column {name!r} "
                             f"(columns: {', '.join(names)})")
    cols = {column: _vector_column(batch.column(column).combine_chunks(), column)}
    if id_column is not None:
        cols[id_column] = batch.column(id_column).combine_chunks()
    return pa.table(cols)


def _write_stage_file(path, table):
    def write(f):
        # PLAIN and uncompressed: the fast local reader and the row sampler read it
        pq.write_table(table, f, compression="none", use_dictionary=False,
                       row_group_size=max(1, table.num_rows))
    replace_into(path, write)


def stage_dataset(ds, directory, *, column, id_column, rows_per_file, bar=None):
    """Write the Dataset ``ds`` (in order) as Parquet files under ``directory``.

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
            table = _staged_table(batch, column, id_column)
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
