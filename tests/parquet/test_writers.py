"""The fast reader on Parquet written by other writers than pyarrow: DuckDB and Polars.

For every row group it must give Arrow's float32 values bit for bit or decline
(:class:`Unsupported`): never other values. On the plain layouts these writers
produce (PLAIN or BYTE_STREAM_SPLIT values, data pages v1 and v2, dictionary
pages, every codec they offer) it must not decline: the test would pass on
a reader that declined everything, so it checks that too. Files with null or
short rows go through ``read_block`` with the fast reader on and off.

fastparquet cannot write a list column (it writes lists only as JSON or bytes
strings), so it is not among the writers.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_support import arrow_values, fsl, vectors

from shardann._parquet import FixedListColumn, Unsupported, embedding_leaf
from shardann.distributed._ingest_plan import plan_inputs
from shardann.distributed._ingest_read import read_block

duckdb = pytest.importorskip("duckdb")
pl = pytest.importorskip("polars")

N, D = 3000, 128
CODECS = ["uncompressed", "snappy", "gzip", "zstd", "brotli", "lz4"]


def _fast_or_declined(path, d):
    """Per row group: "fast" (and the values equal Arrow's) or "declined"."""
    pf = pq.ParquetFile(path)
    leaf = embedding_leaf(pf.metadata, "embedding")
    assert leaf is not None, pf.schema
    out = []
    for g in range(pf.metadata.num_row_groups):
        want = arrow_values(path, g, d)
        reader = FixedListColumn(path, pf.metadata, leaf, d)
        try:
            got = np.concatenate(list(reader.read(g, 701)))
        except Unsupported:
            out.append("declined")
            continue
        assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes(), (path, g)
        rows = np.arange(0, want.shape[0], 37, dtype=np.int64)
        got = reader.read_rows(g, rows)
        assert got.view(np.uint32).tobytes() == want[rows].view(np.uint32).tobytes(), (path, g)
        out.append("fast")
    return out


def _duckdb_write(path, table, sql_type, **options):
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        con.register("t", table)
        opts = ", ".join(f"{k} {v}" for k, v in {"FORMAT": "parquet", **options}.items())
        con.execute(f"COPY (SELECT embedding::{sql_type} AS embedding, id FROM t) "
                    f"TO '{path}' ({opts})")
    finally:
        con.close()
    return str(path)


def _table(x):
    return pa.table({"embedding": fsl(x), "id": pa.array(np.arange(x.shape[0]))})


@pytest.mark.parametrize("version", ["V1", "V2"])  # V2: data pages v2, BYTE_STREAM_SPLIT
@pytest.mark.parametrize("codec", CODECS + ["lz4_raw"])
@pytest.mark.parametrize("sql_type", [f"FLOAT[{D}]", "FLOAT[]"])
def test_duckdb_files(tmp_path, codec, version, sql_type):
    x = vectors(N, 32, seed=1)  # 32, not 128: DuckDB's brotli takes 1 s a MB
    path = _duckdb_write(tmp_path / "v.parquet", _table(x), sql_type.replace(str(D), "32"),
                         COMPRESSION=codec, PARQUET_VERSION=version, ROW_GROUP_SIZE=2048)
    assert _fast_or_declined(path, 32) == ["fast"] * pq.ParquetFile(path).num_row_groups
    first = pq.ParquetFile(path).metadata.row_group(0).num_rows
    assert np.array_equal(arrow_values(path, 0, 32), x[:first])


def test_duckdb_dictionary_pages(tmp_path):
    x = vectors(N, 16, distinct=5)
    path = _duckdb_write(tmp_path / "v.parquet", _table(x), "FLOAT[16]")
    encodings = pq.ParquetFile(path).metadata.row_group(0).column(0).encodings
    assert "RLE_DICTIONARY" in encodings or "PLAIN_DICTIONARY" in encodings, encodings
    assert set(_fast_or_declined(path, 16)) == {"fast"}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind", ["array", "list"])
def test_polars_files(tmp_path, codec, kind):
    x = vectors(N, D, seed=2)
    dtype = pl.Array(pl.Float32, D) if kind == "array" else pl.List(pl.Float32)
    df = pl.DataFrame({"embedding": x.tolist(), "id": np.arange(N)},
                      schema={"embedding": dtype, "id": pl.Int64})
    path = str(tmp_path / "v.parquet")
    # small pages: rows straddle pages; no statistics: the levels alone tell
    df.write_parquet(path, compression=codec, row_group_size=1000, data_page_size=8192,
                     statistics=False)
    assert set(_fast_or_declined(path, D)) == {"fast"}


# -- null and short rows: read_block with the fast reader on and off ---------------------------
def _read(path, fast, d):
    plan = plan_inputs([path], id_column="id", d=d, block_rows=500, fast_parquet=fast)
    parts = [p for b in plan.blocks for p in read_block(plan, b)]
    x = np.concatenate([p.x for p in parts])
    bad = np.concatenate([p.bad for p in parts])
    ids = np.concatenate([p.ids for p in parts])
    reasons = {}
    off = 0
    for p in parts:
        reasons.update({off + r: why for r, why in p.reasons.items()})
        off += p.x.shape[0]
    return x, bad, ids, reasons


def _rows_with_holes(n, d):
    rows = [list(map(float, r)) for r in vectors(n, d, seed=3)]
    # all in the first 2000 rows: the last row group (Polars 1000 rows, DuckDB 2048) is clean
    rows[5] = None                # a null row
    rows[700][3] = None           # a null value
    rows[1500] = rows[1500][:-1]  # a short row
    rows[1999] = []               # an empty row
    return rows


@pytest.mark.parametrize("writer", ["duckdb", "polars"])
def test_null_and_short_rows_read_the_same_with_the_fast_reader(tmp_path, writer):
    d = 16
    rows = _rows_with_holes(N, d)
    path = str(tmp_path / "v.parquet")
    if writer == "duckdb":
        table = pa.table({"embedding": pa.array(rows, pa.list_(pa.float32())),
                          "id": pa.array(np.arange(N))})
        _duckdb_write(path, table, "FLOAT[]", ROW_GROUP_SIZE=1024)
    else:
        pl.DataFrame({"embedding": rows, "id": np.arange(N)},
                     schema={"embedding": pl.List(pl.Float32), "id": pl.Int64}
                     ).write_parquet(path, row_group_size=1000, statistics=False)
    (x, bad, ids, reasons), (x0, bad0, ids0, reasons0) = _read(path, True, d), \
        _read(path, False, d)
    assert x[~bad0].tobytes() == x0[~bad0].tobytes()
    np.testing.assert_array_equal(bad, bad0)
    np.testing.assert_array_equal(ids, ids0)
    assert reasons == reasons0 and sorted(reasons) == [5, 700, 1500, 1999]
    # the fast reader declined the row groups holding a bad row, not the last one
    assert _fast_or_declined_rows(path, d)[-1] == "fast"


def _fast_or_declined_rows(path, d):
    pf = pq.ParquetFile(path)
    reader = FixedListColumn(path, pf.metadata, embedding_leaf(pf.metadata, "embedding"), d)
    out = []
    for g in range(pf.metadata.num_row_groups):
        try:
            for _ in reader.read(g, 1 << 20):
                pass
            out.append("fast")
        except Unsupported:
            out.append("declined")
    return out
