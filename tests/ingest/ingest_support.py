"""Helpers shared by the ingest tests (imported as ``ingest_support``)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

D = 32       # dimension
NLIST = 16
M = 8
K = 10
NPROBE = 4
#: small, fast training: the point of these tests is the pipeline, not the model
TRAIN = {"nlist": NLIST, "M": M, "niter": 6, "pq_niter": 6, "progress": False}


def data(n, d=D, seed=1):
    """float32 (n, d) points on a curved low-dimensional manifold (fixed seed)."""
    from shardann.bench.datasets import synthetic
    return synthetic(n, d, seed=seed)


def embedding_array(x, encoding):
    """float32 (n, d) as an Arrow column: "fsl", "list", "binary", "fsb" or "fsl16"."""
    n, d = x.shape
    if encoding == "fsl":
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
    if encoding == "fsl16":
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.float64)), d)
    if encoding == "list":
        offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)))
    if encoding == "binary":
        return pa.array([r.tobytes() for r in x], pa.binary())
    if encoding == "fsb":
        return pa.array([r.tobytes() for r in x], pa.binary(4 * d))
    raise ValueError(encoding)


def write_parquet(path, x, encoding="fsl", row_group_size=None, ids=None, column="embedding"):
    cols = {column: embedding_array(x, encoding)}
    if ids is not None:
        cols["id"] = pa.array(np.asarray(ids, np.int64))
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def write_mixed(dirpath, x, sizes, encodings=("fsl", "list", "binary"), row_groups=None,
                ids=None):
    """Split ``x`` into Parquet files of ``sizes`` rows named part-000.parquet, ... in
    ``dirpath``, cycling through encodings and row-group sizes."""
    row_groups = row_groups or [None]
    paths, s = [], 0
    for i, n in enumerate(sizes):
        p = f"{dirpath}/part-{i:03d}.parquet"
        write_parquet(p, x[s:s + n], encodings[i % len(encodings)],
                      row_groups[i % len(row_groups)],
                      ids=None if ids is None else ids[s:s + n])
        paths.append(p)
        s += n
    assert s == x.shape[0]
    return paths


def reference(path, x, ids=None, version=None):
    """A core index with the ingested index's model (of ``version``, default the
    newest), the same vectors added directly: it draws its own calibration set
    (the stored one, which covers the ingested rows already, is left out)."""
    from shardann.index import load_index
    from shardann.storage import IndexStore
    ref = load_index(IndexStore.open(path, version), lists=np.zeros(0, np.int64))
    ref._cal = None
    ref.add(x, ids=np.arange(x.shape[0]) if ids is None else ids)  # default: row order
    return ref


def assert_same_calibration(path, want, version=None):
    """The calibration set stored at ``path`` is ``want`` (a CalibrationSet, e.g. the
    one :func:`reference` drew), field by field."""
    from shardann.index import CalibrationSet
    from shardann.storage import IndexStore
    got = CalibrationSet.from_file(*IndexStore.open(path, version).read_calibration())
    for name in ("ids", "vectors", "live", "truth_ids", "truth_keys", "bound"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert (got.rows_seen, got.closed, got.size, got.seed) == (want.rows_seen, want.closed,
                                                               want.size, want.seed)
    return got


def assert_same_index(path, x, ids=None, queries=None, **search_kw):
    """The ingested index at ``path`` holds exactly what the core index would."""
    from shardann.index import load_index
    from shardann.storage import IndexStore
    store = IndexStore.open(path)
    got = load_index(store)
    ref = reference(path, x, ids)
    assert got.ntotal == ref.ntotal == x.shape[0]
    # same rows in the same lists with the same codes (and vectors)
    sizes_a, ids_a, cols_a = store.read_lists()
    ref_state = ref.to_state()
    sizes_b, ids_b, cols_b = ref_state.list_sizes, ref_state.ids, ref_state.payload
    np.testing.assert_array_equal(sizes_a, sizes_b)
    lists = np.repeat(np.arange(sizes_a.size), sizes_a)
    oa, ob = np.lexsort((ids_a, lists)), np.lexsort((ids_b, lists))
    np.testing.assert_array_equal(ids_a[oa], ids_b[ob])
    for name in cols_b:
        np.testing.assert_array_equal(cols_a[name][oa], cols_b[name][ob])
    if queries is None:
        queries = data(50, x.shape[1], seed=99)
    kw = {"nprobe": NPROBE, **search_kw}
    Da, Ia = got.search(queries, K, **kw)
    Db, Ib = ref.search(queries, K, **kw)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_array_equal(Da, Db)
    report = store.verify()
    assert report["duplicate_live_ids"] == 0
    return store, got
