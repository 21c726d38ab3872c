"""The codebooks file: every trained array of an index in one small Parquet file.

One row per array: ``name`` (string), ``shape`` (list<int64>), ``values``
(large_list<float32>, the array in C order). The index kind and parameters
are JSON in the schema metadata under ``shardann``.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptIndexError
from ._manifest import check_format_version

META_KEY = b"shardann"
FILE_FORMAT = "shardann-codebooks"
SCHEMA = pa.schema([
    pa.field("name", pa.string(), nullable=False),
    pa.field("shape", pa.list_(pa.field("element", pa.int64(), nullable=False)),
             nullable=False),
    pa.field("values", pa.large_list(pa.field("element", pa.float32(), nullable=False)),
             nullable=False),
])


def encode(arrays, kind, config, format_version):
    """Parquet bytes holding float32 ``arrays`` (name -> ndarray)."""
    names = sorted(arrays)
    mats = [np.ascontiguousarray(arrays[k], dtype=np.float32) for k in names]
    flat = np.concatenate([m.reshape(-1) for m in mats]) if mats else np.zeros(0, np.float32)
    offsets = np.concatenate([[0], np.cumsum([m.size for m in mats])]).astype(np.int64)
    values = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat),
                                           type=SCHEMA.field("values").type)
    shapes = pa.array([list(m.shape) for m in mats], type=SCHEMA.field("shape").type)
    meta = {"format": FILE_FORMAT, "format_version": format_version, "kind": kind,
            "config": config, "arrays": {k: list(m.shape) for k, m in zip(names, mats,
                                                                           strict=True)}}
    table = pa.Table.from_arrays([pa.array(names, pa.string()), shapes, values],
                                 schema=SCHEMA.with_metadata({META_KEY: json.dumps(meta)}))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none", write_page_checksum=True,
                   use_dictionary=False)
    return sink.getvalue().to_pybytes()


def decode(data, path, *, checked=False):
    """``(arrays, meta)`` from a codebooks file's bytes.

    ``checked``: the whole file's CRC-32 already matched the manifest, so the
    page checksums are not checked again.
    """
    try:
        table = pq.ParquetFile(pa.BufferReader(data),
                               page_checksum_verification=not checked).read(use_threads=False)
        meta = json.loads(table.schema.metadata[META_KEY])
    except Exception as exc:
        raise CorruptIndexError(f"{path}: unreadable codebooks file ({exc})") from exc
    if meta.get("format") != FILE_FORMAT:
        raise CorruptIndexError(f"{path}: not a shardann codebooks file")
    check_format_version(meta.get("format_version"), path)
    try:
        names = table.column("name").to_pylist()
        shapes = table.column("shape").to_pylist()
        col = table.column("values").combine_chunks()
        # buffer views: Array.to_numpy() would import pandas (a second at startup)
        offsets = np.frombuffer(col.buffers()[1], np.int64, count=len(col) + 1,
                                offset=col.offset * 8)
        values = col.values
        flat = np.frombuffer(values.buffers()[1], np.float32, count=len(values),
                             offset=values.offset * 4)
        arrays = {}
        for i, (name, shape) in enumerate(zip(names, shapes, strict=True)):
            arr = flat[offsets[i]:offsets[i + 1]].reshape(shape)
            arrays[name] = np.array(arr, dtype=np.float32)  # a private, writable copy
    except Exception as exc:
        raise CorruptIndexError(f"{path}: malformed codebooks file ({exc})") from exc
    return arrays, meta
