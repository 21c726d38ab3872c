"""The calibration file: held-out queries and their exact neighbours, for recall
estimates (``calibration/<uuid>.parquet``).

One row per calibration query: ``id`` int64 (the query's own id in the index),
``vector`` fixed_size_list<float32>[d] (the vector as it was added), ``live``
bool (its row is still in the index), ``truth_id`` fixed_size_list<int64>[k_max]
and ``truth_distance`` fixed_size_list<float32>[k_max]: its exact nearest
neighbours among the index's rows, its own id excluded, best first, padded with
-1 / +-inf; ``truth_bound`` float32: the list holds every row of the index
within this distance (+-inf until the list was full; removals leave holes).
Parameters (metric, k_max, the target size, the seed, rows seen) are JSON in
the schema metadata under ``shardann``. The file is written whole
on every change (it is small: ~1.6 MB for 1000 queries of d=128, k_max=100)
and named in the manifest as ``files.calibration`` {path, size, crc32, rows}.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptIndexError
from ._manifest import FORMAT_VERSION, open_small_file

CALIBRATION_DIR = "calibration"
META_KEY = b"shardann"
FILE_FORMAT = "shardann-calibration"
#: the arrays of a calibration file, name -> (dtype, rank)
ARRAYS = {"ids": (np.int64, 1), "vectors": (np.float32, 2), "live": (np.bool_, 1),
          "truth_ids": (np.int64, 2), "truth_distances": (np.float32, 2),
          "truth_bound": (np.float32, 1)}
_COLUMNS = {"ids": "id", "vectors": "vector", "live": "live", "truth_ids": "truth_id",
            "truth_distances": "truth_distance", "truth_bound": "truth_bound"}


def _fixed(values, width, typ):
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), typ)
    return pa.FixedSizeListArray.from_arrays(flat, int(width))


def encode(arrays, meta):
    """Parquet bytes of a calibration set: ``arrays`` as in :data:`ARRAYS`
    (``ids`` (m,), ``vectors`` (m, d), ``live`` (m,), ``truth_ids`` and
    ``truth_distances`` (m, k_max), ``truth_bound`` (m,)) and ``meta`` (a
    JSON-able dict)."""
    ids = np.asarray(arrays["ids"], np.int64)
    vec = np.asarray(arrays["vectors"], np.float32)
    tid = np.asarray(arrays["truth_ids"], np.int64)
    tdist = np.asarray(arrays["truth_distances"], np.float32)
    live = np.asarray(arrays["live"], np.bool_)
    bound = np.asarray(arrays["truth_bound"], np.float32)
    m = ids.size
    if vec.ndim != 2 or vec.shape[0] != m or tid.shape != tdist.shape or tid.shape[0] != m \
            or live.shape != (m,) or bound.shape != (m,):
        raise ValueError(f"calibration arrays do not fit together: ids {ids.shape}, vectors "
                         f"{vec.shape}, live {live.shape}, truth {tid.shape}/{tdist.shape}")
    body = {"format": FILE_FORMAT, "format_version": FORMAT_VERSION, **meta,
            "d": int(vec.shape[1]), "k_max": int(tid.shape[1])}
    table = pa.table({
        "id": pa.array(ids, pa.int64()),
        "vector": _fixed(vec, vec.shape[1], pa.float32()),
        "live": pa.array(live, pa.bool_()),
        "truth_id": _fixed(tid, tid.shape[1], pa.int64()),
        "truth_distance": _fixed(tdist, tdist.shape[1], pa.float32()),
        "truth_bound": pa.array(bound, pa.float32()),
    }).replace_schema_metadata({META_KEY: json.dumps(body)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=False,
                   write_page_checksum=True)
    return sink.getvalue().to_pybytes()


def decode(data, path, *, checked=False):
    """``(arrays, meta)`` from calibration file bytes (private, writable arrays).
    Raises :class:`~shardann.CorruptIndexError` naming ``path``."""
    pf, meta = open_small_file(data, path, FILE_FORMAT, "calibration file", checked=checked)
    try:
        table = pf.read(use_threads=False)
        m = table.num_rows
        arrays = {}
        for name, (dtype, rank) in ARRAYS.items():
            col = table.column(_COLUMNS[name]).combine_chunks()
            if rank == 1:
                arr = np.array(col.to_numpy(zero_copy_only=False), dtype)
            else:
                width = int(meta["d"] if name == "vectors" else meta["k_max"])
                arr = np.array(col.flatten().to_numpy(zero_copy_only=False), dtype)
                arr = arr.reshape(m, width)
            arrays[name] = arr
    except Exception as exc:
        raise CorruptIndexError(f"{path}: malformed calibration file ({exc})") from exc
    return arrays, meta
