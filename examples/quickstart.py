"""shardann quickstart: build an IVF-PQ index, measure its recall, save and reopen it.

Run:  python examples/quickstart.py        (about half a minute on 2 cores)

The same flow as `shardann demo`, in a form to copy from.
"""

import tempfile
import time

import numpy as np

import shardann
from shardann.bench.datasets import synthetic_split

# 1. Data: 100k base vectors, 1k queries and a 20k training sample, float32, d=64.
#    synthetic_split draws them from one curved low-dimensional manifold, which
#    behaves like real embeddings (pure Gaussian noise would not).
d, k = 64, 10
xb, xq, xt = synthetic_split(100_000, 1_000, d, nt=20_000, seed=0)

# 2. Ground truth: exact search with FlatIndex.
exact = shardann.FlatIndex(d)
exact.add(xb)
_, gt = exact.search(xq, k)  # (D, I): float32 and int64, shape (nq, k), best first


def recall_at_10(I):
    """Share of the exact 10 nearest neighbours that the index found."""
    return np.mean([len(set(row) & set(true)) / k for row, true in zip(I, gt, strict=True)])


# 3. The IVF-PQ index: 256 lists, 16 sub-quantizers x 8 bits = 16-byte codes.
#    keep_vectors=True also keeps the float32 vectors so a search can re-rank
#    its shortlist exactly (refine_factor); leave it out to store only codes.
index = shardann.IVFPQIndex(d=d, nlist=256, M=16, nbits=8, metric="l2", seed=0,
                            keep_vectors=True)
t0 = time.perf_counter()
index.train(xt)  # k-means for the lists, then PQ codebooks on the residuals
index.add(xb)    # ids default to 0..n-1; pass ids=... for your own int64 ids
print(f"trained and added {index.ntotal:,} vectors in {time.perf_counter() - t0:.1f} s")

# 4. Search: nprobe lists per query trades speed for recall.
for nprobe in (1, 4, 16):
    t0 = time.perf_counter()
    D, I = index.search(xq, k=k, nprobe=nprobe)
    ms = 1000 * (time.perf_counter() - t0) / len(xq)
    print(f"nprobe={nprobe:<3} recall@10={recall_at_10(I):.3f}  {ms:.3f} ms/query")
D, I = index.search(xq, k=k, nprobe=16, refine_factor=10)
print(f"nprobe=16  refine_factor=10  recall@10={recall_at_10(I):.3f}")

# 5. Other everyday calls.
print("reconstruct(42):", index.reconstruct(42)[:4], "...")  # stored or decoded vector
print("removed", index.remove_ids(np.array([0, 1, 2])), "vectors; ntotal =", index.ntotal)

# 6. Save and reopen: the reopened index answers identically.
with tempfile.TemporaryDirectory() as tmp:
    index.save(f"{tmp}/my-index")
    reopened = shardann.open_index(f"{tmp}/my-index")
    D1, I1 = index.search(xq, k=k, nprobe=16)
    D2, I2 = reopened.search(xq, k=k, nprobe=16)
    assert np.array_equal(I1, I2) and np.array_equal(D1, D2)
    print("saved, reopened:", reopened)
