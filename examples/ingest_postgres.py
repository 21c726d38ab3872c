"""Build an index from a PostgreSQL table and write the codes back (the seed workflow).

    python examples/ingest_postgres.py --dsn "host=127.0.0.1 dbname=app user=app" \\
        --demo 200000                      # make a table of 200k synthetic embeddings first
    python examples/ingest_postgres.py --dsn "..." --table items --id id --vector embedding

The usual "train a FAISS ProductQuantizer on a sample pulled from the database in
batches, then compute_codes for every row and write the code bytes back" scripts,
with shardann on Ray Data:

1. ``read_sql_vectors``: the query ``SELECT id, embedding FROM items`` read with
   ``ray.data.read_sql`` by id ranges of ``--rows-per-read`` rows (in id order);
2. ``ingest``: a uniform sample of the rows trains the IVF-PQ model, every row is
   encoded and the index is committed (the query runs once; memory stays bounded);
3. ``write_codes``: every row's list and PQ code written back to the table in
   batches (``Dataset.write_sql``): ``UPDATE items SET list = %s, code = %s WHERE
   id = %s``;
4. a few rows searched in the new index: each finds itself first.

The vector column is ``real[]`` (or ``bytea`` of float32). The same from the
command line: ``shardann ingest INDEX --sql "SELECT id, embedding FROM items"
--id-column id --nlist 1024 --M 16 --write-codes "UPDATE ..."`` with the DSN in
``$SHARDANN_DSN``. Needs ``psycopg`` (``pip install 'psycopg[binary]'``).
"""

import argparse
import logging
import tempfile

import numpy as np
import psycopg
import ray

from shardann.bench.datasets import synthetic_chunk
from shardann.distributed import ingest, read_sql_vectors, write_codes
from shardann.index import load_index
from shardann.storage import IndexStore


def make_demo_table(dsn, table, n, d):
    """``table`` (id bigint primary key, embedding real[]) of ``n`` synthetic rows."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding real[] NOT NULL)")
        with conn.cursor() as cur, cur.copy(f"COPY {table} (id, embedding) FROM STDIN") as cp:
            for s in range(0, n, 50_000):
                x = synthetic_chunk(s, min(n, s + 50_000), d)
                for i, row in enumerate(x):
                    cp.write_row((s + i, row.tolist()))
    print(f"made table {table}: {n} x {d} embeddings")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dsn", required=True, help="libpq connection string")
    p.add_argument("--table", default="shardann_demo_items")
    p.add_argument("--id", default="id", help="integer id column (the primary key)")
    p.add_argument("--vector", default="embedding", help="real[] or float32 bytea column")
    p.add_argument("--demo", type=int, default=0, metavar="N",
                   help="first (re)make --table with N synthetic 128-d embeddings")
    p.add_argument("--index", default=None, help="index directory (default: a temporary one)")
    p.add_argument("--nlist", type=int, default=256)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--rows-per-read", type=int, default=50_000)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if a.demo:
        make_demo_table(a.dsn, a.table, a.demo, 128)
    path = a.index or tempfile.mkdtemp(prefix="shardann-pg-") + "/index"
    ray.init(num_cpus=2, include_dashboard=False)

    # 1-2. read the table in id ranges, train on a sample, encode everything, commit
    rows = read_sql_vectors(f"SELECT {a.id} AS id, {a.vector} AS embedding FROM {a.table}",
                            a.dsn, key="id", rows_per_read=a.rows_per_read)
    summary = ingest(path, rows, id_column="id", nlist=a.nlist, M=a.M)
    print(summary)

    # 3. each row's list and code back into the table, in batches
    index = load_index(IndexStore.open(path), lists=np.zeros(0, np.int64))
    with psycopg.connect(a.dsn) as conn:
        conn.execute(f"ALTER TABLE {a.table} ADD COLUMN IF NOT EXISTS ivf_list int, "
                     "ADD COLUMN IF NOT EXISTS pq_code bytea")
    write_codes(rows, index, f"UPDATE {a.table} SET ivf_list = %s, pq_code = %s "
                f"WHERE {a.id} = %s", a.dsn, fields=("list", "code", "id"))
    with psycopg.connect(a.dsn) as conn:
        done = conn.execute(f"SELECT count(*) FROM {a.table} WHERE pq_code IS NOT NULL"
                            ).fetchone()[0]
        sample = conn.execute(f"SELECT {a.id}, {a.vector} FROM {a.table} ORDER BY {a.id} "
                              "LIMIT 5").fetchall()
    print(f"codes written back for {done} rows ({index.code_size} bytes each)")

    # 4. a few rows looked up in the index: each should find itself
    full = load_index(IndexStore.open(path))
    q = np.array([r[1] for r in sample], np.float32)
    _, ids = full.search(q, 3, nprobe=16)
    for (rid, _), hits in zip(sample, ids, strict=True):
        print(f"row {rid}: nearest ids {hits.tolist()}")
    ray.shutdown()


if __name__ == "__main__":
    main()
