"""Save small trained float32 matrices (centroids, codebooks, rotations) as
Parquet: one ``fixed_size_list<float32>`` column, parameters as JSON in the
schema metadata. Readable with pyarrow alone::

    t = pyarrow.parquet.read_table(path)
    params = json.loads(t.schema.metadata[b"shardann"])
    matrix = t.column(0).combine_chunks().flatten().to_numpy().reshape(len(t), -1)
"""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CorruptIndexError

_META_KEY = b"shardann"


def write_matrix(path, matrix, params, column="vector"):
    """Atomically write float32 (n, w) ``matrix`` with a JSON-able ``params`` dict."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, w = matrix.shape
    values = pa.array(matrix.reshape(-1), type=pa.float32())
    col = pa.FixedSizeListArray.from_arrays(values, w)
    table = pa.table({column: col})
    table = table.replace_schema_metadata({_META_KEY: json.dumps(params).encode()})
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp, compression="none")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_matrix(path):
    """Return ``(matrix float32 (n, w), params dict)`` from :func:`write_matrix`."""
    path = os.fspath(path)
    try:
        table = pq.read_table(path)
        params = json.loads(table.schema.metadata[_META_KEY])
        col = table.column(0).combine_chunks()
        w = col.type.list_size
        matrix = col.flatten().to_numpy(zero_copy_only=False).reshape(len(table), w)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptIndexError(f"{path}: not a readable shardann matrix file ({exc})") from exc
    return np.ascontiguousarray(matrix, dtype=np.float32), params
