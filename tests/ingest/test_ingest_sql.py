"""A PostgreSQL table as an ingest source (a real server, started by ``postgresql_dsn``):
building from SQL equals building from the same array; PQ codes written back to a
table equal ``compute_codes`` and the index's own codes."""

import numpy as np
import pytest
from ingest_support import TRAIN, D, assert_same_index, data, write_parquet
from test_ingest_dataset import assert_same_store

import shardann
from shardann.distributed import (
    InputError,
    ingest,
    read_sql_vectors,
    sample_dataset,
    write_codes,
)
from shardann.index import load_index
from shardann.storage import IndexStore

psycopg = pytest.importorskip("psycopg")

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]

N = 50_000


@pytest.fixture(scope="module")
def table(postgresql_dsn):
    """Table ``vec`` of N rows: id (sparse, not in insertion order), embedding real[]
    and the same vector as float32 bytea; returns (dsn, ids sorted, x in id order)."""
    x = data(N, seed=11)
    ids = np.arange(N, dtype=np.int64) * 7 + 1000
    order = np.random.default_rng(0).permutation(N)  # insert out of id order
    with psycopg.connect(postgresql_dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS vec")
        conn.execute("CREATE TABLE vec (id bigint PRIMARY KEY, embedding real[] NOT NULL, "
                     "raw bytea NOT NULL)")
        with conn.cursor() as cur, cur.copy("COPY vec (id, embedding, raw) FROM STDIN") as cp:
            for i in order:
                cp.write_row((int(ids[i]), x[i].tolist(), x[i].tobytes()))
    return postgresql_dsn, ids, x


def test_build_from_sql_equals_array(tmp_path, table):
    dsn, ids, x = table
    ref = str(tmp_path / "from_array")
    write_parquet(str(tmp_path / "x.parquet"), x, ids=ids)
    ingest(ref, str(tmp_path / "x.parquet"), id_column="id", **TRAIN)

    # real[] read by id ranges (5 read_sql tasks), in id order
    ds = read_sql_vectors("SELECT id, embedding FROM vec", dsn, key="id", rows_per_read=12_000)
    assert ds.count() == N
    got = str(tmp_path / "from_sql")
    s = ingest(got, ds, id_column="id", **TRAIN)
    assert s.vectors == N
    assert_same_store(ref, got)
    assert_same_index(got, x, ids=ids)

    # bytea of float32, through a plain ray.data.read_sql (one task), same index
    import ray.data

    raw = ray.data.read_sql("SELECT id, raw AS embedding FROM vec ORDER BY id",
                            lambda: psycopg.connect(dsn))
    got2 = str(tmp_path / "from_bytea")
    ingest(got2, raw, id_column="id", **TRAIN)
    assert_same_store(ref, got2)


def test_codes_written_back(tmp_path, table):
    dsn, ids, x = table
    ds = read_sql_vectors("SELECT id, embedding FROM vec", dsn, key="id", rows_per_read=20_000)
    # a ProductQuantizer trained on a sample of the table (streamed once)
    sample = sample_dataset(ds, 5000, seed=3)
    assert sample.shape == (5000, D) and sample.dtype == np.float32
    again = sample_dataset(ds, 5000, seed=3)
    np.testing.assert_array_equal(sample, again)  # same table, same seed: same sample
    # every sampled row is a row of the table
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in sample[:200])
    pq = shardann.ProductQuantizer(D, 8, 8, niter=6).train(sample)
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS pq_codes")
        conn.execute("CREATE TABLE pq_codes (id bigint PRIMARY KEY, code bytea NOT NULL)")
    write_codes(ds, pq, "INSERT INTO pq_codes (id, code) VALUES (%s, %s)", dsn,
                batch_size=3000)
    with psycopg.connect(dsn) as conn:
        back = conn.execute("SELECT id, code FROM pq_codes ORDER BY id").fetchall()
    assert [r[0] for r in back] == ids.tolist()
    codes = np.frombuffer(b"".join(bytes(r[1]) for r in back), np.uint8).reshape(N, -1)
    np.testing.assert_array_equal(codes, pq.compute_codes(x))

    # the codes of an ingested IVF-PQ index, written as UPDATEs of the source table
    path = str(tmp_path / "idx")
    ingest(path, ds, id_column="id", **TRAIN)
    index = load_index(IndexStore.open(path), lists=np.zeros(0, np.int64))
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE vec ADD COLUMN IF NOT EXISTS list int, "
                     "ADD COLUMN IF NOT EXISTS code bytea")
    write_codes(ds, index, "UPDATE vec SET list = %s, code = %s WHERE id = %s", dsn,
                fields=("list", "code", "id"))
    with psycopg.connect(dsn) as conn:
        back = conn.execute("SELECT id, list, code FROM vec ORDER BY id").fetchall()
    lists, payload = index.encode(index.prepare(x))
    np.testing.assert_array_equal([r[1] for r in back], lists)
    got = np.frombuffer(b"".join(bytes(r[2]) for r in back), np.uint8).reshape(N, -1)
    np.testing.assert_array_equal(got, payload["codes"])
    # ... which are the codes the index stores
    sizes, sids, cols = IndexStore.open(path).read_lists()
    stored = dict(zip(sids.tolist(), map(bytes, cols["codes"]), strict=True))
    assert all(stored[int(i)] == bytes(c) for i, c in zip(ids[:500], got[:500], strict=True))


