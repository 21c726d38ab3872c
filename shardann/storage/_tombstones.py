"""Tombstone files: Arrow IPC files of deleted ids (one int64 column ``id``)."""

import json

import numpy as np
import pyarrow as pa

from ..errors import CorruptIndexError
from ._manifest import check_format_version

META_KEY = b"shardann"
FILE_FORMAT = "shardann-tombstones"


def encode(ids, format_version):
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    meta = {"format": FILE_FORMAT, "format_version": format_version}
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False)],
                       metadata={META_KEY: json.dumps(meta)})
    table = pa.Table.from_arrays([pa.array(ids)], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes(), int(ids.size)


def decode(data, path):
    """Sorted unique int64 ids from tombstone bytes already checked against the manifest."""
    try:
        reader = pa.ipc.open_file(pa.BufferReader(data))
        meta = json.loads(reader.schema.metadata[META_KEY])
        table = reader.read_all()
    except Exception as exc:
        raise CorruptIndexError(f"{path}: unreadable tombstone file ({exc})") from exc
    if meta.get("format") != FILE_FORMAT:
        raise CorruptIndexError(f"{path}: not a shardann tombstone file")
    check_format_version(meta.get("format_version"), path)
    col = table.column("id").combine_chunks()
    # a buffer view: Array.to_numpy() would import pandas (a second at startup)
    ids = np.frombuffer(col.buffers()[1], np.int64, count=len(col), offset=col.offset * 8)
    return np.array(ids, np.int64)
