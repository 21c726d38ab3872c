"""The codebooks file: every trained array of an index in one small Parquet file.

Format version 2: one non-null float32 column ``values`` holding the arrays
one after another, in name order, each in C order; their names and shapes,
the index kind and parameters are JSON in the schema metadata under
``shardann``. Arrow decodes a flat PLAIN float32 column at memory speed, so
no decoder of ours is needed.

Format version 1 (still read): one row per array, ``name`` (string), ``shape``
(list<int64>), ``values`` (large_list<float32>).
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptIndexError
from ._manifest import FORMAT_VERSION, open_small_file

META_KEY = b"shardann"
FILE_FORMAT = "shardann-codebooks"
SCHEMA = pa.schema([pa.field("values", pa.float32(), nullable=False)])


def encode(arrays, kind, config, format_version=FORMAT_VERSION):
    """Parquet bytes holding float32 ``arrays`` (name -> ndarray) of an index of
    ``kind`` built with ``config`` (written in the current format version)."""
    if format_version != FORMAT_VERSION:
        raise ValueError(f"codebooks are written in format version {FORMAT_VERSION}; "
                         f"got format_version={format_version}")
    names = sorted(arrays)
    mats = [np.ascontiguousarray(arrays[k], dtype=np.float32) for k in names]
    flat = np.concatenate([m.reshape(-1) for m in mats]) if mats else np.zeros(0, np.float32)
    meta = {"format": FILE_FORMAT, "format_version": format_version, "kind": kind,
            "config": config,
            "arrays": {k: list(m.shape) for k, m in zip(names, mats, strict=True)}}
    table = pa.Table.from_arrays([pa.array(flat, pa.float32())],
                                 schema=SCHEMA.with_metadata({META_KEY: json.dumps(meta)}))
    sink = pa.BufferOutputStream()
    # page checksums let Arrow check a codebooks file read outside a store
    pq.write_table(table, sink, compression="none", use_dictionary=False,
                   write_statistics=False, write_page_checksum=True)
    return sink.getvalue().to_pybytes()


def _buffer_view(arr, dtype):
    """NumPy view of a flat fixed-width Arrow array's values (no pandas import)."""
    item = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype, count=len(arr), offset=arr.offset * item)


def decode(data, path, *, checked=False):
    """``(arrays, meta)`` from a codebooks file's bytes: float32 arrays by name
    (private, writable copies) and the metadata dict.

    ``checked``: the bytes already matched the CRC-32 in the manifest, so
    Parquet's page checksums are not checked again. Reads format versions 1
    and 2; raises :class:`~shardann.CorruptIndexError` naming ``path``.
    """
    pf, meta = open_small_file(data, path, FILE_FORMAT, "codebooks file", checked=checked)
    try:
        table = pf.read(use_threads=False)
        if meta["format_version"] >= 2:
            names = sorted(meta["arrays"])
            shapes = [[int(x) for x in meta["arrays"][name]] for name in names]
            sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
            col = table.column("values").combine_chunks()
            if len(col) != sum(sizes):
                raise ValueError(f"holds {len(col)} values; the shapes {shapes} need "
                                 f"{sum(sizes)}")
            flat = np.array(_buffer_view(col, np.float32))  # one private, writable copy
            bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
            parts = [flat[bounds[i]:bounds[i + 1]] for i in range(len(names))]
        else:  # version 1: one list<float32> row per array, decoded by Arrow
            names = table.column("name").to_pylist()
            shapes = table.column("shape").to_pylist()
            col = table.column("values").combine_chunks()
            offsets = np.frombuffer(col.buffers()[1], np.int64, count=len(col) + 1,
                                    offset=col.offset * 8)
            values = _buffer_view(col.values, np.float32)
            parts = [np.array(values[offsets[i]:offsets[i + 1]]) for i in range(len(names))]
        arrays = {name: part.reshape(shape)
                  for name, shape, part in zip(names, shapes, parts, strict=True)}
    except Exception as exc:
        raise CorruptIndexError(f"{path}: malformed codebooks file ({exc})") from exc
    return arrays, meta
