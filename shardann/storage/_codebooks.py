"""The codebooks file: every trained array of an index in one small Parquet file.

One row per array: ``name`` (string), ``shape`` (list<int64>), ``values``
(large_list<float32>, the array in C order). The index kind and parameters
are JSON in the schema metadata under ``shardann``.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._parquet_pages import DATA_PAGE, DATA_PAGE_V2, chunk_range, iter_pages
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
    page checksums are not checked again, and the values are taken straight
    from their pages when the file has the layout this module writes (Arrow's
    nested-list decoder took 2.5-5 ms of every open for a 650 KB file).
    """
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=not checked)
        meta = json.loads(pf.schema_arrow.metadata[META_KEY])
        flat = None
        if (checked and isinstance(meta.get("arrays"), dict)
                and pf.metadata.num_rows == len(meta["arrays"])):
            # the rows are the arrays of meta["arrays"], in name order (see encode)
            flat = _plain_values(data, pf.metadata)
            total = sum(int(np.prod(shape, dtype=np.int64)) for shape in meta["arrays"].values())
            if flat is not None and flat.size != total:
                flat = None  # not the layout encode() writes: let Arrow decode it
        table = None if flat is not None else pf.read(use_threads=False)
    except Exception as exc:
        raise CorruptIndexError(f"{path}: unreadable codebooks file ({exc})") from exc
    if meta.get("format") != FILE_FORMAT:
        raise CorruptIndexError(f"{path}: not a shardann codebooks file")
    check_format_version(meta.get("format_version"), path)
    try:
        if table is None:
            names = sorted(meta["arrays"])
            shapes = [list(meta["arrays"][name]) for name in names]
        else:
            names = table.column("name").to_pylist()
            shapes = table.column("shape").to_pylist()
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        if table is not None:
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


def _plain_values(data, metadata):
    """float32 (n,): every value of the ``values`` column, taken from its pages;
    None unless they are uncompressed PLAIN data pages (v1 or v2).

    Only for bytes whose CRC matched the manifest: those are the bytes this
    module wrote, so the list levels (rows never empty, nothing null) are not
    decoded; the caller checks the count against the shapes.
    """
    leaf = [i for i in range(metadata.num_columns)
            if metadata.schema.column(i).path.split(".")[0] == "values"]
    if len(leaf) != 1:
        return None
    column = metadata.schema.column(leaf[0])
    if column.physical_type != "FLOAT":
        return None
    # v1 pages hold one length-prefixed run per level kind that can be above 0
    v1_level_runs = (column.max_repetition_level > 0) + (column.max_definition_level > 0)
    buf = memoryview(data).cast("B")
    parts = []
    for g in range(metadata.num_row_groups):
        cc = metadata.row_group(g).column(leaf[0])
        if cc.compression != "UNCOMPRESSED":
            return None
        start, end = chunk_range(cc)
        for header, at, size in iter_pages(buf, start, end):
            kind = header.get(1)
            if kind == DATA_PAGE:
                h = header.get(5, {})
                if h.get(2) != 0:  # encoding: PLAIN
                    return None
                p = at
                for _ in range(v1_level_runs):  # repetition, then definition levels
                    p += 4 + int.from_bytes(buf[p:p + 4], "little")
            elif kind == DATA_PAGE_V2:
                h = header.get(8, {})
                if h.get(4) != 0 or h.get(2, 0):  # PLAIN, no nulls
                    return None
                p = at + h.get(5, 0) + h.get(6, 0)
            else:
                return None
            n = h.get(1, 0)
            if p + 4 * n > at + size:
                return None
            parts.append(np.frombuffer(data, "<f4", count=n, offset=p))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
