"""Helpers shared by the distributed tests."""

import numpy as np


def build_local(path, xt, xb, metric="l2", *, M=8, nbits=8, nlist=32, keep_vectors=False,
                delete=None):
    """Train, fill and save a local IVF-PQ index; return it re-opened from the store."""
    import shardann
    index = shardann.IVFPQIndex(xt.shape[1], nlist, M, nbits, metric, seed=0,
                                keep_vectors=keep_vectors, niter=8, pq_niter=8)
    index.train(xt)
    index.add(xb)
    if delete is not None:
        index.remove_ids(delete)
    index.save(path)
    return shardann.open_index(path)


def assert_same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
