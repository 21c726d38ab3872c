"""Compress embeddings to PQ codes in batches, with a quantizer trained once.

The workflow of the usual "train a FAISS ProductQuantizer, then compute_codes
for every row" scripts, with shardann:

1. train:  pull a random sample from the embeddings batch by batch, train a
           ProductQuantizer on it, save it (one Parquet file, parameters inside);
2. encode: load the quantizer, read every embedding batch by batch, compute its
           code bytes and write them with the ids to Parquet (or .npy).

Memory stays bounded by the batch size and the training sample, whatever the
number of embeddings. Run:

    python examples/pq_encode_batches.py                 # demo on 100k synthetic embeddings
    python examples/pq_encode_batches.py train  --input emb.npy --pq pq.parquet --M 16
    python examples/pq_encode_batches.py encode --input emb.npy --pq pq.parquet \\
        --out codes.parquet

``--input`` is a float32 ``.npy`` (n, d) file (memory-mapped) or a Parquet file
with an ``embedding`` column (fixed-size or variable list of floats) and an
optional ``id`` column. To read from a database instead, replace
:func:`iter_batches` with a server-side cursor that yields ``(ids, vectors)``.
"""

import argparse
import json
import logging
import os
import resource
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as papq

import shardann
from shardann.bench.datasets import synthetic

log = logging.getLogger("pq_encode_batches")


# -- the data source ----------------------------------------------------------------------------
def count_rows(path):
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r").shape[0]
    return papq.ParquetFile(path).metadata.num_rows


def iter_batches(path, batch_size):
    """Yield ``(ids int64 (b,), vectors float32 (b, d))`` batches from ``path``."""
    if path.endswith(".npy"):
        x = np.load(path, mmap_mode="r")  # nothing is read until sliced
        for start in range(0, x.shape[0], batch_size):
            batch = np.asarray(x[start:start + batch_size], dtype=np.float32)
            yield np.arange(start, start + len(batch), dtype=np.int64), batch
        return
    pf = papq.ParquetFile(path)
    has_ids = "id" in pf.schema_arrow.names
    start = 0
    for rb in pf.iter_batches(batch_size=batch_size,
                              columns=["id", "embedding"] if has_ids else ["embedding"]):
        emb = rb.column("embedding")
        vectors = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), np.float32)
        vectors = vectors.reshape(len(rb), -1)
        ids = (rb.column("id").to_numpy().astype(np.int64) if has_ids
               else np.arange(start, start + len(rb), dtype=np.int64))
        start += len(rb)
        yield ids, vectors


def peak_rss():
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"


# -- step 1: train -----------------------------------------------------------------------------
def train(input_path, pq_path, *, M, nbits, sample_size, batch_size, seed, verbose):
    """Train a ProductQuantizer on a uniform random sample and save it to ``pq_path``."""
    t0 = time.perf_counter()
    n = count_rows(input_path)
    fraction = min(1.0, sample_size / n)
    rng = np.random.default_rng(seed)
    parts = []
    for _, batch in iter_batches(input_path, batch_size):
        parts.append(batch[rng.random(len(batch)) < fraction])  # keep ~fraction of each batch
    sample = np.concatenate(parts)
    log.info("sampled %d of %d embeddings (d=%d) in %.1f s; %s",
             len(sample), n, sample.shape[1], time.perf_counter() - t0, peak_rss())

    pq = shardann.ProductQuantizer(d=sample.shape[1], M=M, nbits=nbits, seed=seed,
                                   verbose=verbose)
    pq.train(sample)
    pq.save(pq_path)
    log.info("trained PQ M=%d nbits=%d (%d-byte codes) and saved it to %s in %.1f s; %s",
             M, nbits, pq.code_size, pq_path, time.perf_counter() - t0, peak_rss())
    return pq


