"""From FAISS to shardann: the same steps, side by side.

Run:  python examples/faiss_migration.py

The shardann half always runs. When ``faiss`` is importable (``pip install
faiss-cpu``) the FAISS half runs on the same data and both recalls are printed.

    FAISS                                         shardann
    --------------------------------------------  ---------------------------------------------
    faiss.IndexFlatL2(d) / IndexFlatIP(d)         FlatIndex(d, metric="l2" / "ip")
    faiss.normalize_L2(x) + IndexFlatIP           metric="cosine" (normalised for you)
    IndexIVFFlat(quantizer, d, nlist)             IVFFlatIndex(d, nlist)
    index.nprobe = 8                              index.nprobe = 8, or search(..., nprobe=8)
    IndexIVFPQ(quantizer, d, nlist, M, nbits)     IVFPQIndex(d, nlist, M, nbits)
    IndexRefineFlat(ivfpq), k_factor = 10         IVFPQIndex(..., keep_vectors=True),
                                                  search(..., refine_factor=10)
    index_factory(d, "OPQ16,IVF256,PQ16")         IVFPQIndex(d, 256, 16, opq=True)
    faiss.Kmeans(d, k, niter=20, seed=1)          KMeans(d, k, niter=20, seed=1)
    km.index.search(x, 1)                         km.assign(x, return_distances=True)
    ProductQuantizer(d, M, nbits).train(x)        ProductQuantizer(d, M, nbits).train(x)
    write/read_ProductQuantizer(pq, path)         pq.save(path) / ProductQuantizer.load(path)
    index.make_direct_map(); index.reconstruct(i) index.reconstruct(i)  (no direct map needed)
    index.add_with_ids(x, ids)                    index.add(x, ids=ids)
    index.remove_ids(ids)                         index.remove_ids(ids)
    faiss.write_index / faiss.read_index          index.save(dir) / shardann.open_index(dir)

Results follow the same convention: ``(D, I)`` of shape (nq, k), squared L2
distances (or similarities for ip/cosine), id -1 where there are fewer than k
hits. Two differences: shardann pads D with +inf/-inf (FAISS with +/-3.4e38),
and it breaks distance ties by the smaller id, so results are deterministic.
"""

import os
import tempfile

import numpy as np

import shardann
from shardann.bench.datasets import synthetic_split

d, k, nlist, M, nbits, nprobe = 64, 10, 128, 16, 8, 8
xb, xq, xt = synthetic_split(50_000, 500, d, nt=20_000, seed=0)
ids = np.arange(1_000_000, 1_000_000 + len(xb), dtype=np.int64)  # your own int64 ids


def recall(I, gt):
    """Share of the exact k nearest neighbours found (recall@k)."""
    return np.mean([len(set(a) & set(b)) / gt.shape[1] for a, b in zip(I, gt, strict=True)])


def with_shardann(tmp):
    out = {}
    # 1. exact search: the ground truth
    flat = shardann.FlatIndex(d)                       # metric="l2" by default
    flat.add(xb, ids=ids)
    _, gt = flat.search(xq, k)
    out["Flat (exact)"] = recall(gt, gt)

    # 2. IVF-Flat: no quantizer object to create; nprobe per call or as a default
    ivf = shardann.IVFFlatIndex(d, nlist, seed=0)
    ivf.train(xt)
    ivf.add(xb, ids=ids)
    _, I = ivf.search(xq, k, nprobe=nprobe)
    out[f"IVF{nlist},Flat nprobe={nprobe}"] = recall(I, gt)

    # 3. IVF-PQ, plus exact re-ranking of a k*10 shortlist (FAISS: IndexRefineFlat)
    ivfpq = shardann.IVFPQIndex(d, nlist, M, nbits, seed=0, keep_vectors=True)
    ivfpq.train(xt)
    ivfpq.add(xb, ids=ids)
    ivfpq.nprobe = nprobe                               # the FAISS-style default
    _, I = ivfpq.search(xq, k)
    out[f"IVF{nlist},PQ{M} nprobe={nprobe}"] = recall(I, gt)
    _, I = ivfpq.search(xq, k, refine_factor=10)
    out[f"IVF{nlist},PQ{M} + refine x10"] = recall(I, gt)

    # 4. reconstruct by id: works on IVF indexes without make_direct_map
    v = ivfpq.reconstruct(ids[7])                       # (d,) float32; kept vector here
    assert np.allclose(v, xb[7])

    # 5. remove by id
    assert ivfpq.remove_ids(ids[:5]) == 5

    # 6. save / open (a directory, written atomically)
    ivfpq.save(os.path.join(tmp, "ivfpq"))
    again = shardann.open_index(os.path.join(tmp, "ivfpq"))
    assert again.ntotal == len(xb) - 5

    # 7. k-means
    km = shardann.KMeans(d, 64, niter=20, seed=1).train(xt)
    labels, dist = km.assign(xb, return_distances=True)  # FAISS: D, I = km.index.search(xb, 1)
    out["k-means(64) mean sq. distance"] = float(dist.mean())

    # 8. a stand-alone product quantizer: codes only
    pq = shardann.ProductQuantizer(d, M, nbits).train(xt)
    codes = pq.compute_codes(xb)                        # uint8 (n, M * nbits / 8)
    pq.save(os.path.join(tmp, "pq.parquet"))
    pq = shardann.ProductQuantizer.load(os.path.join(tmp, "pq.parquet"))
    out["PQ16 reconstruction MSE"] = float(((pq.decode(codes) - xb) ** 2).sum(1).mean())
    return out


