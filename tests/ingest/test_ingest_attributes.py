"""Ingest with attribute columns: the columns named (``attributes=`` /
``--attributes``) are taken from the input Parquet files, a Dataset or a SQL
query and stored beside the vectors; the index then answers filtered searches
and returns the columns exactly as a core index given the same rows does."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_support import NPROBE, TRAIN, K, data, embedding_array

import shardann
from shardann.distributed import InputError, ingest
from shardann.index import load_index
from shardann.storage import IndexStore

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]

N = 4000
COLUMNS = ["lang", "year", "tags"]
FILTERS = ["lang = 'en'", "year >= 2020 AND tags CONTAINS 'news'", "lang IS NULL"]


def _attributes(n, seed=0):
    rng = np.random.default_rng(seed)
    lang = np.array(["en", "de", "fr"], object)[rng.integers(0, 3, n)].tolist()
    for i in range(0, n, 13):
        lang[i] = None
    return pa.table({"lang": pa.array(lang, pa.string()),
                     "year": pa.array(rng.integers(2015, 2025, n), pa.int64()),
                     "tags": pa.array([["news"] if i % 3 == 0 else ["blog"] for i in range(n)],
                                      pa.list_(pa.string()))})


def _write(path, x, table, encoding="fsl", row_group_size=None, ids=None):
    cols = {"embedding": embedding_array(x, encoding), "other": np.arange(len(x))}
    if ids is not None:
        cols["id"] = pa.array(ids, pa.int64())
    t = pa.table(cols)
    for name in table.column_names:
        t = t.append_column(name, table.column(name))
    pq.write_table(t, path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def rows():
    return data(N, seed=5), _attributes(N)


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, rows):
    """Three files: the fast reader's encodings (fsl, list) and Arrow's (binary)."""
    x, attrs = rows
    d = tmp_path_factory.mktemp("attrs")
    cuts = [0, 1500, 2600, N]
    for i, (enc, rg) in enumerate([("fsl", 400), ("list", None), ("binary", 333)]):
        a, b = cuts[i], cuts[i + 1]
        _write(d / f"part-{i}.parquet", x[a:b], attrs.slice(a, b - a), enc, rg)
    return str(d)


def _reference(path, x, attrs, ids=None):
    ref = load_index(IndexStore.open(path), lists=np.zeros(0, np.int64))
    ref.add(x, ids=np.arange(len(x)) if ids is None else ids, attributes=attrs)
    return ref


def _assert_same_answers(path, ref, queries):
    got = shardann.open_index(path)
    assert got.attribute_schema.equals(ref.attribute_schema)
    for f in FILTERS:
        a = got.search(queries, K, nprobe=NPROBE, filter=f, columns=COLUMNS)
        b = ref.search(queries, K, nprobe=NPROBE, filter=f, columns=COLUMNS)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
        assert a[2].equals(b[2]), f
    return got


def test_parquet_attributes_equal_core_index(tmp_path, rows, parquet_dir):
    x, attrs = rows
    path = str(tmp_path / "idx")
    s = ingest(path, parquet_dir, attributes=COLUMNS, block_rows=700, merge_bytes=32 << 10,
               **TRAIN)
    assert s.vectors == N and s.segments > 1
    ref = _reference(path, x, attrs)
    _assert_same_answers(path, ref, data(30, seed=9))
    store = IndexStore.open(path)
    assert store.attribute_schema.names == COLUMNS  # only the named columns ("other" not)
    ids = np.array([0, 13, 1600, N - 1, 10**9])
    got = shardann.open_index(path).get_attributes(ids, ["lang", "year"])
    want = attrs.select(["lang", "year"]).take(pa.array([0, 13, 1600, N - 1, None]))
    assert got.equals(want)

    # append: the same columns (values cast to the index's types), or none (nulls)
    more_x, more_attrs = data(600, seed=6), _attributes(600, seed=1)
    _write(tmp_path / "more.parquet", more_x, more_attrs.set_column(
        1, "year", more_attrs.column("year").cast(pa.int32())))
    ingest(path, str(tmp_path / "more.parquet"), attributes=COLUMNS, progress=False)
    _write(tmp_path / "bare.parquet", more_x[:100] + 1, pa.table({}))
    ingest(path, str(tmp_path / "bare.parquet"), progress=False)
    ref.add(more_x, ids=np.arange(N, N + 600), attributes=more_attrs)
    ref.add(more_x[:100] + 1, ids=np.arange(N + 600, N + 700))
    _assert_same_answers(path, ref, data(30, seed=9))
    with pytest.raises(ValueError, match="lang"):
        ingest(path, str(tmp_path / "more.parquet"), attributes=["year", "tags"],
               progress=False)


def test_bad_rows_are_skipped_with_their_attributes(tmp_path, rows):
    x, attrs = rows
    x = x[:1000].copy()
    x[[3, 500]] = np.nan
    _write(tmp_path / "bad.parquet", x, attrs.slice(0, 1000), row_group_size=300)
    path = str(tmp_path / "idx")
    s = ingest(path, str(tmp_path / "bad.parquet"), attributes=COLUMNS, skip_bad_rows=True,
               **TRAIN)
    assert s.skipped_rows == 2
    keep = np.setdiff1d(np.arange(1000), [3, 500])
    ref = _reference(path, x[keep], attrs.take(pa.array(keep)), ids=keep)
    _assert_same_answers(path, ref, data(20, seed=9))


def test_attribute_errors_name_file_and_column(tmp_path, rows):
    x, attrs = rows
    _write(tmp_path / "a.parquet", x[:500], attrs.slice(0, 500))
    with pytest.raises(InputError, match="a.parquet.*title"):
        ingest(str(tmp_path / "i1"), str(tmp_path / "a.parquet"), attributes=["title"],
               **TRAIN)
    _write(tmp_path / "b.parquet", x[500:900], attrs.slice(500, 400).set_column(
        1, "year", pa.array(["x"] * 400)))
    with pytest.raises(InputError, match="year"):
        ingest(str(tmp_path / "i2"), [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")],
               attributes=COLUMNS, **TRAIN)
    with pytest.raises(ValueError, match="vector"):
        ingest(str(tmp_path / "i3"), str(tmp_path / "a.parquet"), attributes=["embedding"],
               **TRAIN)
    np.save(tmp_path / "x.npy", x[:500])
    with pytest.raises(InputError, match="Parquet"):
        ingest(str(tmp_path / "i4"), str(tmp_path / "x.npy"), attributes=["lang"], **TRAIN)


def test_dataset_attributes(tmp_path, rows):
    import ray.data

    x, attrs = rows
    n = 2000
    table = attrs.slice(0, n).append_column("id", pa.array(np.arange(n) * 3, pa.int64()))
    table = table.append_column("embedding", embedding_array(x[:n], "fsl"))
    ds = ray.data.from_arrow(table).repartition(3)
    path = str(tmp_path / "idx")
    ingest(path, ds, id_column="id", attributes=COLUMNS, **TRAIN)
    ref = _reference(path, x[:n], attrs.slice(0, n), ids=np.arange(n) * 3)
    _assert_same_answers(path, ref, data(20, seed=9))


def test_cli_attributes(tmp_path, rows, parquet_dir, capsys):
    from shardann.cli import main

    path = str(tmp_path / "idx")
    code = main(["ingest", path, parquet_dir, "--attributes", "lang,year", "--nlist", "16",
                 "--M", "8", "--niter", "4", "--no-progress", "--spot-check", "0"])
    assert code == 0, capsys.readouterr()
    assert IndexStore.open(path).attribute_schema.names == ["lang", "year"]
    assert main(["ingest", str(tmp_path / "i2"), parquet_dir, "--attributes", " , ",
                 "--nlist", "16", "--M", "8"]) == 2


def test_sql_attributes(tmp_path, rows, postgresql_dsn):
    psycopg = pytest.importorskip("psycopg")
    from shardann.distributed import read_sql_vectors

    x, attrs = rows
    n = 1500
    lang, year = attrs.column("lang").to_pylist(), attrs.column("year").to_pylist()
    with psycopg.connect(postgresql_dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS docs")
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, embedding real[] NOT NULL, "
                     "lang text, year bigint)")
        with conn.cursor() as cur, cur.copy("COPY docs FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((i, x[i].tolist(), lang[i], year[i]))
    ds = read_sql_vectors("SELECT id, embedding, lang, year FROM docs", postgresql_dsn,
                          key="id", rows_per_read=600)
    path = str(tmp_path / "idx")
    ingest(path, ds, id_column="id", attributes=["lang", "year"], **TRAIN)
    got = shardann.open_index(path)
    want = attrs.select(["lang", "year"]).slice(0, n)
    assert got.get_attributes(np.arange(n), ["lang", "year"]).equals(want)
    ref = _reference(path, x[:n], want)
    q = data(20, seed=9)
    for f in ("lang = 'de' AND year < 2020", "lang IS NULL"):
        a = got.search(q, K, nprobe=NPROBE, filter=f, columns=["lang"])
        b = ref.search(q, K, nprobe=NPROBE, filter=f, columns=["lang"])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2].equals(b[2])
