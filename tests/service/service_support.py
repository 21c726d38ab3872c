"""Helpers of the service tests (imported as ``service_support``, a unique name)."""

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np

D = 32
TOKEN = "s3cret-token-for-tests"
JSON = {"content-type": "application/json"}
JSON_AUTH = {**JSON, "Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def local_client(index, **settings):
    """A TestClient on the FastAPI app over a LocalBackend wrapping ``index``."""
    import copy

    from shardann.service import LocalBackend, SearchService, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient-on-httpx deprecation
        from fastapi.testclient import TestClient
    backend = LocalBackend(copy.deepcopy(index))
    config = {"path": "memory", "backend": "local", **settings}
    service = SearchService(config, backend, environ={})
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        client.service = service
        client.backend = backend
        yield client


def free_port():
    """A loopback port that binds now, outside both the kernel's ephemeral
    range (32768+) and Ray's worker ports (10002-19999): a port handed out by
    ``bind(0)`` and released was once taken by a Ray process started next,
    and the test then talked to that process instead of the service."""
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def assert_error(r, status=None, code=None):
    """A 4xx/5xx answer with our JSON error body."""
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def as_result(out, metric="l2"):
    from shardann.metric import pad_distance
    I = np.asarray(out["ids"], dtype=np.int64)
    Dm = np.array(out["distances"], dtype=np.float64)
    Dm = np.where(np.isnan(Dm), pad_distance(metric), Dm).astype(np.float32)
    return Dm, I


def build_store(path, xt, xb, *, nlist=16, keep_vectors=True):
    """Train an IVF-PQ index, add ``xb`` (ids 0..n-1) and save it at ``path``."""
    import shardann
    index = shardann.IVFPQIndex(xt.shape[1], nlist, 8, 8, "l2", seed=0, niter=6, pq_niter=6,
                                keep_vectors=keep_vectors)
    index.train(xt)
    index.add(xb)
    index.save(path)
    return index


@contextlib.contextmanager
def serving(path, port=None, ingress="proxy", **settings):
    """Run the Serve app for the index at ``path`` on loopback (``port``, or a free
    one); yield its URL; afterwards shut Serve down and stop every shard actor of
    the index. ``ingress="direct"`` needs a Ray started with
    ``direct_ingress_env(port)``."""
    import os

    from shardann.service import run, stop
    from shardann.service.backends import list_index_actors

    config = {"path": os.fspath(path), **settings}
    name = settings.get("name") or os.path.basename(os.fspath(path))
    try:
        yield run(config, host="127.0.0.1", port=port or free_port(), ingress=ingress)
    finally:
        stop(name, shutdown_serve=True)
        # ray.kill is asynchronous: the killed actors leave the list within moments
        deadline = time.monotonic() + 30
        while list_index_actors(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list_index_actors(name) == []


@contextlib.contextmanager
def serve_command(argv, port, env=None, timeout_s=180):
    """``python -m shardann.cli serve ARGV --port PORT`` in a subprocess (its own
    local Ray); yields the process once ``/v1/health`` answers 200. On exit it is
    stopped with SIGINT, and ``proc.output`` holds everything it printed."""
    import httpx

    env = {k: v for k, v in (os.environ if env is None else env).items()
           if not k.startswith("SHARDANN_TOKEN")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardann.cli", "serve", *map(str, argv), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(1)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.output, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.output, _ = proc.communicate()