# -- step 2: encode -----------------------------------------------------------------------------
def encode(input_path, pq_path, out_path, *, batch_size):
    """Write the PQ code bytes of every embedding to ``out_path`` (.parquet or .npy)."""
    t0 = time.perf_counter()
    pq = shardann.ProductQuantizer.load(pq_path)
    n = count_rows(input_path)
    if out_path.endswith(".npy"):
        # row i holds the code of embedding i; the ids are the row numbers
        out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8,
                                        shape=(n, pq.code_size))
        for ids, batch in iter_batches(input_path, batch_size):
            out[ids[0]:ids[0] + len(ids)] = pq.compute_codes(batch)
        out.flush()
        del out
    else:
        # id int64, code fixed_size_binary(code_size): the segment layout shardann uses
        schema = pa.schema([("id", pa.int64()), ("code", pa.binary(pq.code_size))],
                           metadata={b"shardann": json.dumps(pq.params()).encode()})
        with papq.ParquetWriter(out_path, schema) as writer:
            for ids, batch in iter_batches(input_path, batch_size):
                codes = pq.compute_codes(batch)  # uint8 (b, code_size), C-contiguous
                code_col = pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(pq.code_size), len(codes), [None, pa.py_buffer(codes)])
                writer.write_table(pa.table([pa.array(ids), code_col], schema=schema))
    log.info("encoded %d embeddings to %s in %.1f s; %s",
             n, out_path, time.perf_counter() - t0, peak_rss())


def read_codes(out_path, code_size):
    """Codes written by :func:`encode` as uint8 (n, code_size), and their ids."""
    if out_path.endswith(".npy"):
        codes = np.load(out_path, mmap_mode="r")
        return np.arange(len(codes), dtype=np.int64), codes
    table = papq.read_table(out_path)
    col = table.column("code").combine_chunks()
    raw = np.frombuffer(col.buffers()[1], np.uint8)[col.offset * code_size:]
    return table.column("id").to_numpy(), raw[:len(col) * code_size].reshape(-1, code_size)


def check(input_path, pq_path, out_path, *, batch_size):
    """Decode the first batch of stored codes and compare with the embeddings."""
    pq = shardann.ProductQuantizer.load(pq_path)
    ids, codes = read_codes(out_path, pq.code_size)
    first_ids, first = next(iter_batches(input_path, batch_size))
    assert np.array_equal(ids[:len(first_ids)], first_ids)
    approx = pq.decode(np.ascontiguousarray(codes[:len(first)]))
    rel = ((approx - first) ** 2).sum(1).mean() / (first ** 2).sum(1).mean()
    print(f"{len(ids):,} codes of {pq.code_size} bytes "
          f"({first.shape[1] * 4 // pq.code_size}x smaller than float32); "
          f"relative squared reconstruction error on the first batch: {rel:.4f}")


# -- command line -------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", nargs="?", choices=("all", "train", "encode"), default="all")
    parser.add_argument("--input", help="embeddings: .npy or .parquet (default: generate "
                                        "100k x 128 synthetic embeddings in a temp directory)")
    parser.add_argument("--pq", help="quantizer file (default: pq.parquet next to --out)")
    parser.add_argument("--out", help="codes: .parquet or .npy (default: codes.parquet in a "
                                      "temp directory)")
    parser.add_argument("--M", type=int, default=16, help="sub-quantizers (default 16)")
    parser.add_argument("--nbits", type=int, default=8, help="bits per sub-code (default 8)")
    parser.add_argument("--sample", type=int, default=65_536, help="training sample size")
    parser.add_argument("--batch-size", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="log k-means progress")
    args = parser.parse_args(argv)
    if args.step != "all":  # separate runs must agree on where things are
        needed = {"train": ("input", "pq"), "encode": ("input", "pq", "out")}[args.step]
        missing = [f"--{name}" for name in needed if getattr(args, name) is None]
        if missing:
            parser.error(f"the {args.step} step needs {', '.join(missing)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="pq-encode-") as tmp:
        if args.input is None:
            args.input = os.path.join(tmp, "embeddings.npy")
            np.save(args.input, synthetic(100_000, 128, seed=args.seed))
            log.info("wrote 100,000 x 128 synthetic embeddings to %s", args.input)
        args.out = args.out or os.path.join(tmp, "codes.parquet")
        args.pq = args.pq or os.path.join(os.path.dirname(os.path.abspath(args.out)),
                                          "pq.parquet")
        if args.step in ("all", "train"):
            train(args.input, args.pq, M=args.M, nbits=args.nbits, sample_size=args.sample,
                  batch_size=args.batch_size, seed=args.seed, verbose=args.verbose)
        if args.step in ("all", "encode"):
            encode(args.input, args.pq, args.out, batch_size=args.batch_size)
            check(args.input, args.pq, args.out, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
