"""shardann as a search service: serve an index over HTTP with Ray Serve and query it.

Run:  python examples/serve_and_query.py        (about a minute on 2 cores)

1. builds and saves a small IVF-PQ index (50k vectors),
2. serves it on 127.0.0.1 with 2 shards, behind a bearer token,
3. searches, adds and deletes through ``shardann.Client``,
4. commits a new version from "another writer" and switches to it without downtime,
5. stops everything.

On a real deployment step 2 is ``shardann serve PATH --shards N --replicas R`` (or the
files in cluster/), and only steps 3-4 run in your application.
"""

import os
import secrets
import socket
import tempfile
import time

import numpy as np
import ray

import shardann
from shardann.bench.datasets import synthetic_split
from shardann.service import Client, InvalidRequestError, direct_ingress_env, run, stop
from shardann.service.config import token_digest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


d, k = 64, 10
xb, xq, xt = synthetic_split(50_000, 100, d, nt=20_000, seed=0)

with tempfile.TemporaryDirectory() as tmp:
    path = f"{tmp}/products"

    # 1. Build and save an index (in production: an offline job writing to shared storage).
    index = shardann.IVFPQIndex(d=d, nlist=128, M=16, nbits=8, metric="l2", seed=0,
                                keep_vectors=True)
    index.train(xt)
    index.add(xb)  # ids 0..49999
    index.save(path)
    print(f"saved {index.ntotal:,} vectors to {path}")

    # 2. Serve it: local Ray, 2 shard actors, HTTP on loopback with a bearer token. The
    #    Serve replica answers HTTP itself (direct ingress, as `shardann serve` does), which
    #    Ray reads from the environment of its processes: set it before ray.init.
    port = free_port()
    os.environ.update(direct_ingress_env(port))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    token = secrets.token_hex(16)
    t0 = time.perf_counter()
    url = run({"path": path, "num_shards": 2, "replicas": 1,
               "token_sha256": token_digest(token)},
              host="127.0.0.1", port=port, ingress="direct")
    print(f"serving at {url} after {time.perf_counter() - t0:.1f} s")

    try:
        with Client(url, token=token) as client:
            print("health:", client.health()["status"])

            # 3. Search: the same (D, I) a local index returns, best first.
            D, I = client.search(xq[:3], k=k, nprobe=16)
            print("ids of the 3 nearest neighbours of 3 queries:\n", I[:, :3])
            D2, I2 = client.search(xq[:3], k=k, nprobe=16, refine_factor=4)  # exact re-rank
            print("with refine_factor=4, distances:", np.round(D2[:, 0], 3))

            # Add with your own int64 ids (committed before the call returns) ...
            new = xq[:5] + np.float32(0.01)
            ids = client.add(new, ids=np.arange(1_000_000, 1_000_005))
            _, I = client.search(new, k=1, nprobe=16)
            print("added", ids.tolist(), "-> nearest hits", I[:, 0].tolist())
            # ... and delete by id.
            print("deleted", client.delete(ids[:2]), "vectors")

            # Bad requests answer 4xx with a JSON body (the client raises):
            try:
                client.search(np.zeros((1, d + 1), np.float32), k=k)
            except InvalidRequestError as exc:
                print("bad request:", exc.status, exc.code, "-", exc.message)

            # 4. Another writer commits a new version; switch to it without downtime.
            writer = shardann.open_index(path)
            writer.add(xq[50:60], ids=np.arange(2_000_000, 2_000_010))
            writer.save(path)
            print("reload:", client.reload())

            s = client.stats()
            print(f"version {s['version']}: {s['ntotal']:,} vectors on {s['num_shards']} shards, "
                  f"balance {s['balance']:.3f}, requests {s['service']['requests']}")
    finally:
        # 5. Stop the app and the index's shard actors.
        stop("products", shutdown_serve=True)
        ray.shutdown()
