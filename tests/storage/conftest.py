"""Small indexes for the storage tests (built once per session, handed out as copies)."""

import copy

import pytest
from storage_support import NB, NLIST, NQ, D

import shardann
from shardann.bench.datasets import synthetic_split


@pytest.fixture(scope="session")
def sdata():
    """``(xb, xq, xt)`` on one curved low-dimensional manifold."""
    xb, xq, xt = synthetic_split(NB, NQ, D, nt=1500, seed=7)
    for a in (xb, xq, xt):
        a.flags.writeable = False
    return xb, xq, xt


def _build(kind, metric, nbits, opq, keep_vectors, fast_scan, xb, xt):
    if kind == "flat":
        index = shardann.FlatIndex(D, metric)
    elif kind == "ivfflat":
        index = shardann.IVFFlatIndex(D, NLIST, metric, seed=0, niter=8)
    else:
        index = shardann.IVFPQIndex(D, NLIST, 4, nbits, metric, seed=0, opq=opq,
                                    keep_vectors=keep_vectors, niter=8, pq_niter=8,
                                    fast_scan=fast_scan)
        if opq:
            index.opq.niter = 4
    index.train(xt)
    index.add(xb)
    return index


@pytest.fixture(scope="session")
def make_index(sdata):
    """``make_index(kind, metric="l2", nbits=8, opq=False, keep_vectors=False,
    fast_scan=True)`` -> a private copy of a trained index holding ``xb`` (ids 0..NB-1)."""
    xb, _, xt = sdata
    cache = {}

    def get(kind="ivfpq", metric="l2", nbits=8, opq=False, keep_vectors=False, fast_scan=True):
        key = (kind, metric, nbits, opq, keep_vectors, fast_scan)
        if key not in cache:
            cache[key] = _build(*key, xb, xt)
        return copy.deepcopy(cache[key])

    return get
