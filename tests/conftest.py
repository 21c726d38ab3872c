"""Shared, session-scoped data and trained indexes.

Training dominates the run time (with Numba compilation), so every trained
index is built once per session and shared. Tests must not mutate the shared
indexes returned by ``built``; they use ``fresh`` (a deep copy of a trained,
empty index) when they add or remove.
"""

import copy
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from core_support import NB, NLIST, NQ, NT, SEED, D, K, M  # noqa: E402

import shardann  # noqa: E402
from shardann.bench.datasets import synthetic_split  # noqa: E402


@pytest.fixture(scope="session")
def data():
    """``(xb, xq, xt)``: database, queries and a training set from one manifold."""
    xb, xq, xt = synthetic_split(NB, NQ, D, nt=NT, seed=SEED)
    for a in (xb, xq, xt):
        a.flags.writeable = False  # nobody may change the shared data by accident
    return xb, xq, xt


@pytest.fixture(scope="session")
def ground_truth(data):
    """metric -> exact ``(D, I)`` with k=K from :class:`shardann.FlatIndex`."""
    xb, xq, _ = data
    out = {}
    for metric in ("l2", "ip", "cosine"):
        index = shardann.FlatIndex(D, metric)
        index.add(xb)
        out[metric] = index.search(xq, K)
    return out


def _make(kind, metric, nbits, opq, keep_vectors, seed, nlist, by_residual):
    if kind == "flat":
        return shardann.FlatIndex(D, metric)
    if kind == "ivfflat":
        return shardann.IVFFlatIndex(D, nlist, metric, seed=seed)
    if kind == "ivfpq":
        index = shardann.IVFPQIndex(D, nlist, M, nbits, metric, seed=seed, opq=opq,
                                    keep_vectors=keep_vectors, by_residual=by_residual)
        if opq:
            index.opq.niter = 8  # the default 25 rounds cost seconds; 8 is plenty here
        return index
    raise ValueError(kind)


def _key(kind, metric="l2", nbits=8, opq=False, keep_vectors=False, seed=SEED, nlist=NLIST,
         by_residual=True):
    return (kind, metric, nbits, opq, keep_vectors, seed, nlist, by_residual)


@pytest.fixture(scope="session")
def trained(data):
    """``trained(kind, metric="l2", nbits=8, opq=False, keep_vectors=False, seed=0,
    nlist=NLIST, by_residual=True)`` -> a trained, empty index shared by the session
    (do not mutate)."""
    _, _, xt = data
    cache = {}

    def get(kind, **kw):
        key = _key(kind, **kw)
        if key not in cache:
            index = _make(*key)
            index.train(xt)
            cache[key] = index
        return cache[key]

    return get


@pytest.fixture(scope="session")
def built(data, trained):
    """Like ``trained`` but with the database added (ids 0..NB-1; do not mutate)."""
    xb = data[0]
    cache = {}

    def get(kind, **kw):
        key = _key(kind, **kw)
        if key not in cache:
            index = copy.deepcopy(trained(kind, **kw))
            index.add(xb)
            cache[key] = index
        return cache[key]

    return get


@pytest.fixture()
def fresh(trained):
    """A private deep copy of a trained, empty index: free to mutate."""

    def get(kind, **kw):
        return copy.deepcopy(trained(kind, **kw))

    return get


def pytest_report_header(config):
    import numba
    return f"shardann {shardann.__version__}, numba {numba.__version__}, " \
           f"threads {numba.get_num_threads()}"


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray runtime (2 CPUs) per test module, shut down afterwards.

    ``address="local"``: always a new runtime, never a cluster another process on this
    machine started (ray.init() with no address joins the newest one it finds)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3-compatible server (moto's standalone server in its own process on
    127.0.0.1), shared by the session; ``moto_s3.new_bucket()`` makes a bucket."""
    from s3_support import MotoServer

    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    """``moto_s3`` with the standard AWS environment pointing at it (``AWS_ENDPOINT_URL``,
    ``AWS_ALLOW_HTTP``, keys, region) for this test and the processes it starts."""
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    return moto_s3


# a real PostgreSQL server for the SQL source tests (skipped when no binaries exist)
from pg_support import postgresql_dsn  # noqa: E402, F401
