"""Build an index from Parquet files with the Ray Data ingest, then serve it on 2 shards.

    python examples/ingest_parquet.py                  # 1M x 128 vectors, a few minutes
    python examples/ingest_parquet.py --n 5000000      # more; memory stays bounded

1. writes ``--n`` synthetic embeddings (points on a curved low-dimensional
   manifold, like real embeddings) to ``--files`` Parquet files, a
   ``fixed_size_list<float>`` column named ``embedding``, in chunks;
2. ingests them (``shardann.distributed.ingest``, the same as
   ``shardann ingest INDEX DIR --nlist ... --M ...``): sample, train, encode on
   Ray Data, one commit; prints the summary (throughput, recall spot check);
3. opens the index on 2 shard actors and searches a few queries, checking the
   answers against an exact search streamed over the Parquet files.

Run it again with the same arguments and the ingest finds its job committed and
returns at once; kill it midway (Ctrl-C) and run it again, and it resumes.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

import shardann
from shardann.bench.datasets import synthetic_chunk
from shardann.distributed import ShardedIndex, ingest


def write_parquet(directory, n, d, files, chunk=200_000):
    os.makedirs(directory, exist_ok=True)
    per_file = -(-n // files)
    t = time.perf_counter()
    for f in range(files):
        lo, hi = f * per_file, min(n, (f + 1) * per_file)
        schema = pa.schema([("embedding", pa.list_(pa.float32(), d))])
        with pq.ParquetWriter(os.path.join(directory, f"part-{f:04d}.parquet"), schema,
                              compression="none") as w:
            for s in range(lo, hi, chunk):
                x = synthetic_chunk(s, min(hi, s + chunk), d)
                col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
                w.write_table(pa.table({"embedding": col}), row_group_size=chunk // 2)
    print(f"wrote {n:,} x {d} float32 vectors to {files} Parquet files in {directory} "
          f"({time.perf_counter() - t:.0f} s)")


def exact_top_k(directory, queries, k):
    """Exact (D, I) of ``queries`` over the Parquet files, streamed batch by batch."""
    parts, offset = [], 0
    for name in sorted(os.listdir(directory)):
        for batch in pq.ParquetFile(os.path.join(directory, name)).iter_batches(262144):
            col = batch.column(0)
            x = col.values.to_numpy().reshape(len(col), -1)
            ids = np.arange(offset, offset + len(col))
            parts.append(shardann.brute_force_knn(xq=queries, xb=x, k=k, ids=ids))
            parts = [shardann.merge_results(parts, k, "l2")]
            offset += len(col)
    return parts[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1000000)")
    p.add_argument("--d", type=int, default=128, help="dimension (default 128)")
    p.add_argument("--files", type=int, default=8, help="Parquet files (default 8)")
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists (default 1024)")
    p.add_argument("--M", type=int, default=16, help="PQ sub-quantizers (default 16)")
    p.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    args = p.parse_args()

    work = args.dir or tempfile.mkdtemp(prefix="shardann-ingest-")
    data_dir, index_dir = os.path.join(work, "data"), os.path.join(work, "index")
    if not os.path.isdir(data_dir):
        write_parquet(data_dir, args.n, args.d, args.files)

    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        summary = ingest(index_dir, data_dir, nlist=args.nlist, M=args.M, niter=10,
                         pq_niter=10)
        print(summary)

        queries = synthetic_chunk(10**12, 10**12 + 20, args.d)  # rows not in the data
        with ShardedIndex.open(index_dir, num_shards=2) as index:
            D, I = index.search(queries, k=10, nprobe=32)
        _, I_true = exact_top_k(data_dir, queries, 10)
        recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(I, I_true, strict=True)])
        print(f"2 shards, nprobe=32: first query's neighbours {I[0][:5].tolist()} ...; "
              f"recall@10 of 20 new queries vs exact search: {recall:.3f}")
    finally:
        ray.shutdown()
    print(f"index and data are in {work}")


if __name__ == "__main__":
    main()
