"""Fixtures of the service tests: a small trained index for the local backend (no
Ray). The end-to-end modules start one local Ray per module themselves."""

import pytest
from service_support import D


@pytest.fixture(scope="session")
def svc_data():
    from shardann.bench.datasets import synthetic_split
    xb, xq, xt = synthetic_split(4000, 40, D, nt=2000, seed=5)
    return xb, xq, xt


@pytest.fixture(scope="session")
def small_index(svc_data):
    """A trained, filled IVF-PQ index (ids 0..3999); tests copy it before mutating."""
    import shardann
    xb, _, xt = svc_data
    index = shardann.IVFPQIndex(D, 16, 8, 8, "l2", seed=0, niter=6, pq_niter=6)
    index.train(xt)
    index.add(xb)
    return index