def with_faiss(faiss, tmp):
    out = {}
    # 1. exact search
    flat = faiss.IndexIDMap(faiss.IndexFlatL2(d))       # IndexFlatL2 alone cannot take ids
    flat.add_with_ids(xb, ids)
    _, gt = flat.search(xq, k)
    out["Flat (exact)"] = recall(gt, gt)

    # 2. IVF-Flat
    quantizer = faiss.IndexFlatL2(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist)
    ivf.train(xt)
    ivf.add_with_ids(xb, ids)
    ivf.nprobe = nprobe
    _, I = ivf.search(xq, k)
    out[f"IVF{nlist},Flat nprobe={nprobe}"] = recall(I, gt)

    # 3. IVF-PQ, plus exact re-ranking (a second index that also stores the vectors)
    quantizer2 = faiss.IndexFlatL2(d)
    ivfpq = faiss.IndexIVFPQ(quantizer2, d, nlist, M, nbits)
    ivfpq.train(xt)
    base = faiss.clone_index(ivfpq)                     # trained and empty
    refined = faiss.IndexRefineFlat(base)
    refined_ids = faiss.IndexIDMap(refined)             # IndexRefineFlat has no add_with_ids
    ivfpq.add_with_ids(xb, ids)
    refined_ids.add_with_ids(xb, ids)
    ivfpq.nprobe = base.nprobe = nprobe
    _, I = ivfpq.search(xq, k)
    out[f"IVF{nlist},PQ{M} nprobe={nprobe}"] = recall(I, gt)
    refined.k_factor = 10
    _, I = refined_ids.search(xq, k)
    out[f"IVF{nlist},PQ{M} + refine x10"] = recall(I, gt)

    # 4. reconstruct by id needs a direct map on IVF indexes
    ivfpq.set_direct_map_type(faiss.DirectMap.Hashtable)  # make_direct_map() if ids are 0..n-1
    ivfpq.reconstruct(int(ids[7]))                      # decoded (lossy) vector

    # 5. remove by id
    assert ivfpq.remove_ids(ids[:5]) == 5

    # 6. write / read (one file)
    faiss.write_index(ivfpq, os.path.join(tmp, "ivfpq.faiss"))
    again = faiss.read_index(os.path.join(tmp, "ivfpq.faiss"))
    assert again.ntotal == len(xb) - 5

    # 7. k-means
    km = faiss.Kmeans(d, 64, niter=20, seed=1)
    km.train(xt)
    dist, labels = km.index.search(xb, 1)
    out["k-means(64) mean sq. distance"] = float(dist.mean())

    # 8. a stand-alone product quantizer
    pq = faiss.ProductQuantizer(d, M, nbits)
    pq.train(xt)
    codes = pq.compute_codes(xb)
    faiss.write_ProductQuantizer(pq, os.path.join(tmp, "pq.faiss"))
    pq = faiss.read_ProductQuantizer(os.path.join(tmp, "pq.faiss"))
    out["PQ16 reconstruction MSE"] = float(((pq.decode(codes) - xb) ** 2).sum(1).mean())
    return out


def main():
    try:
        import faiss
    except ImportError:
        faiss = None
    with tempfile.TemporaryDirectory() as tmp:
        ours = with_shardann(tmp)
        theirs = with_faiss(faiss, tmp) if faiss is not None else {}
    print(f"{len(xb):,} x {d} base vectors, {len(xq)} queries, k={k}; "
          "recall@10 unless stated otherwise\n")
    print(f"{'':<32}{'shardann':>10}{'faiss':>10}")
    for name, value in ours.items():
        other = f"{theirs[name]:>10.3f}" if name in theirs else f"{'-':>10}"
        print(f"{name:<32}{value:>10.3f}{other}")
    if faiss is None:
        print("\n(faiss is not installed: `pip install faiss-cpu` to run the FAISS column)")


if __name__ == "__main__":
    main()