def test_sql_errors(table):
    dsn, _, _ = table
    with pytest.raises(ValueError, match="column name"):
        read_sql_vectors("SELECT id, embedding FROM vec", dsn, key="id; DROP TABLE vec")
    with pytest.raises(InputError, match="no rows"):
        read_sql_vectors("SELECT id, embedding FROM vec WHERE id < 0", dsn, key="id")


def _parse(argv):
    import argparse

    from shardann.cli import ingest as ingest_command

    parser = argparse.ArgumentParser()
    ingest_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_sql(tmp_path, table, capsys, monkeypatch):
    from shardann.cli import ingest as ingest_command
    from shardann.cli._common import CommandError, UsageError

    dsn, ids, x = table
    ref = str(tmp_path / "ref")
    ingest(ref, read_sql_vectors("SELECT id, embedding FROM vec", dsn, key="id"),
           id_column="id", **TRAIN)
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS cli_codes")
        conn.execute("CREATE TABLE cli_codes (id bigint PRIMARY KEY, list int, code bytea)")
    path = str(tmp_path / "idx")
    monkeypatch.setenv("SHARDANN_DSN", dsn)  # the DSN stays off the command line
    args = _parse([path, "--sql", "SELECT id, embedding FROM vec", "--id-column", "id",
                   "--nlist", "16", "--M", "8", "--niter", "6", "--no-progress",
                   "--rows-per-read", "20000", "--write-codes",
                   "INSERT INTO cli_codes (id, list, code) VALUES (%s, %s, %s)",
                   "--code-fields", "id,list,code"])
    assert ingest_command.run(args) == 0
    out = capsys.readouterr().out
    assert f"ingested {N:,} vectors" in out and "wrote the codes" in out
    assert_same_store(ref, path)
    index = load_index(IndexStore.open(path), lists=np.zeros(0, np.int64))
    lists, payload = index.encode(index.prepare(x))
    with psycopg.connect(dsn) as conn:
        back = conn.execute("SELECT id, list, code FROM cli_codes ORDER BY id").fetchall()
    assert [r[0] for r in back] == ids.tolist()
    np.testing.assert_array_equal([r[1] for r in back], lists)
    got = np.frombuffer(b"".join(bytes(r[2]) for r in back), np.uint8).reshape(N, -1)
    np.testing.assert_array_equal(got, payload["codes"])

    with pytest.raises(UsageError, match="not both"):
        ingest_command.run(_parse([path, "x.parquet", "--sql", "SELECT 1"]))
    with pytest.raises(UsageError, match="go with --sql"):
        ingest_command.run(_parse([path, "x.parquet", "--dsn", dsn]))
    with pytest.raises(CommandError, match="UndefinedTable"):
        ingest_command.run(_parse([str(tmp_path / "other"), "--sql",
                                   "SELECT id, embedding FROM nope", "--id-column", "id",
                                   "--nlist", "16", "--M", "8", "--no-progress"]))
